//! The admin's tools over the real binary and a running bot: `check-config` (shipped config,
//! broken config and templates, `--connect` against the mock pod and the WhatsApp simulator),
//! `render`, and the bot's `/healthz` and `/metrics`.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    self, ALICE, BOT, BOT_USERNAME, WA_PHONE_ID, WA_SECRET, WA_TOKEN, fixture, start_pod,
    start_sim, wait_for, wait_for_message,
};

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the binary with `args` and extra environment, without any `WAGB__…` of the caller's.
async fn run_bin(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_wa-groups-bot"));
    cmd.args(args).current_dir(manifest_dir()).kill_on_drop(true);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("WAGB")) {
        cmd.env_remove(key);
    }
    cmd.envs(env.iter().copied());
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the command finishes within 60 s")
        .expect("the command runs")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_passes_on_the_shipped_config_and_never_prints_secrets() {
    let config = manifest_dir().join("bot-config.yaml");
    let key = fixture("keys/bot-pkcs8.pem");
    let out = run_bin(
        &["check-config", "--config", &config.to_string_lossy()],
        &[
            // The shipped file points at a key the admin makes with `keygen`, and wants the
            // secrets from the environment.
            ("WAGB__BOT__PRIVATEKEY__PATH", &key.to_string_lossy()),
            ("WAGB__WHATSAPP__ACCESSTOKEN", "s3cret-access-token"),
            ("WAGB__WHATSAPP__APPSECRET", "s3cret-app-secret"),
            ("WAGB__WHATSAPP__WEBHOOK__VERIFYTOKEN", "s3cret-verify-token"),
        ],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.trim_end().ends_with("configuration OK"), "{stdout}");
    assert!(stdout.contains("pod https://acme.symphony.com"), "{stdout}");
    assert!(stdout.contains("compile and render their sample data"), "{stdout}");
    assert!(!stdout.contains("PROBLEM") && !stdout.contains("warning"), "{stdout}");
    assert!(
        !format!("{stdout}{stderr}").contains("s3cret"),
        "a secret was printed:\n{stdout}{stderr}"
    );
}

/// A copy of the shipped templates in `dir/templates`.
fn copy_templates(dir: &Path) -> PathBuf {
    let to = dir.join("templates");
    for sub in ["symphony", "whatsapp"] {
        std::fs::create_dir_all(to.join(sub)).expect("mkdir");
        for entry in std::fs::read_dir(manifest_dir().join("templates").join(sub)).expect("ls") {
            let entry = entry.expect("entry");
            std::fs::copy(entry.path(), to.join(sub).join(entry.file_name())).expect("copy");
        }
    }
    to
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_lists_every_problem_of_a_broken_config_and_broken_templates_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let templates = copy_templates(dir.path());
    std::fs::remove_file(templates.join("symphony/usage.hbs")).expect("rm");
    std::fs::write(
        templates.join("symphony/help.hbs"),
        "<messageML>{{#each commands}}</messageML>",
    )
    .expect("write");
    std::fs::write(templates.join("whatsapp/renamed.hbs"), "Now called {{title}}").expect("write");
    std::fs::write(templates.join("symphony/refused.hbs"), "<messageML><p>{{reason}}</messageML>")
        .expect("write");
    let config = dir.path().join("bot-config.yaml");
    std::fs::write(
        &config,
        "scheme: ftp\nhost: pod.example.com\nbot: {privateKey: {path: missing.pem}}\n\
         datafeed: {version: v1}\n\
         whatsapp: {apiVersion: '23', webhook: {listen: nowhere, path: /healthz}}\n\
         templates: {dir: ./templates}\n",
    )
    .expect("write config");
    let out =
        run_bin(&["check-config", "--config", &config.to_string_lossy(), "--connect"], &[]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let problems: Vec<&str> = stdout.lines().filter(|l| l.starts_with("PROBLEM")).collect();
    for expected in [
        "pod: scheme must be http or https, not \"ftp\"",
        "bot.username: missing",
        "bot.privateKey.path: cannot read",
        "datafeed.version: only v2 is supported",
        "whatsapp.apiVersion: \"23\" is not a Graph version",
        "whatsapp.webhook.listen: \"nowhere\" is not HOST:PORT",
        "whatsapp.webhook.path: \"/healthz\" is taken by the monitoring endpoint",
        "template symphony/usage: file",
        "template symphony/help does not compile",
        "template whatsapp/renamed failed to render",
        "template symphony/refused renders MessageML the agent would refuse",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "missing {expected:?} among the problems:\n{stdout}"
        );
    }
    assert!(
        stdout.trim_end().ends_with(&format!("{} problems", problems.len())),
        "the summary counts them:\n{stdout}"
    );
    assert!(stdout.contains("--connect skipped"), "{stdout}");
}

