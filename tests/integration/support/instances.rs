//! N instances of the bot as separate processes (the real binary, `wa-groups-bot run`) against
//! one mock pod and one WhatsApp simulator, as several machines behind one load balancer: each
//! instance has its own config file, webhook port and log; the simulator delivers webhooks to
//! all of them round-robin (skipping one that is down); any instance can be SIGKILLed and
//! restarted on the same port and config. Processes are [`BotProcess`]es, as the bench starts
//! them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use wa_groups_bot::bench::BotProcess;
use wa_groups_bot::sandbox::mock_pod::MockPod;
use wa_groups_bot::sandbox::wa_sim::WhatsAppSim;

use super::process::{config_yaml, free_port};

/// Where the instances keep their state.
#[derive(Debug, Clone)]
pub enum InstanceStore {
    /// Each instance its own SQLite file, kept across its restarts (SQLite serves one
    /// instance: several instances on SQLite do not share state).
    Sqlite,
    /// All instances on one database (`store: {url: …}`): PostgreSQL, once that backend is in.
    Url(String),
}

/// How to run the instances.
#[derive(Debug, Clone)]
pub struct InstanceOptions {
    pub count: usize,
    pub store: InstanceStore,
    /// More configuration, appended to each instance's YAML as is (e.g. `entitlements: …`).
    pub extra_yaml: String,
    /// `RUST_LOG` of the processes.
    pub rust_log: String,
    /// Calls are retried for ever (a scenario under faults must give nothing up), not 4 times.
    pub retry_forever: bool,
    /// More environment for every process (e.g. `WAGB__STORE__URL`, `WAGB_CRASH_AT`).
    pub env: Vec<(String, String)>,
}

impl InstanceOptions {
    /// `count` instances, each on its own SQLite file, logging warnings.
    pub fn new(count: usize) -> Self {
        Self {
            count,
            store: InstanceStore::Sqlite,
            extra_yaml: String::new(),
            rust_log: "warn".into(),
            retry_forever: false,
            env: Vec::new(),
        }
    }

    pub fn store(mut self, store: InstanceStore) -> Self {
        self.store = store;
        self
    }
}

struct Slot {
    label: String,
    port: u16,
    config: PathBuf,
    log: PathBuf,
    process: Option<BotProcess>,
}

/// The running instances (killed when dropped: their processes are `kill_on_drop`).
pub struct Instances {
    // Before `dir`: fields drop in order, the processes before their folder.
    slots: Vec<Slot>,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

/// How long an instance may take to answer `/healthz` (the binary starts, logs in, finds its
/// feed): generous, the machine is shared.
const START_TIMEOUT: Duration = Duration::from_secs(60);

impl Instances {
    /// Writes each instance's configuration, tells the simulator every instance's webhook URL,
    /// starts them all and waits until each is healthy.
    pub async fn start(pod: &MockPod, sim: &WhatsAppSim, opts: InstanceOptions) -> Instances {
        assert!(opts.count > 0, "at least one instance");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut slots = Vec::new();
        for i in 0..opts.count {
            let port = free_port();
            let store = match &opts.store {
                InstanceStore::Sqlite => {
                    format!("{{path: \"{}\"}}", dir.path().join(format!("bot-{i}.db")).display())
                }
                InstanceStore::Url(url) => format!("{{url: \"{url}\"}}"),
            };
            let config = dir.path().join(format!("bot-{i}.yaml"));
            let attempts = if opts.retry_forever { -1 } else { 4 };
            std::fs::write(
                &config,
                config_yaml(pod, sim, port, &store, attempts, &opts.extra_yaml),
            )
            .expect("write config");
            slots.push(Slot {
                label: format!("instance {i}"),
                port,
                config,
                log: dir.path().join(format!("bot-{i}.log")),
                process: None,
            });
        }
        let urls: Vec<String> = slots.iter().map(|s| webhook_url(s.port)).collect();
        sim.set_webhook_urls(&urls);
        let mut env = vec![("RUST_LOG".to_owned(), opts.rust_log)];
        env.extend(opts.env);
        let mut instances = Instances { slots, env, dir };
        for i in 0..opts.count {
            instances.spawn(i);
        }
        for i in 0..opts.count {
            instances.wait_healthy(i).await;
        }
        instances
    }

