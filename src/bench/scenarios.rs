//! The scenarios: each builds a fresh world (mock pod and simulator in this process, observed),
//! starts the bot under measurement as a process, drives it and reads what it cost.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedReceiver;

mod instances;
pub use instances::p5;

use super::process::BotProcess;
use super::{BenchError, BenchOptions, Report, Row, percentile_ms};
use crate::sandbox::mock_pod::{MockPod, MockPodConfig, MockUser, PodObservation, UserKind};
use crate::sandbox::wa_sim::{SentObservation, WhatsAppSim, WhatsAppSimConfig};

const BOT: i64 = 9001;
const BDK: i64 = 9100;
const ALICE: i64 = 9002;
/// Advisors added by P2's create (Bob and three more).
const ADVISORS: [i64; 4] = [9003, 9004, 9005, 9006];
/// People writing `/wa help` to the bot in P1, one IM each.
const IM_USERS: std::ops::Range<i64> = 9010..9030;
const BOT_USERNAME: &str = "bench-bot";
const WA_TOKEN: &str = "bench-access-token";
const WA_SECRET: &str = "bench-app-secret";
const WA_PHONE_ID: &str = "106540352242922";
const HELP: &str = "<messageML>/wa help</messageML>";
/// How long a scenario waits with nothing happening before it gives up.
const STALL: Duration = Duration::from_secs(30);

fn setup(e: impl std::fmt::Display) -> BenchError {
    BenchError::Setup(e.to_string())
}

/// A temporary folder for the run, removed at the end (unless kept).
pub struct WorkDir(PathBuf, bool);

