//! `wa-groups-bot bench`: the performance scenarios of issue 13, each against a fresh mock pod
//! and WhatsApp simulator (in this process) and the bot as a separate process, so that its CPU
//! time and peak memory are its own. Prints one table (throughput, CPU per event, p50/p99
//! latency, peak RSS), the budgets with their verdicts, and the correctness checks (every
//! command answered once, order per group), which alone decide the exit status: speed on a
//! shared machine is reported, never asserted.
//!
//! - P1 commands: a burst of `/wa help` in IMs, against the official Python BDK's echo bot (and
//!   optionally a baseline build of this bot) on the same mock pod.
//! - P2 create: `/wa create` with 8 contacts and 4 advisors, every pod and Graph call delayed,
//!   against the critical path (the longest chain of calls that must be sequential).
//! - P3 memory and start: RSS idle and with 10,000 groups seeded in the store; start to the
//!   first datafeed read.
//! - P4 relay: WhatsApp → room and room → WhatsApp at a steady rate across many groups.

mod process;
mod scenarios;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use process::BotProcess;
pub(crate) use scenarios::{Keys, WORLD_BOT, WorkDir, World, templates_for, world_advisors};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Setup(String),
}

/// Which scenarios run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    P1,
    P2,
    P3,
    P4,
}

impl Scenario {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.to_ascii_lowercase().as_str() {
            "p1" | "commands" => Some(Self::P1),
            "p2" | "create" => Some(Self::P2),
            "p3" | "memory" | "start" => Some(Self::P3),
            "p4" | "relay" => Some(Self::P4),
            _ => None,
        }
    }
}

/// What `bench` runs, and with what.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Every scenario once at a small size (CI): checks correctness, not speed.
    pub smoke: bool,
    pub scenarios: Vec<Scenario>,
    /// The bot binary measured (this executable by default).
    pub bot: PathBuf,
    /// Other builds of the bot, measured side by side in P1 (e.g. an older commit's): labels
    /// and binaries.
    pub baselines: Vec<(String, PathBuf)>,
    /// A Python with `symphony-bdk-python` installed; by default the venv the interop tests
    /// build (`target/py-venvs/symphony-bdk`), built the same way when missing.
    pub python: Option<PathBuf>,
    /// P2's per-call latency, in the mock pod and the simulator.
    pub latency: Duration,
    /// P1's burst sizes.
    pub p1_sizes: Vec<usize>,
    /// P3's seeded groups.
    pub p3_groups: usize,
    /// P4: groups, messages per direction, rate (messages per second).
    pub p4_groups: usize,
    pub p4_messages: usize,
    pub p4_rate: u32,
}

impl BenchOptions {
    /// The sizes (or the smoke test's).
    pub fn new(bot: PathBuf, smoke: bool) -> Self {
        Self {
            smoke,
            scenarios: vec![Scenario::P1, Scenario::P2, Scenario::P3, Scenario::P4],
            bot,
            baselines: Vec::new(),
            python: None,
            latency: Duration::from_millis(if smoke { 20 } else { 100 }),
            p1_sizes: if smoke { vec![20, 60] } else { vec![1_000, 10_000] },
            p3_groups: if smoke { 200 } else { 10_000 },
            p4_groups: if smoke { 5 } else { 50 },
            p4_messages: if smoke { 60 } else { 4_000 },
            p4_rate: 200,
        }
    }
}

/// One line of the table. `None` is shown as `-`.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub scenario: String,
    pub bot: String,
    pub size: String,
    /// Events per second.
    pub throughput: Option<f64>,
    /// Microseconds of the bot's CPU per event.
    pub cpu_us: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    pub note: String,
}

/// A budget and its verdict (`None`: not measured).
#[derive(Debug, Clone)]
pub struct Budget {
    pub what: String,
    pub measured: String,
    pub limit: String,
    pub met: Option<bool>,
}

/// A correctness check (decides the exit status).
#[derive(Debug, Clone)]
pub struct Check {
    pub what: String,
    pub ok: bool,
    pub detail: String,
}

