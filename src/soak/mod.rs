//! `wa-groups-bot soak`: the chaos soak. The sandbox (mock pod and WhatsApp simulator in this
//! process, the bot as a separate process that can be SIGKILLed, its SQLite store in a
//! temporary folder) with a scripted population drawn from a seed (advisors creating native
//! groups, contacts joining by their invitation, chatting both ways and leaving; owners
//! renaming, adding, removing and promoting; removed contacts and strangers trying to get in),
//! random faults on both mocks and random SIGKILLs of the bot. At the end it stops injecting,
//! lets the bot settle, and checks the end state against the driver's model ([`model::check`]):
//! every command answered once, every message relayed once and in order per group, nobody
//! barred or uninvited in a WhatsApp group, the right people in, one notice per change. It
//! prints the counts and every violation; any violation fails the run.

mod chaos;
pub mod model;
mod script;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bench::{BotProcess, Keys, WorkDir, World};
use model::{Model, Observed, Post, WaGroupView, WaMessage};
use script::Ctx;

#[derive(Debug, thiserror::Error)]
pub enum SoakError {
    #[error("setting up the soak: {0}")]
    Setup(String),
}

impl From<crate::bench::BenchError> for SoakError {
    fn from(e: crate::bench::BenchError) -> Self {
        SoakError::Setup(e.to_string())
    }
}

/// What `soak` runs.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// How long the population plays (faults and kills included); settling comes after.
    pub duration: Duration,
    pub groups: usize,
    pub seed: u64,
    /// The bot binary (this executable by default).
    pub bot: PathBuf,
    /// SIGKILLs of the bot (on by default).
    pub kills: bool,
    /// Faults on both mocks (on by default).
    pub faults: bool,
    /// How long a step waits for its effect, and the end for the bot to settle.
    pub step_timeout: Duration,
    pub settle_timeout: Duration,
}

impl SoakOptions {
    pub fn new(bot: PathBuf, duration: Duration, groups: usize, seed: u64) -> Self {
        Self {
            duration,
            groups,
            seed,
            bot,
            kills: true,
            faults: true,
            step_timeout: Duration::from_secs(90),
            settle_timeout: Duration::from_secs(120),
        }
    }
}

/// What a run found.
#[derive(Debug, Default)]
pub struct SoakReport {
    pub seed: u64,
    pub groups: usize,
    pub played: Duration,
    pub settled: Duration,
    /// What the population did (commands by kind, messages each way, joins, …).
    pub actions: BTreeMap<String, u64>,
    pub faults: BTreeMap<String, u64>,
    pub pod_faults_served: u64,
    pub graph_faults_served: u64,
    pub missed_events: u64,
    pub kills: u64,
    pub repeats_at_kills: usize,
    pub swaps: usize,
    pub violations: Vec<String>,
    /// Where the bot's log and store were kept (a failed run keeps them).
    pub kept: Option<PathBuf>,
}

impl SoakReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The report as printed.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "soak: seed {}, {} groups, played {:.0} s, settled in {:.1} s",
            self.seed,
            self.groups,
            self.played.as_secs_f64(),
            self.settled.as_secs_f64()
        );
        let _ = writeln!(out, "\npopulation:");
        for (what, n) in &self.actions {
            let _ = writeln!(out, "  {what:<40} {n:>6}");
        }
        let commands: u64 =
            self.actions.iter().filter(|(k, _)| k.starts_with("command ")).map(|(_, n)| n).sum();
        let _ = writeln!(out, "  {:<40} {commands:>6}", "commands (all)");
        let _ = writeln!(out, "\nfaults injected:");
        for (what, n) in &self.faults {
            let _ = writeln!(out, "  {what:<40} {n:>6}");
        }
        let injected: u64 = self.faults.values().sum();
        let _ = writeln!(out, "  {:<40} {injected:>6}", "faults (all)");
        let _ = writeln!(out, "  {:<40} {:>6}", "pod faults served", self.pod_faults_served);
        let _ = writeln!(out, "  {:<40} {:>6}", "Graph faults served", self.graph_faults_served);
        let _ = writeln!(out, "  {:<40} {:>6}", "SIGKILLs of the bot", self.kills);
        let _ = writeln!(out, "\nend state:");
        let _ = writeln!(
            out,
            "  {:<40} {:>6}",
            "repeats at a SIGKILL (in flight)", self.repeats_at_kills
        );
        let _ = writeln!(out, "  {:<40} {:>6}", "swaps by reordered webhooks", self.swaps);
        let _ = writeln!(out, "  {:<40} {:>6}", "datafeed events missed", self.missed_events);
        let _ = writeln!(out, "  {:<40} {:>6}", "violations", self.violations.len());
        for v in &self.violations {
            let _ = writeln!(out, "  VIOLATION: {v}");
        }
        if let Some(dir) = &self.kept {
            let _ = writeln!(out, "\nkept the bot's log and store in {}", dir.display());
        }
        out
    }
}

