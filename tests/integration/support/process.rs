//! The bot binary as a process (for what needs a kill or a restart): its configuration against
//! the mock pod and the simulator, a free port for its listener, its log beside the config.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use wa_groups_bot::sandbox::mock_pod::MockPod;
use wa_groups_bot::sandbox::wa_sim::WhatsAppSim;

use super::{BOT_USERNAME, WA_PHONE_ID, WA_SECRET, WA_TOKEN, WA_VERIFY, fixture};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A bot process's configuration: the pod and simulator, fast retries, its own webhook port,
/// `store` the YAML of the `store` section (`{path: …}` or `{url: …}`), `extra` appended as is.
pub fn config_yaml(
    pod: &MockPod,
    sim: &WhatsAppSim,
    port: u16,
    store: &str,
    extra: &str,
) -> String {
    format!(
        "scheme: http\nhost: 127.0.0.1\nport: {pod_port}\nreadTimeout: 5000\n\
         bot: {{username: {BOT_USERNAME}, privateKey: {{path: \"{key}\"}}}}\n\
         retry: {{maxAttempts: 4, initialIntervalMillis: 50, multiplier: 2, maxIntervalMillis: 400}}\n\
         datafeed: {{retry: {{maxAttempts: -1, initialIntervalMillis: 50, multiplier: 2, maxIntervalMillis: 400}}}}\n\
         whatsapp: {{apiBaseUrl: \"{sim_url}\", apiVersion: v23.0, phoneNumberId: \"{WA_PHONE_ID}\",\n  \
           accessToken: {WA_TOKEN}, appSecret: {WA_SECRET}, webhook: {{listen: \"127.0.0.1:{port}\", verifyToken: {WA_VERIFY}}}}}\n\
         store: {store}\ntemplates: {{dir: \"{templates}\"}}\n{extra}",
        pod_port = pod.addr().port(),
        key = fixture("keys/bot-pkcs8.pem").display(),
        sim_url = sim.url(),
        templates = fixture("../../templates").display(),
    )
}

/// Writes `dir/bot-config.yaml` for a bot process against `pod` and `sim`, listening on
/// `port`, its SQLite store at `store`; tells the simulator where its webhook is. Returns the
/// path.
pub fn write_config(
    pod: &MockPod,
    sim: &WhatsAppSim,
    dir: &Path,
    port: u16,
    store: &Path,
) -> PathBuf {
    let store = format!("{{path: \"{}\"}}", store.display());
    let config = dir.join("bot-config.yaml");
    std::fs::write(&config, config_yaml(pod, sim, port, &store, "")).expect("config");
    sim.set_webhook_url(&format!("http://127.0.0.1:{port}/whatsapp/webhook"));
    config
}

/// The bot's log, beside its config (appended across restarts).
pub fn log_file(config: &Path) -> Stdio {
    let path = config.with_file_name("bot.log");
    match std::fs::OpenOptions::new().create(true).append(true).open(path) {
        Ok(f) => Stdio::from(f),
        Err(_) => Stdio::null(),
    }
}

/// `wa-groups-bot run --config <config>` (warnings logged beside the config), started by
/// `wrapper` when given (a program and its arguments, the bot's command line appended).
pub fn spawn(config: &Path, wrapper: &[&str], env: &[(&str, &str)]) -> tokio::process::Child {
    let bin = env!("CARGO_BIN_EXE_wa-groups-bot");
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut cmd = tokio::process::Command::new(program);
            cmd.args(args).arg(bin);
            cmd
        }
        None => tokio::process::Command::new(bin),
    };
    cmd.args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log_file(config))
        .kill_on_drop(true);
    cmd.spawn().expect("start the bot")
}

/// Waits until the bot on `port` answers `/healthz` 200 (its feed read, its store writable).
pub async fn healthy(port: u16, config: &Path) {
    let health = format!("http://127.0.0.1:{port}/healthz");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if reqwest::get(&health).await.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            let log = std::fs::read_to_string(config.with_file_name("bot.log")).unwrap_or_default();
            panic!("the bot never became healthy:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `wagb_outbox_effects{state="pending"}` is 0 on the bot's `/metrics`.
pub async fn outbox_empty(port: u16) -> bool {
    let url = format!("http://127.0.0.1:{port}/metrics");
    match reqwest::get(&url).await {
        Ok(r) => {
            r.text().await.unwrap_or_default().contains("wagb_outbox_effects{state=\"pending\"} 0")
        }
        Err(_) => false,
    }
}
