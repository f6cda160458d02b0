//! Shared test support: fixture paths, Python tools and Chromium installed on first use, waiting
//! helpers.

#![allow(dead_code)] // each test module uses a different part

pub mod browser;
pub mod instances;
pub mod process;
pub mod python;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

/// `tests/fixtures/<rel>` as an absolute path.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

use serde_json::Value;
use wa_groups_bot::app::Bot;
use wa_groups_bot::config::{Config, ConfigSource};
use wa_groups_bot::sandbox::mock_pod::{MockPod, MockPodConfig, MockUser, UserKind};
use wa_groups_bot::sandbox::wa_sim::WhatsAppSim;
use wa_groups_bot::templates::Templates;

pub const BOT: i64 = 9001;
pub const ALICE: i64 = 9002;
pub const BOB: i64 = 9003;
pub const BOT_USERNAME: &str = "wa-test-bot";

fn user(id: i64, username: &str, name: &str, kind: UserKind, key: Option<&str>) -> MockUser {
    MockUser {
        id,
        username: username.into(),
        display_name: name.into(),
        email: format!("{username}@example.com"),
        kind,
        public_key_pem: key.map(|k| std::fs::read_to_string(fixture(k)).expect("fixture key")),
    }
}

/// The test directory: the bot (with the fixture key pair), Alice and Bob.
pub fn pod_users() -> Vec<MockUser> {
    vec![
        user(BOT, BOT_USERNAME, "WA Test Bot", UserKind::Bot, Some("keys/bot-public.pem")),
        user(ALICE, "alice", "Alice Ng", UserKind::Normal, None),
        user(BOB, "bob", "Bob Smith", UserKind::Normal, None),
    ]
}

/// A mock pod with short timings: 300 ms long-poll hold, unacked batches back after 1 s.
pub async fn start_pod() -> MockPod {
    let mut cfg = MockPodConfig::new(pod_users());
    cfg.datafeed_hold = Duration::from_millis(300);
    cfg.redelivery_delay = Duration::from_secs(1);
    MockPod::start(cfg).await.expect("mock pod starts")
}

/// The bot's configuration against `pod`, with its store in `dir`. `key` is a fixture path.
pub fn bot_config(pod: &MockPod, dir: &std::path::Path, key: &str) -> Config {
    let yaml = format!(
        "scheme: http\nhost: 127.0.0.1\nport: {port}\nreadTimeout: 5000\n\
         bot: {{username: {BOT_USERNAME}, privateKey: {{path: {key}}}}}\n\
         retry: {{maxAttempts: 4, initialIntervalMillis: 50, multiplier: 2, maxIntervalMillis: 400}}\n\
         datafeed: {{retry: {{maxAttempts: -1, initialIntervalMillis: 50, multiplier: 2, maxIntervalMillis: 400}}}}\n\
         whatsapp: {{webhook: {{listen: \"127.0.0.1:0\"}}}}\n\
         store: {{path: {store}}}\n",
        port = pod.addr().port(),
        key = fixture(key).display(),
        store = dir.join("bot.db").display(),
    );
    let file = dir.join("bot-config.yaml");
    std::fs::write(&file, yaml).expect("write config");
    Config::load_from(&ConfigSource { file: Some(file), env: Some(Default::default()) })
        .expect("valid config")
}