/// A configuration against `pod` and `sim` written into `dir`, with `key` (a fixture).
fn connect_config(dir: &Path, pod: &str, sim: &str, key: &str) -> PathBuf {
    let config = dir.join("bot-config.yaml");
    std::fs::write(
        &config,
        format!(
            "scheme: http\nhost: 127.0.0.1\nport: {port}\n\
             bot: {{username: {BOT_USERNAME}, privateKey: {{path: {key}}}}}\n\
             whatsapp: {{apiBaseUrl: \"{sim}\", phoneNumberId: \"{WA_PHONE_ID}\", accessToken: {WA_TOKEN},\n  \
               appSecret: {WA_SECRET}, webhook: {{listen: \"127.0.0.1:0\", verifyToken: v}}}}\n\
             templates: {{dir: {templates}}}\n",
            port = pod.rsplit(':').next().expect("port"),
            key = fixture(key).display(),
            templates = manifest_dir().join("templates").display(),
        ),
    )
    .expect("write config");
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_connect_logs_in_and_reads_the_business_number() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = connect_config(dir.path(), &pod.url(), &sim.url(), "keys/bot-pkcs8.pem");
    let out =
        run_bin(&["check-config", "--config", &config.to_string_lossy(), "--connect"], &[]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for expected in [
        "ok       pod login at http://127.0.0.1:",
        "ok       key manager login at http://127.0.0.1:",
        &format!(
            "ok       sessioninfo: signed in as \"WA Test Bot\" (user {BOT}, username \"{BOT_USERNAME}\")"
        ),
        &format!("phone number id {WA_PHONE_ID} is the business number +"),
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
    assert!(!format!("{stdout}{stderr}").contains(WA_TOKEN), "the access token was printed");
    assert!(!format!("{stdout}{stderr}").contains(WA_SECRET), "the app secret was printed");
    let stats = pod.stats();
    assert!(stats.session_logins == 1 && stats.key_manager_logins == 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_connect_with_a_key_the_pod_does_not_know_fails_clearly() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = connect_config(dir.path(), &pod.url(), &sim.url(), "keys/other-pkcs8.pem");
    let out =
        run_bin(&["check-config", "--config", &config.to_string_lossy(), "--connect"], &[]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let problem = stdout
        .lines()
        .find(|l| l.starts_with("PROBLEM  pod login"))
        .unwrap_or_else(|| panic!("no pod login problem in:\n{stdout}"));
    assert!(
        problem.contains("refused to authenticate service account")
            && problem.contains("public key is imported"),
        "{problem}"
    );
    assert!(stdout.contains("PROBLEM  key manager login"), "{stdout}");
    assert!(!stdout.contains("sessioninfo"), "no session, no sessioninfo:\n{stdout}");
    assert!(stdout.contains("is the business number"), "the Graph check still ran:\n{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn render_previews_a_template_or_says_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data.json");
    std::fs::write(&data, r#"{"name": "Deal & Co <EU>", "invited": ["+447911123456"]}"#)
        .expect("write");
    let templates = manifest_dir().join("templates");
    let templates = templates.to_string_lossy();
    let data_arg = data.to_string_lossy();
    let render = |name: &'static str, data: String| {
        let templates = templates.to_string();
        async move { run_bin(&["render", name, "--data", &data, "--templates", &templates], &[]).await }
    };

    let out = render("symphony/group_ready", data_arg.to_string()).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.starts_with("<messageML>"), "{stdout}");
    assert!(stdout.contains("<b>Deal &amp; Co &lt;EU&gt;</b>"), "escaped: {stdout}");
    assert!(stdout.contains("Invited, pending: +447911123456"), "{stdout}");

    let out = render("symphony/group_redy", data_arg.to_string()).await;
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no template named \"symphony/group_redy\"")
            && stderr.contains("symphony/group_ready")
            && stderr.contains("whatsapp/renamed"),
        "the names are listed: {stderr}"
    );

    let out = render("whatsapp/owner_promoted", data_arg.to_string()).await;
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("whatsapp/owner_promoted failed to render"), "strict: {stderr}");
    assert!(stderr.contains("advisor"), "names the missing field: {stderr}");

    std::fs::write(&data, "{\"name\": ").expect("write");
    let out = render("whatsapp/renamed", data_arg.to_string()).await;
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("is not JSON"), "{stderr}");
}

