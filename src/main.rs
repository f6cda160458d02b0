//! The `wa-groups-bot` binary: parses the command line and hands over to the library.

/// jemalloc: the bot's allocations are many small short-lived ones (JSON, SQL rows, HTTP
/// buffers) across threads, where glibc's allocator spent ~15% of a burst's CPU.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use wa_groups_bot::config::{Config, ConfigSource};
use wa_groups_bot::telemetry::{self, LogFormat, Verbosity};
use wa_groups_bot::{admin, app};

#[derive(Parser)]
#[command(name = "wa-groups-bot", version, about = "Symphony bot for WhatsApp native group chats")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the bot against a real (or mock) pod, as configured.
    Run {
        #[arg(long, default_value = "bot-config.yaml")]
        config: PathBuf,
    },
    /// Run the bot with a mock pod, a WhatsApp simulator and a web console to play both sides,
    /// all on loopback: try it locally.
    Sandbox {
        /// Where the sandbox keeps its key pair, users, database and the pod's and simulator's state.
        #[arg(long, default_value = "data/sandbox")]
        data: PathBuf,
        /// Port of the mock pod (the WhatsApp simulator, the bot's webhook and the console use the
        /// next three).
        #[arg(long, default_value_t = 8180)]
        port: u16,
    },
    /// Play the product's scenario against a fresh sandbox and print what both sides see;
    /// exits non-zero if a step does not behave.
    Demo {
        /// Keep the sandbox's state in this folder (default: a temporary one, removed after).
        #[arg(long)]
        keep: Option<PathBuf>,
        /// Also write the bot's log to stderr (RUST_LOG applies, default info); without it,
        /// only warnings and errors, so that the transcript reads alone.
        #[arg(long)]
        logs: bool,
    },
    /// Run the mock Symphony pod alone (for other bots' CI).
    MockPod {
        #[arg(long, default_value = "127.0.0.1:8180")]
        listen: SocketAddr,
        /// YAML list of users: {id, username, displayName, email, type: BOT|NORMAL, publicKey}.
        #[arg(long)]
        users: PathBuf,
        /// Datafeed long-poll hold, in seconds.
        #[arg(long, default_value_t = 20)]
        datafeed_hold: u64,
        /// Milliseconds after which a datafeed batch nobody acknowledged is handed out again, to
        /// any reader of the feed (a real agent: about 30 s).
        #[arg(long, default_value_t = 30_000)]
        datafeed_redeliver_ms: u64,
        /// Milliseconds added before every API call is served (datafeed reads excepted), to
        /// play a distant pod.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
    },
    /// Run the WhatsApp Cloud API simulator alone (for other bots' CI).
    WhatsappSim {
        #[arg(long, default_value = "127.0.0.1:8181")]
        listen: SocketAddr,
        /// Where to deliver signed webhooks; repeat it for several bot instances: deliveries
        /// are spread round-robin, a URL that refuses connections skipped (a load balancer).
        #[arg(long = "webhook-url", value_name = "URL")]
        webhook_urls: Vec<String>,
        #[arg(long, env = "WAGB_SIM_APP_SECRET")]
        app_secret: String,
        #[arg(long, env = "WAGB_SIM_ACCESS_TOKEN")]
        access_token: String,
        #[arg(long, default_value = "106540352242922")]
        phone_number_id: String,
        /// Milliseconds added before every Graph call is served, to play a distant API.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
    },
    /// Write a new RSA key pair for the bot and print the public key for the pod admin console.
    Keygen {
        /// Where to write the private key (PKCS#8 PEM); the public key goes beside it (.pub.pem).
        #[arg(long, default_value = "secrets/wa-groups-bot-private.pem")]
        out: PathBuf,
        #[arg(long, default_value_t = 4096)]
        bits: usize,
    },
    /// Validate the configuration, key file and templates; print every problem at once.
    CheckConfig {
        #[arg(long, default_value = "bot-config.yaml")]
        config: PathBuf,
        /// Also log in to the pod (session + key manager), read sessioninfo, and call the
        /// Graph API once (the business phone number).
        #[arg(long)]
        connect: bool,
    },
    /// Events that kept failing and were set aside: list them, or put them back in the queue
    /// (a running bot picks them up within seconds).
    Events {
        #[command(subcommand)]
        action: EventsCmd,
        #[arg(long, default_value = "bot-config.yaml", global = true)]
        config: PathBuf,
    },
    /// Preview a template: render it with JSON data (strict mode, as the bot renders it).
    Render {
        /// The template's name, e.g. symphony/group_ready or whatsapp/renamed.
        template: String,
        /// A JSON file with the template's data (see templates/README.md).
        #[arg(long)]
        data: PathBuf,
        /// The templates folder.
        #[arg(long, default_value = "templates")]
        templates: PathBuf,
    },
    /// Measure the bot (as a separate process) against a mock pod and the WhatsApp simulator:
    /// command bursts vs the official Python BDK, create under latency, memory and start, the
    /// relay at a steady rate. Prints one table with the budgets; exits 1 only if a
    /// correctness check fails (speed is reported, not asserted).
    Bench {
        /// Every scenario once at a small size (CI): correctness, not speed.
        #[arg(long)]
        smoke: bool,
        /// Scenarios to run (p1 commands, p2 create, p3 memory/start, p4 relay, p5 instances on
        /// PostgreSQL); default all.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// The bot binary to measure (default: this executable).
        #[arg(long)]
        bot: Option<PathBuf>,
        /// Another build of the bot measured side by side in P1, as LABEL=PATH (or PATH);
        /// repeatable (e.g. `--baseline before=/tmp/old/wa-groups-bot`).
        #[arg(long)]
        baseline: Vec<String>,
        /// A Python with symphony-bdk-python 3.0.0 (default: target/py-venvs/symphony-bdk,
        /// built when missing).
        #[arg(long)]
        python: Option<PathBuf>,
        /// P2's latency added to every pod and Graph call, in ms.
        #[arg(long)]
        latency_ms: Option<u64>,
        /// P1's burst sizes (default 1000,10000).
        #[arg(long, value_delimiter = ',')]
        sizes: Vec<usize>,
        /// P3's seeded groups (default 10000).
        #[arg(long)]
        groups: Option<usize>,
        /// P4's messages per direction (default 4000, at 200/s across 50 groups).
        #[arg(long)]
        messages: Option<usize>,
    },
    /// The chaos soak: a seeded population (groups created, contacts joining, chatting both
    /// ways, leaving; renames, adds, removals, promotions) against the bot as a separate process,
    /// with random faults on the mock pod and the WhatsApp simulator and random SIGKILLs of the
    /// bot; then the end state is checked against a model. Prints the counts and every
    /// violation; exits 1 on any.
    Soak {
        /// How long the population plays, in minutes (settling comes after).
        #[arg(long, conflicts_with = "seconds")]
        minutes: Option<u64>,
        /// How long the population plays, in seconds (for short runs).
        #[arg(long)]
        seconds: Option<u64>,
        /// Native groups played at once.
        #[arg(long, default_value_t = 10)]
        groups: usize,
        /// The script's seed (same seed, same script); random when not given, and printed.
        #[arg(long)]
        seed: Option<u64>,
        /// The bot binary (default: this executable).
        #[arg(long)]
        bot: Option<PathBuf>,
        /// No SIGKILLs of the bot.
        #[arg(long)]
        no_kills: bool,
        /// No faults on the mocks.
        #[arg(long)]
        no_faults: bool,
    },
    /// Print a shell completion script, e.g. `wa-groups-bot completions bash > /etc/bash_completion.d/wa-groups-bot`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `wa-groups-bot man > wa-groups-bot.1`.
    Man,
}