/// Starts the bot against `pod` with its store in `dir`.
pub async fn start_bot(pod: &MockPod, dir: &std::path::Path) -> Bot {
    let config = bot_config(pod, dir, "keys/bot-pkcs8.pem");
    Bot::start(
        config,
        Templates::embedded().expect("templates"),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect("bot starts")
}

/// Waits until the stream has a message from `user` whose text satisfies `pred`; returns it.
pub async fn wait_for_message(
    pod: &MockPod,
    stream: &str,
    user: i64,
    pred: impl Fn(&str) -> bool,
) -> wa_groups_bot::sandbox::mock_pod::PostedMessage {
    wait_for("a matching message", Duration::from_secs(10), || {
        let found = pod.messages(stream).into_iter().find(|m| m.user == user && pred(&m.text));
        async move { found }
    })
    .await
}

pub const WA_TOKEN: &str = "test-access-token";
pub const WA_SECRET: &str = "test-app-secret";
pub const WA_VERIFY: &str = "test-verify-token";
pub const WA_PHONE_ID: &str = "106540352242922";

/// A simulator with fast webhook retries.
pub async fn start_sim() -> WhatsAppSim {
    let mut cfg =
        wa_groups_bot::sandbox::wa_sim::WhatsAppSimConfig::new(WA_TOKEN, WA_SECRET, WA_PHONE_ID);
    cfg.webhook_retry_initial = Duration::from_millis(50);
    WhatsAppSim::start(cfg).await.expect("simulator starts")
}

/// The bot's configuration with its WhatsApp side pointing at `api_base_url`.
pub fn wa_config(dir: &std::path::Path, api_base_url: &str, version: &str) -> Config {
    let yaml = format!(
        "host: 127.0.0.1\nbot: {{username: {BOT_USERNAME}, privateKey: {{path: {key}}}}}\n\
         retry: {{maxAttempts: 4, initialIntervalMillis: 50, multiplier: 2, maxIntervalMillis: 400}}\n\
         whatsapp: {{apiBaseUrl: \"{api_base_url}\", apiVersion: {version}, phoneNumberId: \"{WA_PHONE_ID}\",\n  \
           accessToken: {WA_TOKEN}, appSecret: {WA_SECRET}, webhook: {{listen: \"127.0.0.1:0\", verifyToken: {WA_VERIFY}}}}}\n\
         store: {{path: {store}}}\n",
        key = fixture("keys/bot-pkcs8.pem").display(),
        store = dir.join("bot.db").display(),
    );
    let file = dir.join("bot-config.yaml");
    std::fs::write(&file, yaml).expect("write config");
    Config::load_from(&ConfigSource { file: Some(file), env: Some(Default::default()) })
        .expect("valid config")
}

/// A running webhook receiver over a fresh store.
pub struct Receiver {
    pub url: String,
    pub store: wa_groups_bot::store::Store,
    pub cancel: tokio_util::sync::CancellationToken,
}

pub async fn start_receiver() -> Receiver {
    use secrecy::SecretString;
    let store = wa_groups_bot::store::Store::open_in_memory().expect("store");
    let state = wa_groups_bot::webhook::WebhookState {
        store: store.clone(),
        app_secret: SecretString::from(WA_SECRET.to_owned()),
        verify_token: SecretString::from(WA_VERIFY.to_owned()),
        wake: std::sync::Arc::new(tokio::sync::Notify::new()),
        metrics: Default::default(),
        phone_number_id: String::new(),
        waba_id: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/whatsapp/webhook", listener.local_addr().expect("addr"));
    let cancel = tokio_util::sync::CancellationToken::new();
    let router = wa_groups_bot::webhook::router("/whatsapp/webhook", state);
    tokio::spawn(wa_groups_bot::webhook::serve(listener, router, cancel.clone()));
    Receiver { url, store, cancel }
}

impl Receiver {
    /// The WhatsApp events stored so far, in arrival order.
    pub fn events(&self) -> Vec<wa_groups_bot::events::WhatsAppEvent> {
        self.store
            .pending_inbound(0, 10_000)
            .expect("pending")
            .into_iter()
            .filter_map(|row| match serde_json::from_value(row.payload).ok()? {
                wa_groups_bot::events::InboundEvent::WhatsApp(e) => Some(e),
                wa_groups_bot::events::InboundEvent::Symphony(_) => None,
            })
            .collect()
    }

    /// Waits for a stored event matching `pred`.
    pub async fn wait_event<T>(
        &self,
        what: &str,
        pred: impl Fn(&wa_groups_bot::events::WhatsAppEvent) -> Option<T>,
    ) -> T {
        wait_for(what, Duration::from_secs(10), || {
            let found = self.events().iter().find_map(&pred);
            async move { found }
        })
        .await
    }
}

/// The bot against `pod` and `sim` (its webhook receiver on a free port, the simulator told
/// where it is). `advisors` is the entitlement list.
pub async fn start_bot_with_whatsapp(
    pod: &MockPod,
    sim: &WhatsAppSim,
    dir: &std::path::Path,
    advisors: &str,
) -> Bot {
    start_bot_with_whatsapp_timed(
        pod,
        sim,
        dir,
        advisors,
        wa_groups_bot::app::BotTimings::default(),
    )
    .await
}

/// [`start_bot_with_whatsapp`] with other timings.
pub async fn start_bot_with_whatsapp_timed(
    pod: &MockPod,
    sim: &WhatsAppSim,
    dir: &std::path::Path,
    advisors: &str,
    timings: wa_groups_bot::app::BotTimings,
) -> Bot {
    start_bot_with_whatsapp_config(pod, sim, dir, advisors, timings, "").await
}

/// [`start_bot_with_whatsapp_timed`] with more configuration (`extra` YAML appended).
pub async fn start_bot_with_whatsapp_config(
    pod: &MockPod,
    sim: &WhatsAppSim,
    dir: &std::path::Path,
    advisors: &str,
    timings: wa_groups_bot::app::BotTimings,
    extra: &str,
) -> Bot {
    start_bot_with_whatsapp_loaded(pod, sim, dir, advisors, timings, extra, || {
        Templates::embedded().expect("templates")
    })
    .await
}

/// [`start_bot_with_whatsapp_config`] with its templates from `templates`.
pub async fn start_bot_with_whatsapp_loaded(
    pod: &MockPod,
    sim: &WhatsAppSim,
    dir: &std::path::Path,
    advisors: &str,
    timings: wa_groups_bot::app::BotTimings,
    extra: &str,
    templates: impl FnOnce() -> Templates,
) -> Bot {
    let yaml = format!(
        "scheme: http\nhost: 127.0.0.1\nport: {port}\n{read_timeout}\
         bot: {{username: {BOT_USERNAME}, privateKey: {{path: {key}}}}}\n\
         {retry}\
         datafeed: {{retry: {{maxAttempts: -1, initialIntervalMillis: 50, multiplier: 2, maxIntervalMillis: 400}}}}\n\
         whatsapp: {{apiBaseUrl: \"{sim}\", apiVersion: v23.0, phoneNumberId: \"{WA_PHONE_ID}\",\n  \
           accessToken: {WA_TOKEN}, appSecret: {WA_SECRET}, webhook: {{listen: \"127.0.0.1:0\", verifyToken: {WA_VERIFY}}}}}\n\
         entitlements: {{advisors: [{advisors}]}}\n\
         store: {{path: {store}}}\n{extra}",
        port = pod.addr().port(),
        key = fixture("keys/bot-pkcs8.pem").display(),
        sim = sim.url(),
        store = dir.join("bot.db").display(),
        // `extra` may bring its own read timeout and retry policy.
        read_timeout = if extra.lines().any(|l| l.starts_with("readTimeout:")) {
            ""
        } else {
            "readTimeout: 5000\n"
        },
        retry = if extra.lines().any(|l| l.starts_with("retry:")) {
            ""
        } else {
            "retry: {maxAttempts: 4, initialIntervalMillis: 50, multiplier: 2, maxIntervalMillis: 400}\n"
        },
    );
    let file = dir.join("bot-config.yaml");
    std::fs::write(&file, yaml).expect("write config");
    let config =
        Config::load_from(&ConfigSource { file: Some(file), env: Some(Default::default()) })
            .expect("valid config");
    let path = config.whatsapp.webhook.path.clone();
    let bot =
        Bot::start_with(config, templates(), tokio_util::sync::CancellationToken::new(), timings)
            .await
            .expect("bot starts");
    let addr = bot.webhook_addr.expect("the webhook receiver runs");
    sim.set_webhook_url(&format!("http://{addr}{path}"));
    bot
}

/// A room's members as the pod lists them, ordered by user id (the pod lists them in the order
/// they joined, which parallel membership changes do not fix).
pub fn room_members(pod: &MockPod, sid: &str) -> Option<Value> {
    let stream = pod.streams().into_iter().find(|s| s["streamId"] == sid)?;
    let mut members = stream["members"].as_array()?.clone();
    members.sort_by_key(|m| m["userId"].as_i64());
    Some(Value::Array(members))
}

/// Waits until the room's members (by user id) are `want`.
pub async fn members_are(pod: &MockPod, sid: &str, want: Value) {
    wait_for("the room's members", Duration::from_secs(10), || {
        let members = room_members(pod, sid);
        let want = want.clone();
        async move { (members == Some(want)).then_some(()) }
    })
    .await;
}

// ----- a native group, and the faults of both mocks -----

pub async fn room_named(pod: &MockPod, name: &str) -> Value {
    wait_for("the room", Duration::from_secs(10), || {
        let found = pod.streams().into_iter().find(|s| s["type"] == "ROOM" && s["name"] == name);
        async move { found }
    })
    .await
}

pub async fn wa_group_named(sim: &WhatsAppSim, subject: &str) -> Value {
    wait_for("the WhatsApp group", Duration::from_secs(10), || {
        let found = sim.groups().into_iter().find(|g| g["subject"] == subject);
        async move { found }
    })
    .await
}

pub async fn inbox_has(sim: &WhatsAppSim, phone: &str, template: &str) -> Value {
    wait_for("a template in the inbox", Duration::from_secs(10), || {
        let found = sim.inbox(phone).into_iter().find(|m| m["template"]["name"] == template);
        async move { found }
    })
    .await
}

/// A native group made by Alice with `contacts`: (room, WhatsApp group id, invite link).
pub async fn native_group(
    pod: &MockPod,
    sim: &WhatsAppSim,
    name: &str,
    contacts: &[&str],
) -> (String, String, String) {
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    let phones: Vec<String> = contacts.iter().map(|c| format!("+{c}")).collect();
    pod.post_message(
        &im,
        ALICE,
        &format!("<messageML>/wa create \"{name}\" {}</messageML>", phones.join(" ")),
    )
    .expect("post");
    let room = room_named(pod, name).await;
    let sid = room["streamId"].as_str().expect("sid").to_owned();
    let group = wa_group_named(sim, name).await;
    let gid = group["id"].as_str().expect("gid").to_owned();
    wait_for_message(pod, &sid, BOT, |t| t.contains("is ready")).await;
    let link = sim.group(&gid).and_then(|g| g["inviteLink"].as_str().map(str::to_owned));
    (sid, gid, link.expect("link"))
}

pub async fn sim_fault(sim: &WhatsAppSim, fault: Value) {
    let answer = reqwest::Client::new()
        .post(format!("{}/_sandbox/wa/faults", sim.url()))
        .json(&fault)
        .send()
        .await
        .expect("fault");
    assert!(answer.status().is_success(), "{fault}");
}

pub async fn pod_fault(pod: &MockPod, fault: Value) {
    let answer = reqwest::Client::new()
        .post(format!("{}/_sandbox/faults", pod.url()))
        .json(&fault)
        .send()
        .await
        .expect("fault");
    assert!(answer.status().is_success(), "{fault}");
}

/// The participants of a WhatsApp group as the simulator has them.
pub fn participants(sim: &WhatsAppSim, gid: &str) -> Value {
    sim.group(gid).map(|g| g["participants"].clone()).unwrap_or(Value::Null)
}

/// Posts `body` to the simulator's control API at `path`; it must succeed.
pub async fn wa_control(sim: &WhatsAppSim, path: &str, body: Value) {
    let answer = reqwest::Client::new()
        .post(format!("{}{path}", sim.url()))
        .json(&body)
        .send()
        .await
        .expect("control call");
    assert!(answer.status().is_success(), "{path} {body}");
}