/// The value of one sample line of a `/metrics` text (`series` = name with its labels).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, String) {
    let resp = http.get(url).send().await.expect("GET");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_bot_reports_its_health_and_counts_what_it_does() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = support::start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let base = format!("http://{}", bot.http_addr);
    assert_eq!(bot.webhook_addr, Some(bot.http_addr), "one listener");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("http");

    let (status, body) = get(&http, &format!("{base}/healthz")).await;
    assert_eq!(status, 200, "{body}");
    let health: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["datafeed"]["ok"], true, "{health}");
    assert_eq!(health["store"]["ok"], true, "{health}");

    let (status, before) = get(&http, &format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    assert!(before.contains("# TYPE wagb_commands_total counter"), "{before}");
    assert_eq!(sample(&before, "wagb_commands_total{command=\"help\"}"), None);
    let whatsapp_events = "wagb_inbound_events_total{source=\"whatsapp\"}";
    assert_eq!(sample(&before, whatsapp_events), Some(0.0), "{before}");

    // An advisor asks for help; a contact writes to the business (a signed webhook).
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    pod.post_message(&im, ALICE, "<messageML>/wa help</messageML>").expect("post");
    wait_for_message(&pod, &im, BOT, |t| t.contains("/wa rename")).await;
    sim.send_as_phone("447911123456", None, "Hello", None).expect("phone writes");
    let after = wait_for("the counters to move", Duration::from_secs(15), || {
        let http = http.clone();
        let url = format!("{base}/metrics");
        async move {
            let (_, text) = get(&http, &url).await;
            let moved = sample(&text, "wagb_commands_total{command=\"help\"}") == Some(1.0)
                && sample(&text, whatsapp_events).is_some_and(|n| n >= 1.0);
            moved.then_some(text)
        }
    })
    .await;
    assert!(
        sample(&after, "wagb_inbound_events_total{source=\"symphony\"}").is_some_and(|n| n >= 1.0)
    );
    assert!(sample(&after, "wagb_datafeed_reads_total").is_some_and(|n| n >= 1.0), "{after}");
    assert!(sample(&after, "wagb_outbox_effects{state=\"pending\"}").is_some(), "{after}");
    assert_eq!(sample(&after, "wagb_outbox_effects{state=\"failed\"}"), Some(0.0), "{after}");

    // The datafeed stops being read: its reads fail for a while (about 15 s of backoffs).
    pod.inject_fault(Some("POST"), r"^/agent/v5/datafeeds/[^/]+/read$", 503, None, 40)
        .expect("fault");
    let unhealthy =
        wait_for("/healthz to say the datafeed is down", Duration::from_secs(15), || {
            let http = http.clone();
            let url = format!("{base}/healthz");
            async move {
                let (status, body) = get(&http, &url).await;
                (status == 503).then_some(body)
            }
        })
        .await;
    let health: Value = serde_json::from_str(&unhealthy).expect("json");
    assert_eq!(health["status"], "unhealthy", "{health}");
    assert_eq!(health["datafeed"]["ok"], false, "{health}");
    assert_eq!(health["store"]["ok"], true, "{health}");
    assert!(
        health["problems"][0].as_str().is_some_and(|p| p.starts_with("datafeed: no read answered")),
        "{health}"
    );
    let (_, text) = get(&http, &format!("{base}/metrics")).await;
    let errors = "wagb_api_errors_total{client=\"symphony\",endpoint=\"POST /agent/v5/datafeeds/{id}/read\",status=\"503\"}";
    assert!(sample(&text, errors).is_some_and(|n| n >= 1.0), "{text}");
    // The faults run out: the loop reads again and the bot is healthy again.
    wait_for("/healthz to recover", Duration::from_secs(40), || {
        let http = http.clone();
        let url = format!("{base}/healthz");
        async move { (get(&http, &url).await.0 == 200).then_some(()) }
    })
    .await;

    // Another process holds the store's write lock: the store cannot take writes.
    let locker = rusqlite::Connection::open(dir.path().join("bot.db")).expect("open the store");
    locker.execute_batch("BEGIN IMMEDIATE").expect("take the write lock");
    let (status, body) = get(&http, &format!("{base}/healthz")).await;
    assert_eq!(status, 503, "{body}");
    let health: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(health["store"]["ok"], false, "{health}");
    assert!(health["store"]["error"].as_str().is_some_and(|e| e.contains("locked")), "{health}");
    locker.execute_batch("ROLLBACK").expect("release");
    let (status, body) = get(&http, &format!("{base}/healthz")).await;
    assert_eq!(status, 200, "{body}");
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_app_secret_the_listener_serves_only_health_and_metrics() {
    let pod = start_pod().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = support::start_bot(&pod, dir.path()).await;
    assert_eq!(bot.webhook_addr, None);
    let base = format!("http://{}", bot.http_addr);
    let http = reqwest::Client::new();
    assert_eq!(get(&http, &format!("{base}/healthz")).await.0, 200);
    let (status, metrics) = get(&http, &format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    assert!(metrics.contains("# TYPE wagb_inbound_events_total counter"), "{metrics}");
    let hook = http.post(format!("{base}/whatsapp/webhook")).body("{}").send().await.expect("post");
    assert_eq!(hook.status().as_u16(), 404, "no webhook receiver without an app secret");
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_reports_every_badly_typed_key_and_every_missing_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bot-config.yaml");
    std::fs::write(
        &config,
        format!(
            "host: pod.example.com\nport: notaport\nreadTimeout: soon\n\
             features: {{nativeGroups: maybe}}\n\
             entitlements: {{advisors: [8100002, 8100003]}}\n\
             templates: {{dir: {}}}\n",
            manifest_dir().join("templates").display()
        ),
    )
    .expect("write config");
    let out = run_bin(&["check-config", "--config", &config.to_string_lossy()], &[]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let problems: Vec<&str> = stdout.lines().filter(|l| l.starts_with("PROBLEM")).collect();
    assert_eq!(
        problems,
        [
            "PROBLEM  features.nativeGroups: expected true or false, got \"maybe\"",
            "PROBLEM  port: expected a port number (0 to 65535), got \"notaport\"",
            "PROBLEM  readTimeout: expected a whole number of milliseconds, got \"soon\"",
            "PROBLEM  bot.username: missing (the bot's service-account username)",
            "PROBLEM  bot.privateKey.path: missing (path to the bot's RSA private key)",
        ],
        "{stdout}"
    );
    assert!(stdout.trim_end().ends_with("5 problems"), "{stdout}");
    assert!(stdout.contains("compile and render their sample data"), "templates checked: {stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_never_shows_a_secret_of_the_wrong_type() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bot-config.yaml");
    std::fs::write(
        &config,
        format!(
            "host: pod.example.com\n\
             bot: {{username: b, privateKey: \"-----BEGIN PRIVATE KEY----- MIIEs3cret\"}}\n\
             whatsapp: {{accessToken: 4242.4242, appSecret: [s3cret-app], webhook: {{verifyToken: {{v: s3cret-verify}}}}}}\n\
             logging: {{format: xml}}\ntemplates: {{dir: {}}}\n",
            manifest_dir().join("templates").display()
        ),
    )
    .expect("write config");
    // A numeric secret in the environment is a secret like any other (taken as written, never
    // shown); those of the wrong type in the file are reported without their values.
    let out = run_bin(
        &["check-config", "--config", &config.to_string_lossy()],
        &[("WAGB__WHATSAPP__WEBHOOK__VERIFYTOKEN", "0098765")],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for expected in [
        "PROBLEM  bot.privateKey: expected a section (a map of keys) (the value is not shown",
        "PROBLEM  whatsapp.accessToken: expected a string (the value is not shown",
        "PROBLEM  whatsapp.appSecret: expected a string (the value is not shown",
        "PROBLEM  logging.format: \"xml\" is not a log format (text or json)",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("verifyToken"), "the numeric verify token is fine: {stdout}");
    assert_eq!(stdout.matches("PROBLEM").count(), 4, "{stdout}");
    let all = format!("{stdout}{stderr}");
    for secret in ["s3cret", "98765", "4242"] {
        assert!(!all.contains(secret), "{secret} was printed:\n{all}");
    }
}

/// SQLite takes one bot instance: a second one on the same store refuses to start and says
/// what to do, while admin commands still open the store; once the first stops, it starts.
#[tokio::test]
async fn a_second_instance_on_one_sqlite_store_refuses_to_start() {
    let pod = start_pod().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let first = support::start_bot(&pod, dir.path()).await;

    let config = support::bot_config(&pod, dir.path(), "keys/bot-pkcs8.pem");
    let templates = || wa_groups_bot::templates::Templates::embedded().expect("templates");
    let second = wa_groups_bot::app::Bot::start(
        config.clone(),
        templates(),
        tokio_util::sync::CancellationToken::new(),
    )
    .await;
    let Err(refused) = second else { panic!("a second instance started on the same store") };
    let said = refused.to_string();
    assert!(
        said.contains("another wa-groups-bot instance") && said.contains("store.url"),
        "{said}"
    );
    // The admin's tools are not instances: they open the store meanwhile.
    let store = wa_groups_bot::store::Store::open(&dir.path().join("bot.db")).expect("opens");
    assert_eq!(store.count_failed_inbound().expect("reads"), 0);

    first.stop().await;
    let again = wa_groups_bot::app::Bot::start(
        config,
        templates(),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect("starts once the first instance stopped");
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_connect_opens_the_postgresql_store_and_reports_its_schema_version() {
    use wa_groups_bot::store::{PostgresStore, throwaway};
    let Some(db) = throwaway::database("check_config_connect_opens_the_postgresql_store") else {
        return;
    };
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = connect_config(dir.path(), &pod.url(), &sim.url(), "keys/bot-pkcs8.pem");
    // A password in the URL (the test cluster trusts loopback and ignores it): never printed.
    let mut url = url::Url::parse(db.url()).expect("url");
    if url.password().is_none() {
        url.set_password(Some("pg-pa55-7d1")).expect("password");
    }
    let secret = url.password().expect("password").to_owned();
    let env = [("WAGB__STORE__URL", url.as_str())];
    let args = ["check-config", "--config", &config.to_string_lossy(), "--connect"];

    let out = run_bin(&args, &env).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let known = PostgresStore::known_schema_version();
    assert!(stdout.contains("PostgreSQL store at postgres://"), "{stdout}");
    assert!(stdout.contains("store: PostgreSQL at postgres://postgres:***@127.0.0.1:"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "connected; no schema yet (the first instance to start creates it, version {known})"
        )),
        "{stdout}"
    );

    // Once an instance has started (migrated), the version is reported.
    let store = PostgresStore::open(&db.options()).expect("open");
    drop(store);
    let out = run_bin(&args, &env).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains(&format!("connected, schema version {known}")), "{stdout}");
    assert!(!format!("{stdout}{stderr}").contains(&secret), "the password was printed:\n{stdout}");

    // A database that cannot be reached is a problem, named without the password.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let down = format!("postgres://wagb:{secret}@127.0.0.1:{port}/wagb?sslmode=disable");
    let out = run_bin(&args, &[("WAGB__STORE__URL", down.as_str())]).await;
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains(
            "PostgreSQL store: cannot connect to the PostgreSQL store postgres://wagb:***@127.0.0.1"
        ),
        "{stdout}"
    );
    assert!(!format!("{stdout}{stderr}").contains(&secret), "the password was printed:\n{stdout}");
}