/// Starts the bot process and waits for it to be healthy.
pub(crate) struct BotRunner {
    binary: PathBuf,
    config: PathBuf,
    log: PathBuf,
    health: String,
    metrics: String,
    http: reqwest::Client,
}

impl BotRunner {
    pub(crate) async fn start(&self) -> Result<BotProcess, SoakError> {
        let args = [std::ffi::OsStr::new("run"), "--config".as_ref(), self.config.as_os_str()];
        let mut bot =
            BotProcess::spawn("bot", &self.binary, &args, &self.log, &[("RUST_LOG", "warn")])?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = bot.exited() {
                return Err(SoakError::Setup(format!(
                    "the bot exited at start ({status}; log: {})",
                    self.log.display()
                )));
            }
            let up = self.http.get(&self.health).send().await;
            if up.is_ok_and(|r| r.status().is_success()) {
                return Ok(bot);
            }
            if Instant::now() >= deadline {
                return Err(SoakError::Setup(format!(
                    "the bot was not healthy within 60 s (log: {})",
                    self.log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The outbox's pending effects, from `/metrics` (`None` when it cannot be read).
    async fn pending_effects(&self) -> Option<u64> {
        let text = self.http.get(&self.metrics).send().await.ok()?.text().await.ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("wagb_outbox_effects{state=\"pending\"} "))
            .and_then(|n| n.trim().parse().ok())
    }
}

/// Every phone the simulator knows.
pub(crate) async fn known_phones(ctx: &Ctx) -> Vec<String> {
    let url = format!("{}/_sandbox/wa/phones", ctx.sim.url());
    let Ok(resp) = ctx.http.get(&url).send().await else { return Vec::new() };
    let list: serde_json::Value = resp.json().await.unwrap_or_default();
    list.as_array()
        .map(|a| a.iter().filter_map(|p| p["phone"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn wa_message(m: &serde_json::Value, business: Option<&str>) -> WaMessage {
    let template = m["template"]["name"].as_str().map(str::to_owned);
    let text = match m["template"]["params"].as_array() {
        Some(params) if template.is_some() => {
            params.iter().filter_map(|p| p.as_str()).collect::<Vec<_>>().join(" | ")
        }
        _ => m["text"].as_str().unwrap_or_default().to_owned(),
    };
    let from = m["from"].as_str();
    WaMessage { from_business: business.is_none_or(|b| from == Some(b)), template, text }
}

/// A phone's 1:1 messages from the business (not those it got as a group member).
pub(crate) fn inbox_1to1(ctx: &Ctx, phone: &str) -> Vec<WaMessage> {
    ctx.sim
        .inbox(phone)
        .iter()
        .filter(|m| m["groupId"].is_null())
        .map(|m| wa_message(m, None))
        .collect()
}

/// The end state, as the sandbox shows it.
async fn observe(ctx: &Ctx, business: &str) -> Observed {
    let mut obs = Observed { bot: ctx.bot, ..Observed::default() };
    for s in ctx.pod.streams() {
        let Some(id) = s["streamId"].as_str() else { continue };
        if s["type"] == "ROOM" {
            obs.rooms += 1;
        }
        let posts =
            ctx.pod.messages(id).into_iter().map(|m| Post { user: m.user, text: m.text }).collect();
        obs.streams.insert(id.to_owned(), posts);
    }
    for g in ctx.sim.groups() {
        let Some(id) = g["id"].as_str() else { continue };
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .map(|a| a.iter().filter_map(|p| p.as_str().map(str::to_owned)).collect())
                .unwrap_or_default()
        };
        let view = WaGroupView {
            subject: g["subject"].as_str().unwrap_or_default().to_owned(),
            participants: strings(&g["participants"]),
            pending: strings(&g["pendingRequests"]),
            messages: g["messages"]
                .as_array()
                .map(|a| a.iter().map(|m| wa_message(m, Some(business))).collect())
                .unwrap_or_default(),
        };
        obs.groups.insert(id.to_owned(), view);
    }
    for phone in known_phones(ctx).await {
        let inbox = inbox_1to1(ctx, &phone);
        obs.inboxes.insert(phone, inbox);
    }
    obs
}

/// Runs the soak and returns its report (printed by the caller).
pub async fn run(opts: &SoakOptions) -> Result<SoakReport, SoakError> {
    let mut work = WorkDir::new()?;
    let keys = Keys::new(work.path())?;
    let templates = crate::bench::templates_for(&opts.bot, work.path())?;
    let mut world = World::with(&work, "soak", &keys, |pod, sim| {
        // Unacknowledged batches (a kill between a read and its ack) come back soon.
        pod.redelivery_delay = Duration::from_secs(2);
        sim.webhook_retry_initial = Duration::from_millis(50);
    })
    .await?;
    world.retry_attempts = 10;
    let store = world.dir.join("bot.db");
    let config = world.bot_config(&keys, &templates, &store)?;
    let base = format!("http://127.0.0.1:{}", world.webhook_port);
    let runner = Arc::new(BotRunner {
        binary: opts.bot.clone(),
        config,
        log: world.dir.join("bot.log"),
        health: format!("{base}/healthz"),
        metrics: format!("{base}/metrics"),
        http: reqwest::Client::new(),
    });
    let business = crate::sandbox::wa_sim::WhatsAppSimConfig::new("", "", "").business_phone;

    let advisors = crate::bench::world_advisors();
    let bot_id = crate::bench::WORLD_BOT;
    let mut ims = BTreeMap::new();
    for (uid, _) in &advisors {
        let im = world
            .pod
            .create_im(&[*uid, bot_id])
            .map_err(|e| SoakError::Setup(format!("an IM: {e}")))?;
        ims.insert(*uid, im);
    }
    let first = runner.start().await?;
    // The IMs were created before the bot had a feed: not what a run may miss.
    let missed_before = world.pod.stats().missed_events;
    let bot = Arc::new(tokio::sync::Mutex::new(Some(first)));
    let started = Instant::now();
    let ctx = Arc::new(Ctx::new(
        world.pod.clone(),
        world.sim.clone(),
        bot_id,
        advisors,
        ims,
        opts.step_timeout,
        started + opts.duration,
    ));

    let actors: Vec<_> = (0..opts.groups)
        .map(|i| tokio::spawn(script::group_actor(ctx.clone(), i, opts.seed)))
        .collect();
    let faults = opts.faults.then(|| tokio::spawn(chaos::faults(ctx.clone(), opts.seed)));
    let killer = opts
        .kills
        .then(|| tokio::spawn(chaos::kills(ctx.clone(), runner.clone(), bot.clone(), opts.seed)));

    let mut model = Model::default();
    for a in actors {
        match a.await {
            Ok((g, v)) => {
                model.groups.push(g);
                model.script_violations.extend(v);
            }
            Err(e) => model.script_violations.push(format!("a group's actor failed: {e}")),
        }
    }
    let mut report = SoakReport { seed: opts.seed, groups: opts.groups, ..SoakReport::default() };
    if let Some(f) = faults {
        match f.await {
            Ok((counts, errors)) => {
                report.faults = counts;
                model.script_violations.extend(errors);
            }
            Err(e) => model.script_violations.push(format!("the fault injector failed: {e}")),
        }
    }
    let mut marks = Vec::new();
    if let Some(k) = killer {
        match k.await {
            Ok(k) => {
                report.kills = k.kills;
                marks = k.marks;
                model.script_violations.extend(k.errors);
            }
            Err(e) => model.script_violations.push(format!("the killer failed: {e}")),
        }
    }
    report.played = started.elapsed();
    model.groups.sort_by_key(|g| g.index);

    // Settle: the bot running, a held (reordered) webhook let go by two more, then until the
    // end state holds and the outbox is empty (three polls in a row), or the timeout.
    let settling = Instant::now();
    {
        let mut slot = bot.lock().await;
        if slot.as_mut().is_none_or(|b| b.exited().is_some()) {
            match runner.start().await {
                Ok(p) => *slot = Some(p),
                Err(e) => {
                    model.script_violations.push(format!("restarting the bot to settle: {e}"))
                }
            }
        }
    }
    for i in 0..2 {
        let _ = world.sim.send_as_phone("447911399999", None, &format!("flush {i}"), None);
    }
    let reorders = report.faults.get("webhook reordered").copied().unwrap_or(0) as usize;
    let deadline = settling + opts.settle_timeout;
    let mut stable = 0;
    let verdict = loop {
        let mut obs = observe(&ctx, &business).await;
        obs.marks = marks.clone();
        obs.reorders = reorders;
        let verdict = model::check(&model, &obs);
        let pending = runner.pending_effects().await;
        if verdict.violations.is_empty() && pending == Some(0) {
            stable += 1;
        } else {
            stable = 0;
        }
        if stable >= 3 || Instant::now() >= deadline {
            break verdict;
        }
        world.drain();
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    report.settled = settling.elapsed();
    if let Some(b) = bot.lock().await.take() {
        b.stop().await;
    }
    report.actions = ctx.counts().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    report.pod_faults_served = world.pod.stats().faults_served;
    report.graph_faults_served = world.sim.stats().faults_served;
    report.missed_events = world.pod.stats().missed_events.saturating_sub(missed_before);
    report.repeats_at_kills = verdict.repeats_at_kills;
    report.swaps = verdict.swaps;
    report.violations = verdict.violations;
    if !report.passed() {
        work.keep();
        report.kept = Some(world.dir.clone());
    }
    drop(ctx);
    world.shutdown().await;
    Ok(report)
}