/// Everything a run found.
#[derive(Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub budgets: Vec<Budget>,
    pub checks: Vec<Check>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    fn check(&mut self, what: impl Into<String>, ok: bool, detail: impl Into<String>) {
        self.checks.push(Check { what: what.into(), ok, detail: detail.into() });
    }

    fn budget(&mut self, what: &str, measured: String, limit: &str, met: Option<bool>) {
        self.budgets.push(Budget { what: what.into(), measured, limit: limit.into(), met });
    }

    /// The table, the budgets and the checks, as printed.
    pub fn render(&self, machine: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "machine: {machine}");
        let header = [
            "scenario",
            "bot",
            "size",
            "throughput/s",
            "CPU/event",
            "p50",
            "p99",
            "peak RSS",
            "note",
        ];
        let cells: Vec<[String; 9]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.scenario.clone(),
                    r.bot.clone(),
                    r.size.clone(),
                    r.throughput.map_or("-".into(), |t| format!("{t:.0}")),
                    r.cpu_us.map_or("-".into(), |c| {
                        if c >= 1000.0 {
                            format!("{:.2} ms", c / 1000.0)
                        } else {
                            format!("{c:.0} µs")
                        }
                    }),
                    r.p50_ms.map_or("-".into(), |v| format!("{v:.1} ms")),
                    r.p99_ms.map_or("-".into(), |v| format!("{v:.1} ms")),
                    r.peak_rss_mib.map_or("-".into(), |v| format!("{v:.1} MiB")),
                    r.note.clone(),
                ]
            })
            .collect();
        let mut widths = header.map(|h| h.chars().count());
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |out: &mut String, cols: &[String]| {
            let mut text = String::from("|");
            for (c, w) in cols.iter().zip(widths) {
                let pad = w.saturating_sub(c.chars().count());
                let _ = write!(text, " {c}{} |", " ".repeat(pad));
            }
            let _ = writeln!(out, "{text}");
        };
        line(&mut out, &header.map(str::to_owned));
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        line(&mut out, &rule);
        for row in &cells {
            line(&mut out, row);
        }
        let _ = writeln!(out, "\nbudgets:");
        for b in &self.budgets {
            let verdict = match b.met {
                Some(true) => "met",
                Some(false) => "NOT MET",
                None => "not measured",
            };
            let _ =
                writeln!(out, "  {:<52} {:>22}  (≤ {})  {verdict}", b.what, b.measured, b.limit);
        }
        let _ = writeln!(out, "\nchecks:");
        for c in &self.checks {
            let _ = writeln!(
                out,
                "  [{}] {}{}",
                if c.ok { "ok" } else { "FAILED" },
                c.what,
                if c.detail.is_empty() { String::new() } else { format!(": {}", c.detail) }
            );
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }
}

/// The machine, as the table's header says it.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores ({model}), load average {load} at start")
}

/// Runs the scenarios and returns the report (printed by the caller).
pub async fn run(opts: &BenchOptions) -> Result<(Report, String), BenchError> {
    let machine = machine();
    let work = WorkDir::new()?;
    let mut report = Report::default();
    let keys = Keys::new(work.path())?;
    let templates = templates_for(&opts.bot, work.path())?;
    for scenario in &opts.scenarios {
        let result = match scenario {
            Scenario::P1 => scenarios::p1(opts, &work, &keys, &templates, &mut report).await,
            Scenario::P2 => scenarios::p2(opts, &work, &keys, &templates, &mut report).await,
            Scenario::P3 => scenarios::p3(opts, &work, &keys, &templates, &mut report).await,
            Scenario::P4 => scenarios::p4(opts, &work, &keys, &templates, &mut report).await,
        };
        if let Err(e) = result {
            report.check(format!("{scenario:?} ran"), false, e.to_string());
        }
    }
    Ok((report, machine))
}

/// The percentile `p` (0–100) of sorted durations, in milliseconds.
pub(crate) fn percentile_ms(sorted: &[Duration], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let at = rank.clamp(1, sorted.len()) - 1;
    Some(sorted[at].as_secs_f64() * 1000.0)
}

/// The repository's `templates` folder for a bot binary (`…/target/release/x` → `…/templates`),
/// if it has one.
pub(crate) fn templates_near(binary: &Path) -> Option<PathBuf> {
    binary.ancestors().map(|a| a.join("templates")).find(|t| t.join("symphony/help.hbs").is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&d, 50.0), Some(50.0));
        assert_eq!(percentile_ms(&d, 99.0), Some(99.0));
        assert_eq!(percentile_ms(&[], 50.0), None);
    }
}
