//! No secret in the logs: the bot binary runs a whole scenario at `RUST_LOG=trace` against the
//! mock pod and the WhatsApp simulator — login, `/wa help`, `/wa create` with two contacts, a
//! contact joining, chat both ways, the webhook handshake (right and wrong verify tokens), a
//! forged webhook, a re-login after the sessions expire — and no line of its log carries the
//! private key (any line of its PEM body), the access token, the app secret, the verify token
//! or any session or key-manager token the pod issued.

use std::process::Stdio;
use std::time::Duration;

use wa_groups_bot::sandbox::mock_pod::MockPod;
use wa_groups_bot::sandbox::wa_sim::{WhatsAppSim, WhatsAppSimConfig};

use crate::support::{ALICE, BOT, BOT_USERNAME, WA_PHONE_ID, fixture, start_pod};

const JANE: &str = "447911123456";
const JOHN: &str = "447911123457";
// Distinctive values, so that a hit is a leak and not a coincidence.
const ACCESS_TOKEN: &str = "EAAGtokQ7xZbV3nP9kLmW2";
const APP_SECRET: &str = "f3c9a1e07b5d42s3cr3t88";
const VERIFY_TOKEN: &str = "vrfy-71d0c2e9a4b8";

fn bot_messages(pod: &MockPod, stream: &str, needle: &str) -> usize {
    pod.messages(stream).iter().filter(|m| m.user == BOT && m.text.contains(needle)).count()
}