    pub fn count(&self) -> usize {
        self.slots.len()
    }

    /// `http://127.0.0.1:PORT`: instance `i`'s listener (webhook, `/healthz`, `/metrics`).
    pub fn base_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.slots[i].port)
    }

    /// Where the simulator delivers instance `i`'s share of the webhooks.
    pub fn webhook_url(&self, i: usize) -> String {
        webhook_url(self.slots[i].port)
    }

    /// The folder holding the configs, logs and SQLite files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Instance `i`'s log so far (every run of it, appended).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.slots[i].log).unwrap_or_default()
    }

    /// Whether instance `i`'s process runs (not killed, not exited).
    pub fn is_running(&mut self, i: usize) -> bool {
        self.slots[i].process.as_mut().is_some_and(|p| p.exited().is_none())
    }

    /// SIGKILLs instance `i` (nothing cleaned up, as a lost node) and waits until it is gone:
    /// its port then refuses connections.
    pub async fn kill(&mut self, i: usize) {
        let process = self.slots[i].process.take().expect("the instance runs");
        process.kill().await.expect("SIGKILL");
    }

    /// Starts instance `i` again (same config, port and store) and waits until it is healthy.
    pub async fn restart(&mut self, i: usize) {
        assert!(self.slots[i].process.is_none(), "{} still runs", self.slots[i].label);
        self.spawn(i);
        self.wait_healthy(i).await;
    }

    /// Instance `i`'s `/metrics`, or `None` when it does not answer.
    pub async fn metrics(&self, i: usize) -> Option<String> {
        let r = reqwest::get(format!("{}/metrics", self.base_url(i))).await.ok()?;
        r.text().await.ok()
    }

    /// Waits until instance `i` has nothing left in its outbox (before a kill that must not
    /// catch a send in flight, or before counting).
    pub async fn wait_outbox_empty(&mut self, i: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            self.assert_running(i);
            let text = self.metrics(i).await.unwrap_or_default();
            if text.contains("wagb_outbox_effects{state=\"pending\"} 0") {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}'s outbox never emptied:\n{}",
                self.slots[i].label,
                self.log(i)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every running instance (SIGTERM, as a service manager would).
    pub async fn stop_all(mut self) {
        for slot in &mut self.slots {
            if let Some(p) = slot.process.take() {
                p.stop().await;
            }
        }
    }

    fn spawn(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        let args = [std::ffi::OsStr::new("run"), "--config".as_ref(), slot.config.as_os_str()];
        let env: Vec<(&str, &str)> =
            self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let process = BotProcess::spawn(
            &slot.label,
            Path::new(env!("CARGO_BIN_EXE_wa-groups-bot")),
            &args,
            &slot.log,
            &env,
        )
        .expect("start the bot");
        slot.process = Some(process);
    }

    fn assert_running(&mut self, i: usize) {
        let exited = self.slots[i].process.as_mut().map(BotProcess::exited);
        match exited {
            None => panic!("{} is not running", self.slots[i].label),
            Some(Some(status)) => {
                panic!("{} exited ({status}):\n{}", self.slots[i].label, self.log(i))
            }
            Some(None) => {}
        }
    }

    async fn wait_healthy(&mut self, i: usize) {
        let health = format!("{}/healthz", self.base_url(i));
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            self.assert_running(i);
            if reqwest::get(&health).await.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} not healthy within {START_TIMEOUT:?}:\n{}",
                self.slots[i].label,
                self.log(i)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn webhook_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/whatsapp/webhook")
}