/// The completion script for `shell`. In bash's, clap_complete 4.6 spells the program's name
/// (with its hyphens) one way where it picks the subcommand and another in the subcommands' case
/// labels, so no subcommand's options would complete: the labels get the first spelling.
fn completion_script(shell: clap_complete::Shell) -> String {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "wa-groups-bot", &mut script);
    let script = String::from_utf8_lossy(&script).into_owned();
    match shell {
        clap_complete::Shell::Bash => {
            script.replace("wa__subcmd__groups__subcmd__bot__", "wa__groups__bot__")
        }
        _ => script,
    }
}

/// Writes `bytes` to stdout (a closed pipe is an error, not a panic).
fn print_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(bytes).and_then(|()| out.flush()).context("writing to stdout")
}

/// Sets up logging for commands that read no configuration: the format from
/// `WAGB__LOGGING__FORMAT` (text if unset; a bad value is said and text used).
fn init_logging_from_env(verbosity: Verbosity) {
    match telemetry::format_from_env() {
        Ok(format) => telemetry::init(format, verbosity),
        Err(e) => {
            telemetry::init(LogFormat::Text, verbosity);
            tracing::warn!("{e}; logging as text");
        }
    }
}

#[derive(Subcommand)]
enum EventsCmd {
    /// List the set-aside events: id, source, attempts, what it was, why it failed.
    Failed,
    /// Put a set-aside event back in the queue (or all of them with --all).
    Retry {
        /// The event's id (from `events failed`).
        id: Option<i64>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // `run` logs as its configuration says (set up once it is read) and runs on the runtime
    // its store wants; the printing commands do not log.
    let (runtime, loaded) = match &cli.command {
        Cmd::Run { config } => {
            let config = Config::load(config)?;
            telemetry::init(config.logging.format, Verbosity::Default("info"));
            (app::runtime(&config), Some(config))
        }
        other => {
            match other {
                Cmd::Completions { .. } | Cmd::Man => {}
                Cmd::Demo { logs: false, .. } | Cmd::Bench { .. } | Cmd::Soak { .. } => {
                    init_logging_from_env(Verbosity::Fixed("warn"))
                }
                _ => init_logging_from_env(Verbosity::Default("info")),
            }
            (tokio::runtime::Builder::new_multi_thread().enable_all().build(), None)
        }
    };
    runtime.context("the async runtime")?.block_on(execute(cli.command, loaded))
}

/// Runs `command`; `loaded` is `run`'s configuration when it was read already.
async fn execute(command: Cmd, loaded: Option<Config>) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    tokio::spawn(cancel_on_signal(cancel.clone()));
    match command {
        Cmd::Run { config } => {
            let config = match loaded {
                Some(config) => config,
                None => Config::load(&config)?,
            };
            app::run(config, cancel).await?;
        }
        Cmd::Sandbox { data, port } => {
            app::run_sandbox(app::SandboxOptions { data_dir: data, base_port: port }, cancel)
                .await?;
        }
        Cmd::Demo { keep, logs: _ } => app::run_demo(keep, cancel).await?,
        Cmd::MockPod { listen, users, datafeed_hold, datafeed_redeliver_ms, latency_ms } => {
            let timings = app::MockPodTimings {
                hold: std::time::Duration::from_secs(datafeed_hold),
                redelivery: std::time::Duration::from_millis(datafeed_redeliver_ms),
                latency: std::time::Duration::from_millis(latency_ms),
            };
            app::run_mock_pod(listen, &users, timings, cancel).await?;
        }
        Cmd::WhatsappSim {
            listen,
            webhook_urls,
            app_secret,
            access_token,
            phone_number_id,
            latency_ms,
        } => {
            let mut cfg = wa_groups_bot::sandbox::wa_sim::WhatsAppSimConfig::new(
                &access_token,
                &app_secret,
                &phone_number_id,
            );
            cfg.webhook_urls = webhook_urls;
            cfg.latency = std::time::Duration::from_millis(latency_ms);
            app::run_whatsapp_sim(listen, cfg, cancel).await?;
        }
        Cmd::Keygen { out, bits } => {
            let public = app::keygen(&out, bits).context("keygen")?;
            println!("Private key written to {}", out.display());
            println!("Paste this public key into the Symphony admin console (bot's RSA key):\n");
            println!("{public}");
        }
        Cmd::CheckConfig { config, connect } => {
            let report =
                admin::check(&ConfigSource { file: Some(config), env: None }, connect).await;
            println!("{report}");
            if !report.passed() {
                std::process::exit(1);
            }
        }
        Cmd::Events { action, config } => {
            let config = Config::load(&config)?;
            let store = wa_groups_bot::store::Store::open_config(&config.store)?;
            match action {
                EventsCmd::Failed => print!("{}", admin::failed_events(&store)?),
                EventsCmd::Retry { id, all } => {
                    if id.is_none() && !all {
                        anyhow::bail!("give an event id (see `events failed`) or --all");
                    }
                    let n = store.retry_inbound(id)?;
                    if n == 0 && id.is_some() {
                        anyhow::bail!("no set-aside event has that id (see `events failed`)");
                    }
                    println!("{n} event(s) put back in the queue");
                }
            }
        }
        Cmd::Render { template, data, templates } => {
            let rendered = admin::render_preview(&templates, &template, &data)?;
            println!("{rendered}");
        }
        Cmd::Bench { smoke, only, bot, baseline, python, latency_ms, sizes, groups, messages } => {
            let bot = match bot {
                Some(b) => b,
                None => std::env::current_exe().context("the bot binary")?,
            };
            let mut opts = wa_groups_bot::bench::BenchOptions::new(bot, smoke);
            if !only.is_empty() {
                opts.scenarios = only
                    .iter()
                    .map(|s| {
                        wa_groups_bot::bench::Scenario::parse(s)
                            .with_context(|| format!("unknown scenario {s:?} (p1, p2, p3, p4, p5)"))
                    })
                    .collect::<anyhow::Result<_>>()?;
            }
            opts.baselines = baseline
                .iter()
                .enumerate()
                .map(|(i, b)| match b.split_once('=') {
                    Some((label, path)) => (label.to_owned(), PathBuf::from(path)),
                    None => (format!("baseline {}", i + 1), PathBuf::from(b)),
                })
                .collect();
            opts.python = python;
            if let Some(ms) = latency_ms {
                opts.latency = std::time::Duration::from_millis(ms);
            }
            if !sizes.is_empty() {
                opts.p1_sizes = sizes;
            }
            if let Some(g) = groups {
                opts.p3_groups = g;
            }
            if let Some(m) = messages {
                opts.p4_messages = m;
            }
            let (report, machine) = wa_groups_bot::bench::run(&opts).await?;
            print_bytes(report.render(&machine).as_bytes())?;
            if !report.passed() {
                std::process::exit(1);
            }
        }
        Cmd::Soak { minutes, seconds, groups, seed, bot, no_kills, no_faults } => {
            let bot = match bot {
                Some(b) => b,
                None => std::env::current_exe().context("the bot binary")?,
            };
            let duration = match (minutes, seconds) {
                (_, Some(s)) => std::time::Duration::from_secs(s),
                (Some(m), None) => std::time::Duration::from_secs(m * 60),
                (None, None) => std::time::Duration::from_secs(600),
            };
            let seed = seed.unwrap_or_else(rand::random);
            let mut opts = wa_groups_bot::soak::SoakOptions::new(bot, duration, groups, seed);
            opts.kills = !no_kills;
            opts.faults = !no_faults;
            let report = tokio::select! {
                r = wa_groups_bot::soak::run(&opts) => r?,
                () = cancel.cancelled() => anyhow::bail!("interrupted"),
            };
            print_bytes(report.render().as_bytes())?;
            if !report.passed() {
                std::process::exit(1);
            }
        }
        Cmd::Completions { shell } => print_bytes(completion_script(shell).as_bytes())?,
        Cmd::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut page).context("man page")?;
            print_bytes(&page)?;
        }
    }
    Ok(())
}

/// Cancels on Ctrl-C or SIGTERM, so every command stops cleanly.
async fn cancel_on_signal(cancel: CancellationToken) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("stopping");
    cancel.cancel();
}