impl WorkDir {
    pub fn new() -> Result<Self, BenchError> {
        let dir = std::env::temp_dir().join(format!(
            "wagb-bench-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| BenchError::Io(format!("{}: {e}", dir.display())))?;
        Ok(Self(dir, false))
    }

    /// Keeps the folder after the run (the soak keeps it when it found a violation).
    pub fn keep(&mut self) {
        self.1 = true;
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A fresh sub-folder for one run.
    pub(crate) fn sub(&self, name: &str) -> Result<PathBuf, BenchError> {
        let dir = self.0.join(name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| BenchError::Io(format!("{}: {e}", dir.display())))?;
        Ok(dir)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        // WAGB_BENCH_KEEP=1 keeps the bots' logs and stores for a look.
        if self.1 {
            return; // kept on purpose: the caller says where
        }
        if std::env::var_os("WAGB_BENCH_KEEP").is_some() {
            eprintln!("bench: kept {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One key pair for every bot of the run (ours and the BDK's log in as different users).
pub struct Keys {
    private: PathBuf,
    public_pem: String,
}

impl Keys {
    pub fn new(dir: &Path) -> Result<Self, BenchError> {
        let pair = crate::keys::generate(2048).map_err(setup)?;
        let private = dir.join("bot-private.pem");
        std::fs::write(&private, &pair.private_pem)
            .map_err(|e| BenchError::Io(format!("{}: {e}", private.display())))?;
        Ok(Self { private, public_pem: pair.public_pem })
    }
}

/// The templates a bot binary loads: its repository's folder, else the shipped ones written out.
pub fn templates_for(binary: &Path, work: &Path) -> Result<PathBuf, BenchError> {
    if let Some(found) = super::templates_near(binary) {
        return Ok(found);
    }
    let dir = work.join("templates");
    crate::templates::write_embedded(&dir).map_err(|e| BenchError::Io(e.to_string()))?;
    Ok(dir)
}

fn user(id: i64, username: &str, name: &str, kind: UserKind, key: Option<&str>) -> MockUser {
    MockUser {
        id,
        username: username.into(),
        display_name: name.into(),
        email: format!("{username}@example.com"),
        kind,
        public_key_pem: key.map(str::to_owned),
    }
}

/// A mock pod and a simulator, observed (the benchmark's and the soak's world).
pub(crate) struct World {
    pub(crate) dir: PathBuf,
    pub(crate) pod: Arc<MockPod>,
    pub(crate) sim: Arc<WhatsAppSim>,
    posts: UnboundedReceiver<PodObservation>,
    sent: UnboundedReceiver<SentObservation>,
    pub(crate) webhook_port: u16,
    /// `retry.maxAttempts` of the bot's configuration.
    pub(crate) retry_attempts: u32,
}

/// The people of a world: the bot, Alice and the advisors (ids and display names).
pub(crate) const WORLD_BOT: i64 = BOT;
pub(crate) fn world_advisors() -> Vec<(i64, String)> {
    let mut all = vec![(ALICE, "Alice Ng".to_owned())];
    all.extend(ADVISORS.iter().enumerate().map(|(i, id)| (*id, format!("Advisor {i}"))));
    all
}

impl World {
    async fn new(
        work: &WorkDir,
        name: &str,
        keys: &Keys,
        latency: Duration,
    ) -> Result<Self, BenchError> {
        Self::with(work, name, keys, |pod, sim| {
            pod.latency = latency;
            sim.latency = latency;
        })
        .await
    }

    /// A world whose mock pod and simulator are set up by `tweak` first.
    pub(crate) async fn with(
        work: &WorkDir,
        name: &str,
        keys: &Keys,
        tweak: impl FnOnce(&mut MockPodConfig, &mut WhatsAppSimConfig),
    ) -> Result<Self, BenchError> {
        let dir = work.sub(name)?;
        let key = Some(keys.public_pem.as_str());
        let mut users = vec![
            user(BOT, BOT_USERNAME, "Bench Bot", UserKind::Bot, key),
            user(BDK, "bench-bdk", "BDK Echo", UserKind::Bot, key),
            user(ALICE, "alice", "Alice Ng", UserKind::Normal, None),
        ];
        for (i, id) in ADVISORS.iter().enumerate() {
            users.push(user(
                *id,
                &format!("adv{i}"),
                &format!("Advisor {i}"),
                UserKind::Normal,
                None,
            ));
        }
        for id in IM_USERS {
            users.push(user(id, &format!("u{id}"), &format!("User {id}"), UserKind::Normal, None));
        }
        let mut pod_cfg = MockPodConfig::new(users);
        pod_cfg.datafeed_hold = Duration::from_secs(2);
        let mut sim_cfg = WhatsAppSimConfig::new(WA_TOKEN, WA_SECRET, WA_PHONE_ID);
        sim_cfg.webhook_retry_initial = Duration::from_millis(50);
        tweak(&mut pod_cfg, &mut sim_cfg);
        let pod = MockPod::start(pod_cfg).await.map_err(setup)?;
        let sim = WhatsAppSim::start(sim_cfg).await.map_err(setup)?;
        let webhook_port = free_port()?;
        sim.set_webhook_url(&format!("http://127.0.0.1:{webhook_port}/whatsapp/webhook"));
        let posts = pod.observe();
        let sent = sim.observe();
        Ok(Self {
            dir,
            pod: Arc::new(pod),
            sim: Arc::new(sim),
            posts,
            sent,
            webhook_port,
            retry_attempts: 6,
        })
    }

    /// Writes the bot's configuration (store in `store`).
    pub(crate) fn bot_config(
        &self,
        keys: &Keys,
        templates: &Path,
        store: &Path,
    ) -> Result<PathBuf, BenchError> {
        let store = format!("{{path: \"{}\"}}", store.display());
        self.bot_config_at(keys, templates, &store, self.webhook_port, "bot-config.yaml")
    }

    /// Writes a bot's configuration named `file`: `store` is the YAML of its `store` section
    /// (`{path: …}` or `{url: …}`), `port` its webhook listener's.
    pub(crate) fn bot_config_at(
        &self,
        keys: &Keys,
        templates: &Path,
        store: &str,
        port: u16,
        file: &str,
    ) -> Result<PathBuf, BenchError> {
        let yaml = format!(
            "scheme: http\nhost: 127.0.0.1\nport: {pod_port}\nreadTimeout: 10000\n\
             bot: {{username: {BOT_USERNAME}, privateKey: {{path: \"{key}\"}}}}\n\
             retry: {{maxAttempts: {attempts}, initialIntervalMillis: 50, multiplier: 2, maxIntervalMillis: 400}}\n\
             datafeed: {{retry: {{maxAttempts: -1, initialIntervalMillis: 50, multiplier: 2, maxIntervalMillis: 400}}}}\n\
             whatsapp: {{apiBaseUrl: \"{sim_url}\", apiVersion: v23.0, phoneNumberId: \"{WA_PHONE_ID}\",\n  \
               accessToken: {WA_TOKEN}, appSecret: {WA_SECRET}, webhook: {{listen: \"127.0.0.1:{port}\", verifyToken: bench}}}}\n\
             store: {store}\ntemplates: {{dir: \"{templates}\"}}\n",
            pod_port = self.pod.addr().port(),
            key = keys.private.display(),
            sim_url = self.sim.url(),
            templates = templates.display(),
            attempts = self.retry_attempts,
        );
        let path = self.dir.join(file);
        std::fs::write(&path, yaml).map_err(|e| BenchError::Io(e.to_string()))?;
        Ok(path)
    }

    /// Starts a bot binary; returns it once its first datafeed read came, with how long that took.
    async fn start_bot(
        &mut self,
        label: &str,
        binary: &Path,
        keys: &Keys,
        templates: &Path,
        store: &Path,
    ) -> Result<(BotProcess, Duration), BenchError> {
        let config = self.bot_config(keys, templates, store)?;
        let log = self.dir.join("bot.log");
        let args = [std::ffi::OsStr::new("run"), "--config".as_ref(), config.as_os_str()];
        // `WAGB_BENCH_RUST_LOG` (e.g. `wa_groups_bot=debug`) shows where a scenario's time goes.
        let filter = std::env::var("WAGB_BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into());
        let bot = BotProcess::spawn(label, binary, &args, &log, &[("RUST_LOG", filter.as_str())])?;
        let up = self.first_read(BOT, &mut Some(bot)).await;
        up.map_err(|e| BenchError::Setup(format!("{e} (log: {})", log.display())))
    }

    /// Starts the Python BDK's echo bot.
    async fn start_bdk(
        &mut self,
        python: &Path,
        keys: &Keys,
    ) -> Result<(BotProcess, Duration), BenchError> {
        let config = self.dir.join("bdk-config.yaml");
        let yaml = format!(
            "scheme: http\nhost: 127.0.0.1\nport: {}\nbot:\n  username: bench-bdk\n  privateKey:\n    path: {}\n\
             datafeed:\n  version: v2\n",
            self.pod.addr().port(),
            keys.private.display()
        );
        std::fs::write(&config, yaml).map_err(|e| BenchError::Io(e.to_string()))?;
        let script = self.dir.join("bdk_echo.py");
        std::fs::write(&script, include_str!("bdk_echo.py"))
            .map_err(|e| BenchError::Io(e.to_string()))?;
        let log = self.dir.join("bdk.log");
        let args = [script.as_os_str(), config.as_os_str()];
        let bot = BotProcess::spawn("Python BDK echo", python, &args, &log, &[])?;
        let up = self.first_read(BDK, &mut Some(bot)).await;
        up.map_err(|e| BenchError::Setup(format!("{e} (log: {})", log.display())))
    }

    /// Waits for `user`'s first datafeed read.
    async fn first_read(
        &mut self,
        user: i64,
        bot: &mut Option<BotProcess>,
    ) -> Result<(BotProcess, Duration), BenchError> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let Some(proc) = bot.as_mut() else { return Err(setup("no bot")) };
            if let Some(status) = proc.exited() {
                return Err(setup(format!(
                    "{} exited before reading its datafeed ({status})",
                    proc.label
                )));
            }
            match tokio::time::timeout(Duration::from_millis(200), self.posts.recv()).await {
                Ok(Some(PodObservation::FeedRead { user: u, at })) if u == user => {
                    let proc = bot.take().ok_or_else(|| setup("no bot"))?;
                    let took = at.saturating_duration_since(proc.spawned_at);
                    return Ok((proc, took));
                }
                Ok(None) => return Err(setup("the pod stopped")),
                _ => {}
            }
            if Instant::now() > deadline {
                return Err(setup("the bot did not read its datafeed within 90 s"));
            }
        }
    }

    /// Drops the observations so far.
    pub(crate) fn drain(&mut self) {
        while self.posts.try_recv().is_ok() {}
        while self.sent.try_recv().is_ok() {}
    }

    pub(crate) async fn shutdown(self) {
        drop(self.posts);
        drop(self.sent);
        if let Ok(pod) = Arc::try_unwrap(self.pod) {
            pod.shutdown().await;
        }
        if let Ok(sim) = Arc::try_unwrap(self.sim) {
            sim.shutdown().await;
        }
    }
}

fn free_port() -> Result<u16, BenchError> {
    let l =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| BenchError::Io(e.to_string()))?;
    Ok(l.local_addr().map_err(|e| BenchError::Io(e.to_string()))?.port())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn sorted(mut d: Vec<Duration>) -> Vec<Duration> {
    d.sort();
    d
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// ----------------------------------------------------------------------------------------------
// P1: a burst of /wa help

/// The CPU time the bots used so far, together.
pub(crate) fn cpu_of(bots: &[&BotProcess]) -> Result<Duration, BenchError> {
    bots.iter().try_fold(Duration::ZERO, |sum, bot| Ok(sum + bot.cpu()?))
}

/// Waits until the bots have finished starting: their first datafeed read can come before the
/// rest of their start (the bot looks its WhatsApp number up meanwhile, which loads the phone
/// number metadata: ~100 ms of CPU), which is not a burst's cost. Settled: under 1 ms of CPU in
/// 50 ms; given up after 5 s (the burst is then measured as it is).
pub(crate) async fn settle(bots: &[&BotProcess]) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut before = cpu_of(bots)?;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = cpu_of(bots)?;
        if now.saturating_sub(before) < Duration::from_millis(1) {
            return Ok(());
        }
        before = now;
    }
    Ok(())
}

/// What one burst measured.
pub(crate) struct Burst {
    pub(crate) answered: usize,
    /// IMs where the answers were not exactly one per command.
    pub(crate) wrong_ims: usize,
    pub(crate) elapsed: Duration,
    pub(crate) cpu: Duration,
    pub(crate) latencies: Vec<Duration>,
    pub(crate) peak_kib: u64,
}

/// Posts `n` `/wa help` round-robin in the IMs as fast as the pod takes them, then waits for the
/// answers of `bot_user`; each IM's k-th answer is its k-th command's.
pub(crate) async fn burst(
    world: &mut World,
    bots: &[&BotProcess],
    bot_user: i64,
    ims: &[(String, i64)],
    n: usize,
) -> Result<Burst, BenchError> {
    settle(bots).await?;
    world.drain();
    let cpu0 = cpu_of(bots)?;
    let mut posted: HashMap<String, Vec<Instant>> = HashMap::new();
    let start = Instant::now();
    for i in 0..n {
        let (im, user) = &ims[i % ims.len()];
        posted.entry(im.clone()).or_default().push(Instant::now());
        world.pod.post_message(im, *user, HELP).map_err(setup)?;
        if i % 64 == 63 {
            tokio::task::yield_now().await;
        }
    }
    let mut answers: HashMap<String, Vec<Instant>> = HashMap::new();
    let mut answered = 0;
    let mut last = start;
    let mut cpu_end = None;
    loop {
        let wait = if answered >= n { Duration::from_millis(300) } else { STALL };
        match tokio::time::timeout(wait, world.posts.recv()).await {
            Ok(Some(PodObservation::Posted { stream, user, at, .. })) if user == bot_user => {
                answers.entry(stream).or_default().push(at);
                answered += 1;
                last = last.max(at);
                if answered == n {
                    cpu_end = Some(cpu_of(bots)?);
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let cpu = cpu_end.map_or_else(|| cpu_of(bots), Ok)?.saturating_sub(cpu0);
    let mut latencies = Vec::with_capacity(n);
    let mut wrong_ims = 0;
    for (im, sent) in &posted {
        let got = answers.get(im).map_or(&[][..], Vec::as_slice);
        if got.len() != sent.len() {
            wrong_ims += 1;
        }
        latencies.extend(sent.iter().zip(got).map(|(s, a)| a.saturating_duration_since(*s)));
    }
    let mut peak_kib = 0;
    for bot in bots {
        peak_kib = peak_kib.max(bot.rss_kib()?.1);
    }
    Ok(Burst {
        answered,
        wrong_ims,
        elapsed: last.saturating_duration_since(start),
        cpu,
        latencies: sorted(latencies),
        peak_kib,
    })
}

/// The Python of a venv with the official BDK: the one given, the interop tests' one, or one
/// built the same way. `Err` says why there is none.
fn bdk_python(opts: &BenchOptions) -> Result<PathBuf, String> {
    if let Some(p) = &opts.python {
        return Ok(p.clone());
    }
    const BDK_REQ: &str = "symphony-bdk-python==3.0.0";
    let roots: Vec<PathBuf> = opts
        .bot
        .ancestors()
        .filter(|a| a.join("Cargo.toml").is_file())
        .map(Path::to_path_buf)
        .chain(std::env::current_dir().ok())
        .collect();
    for root in &roots {
        let venv = root.join("target/py-venvs/symphony-bdk");
        if std::fs::read_to_string(venv.join(".installed")).is_ok_and(|s| s == BDK_REQ) {
            return Ok(venv.join("bin/python"));
        }
    }
    let root = roots.first().ok_or("no folder for a venv")?;
    let venv = root.join("target/py-venvs/symphony-bdk");
    let python = venv.join("bin/python");
    let run = |cmd: &mut std::process::Command, what: &str| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
    };
    if !python.exists() {
        run(
            std::process::Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv",
        )?;
    }
    run(
        std::process::Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            BDK_REQ,
        ]),
        "pip install symphony-bdk-python",
    )?;
    std::fs::write(venv.join(".installed"), BDK_REQ).map_err(|e| e.to_string())?;
    Ok(python)
}

/// Which bot a P1 run measures.
enum Subject<'a> {
    Ours { label: &'a str, binary: &'a Path, templates: &'a Path },
    Bdk(&'a Path),
}

pub async fn p1(
    opts: &BenchOptions,
    work: &WorkDir,
    keys: &Keys,
    templates: &Path,
    report: &mut Report,
) -> Result<(), BenchError> {
    let python = bdk_python(opts);
    let baseline_templates: Vec<PathBuf> = opts
        .baselines
        .iter()
        .map(|(_, b)| templates_for(b, work.path()))
        .collect::<Result<_, _>>()?;
    let mut subjects = vec![Subject::Ours { label: "this build", binary: &opts.bot, templates }];
    for ((label, binary), templates) in opts.baselines.iter().zip(&baseline_templates) {
        subjects.push(Subject::Ours { label, binary, templates });
    }
    match &python {
        Ok(p) => subjects.push(Subject::Bdk(p)),
        Err(why) => {
            report.notes.push(format!("P1: the Python BDK echo bot was not measured: {why}"))
        }
    }
    // cost per command, by (subject, size)
    let mut cost: HashMap<(usize, usize), f64> = HashMap::new();
    for &n in &opts.p1_sizes {
        for (s, subject) in subjects.iter().enumerate() {
            let name = format!("p1-{s}-{n}");
            let mut world = World::new(work, &name, keys, Duration::ZERO).await?;
            let bot_user = if matches!(subject, Subject::Bdk(_)) { BDK } else { BOT };
            let mut ims = Vec::new();
            for u in IM_USERS {
                ims.push((world.pod.create_im(&[u, bot_user]).map_err(setup)?, u));
            }
            let (bot, label) = match subject {
                Subject::Ours { label, binary, templates } => {
                    let store = world.dir.join("bot.db");
                    (
                        world.start_bot(label, binary, keys, templates, &store).await?.0,
                        (*label).to_owned(),
                    )
                }
                Subject::Bdk(python) => {
                    (world.start_bdk(python, keys).await?.0, "Python BDK echo".to_owned())
                }
            };
            let result = burst(&mut world, &[&bot], bot_user, &ims, n).await;
            bot.stop().await;
            world.shutdown().await;
            let b = result?;
            let per = b.cpu.as_secs_f64() * 1e6 / n as f64;
            cost.insert((s, n), per);
            report.rows.push(Row {
                scenario: "P1 /wa help burst".into(),
                bot: label.clone(),
                size: thousands(n),
                throughput: Some(n as f64 / b.elapsed.as_secs_f64().max(1e-9)),
                cpu_us: Some(per),
                p50_ms: percentile_ms(&b.latencies, 50.0),
                p99_ms: percentile_ms(&b.latencies, 99.0),
                peak_rss_mib: Some(mib(b.peak_kib)),
                note: format!("answered {}/{n}", b.answered),
            });
            report.check(
                format!("P1 {label} {n}: every command answered once"),
                b.answered == n && b.wrong_ims == 0,
                if b.answered == n && b.wrong_ims == 0 {
                    String::new()
                } else {
                    format!("{} answers to {n} commands, {} IMs off", b.answered, b.wrong_ims)
                },
            );
        }
    }
    let bdk = subjects.iter().position(|s| matches!(s, Subject::Bdk(_)));
    for &n in &opts.p1_sizes {
        let ratio = bdk.and_then(|b| Some(cost.get(&(0, n))? / cost.get(&(b, n))?));
        report.budget(
            &format!("P1 CPU per command vs the Python BDK, {}", thousands(n)),
            ratio.map_or("-".into(), |r| format!("{r:.3}×")),
            "0.1×",
            ratio.map(|r| r <= 0.1),
        );
    }
    if let (Some(small), Some(large)) = (opts.p1_sizes.first(), opts.p1_sizes.last())
        && small != large
    {
        let ratio = Some(
            cost.get(&(0, *large)).copied().unwrap_or(0.0)
                / cost.get(&(0, *small)).copied().unwrap_or(f64::NAN),
        )
        .filter(|r| r.is_finite());
        report.budget(
            &format!("P1 cost at {} vs at {}", thousands(*large), thousands(*small)),
            ratio.map_or("-".into(), |r| format!("{r:.2}×")),
            "1.2×",
            ratio.map(|r| r <= 1.2),
        );
        for (b, (label, _)) in opts.baselines.iter().enumerate() {
            if let (Some(a), Some(z)) = (cost.get(&(b + 1, *small)), cost.get(&(b + 1, *large))) {
                report.notes.push(format!(
                    "P1 {label} vs this build, CPU per command: at {} {:.0} µs vs {:.0} µs; at {} {:.0} µs vs {:.0} µs",
                    thousands(*small), a, cost.get(&(0, *small)).copied().unwrap_or(0.0),
                    thousands(*large), z, cost.get(&(0, *large)).copied().unwrap_or(0.0)
                ));
            }
        }
    }
    Ok(())
}

// ----------------------------------------------------------------------------------------------
// P2: /wa create against per-call latency

/// The calls a native create needs and what each must wait for; the longest chain is the
/// critical path (the webhook hop and the bot's own work are not calls).
const CREATE_CALLS: &[(&str, &[&str])] = &[
    ("createRoom", &[]),
    ("addMember", &["createRoom"]),
    ("promoteOwner", &["addMember"]),
    ("advisorNames", &[]),
    ("createWaGroup", &["advisorNames"]),
    ("invitation", &["createWaGroup"]),
    ("summaryPost", &["createRoom", "createWaGroup"]),
    ("startedPost", &[]),
];

/// The longest chain of `CREATE_CALLS`, as names.
pub(crate) fn critical_path() -> Vec<&'static str> {
    fn chain(call: &'static str) -> Vec<&'static str> {
        let deps = CREATE_CALLS.iter().find(|(c, _)| *c == call).map_or(&[][..], |(_, d)| *d);
        let mut best = longest(deps.iter().map(|d| chain(d)));
        best.push(call);
        best
    }
    /// The first of the longest.
    fn longest(chains: impl Iterator<Item = Vec<&'static str>>) -> Vec<&'static str> {
        chains.fold(Vec::new(), |best, c| if c.len() > best.len() { c } else { best })
    }
    longest(CREATE_CALLS.iter().map(|(c, _)| chain(c)))
}

pub async fn p2(
    opts: &BenchOptions,
    work: &WorkDir,
    keys: &Keys,
    templates: &Path,
    report: &mut Report,
) -> Result<(), BenchError> {
    let latency = opts.latency;
    let mut world = World::new(work, "p2", keys, latency).await?;
    let im = world.pod.create_im(&[ALICE, BOT]).map_err(setup)?;
    let store = world.dir.join("bot.db");
    let (bot, _) = world.start_bot("this build", &opts.bot, keys, templates, &store).await?;
    let repeats = if opts.smoke { 1 } else { 3 };
    let mut times = Vec::new();
    let mut all_ok = true;
    let mut detail = String::new();
    let cpu0 = bot.cpu()?;
    for r in 0..repeats {
        let name = format!("Bench create {r}");
        let phones: Vec<String> = (1..=8).map(|c| format!("4479112{r}{c:04}")).collect();
        let mentions: String =
            ADVISORS.iter().map(|a| format!("<mention uid=\"{a}\"/> ")).collect();
        let numbers: String = phones.iter().map(|p| format!("+{p} ")).collect();
        world.drain();
        let t0 = Instant::now();
        world
            .pod
            .post_message(
                &im,
                ALICE,
                &format!("<messageML>/wa create \"{name}\" {mentions}{numbers}</messageML>"),
            )
            .map_err(setup)?;
        let mut invitations: HashMap<String, (usize, Instant)> = HashMap::new();
        let mut room: Option<String> = None;
        let mut members_at: Option<Instant> = None;
        let mut summary_at: Option<Instant> = None;
        let mut room_posts: Vec<(String, Instant)> = Vec::new();
        let deadline = t0 + Duration::from_secs(60);
        let done = loop {
            while let Ok(s) = world.sent.try_recv() {
                if phones.contains(&s.chat) && s.kind == "template" {
                    let e = invitations.entry(s.chat).or_insert((0, s.at));
                    e.0 += 1;
                }
            }
            while let Ok(o) = world.posts.try_recv() {
                if let PodObservation::Posted { stream, user: BOT, at, .. } = o
                    && stream != im
                {
                    room_posts.push((stream, at));
                }
            }
            if room.is_none() {
                room = world
                    .pod
                    .streams()
                    .into_iter()
                    .find(|s| s["name"] == name.as_str())
                    .and_then(|s| s["streamId"].as_str().map(str::to_owned));
            }
            if let Some(room) = &room {
                if summary_at.is_none() {
                    summary_at = room_posts.iter().find(|(s, _)| s == room).map(|(_, at)| *at);
                }
                if members_at.is_none() {
                    let s =
                        world.pod.streams().into_iter().find(|s| s["streamId"] == room.as_str());
                    let members = s
                        .as_ref()
                        .and_then(|s| s["members"].as_array().cloned())
                        .unwrap_or_default();
                    let has = |u: i64, owner: bool| {
                        members.iter().any(|m| m["userId"] == u && (!owner || m["owner"] == true))
                    };
                    if has(ALICE, true) && ADVISORS.iter().all(|a| has(*a, false)) {
                        members_at = Some(Instant::now());
                    }
                }
            }
            if invitations.len() == phones.len() && members_at.is_some() && summary_at.is_some() {
                let last = invitations
                    .values()
                    .map(|(_, at)| *at)
                    .chain(members_at)
                    .chain(summary_at)
                    .max();
                break last;
            }
            if Instant::now() > deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        // Late duplicates would show within a few calls' time.
        tokio::time::sleep(latency * 4 + Duration::from_millis(200)).await;
        while let Ok(s) = world.sent.try_recv() {
            if let Some(e) = invitations.get_mut(&s.chat)
                && s.kind == "template"
            {
                e.0 += 1;
            }
        }
        match done {
            Some(at) => times.push(at.saturating_duration_since(t0)),
            None => {
                all_ok = false;
                detail = format!(
                    "create {r} did not finish within 60 s (room: {}, members: {}, summary: {}, invitations: {}/8)",
                    room.is_some(),
                    members_at.is_some(),
                    summary_at.is_some(),
                    invitations.len()
                );
            }
        }
        if invitations.values().any(|(n, _)| *n != 1) {
            all_ok = false;
            detail = format!("create {r}: an invitation went more than once");
        }
    }
    let cpu = bot.cpu()?.saturating_sub(cpu0);
    let (_, peak) = bot.rss_kib()?;
    bot.stop().await;
    world.shutdown().await;
    report.check(
        "P2 every create finished: room, members, owner, 8 invitations once, summary",
        all_ok,
        detail,
    );
    let path = critical_path();
    let bound = latency * path.len() as u32;
    let times = sorted(times);
    let median = times.get(times.len() / 2).copied();
    report.rows.push(Row {
        scenario: "P2 /wa create 4 advisors 8 contacts".into(),
        bot: "this build".into(),
        size: format!("{} ms/call", latency.as_millis()),
        throughput: None,
        cpu_us: (!times.is_empty()).then(|| cpu.as_secs_f64() * 1e6 / times.len() as f64),
        p50_ms: median.map(|m| m.as_secs_f64() * 1e3),
        p99_ms: times.last().map(|m| m.as_secs_f64() * 1e3),
        peak_rss_mib: Some(mib(peak)),
        note: format!(
            "critical path {} = {} × {} ms = {} ms",
            path.join(" → "),
            path.len(),
            latency.as_millis(),
            bound.as_millis()
        ),
    });
    let ratio = median.map(|m| m.as_secs_f64() / bound.as_secs_f64().max(1e-9));
    report.budget(
        "P2 create time vs the critical path",
        ratio.map_or("-".into(), |r| format!("{r:.2}×")),
        "1.2×",
        ratio.map(|r| r <= 1.2),
    );
    Ok(())
}

// ----------------------------------------------------------------------------------------------
// P3: memory and start

/// Seeds `n` active native groups (2 advisors, 3 joined contacts each) through the Store API.
fn seed(store_path: &Path, n: usize) -> Result<(), BenchError> {
    use crate::domain::{ContactState, E164, GroupId, GroupKind, Origin, StreamId, UserId};
    let store = crate::store::Store::open(store_path).map_err(setup)?;
    for chunk in 0..n.div_ceil(500) {
        store
            .transaction(|tx| -> Result<(), crate::store::StoreError> {
                for i in chunk * 500..((chunk + 1) * 500).min(n) {
                    let contacts: Vec<E164> = (0..3)
                        .filter_map(|c| E164::parse(&format!("+4479114{:05}", i * 3 + c)).ok())
                        .collect();
                    let origin = Origin { key: format!("seed:{i}"), event: format!("seed:{i}") };
                    let created = tx.create_group(
                        &format!("Seeded {i}"),
                        GroupKind::Native,
                        UserId(ALICE),
                        &[UserId(ALICE), UserId(ADVISORS[0])],
                        &contacts,
                        &origin,
                        &format!("seedref{i:08}"),
                    )?;
                    let crate::domain::Created::New(key) = created else { continue };
                    tx.set_group_stream(key, &StreamId::new(format!("seedstream{i:08}")))?;
                    tx.set_group_request(key, &format!("seedreq{i}"))?;
                    tx.set_group_created(
                        key,
                        &GroupId(format!("seedgroup{i:08}")),
                        Some("https://chat.whatsapp.com/seed"),
                    )?;
                    for c in &contacts {
                        tx.set_contact_state(key, c, ContactState::Joined)?;
                    }
                }
                Ok(())
            })
            .map_err(setup)?;
    }
    Ok(())
}

pub async fn p3(
    opts: &BenchOptions,
    work: &WorkDir,
    keys: &Keys,
    templates: &Path,
    report: &mut Report,
) -> Result<(), BenchError> {
    for groups in [0, opts.p3_groups] {
        let mut world = World::new(work, &format!("p3-{groups}"), keys, Duration::ZERO).await?;
        let im = world.pod.create_im(&[ALICE, BOT]).map_err(setup)?;
        let store = world.dir.join("bot.db");
        if groups > 0 {
            seed(&store, groups)?;
        }
        let (bot, start) =
            world.start_bot("this build", &opts.bot, keys, templates, &store).await?;
        // Idle: let startup settle, then read; then one command works with this store.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (idle_kib, _) = bot.rss_kib()?;
        world.drain();
        let result = burst(&mut world, &[&bot], BOT, &[(im, ALICE)], 1).await;
        bot.stop().await;
        world.shutdown().await;
        let b = result?;
        let what =
            if groups == 0 { "idle".to_owned() } else { format!("{} groups", thousands(groups)) };
        report.check(format!("P3 {what}: /wa help answered"), b.answered == 1, "");
        report.rows.push(Row {
            scenario: "P3 memory and start".into(),
            bot: "this build".into(),
            size: what.clone(),
            throughput: None,
            cpu_us: None,
            p50_ms: None,
            p99_ms: None,
            peak_rss_mib: Some(mib(b.peak_kib)),
            note: format!(
                "RSS idle {:.1} MiB; start → first datafeed read {} ms",
                mib(idle_kib),
                start.as_millis()
            ),
        });
        let limit = if groups == 0 { 30.0 } else { 100.0 };
        report.budget(
            &format!("P3 RSS idle, {what}"),
            format!("{:.1} MiB", mib(idle_kib)),
            &format!("{limit} MiB"),
            Some(mib(idle_kib) <= limit),
        );
        report.budget(
            &format!("P3 start → first datafeed read, {what}"),
            format!("{} ms", start.as_millis()),
            "200 ms",
            Some(start <= Duration::from_millis(200)),
        );
    }
    Ok(())
}

// ----------------------------------------------------------------------------------------------
// P4: relay at a steady rate

fn token(seq: usize) -> String {
    format!("tok{seq:07}")
}

fn token_of(text: &str) -> Option<usize> {
    let at = text.find("tok")? + 3;
    text.get(at..at + 7)?.parse().ok()
}

/// Makes `n` native groups with one joined contact each; returns (room, WhatsApp group, phone).
async fn relay_groups(
    world: &mut World,
    n: usize,
) -> Result<Vec<(String, String, String)>, BenchError> {
    let im = world.pod.create_im(&[ALICE, BOT]).map_err(setup)?;
    let phone = |g: usize| format!("44791113{g:04}");
    for g in 0..n {
        world
            .pod
            .post_message(
                &im,
                ALICE,
                &format!("<messageML>/wa create \"Relay {g:03}\" +{}</messageML>", phone(g)),
            )
            .map_err(setup)?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut out: Vec<Option<(String, String, String)>> = vec![None; n];
    let mut tapped = vec![false; n];
    loop {
        for g in 0..n {
            if out[g].is_some() {
                continue;
            }
            let name = format!("Relay {g:03}");
            let Some(group) =
                world.sim.groups().into_iter().find(|x| x["subject"] == name.as_str())
            else {
                continue;
            };
            let (Some(gid), Some(link)) = (group["id"].as_str(), group["inviteLink"].as_str())
            else {
                continue;
            };
            if !tapped[g] {
                world.sim.tap(&phone(g), link);
                tapped[g] = true;
            }
            let joined = group["participants"]
                .as_array()
                .is_some_and(|p| p.iter().any(|x| x == phone(g).as_str()));
            let room = world
                .pod
                .streams()
                .into_iter()
                .find(|s| s["name"] == name.as_str())
                .and_then(|s| s["streamId"].as_str().map(str::to_owned));
            if let (true, Some(room)) = (joined, room) {
                out[g] = Some((room, gid.to_owned(), phone(g)));
            }
        }
        if out.iter().all(Option::is_some) {
            break;
        }
        if Instant::now() > deadline {
            return Err(setup(format!(
                "only {}/{n} relay groups were set up in 120 s",
                out.iter().flatten().count()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the confirmations and notices of the setup pass.
    tokio::time::sleep(Duration::from_secs(1)).await;
    world.drain();
    Ok(out.into_iter().flatten().collect())
}

/// One direction at `rate`: sends `m` tokens round-robin over the groups, collects arrivals.
struct Phase {
    latencies: Vec<Duration>,
    arrived: usize,
    duplicates: usize,
    out_of_order: usize,
    elapsed: Duration,
}

async fn relay_phase(
    world: &mut World,
    groups: &[(String, String, String)],
    m: usize,
    rate: u32,
    to_room: bool,
) -> Result<Phase, BenchError> {
    let (pod, sim) = (world.pod.clone(), world.sim.clone());
    let targets: Vec<(String, String, String)> = groups.to_vec();
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        let mut sent_at = Vec::with_capacity(m);
        for seq in 0..m {
            tick.tick().await;
            let (room, gid, phone) = &targets[seq % targets.len()];
            sent_at.push(Instant::now());
            let text = token(seq);
            let ok = if to_room {
                sim.send_as_phone(phone, Some(gid), &text, None).is_ok()
            } else {
                pod.post_message(room, ALICE, &format!("<messageML>{text}</messageML>")).is_ok()
            };
            if !ok {
                break;
            }
        }
        sent_at
    });
    let group_of_room: HashMap<&str, usize> =
        groups.iter().enumerate().map(|(i, g)| (g.0.as_str(), i)).collect();
    let group_of_wa: HashMap<&str, usize> =
        groups.iter().enumerate().map(|(i, g)| (g.1.as_str(), i)).collect();
    let mut arrivals: HashMap<usize, Instant> = HashMap::new();
    let mut per_group: Vec<Vec<usize>> = vec![Vec::new(); groups.len()];
    let mut duplicates = 0;
    loop {
        let wait = if arrivals.len() >= m { Duration::from_millis(300) } else { STALL };
        let seen = if to_room {
            match tokio::time::timeout(wait, world.posts.recv()).await {
                Ok(Some(PodObservation::Posted { stream, user: BOT, text, at })) => {
                    group_of_room.get(stream.as_str()).map(|g| (*g, text, at))
                }
                Ok(Some(_)) => None,
                Ok(None) | Err(_) => break,
            }
        } else {
            match tokio::time::timeout(wait, world.sent.recv()).await {
                Ok(Some(s)) => group_of_wa.get(s.chat.as_str()).map(|g| (*g, s.text, s.at)),
                Ok(None) | Err(_) => break,
            }
        };
        let Some((g, text, at)) = seen else { continue };
        let Some(seq) = token_of(&text) else { continue };
        if arrivals.insert(seq, at).is_some() {
            duplicates += 1;
        }
        per_group[g].push(seq);
    }
    let sent_at = sender.await.map_err(setup)?;
    let mut latencies = Vec::new();
    let mut last = None;
    for (seq, at) in &arrivals {
        if let Some(s) = sent_at.get(*seq) {
            latencies.push(at.saturating_duration_since(*s));
        }
        last = last.max(Some(*at));
    }
    let out_of_order =
        per_group.iter().filter(|seqs| seqs.windows(2).any(|w| w[0] >= w[1])).count();
    let first = sent_at.first().copied();
    let elapsed = match (first, last) {
        (Some(f), Some(l)) => l.saturating_duration_since(f),
        _ => Duration::ZERO,
    };
    Ok(Phase {
        latencies: sorted(latencies),
        arrived: arrivals.len(),
        duplicates,
        out_of_order,
        elapsed,
    })
}

pub async fn p4(
    opts: &BenchOptions,
    work: &WorkDir,
    keys: &Keys,
    templates: &Path,
    report: &mut Report,
) -> Result<(), BenchError> {
    let mut world = World::new(work, "p4", keys, Duration::ZERO).await?;
    let store = world.dir.join("bot.db");
    let (bot, _) = world.start_bot("this build", &opts.bot, keys, templates, &store).await?;
    let result = async {
        let groups = relay_groups(&mut world, opts.p4_groups).await?;
        let mut phases = Vec::new();
        for to_room in [true, false] {
            let cpu0 = bot.cpu()?;
            let phase =
                relay_phase(&mut world, &groups, opts.p4_messages, opts.p4_rate, to_room).await?;
            let cpu = bot.cpu()?.saturating_sub(cpu0);
            phases.push((to_room, phase, cpu));
            world.drain();
        }
        Ok::<_, BenchError>(phases)
    }
    .await;
    let peak = bot.rss_kib().map(|(_, p)| p).ok();
    bot.stop().await;
    world.shutdown().await;
    let m = opts.p4_messages;
    for (to_room, phase, cpu) in result? {
        let way = if to_room { "WhatsApp → room" } else { "room → WhatsApp" };
        let p99 = percentile_ms(&phase.latencies, 99.0);
        report.rows.push(Row {
            scenario: format!("P4 relay {way}"),
            bot: "this build".into(),
            size: format!("{} msgs, {} groups, {}/s", thousands(m), opts.p4_groups, opts.p4_rate),
            throughput: Some(phase.arrived as f64 / phase.elapsed.as_secs_f64().max(1e-9)),
            cpu_us: Some(cpu.as_secs_f64() * 1e6 / m as f64),
            p50_ms: percentile_ms(&phase.latencies, 50.0),
            p99_ms: p99,
            peak_rss_mib: peak.map(mib),
            note: format!("arrived {}/{m}", phase.arrived),
        });
        report.check(
            format!("P4 {way}: every message once, in order per group"),
            phase.arrived == m && phase.duplicates == 0 && phase.out_of_order == 0,
            if phase.arrived == m && phase.duplicates == 0 && phase.out_of_order == 0 {
                String::new()
            } else {
                format!(
                    "{}/{m} arrived, {} twice, {} groups out of order",
                    phase.arrived, phase.duplicates, phase.out_of_order
                )
            },
        );
        report.budget(
            &format!("P4 p99 {way} at {}/s", opts.p4_rate),
            p99.map_or("-".into(), |v| format!("{v:.1} ms")),
            "20 ms",
            p99.map(|v| v <= 20.0),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_critical_path_of_a_create_is_three_calls() {
        assert_eq!(critical_path(), ["createRoom", "addMember", "promoteOwner"]);
    }

    #[test]
    fn tokens_are_found_in_relayed_text() {
        assert_eq!(token_of(&format!("*Alice Ng*: {}", token(42))), Some(42));
        assert_eq!(token_of("nothing"), None);
    }
}