async fn wait<T>(what: &str, log: &std::path::Path, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = check() {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!("timed out waiting for {what}; the log ends:\n{}", tail.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_is_logged_even_at_trace() {
    no_secret_logged(None).await;
}

/// The same on PostgreSQL, with a password in `WAGB__STORE__URL` (the test cluster trusts
/// loopback and never asks for it: what is checked is that the bot never logs the URL's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_is_logged_even_at_trace_on_postgresql() {
    let Some(db) = wa_groups_bot::store::throwaway::database("no_secret_is_logged_on_postgresql")
    else {
        return;
    };
    let mut url = url::Url::parse(db.url()).expect("url");
    url.set_password(Some(STORE_PASSWORD)).expect("password");
    no_secret_logged(Some(url.to_string())).await;
}

const STORE_PASSWORD: &str = "pgpw-5e1f0c7a93";

async fn no_secret_logged(store_url: Option<String>) {
    let pod = start_pod().await;
    let mut sim_cfg = WhatsAppSimConfig::new(ACCESS_TOKEN, APP_SECRET, WA_PHONE_ID);
    sim_cfg.webhook_retry_initial = Duration::from_millis(50);
    let sim = WhatsAppSim::start(sim_cfg).await.expect("simulator starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("a").port();
    // The secrets come as an admin sets them: from the environment.
    let yaml = format!(
        "scheme: http\nhost: 127.0.0.1\nport: {pod_port}\nreadTimeout: 5000\n\
         bot: {{username: {BOT_USERNAME}, privateKey: {{path: {key}}}}}\n\
         retry: {{maxAttempts: 4, initialIntervalMillis: 50, multiplier: 2, maxIntervalMillis: 400}}\n\
         datafeed: {{retry: {{maxAttempts: -1, initialIntervalMillis: 50, multiplier: 2, maxIntervalMillis: 400}}}}\n\
         whatsapp: {{apiBaseUrl: \"{sim_url}\", apiVersion: v23.0, phoneNumberId: \"{WA_PHONE_ID}\",\n  \
           webhook: {{listen: \"127.0.0.1:{port}\"}}}}\n\
         store: {{path: {store}}}\ntemplates: {{dir: {templates}}}\n",
        templates = fixture("../../templates").display(),
        pod_port = pod.addr().port(),
        key = fixture("keys/bot-pkcs8.pem").display(),
        sim_url = sim.url(),
        store = dir.path().join("bot.db").display(),
    );
    let config = dir.path().join("bot-config.yaml");
    std::fs::write(&config, yaml).expect("config");
    let log_path = dir.path().join("bot.log");
    let log_file = std::fs::File::create(&log_path).expect("log file");
    sim.set_webhook_url(&format!("http://127.0.0.1:{port}/whatsapp/webhook"));
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_wa-groups-bot"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("WAGB")) {
        cmd.env_remove(key);
    }
    let mut child = cmd
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "trace")
        .env("WAGB__WHATSAPP__ACCESSTOKEN", ACCESS_TOKEN)
        .env("WAGB__WHATSAPP__APPSECRET", APP_SECRET)
        .env("WAGB__WHATSAPP__WEBHOOK__VERIFYTOKEN", VERIFY_TOKEN)
        .envs(store_url.iter().map(|url| ("WAGB__STORE__URL", url.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true)
        .spawn()
        .expect("the bot starts");

    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut healthy = false;
    for _ in 0..1200 {
        if http.get(format!("{base}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
            healthy = true;
            break;
        }
        assert!(child.try_wait().expect("status").is_none(), "the bot stopped");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(healthy, "the bot never became healthy");

    // Meta's handshake, right and wrong; a forged webhook.
    let hook = format!("{base}/whatsapp/webhook");
    let challenge = http
        .get(format!("{hook}?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=c1"))
        .send()
        .await
        .expect("handshake");
    assert_eq!(challenge.text().await.expect("text"), "c1");
    let refused = http
        .get(format!("{hook}?hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=c2"))
        .send()
        .await
        .expect("handshake");
    assert_eq!(refused.status(), 403);
    let forged = http
        .post(&hook)
        .header("x-hub-signature-256", "sha256=00")
        .body("{}")
        .send()
        .await
        .expect("forged");
    assert_eq!(forged.status(), 401);

    // The scenario: help, create, a join, chat both ways, sessions expired, chat again.
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    pod.post_message(&im, ALICE, "<messageML>/wa help</messageML>").expect("help");
    wait("the help", &log_path, || (bot_messages(&pod, &im, "/wa create") > 0).then_some(())).await;
    pod.post_message(
        &im,
        ALICE,
        &format!("<messageML>/wa create \"Vault\" +{JANE} +{JOHN}</messageML>"),
    )
    .expect("create");
    let sid = wait("the room", &log_path, || {
        pod.streams()
            .into_iter()
            .find(|s| s["type"] == "ROOM" && s["name"] == "Vault")
            .and_then(|s| s["streamId"].as_str().map(str::to_owned))
    })
    .await;
    let (gid, link) = wait("the group", &log_path, || {
        let g = sim.groups().into_iter().find(|g| g["subject"] == "Vault")?;
        Some((g["id"].as_str()?.to_owned(), g["inviteLink"].as_str()?.to_owned()))
    })
    .await;
    assert_eq!(sim.tap(JANE, &link)["result"], "requested");
    wait("Jane joined", &log_path, || {
        (bot_messages(&pod, &sid, "+447911123456 joined") > 0).then_some(())
    })
    .await;
    sim.send_as_phone(JANE, Some(&gid), "hello from *Jane*", None).expect("Jane writes");
    wait("Jane's message in the room", &log_path, || {
        (bot_messages(&pod, &sid, "hello from") > 0).then_some(())
    })
    .await;
    pod.expire_sessions();
    pod.post_message(&sid, ALICE, "<messageML>hello from <b>Alice</b></messageML>").expect("chat");
    wait("Alice's message in the group", &log_path, || {
        let g = sim.group(&gid)?;
        g["messages"].to_string().contains("hello from").then_some(())
    })
    .await;
    // Posting went on with new sessions: the old ones were answered 401, the bot logged in again.
    wait("a re-login", &log_path, || (pod.issued_tokens().len() >= 4).then_some(())).await;
    let _ = child.kill().await;

    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(log.lines().count() > 100, "a trace log has lines: {log}");
    assert!(log.contains("TRACE"), "the log is at trace");
    let pem = std::fs::read_to_string(fixture("keys/bot-pkcs8.pem")).expect("key");
    let mut secrets: Vec<(String, String)> = pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.trim().len() >= 16)
        .map(|l| ("a line of the private key".to_owned(), l.trim().to_owned()))
        .collect();
    assert!(secrets.len() > 10, "the key has its body lines");
    for (what, value) in [
        ("the access token", ACCESS_TOKEN),
        ("the app secret", APP_SECRET),
        ("the verify token", VERIFY_TOKEN),
        ("the store's password", STORE_PASSWORD),
    ] {
        secrets.push((what.to_owned(), value.to_owned()));
    }
    let tokens = pod.issued_tokens();
    assert!(tokens.len() >= 4, "sessions and key-manager tokens, twice: {tokens:?}");
    secrets.extend(tokens.into_iter().map(|t| ("a session token".to_owned(), t)));
    let leaks: Vec<String> = log
        .lines()
        .flat_map(|line| {
            secrets
                .iter()
                .filter(|(_, value)| line.contains(value.as_str()))
                .map(move |(what, _)| format!("{what}: {line}"))
        })
        .collect();
    assert!(leaks.is_empty(), "{} log lines carry a secret:\n{}", leaks.len(), leaks.join("\n"));
    eprintln!(
        "secrets: {} log lines searched for {} secrets, none found",
        log.lines().count(),
        secrets.len()
    );
}
