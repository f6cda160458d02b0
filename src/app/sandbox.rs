//! The binary's other commands: the mock pod and the simulator alone, `keygen`, and the sandbox
//! (mock pod + simulator + bot + console on loopback) with the demo that plays it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{AppError, Bot};
use crate::config::Config;
use crate::sandbox::console::{Console, ConsoleConfig, Directory, DirectoryContact, DirectoryUser};
use crate::sandbox::mock_pod::{MockPod, MockPodConfig, MockUser};
use crate::sandbox::wa_sim::{WhatsAppSim, WhatsAppSimConfig};
use crate::templates::Templates;

/// The mock pod's timings that `mock-pod` takes on its command line.
#[derive(Debug, Clone, Copy)]
pub struct MockPodTimings {
    /// How long an idle datafeed read is held (`--datafeed-hold`).
    pub hold: Duration,
    /// When an unacknowledged batch is handed out again (`--datafeed-redeliver-ms`).
    pub redelivery: Duration,
    /// Added before every API call (`--latency-ms`).
    pub latency: Duration,
}

/// Runs the mock pod alone until cancelled.
pub async fn run_mock_pod(
    listen: SocketAddr,
    users: &Path,
    timings: MockPodTimings,
    cancel: CancellationToken,
) -> Result<(), AppError> {
    let users = load_users(users)?;
    let mut cfg = MockPodConfig::new(users);
    cfg.datafeed_hold = timings.hold;
    cfg.redelivery_delay = timings.redelivery;
    cfg.latency = timings.latency;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let pod = MockPod::start_on(listener, cfg, cancel.clone())
        .await
        .map_err(|e| AppError::Sandbox(e.to_string()))?;
    println!("mock pod listening on {}", pod.url());
    cancel.cancelled().await;
    pod.shutdown().await;
    Ok(())
}

/// Runs the WhatsApp simulator alone until cancelled.
pub async fn run_whatsapp_sim(
    listen: SocketAddr,
    cfg: WhatsAppSimConfig,
    cancel: CancellationToken,
) -> Result<(), AppError> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let sim = WhatsAppSim::start_on(listener, cfg, cancel.clone())
        .await
        .map_err(|e| AppError::Sandbox(e.to_string()))?;
    println!(
        "WhatsApp simulator listening on {} (control API under {}/_sandbox/wa/)",
        sim.url(),
        sim.url()
    );
    cancel.cancelled().await;
    sim.shutdown().await;
    Ok(())
}

fn load_users(path: &Path) -> Result<Vec<MockUser>, AppError> {
    crate::sandbox::mock_pod::load_users(path).map_err(|e| AppError::Sandbox(e.to_string()))
}

/// Writes a new key pair for the bot; returns the public key PEM.
pub fn keygen(out: &Path, bits: usize) -> Result<String, AppError> {
    Ok(crate::keys::write_new(out, bits)?.public_pem)
}

/// Options of `wa-groups-bot sandbox`.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    pub data_dir: PathBuf,
    /// The mock pod's port; the simulator, the bot's webhook receiver and the console take the
    /// next three. 0: every port chosen by the OS (tests).
    pub base_port: u16,
}

/// The sandbox's WhatsApp credentials: known to the simulator and the bot, protecting nothing.
pub const SANDBOX_PHONE_NUMBER_ID: &str = "106540352242922";
pub const SANDBOX_ACCESS_TOKEN: &str = "sandbox-access-token";
pub const SANDBOX_APP_SECRET: &str = "sandbox-app-secret";

/// The people of the sandbox's directory: (id, username, display name).
pub const SANDBOX_BOT: (i64, &str, &str) = (10001, "wa-groups-bot", "WhatsApp Groups");
pub const SANDBOX_ADVISORS: &[(i64, &str, &str)] = &[
    (10002, "alice.ng", "Alice Ng"),
    (10003, "bob.smith", "Bob Smith"),
    (10004, "carol.diaz", "Carol Diaz"),
];

/// The sandbox's WhatsApp contacts: (WhatsApp id, profile name). UK mobile numbers that
/// libphonenumber accepts (the +44 7700 900xxx drama range is not valid for it).
pub const SANDBOX_CONTACTS: &[(&str, &str)] = &[
    ("447911123456", "Dana Reyes"),
    ("447911123457", "Eli Novak"),
    ("447911123458", "Farah Khan"),
    ("447911123459", "Omar Haddad"),
];

/// Where the sandbox keeps the mock pod's and the simulator's worlds, in its data folder.
const SANDBOX_POD_STATE: &str = "mock-pod.json";
const SANDBOX_SIM_STATE: &str = "whatsapp-sim.json";

/// The sandbox's loopback ports (0: chosen by the OS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxPorts {
    pub pod: u16,
    pub sim: u16,
    pub webhook: u16,
    pub console: u16,
}

impl SandboxPorts {
    /// `base` and the three after it; all 0 when `base` is 0.
    pub fn from_base(base: u16) -> Result<Self, AppError> {
        if base == 0 {
            return Ok(Self { pod: 0, sim: 0, webhook: 0, console: 0 });
        }
        let at = |offset: u16| {
            base.checked_add(offset).ok_or_else(|| {
                AppError::Sandbox(format!("port {base} leaves no room for the 3 ports after it"))
            })
        };
        Ok(Self { pod: base, sim: at(1)?, webhook: at(2)?, console: at(3)? })
    }
}

/// Plays the scripted demo (`wa-groups-bot demo`) against a fresh sandbox on free ports, its
/// state in a temporary folder (removed afterwards unless `keep` is given), and prints the
/// transcript. Fails with the first step that does not behave.
pub async fn run_demo(keep: Option<PathBuf>, cancel: CancellationToken) -> Result<(), AppError> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let data_dir = keep.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("wa-groups-bot-demo-{}-{stamp}", std::process::id()))
    });
    let opts = SandboxOptions { data_dir: data_dir.clone(), base_port: 0 };
    let sandbox = start_sandbox(&opts, cancel.clone()).await?;
    let cast = crate::sandbox::demo::Cast {
        bot: SANDBOX_BOT.0,
        creator: (SANDBOX_ADVISORS[0].0, SANDBOX_ADVISORS[0].2.to_owned()),
        advisor: (SANDBOX_ADVISORS[1].0, SANDBOX_ADVISORS[1].2.to_owned()),
        contacts: SANDBOX_CONTACTS
            .iter()
            .map(|(p, n)| ((*p).to_owned(), (*n).to_owned()))
            .collect(),
    };
    let mut out = std::io::stdout();
    let (pod_url, sim_url) = (sandbox.pod.url(), sandbox.sim.url());
    let played = tokio::select! {
        r = crate::sandbox::demo::run(&pod_url, &sim_url, &cast, Duration::from_secs(20), &mut out) => r,
        () = cancel.cancelled() => Err(crate::sandbox::demo::DemoError::Step {
            step: "all".into(),
            reason: "interrupted".into(),
        }),
    };
    sandbox.stop().await;
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    played.map_err(|e| AppError::Sandbox(e.to_string()))
}

/// Prepares the sandbox's folder: the bot's key pair (made once), the users file and the bot's
/// configuration pointing at the mock pod and the simulator on `ports`. Returns the config
/// file's path.
pub fn prepare_sandbox(opts: &SandboxOptions, ports: &SandboxPorts) -> Result<PathBuf, AppError> {
    std::fs::create_dir_all(&opts.data_dir)?;
    let key = opts.data_dir.join("bot-private.pem");
    if !key.exists() {
        crate::keys::write_new(&key, 2048)?;
    }
    let public = crate::keys::public_path(&key);
    let mut users = format!(
        "- {{id: {}, username: {}, displayName: \"{}\", email: {}@sandbox.local, type: BOT, publicKey: {}}}\n",
        SANDBOX_BOT.0,
        SANDBOX_BOT.1,
        SANDBOX_BOT.2,
        SANDBOX_BOT.1,
        public.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    );
    for (id, username, name) in SANDBOX_ADVISORS {
        users.push_str(&format!(
            "- {{id: {id}, username: {username}, displayName: \"{name}\", email: {username}@sandbox.local, type: NORMAL}}\n"
        ));
    }
    std::fs::write(opts.data_dir.join("users.yaml"), users)?;
    let templates = std::env::current_dir()?.join("templates");
    let templates_line = if templates.join("symphony/help.hbs").exists() {
        format!("templates:\n  dir: {}\n", templates.display())
    } else {
        String::new()
    };
    let config = format!(
        "# Written by `wa-groups-bot sandbox`: the bot's configuration against the local mock pod\n\
         # and WhatsApp simulator. The tokens below are the sandbox's own, not real secrets.\n\
         scheme: http\nhost: 127.0.0.1\nport: {pod}\n\
         bot:\n  username: {bot}\n  privateKey:\n    path: bot-private.pem\n\
         datafeed:\n  version: v2\n  retry: {{maxAttempts: -1, initialIntervalMillis: 200, multiplier: 2, maxIntervalMillis: 5000}}\n\
         retry: {{maxAttempts: 5, initialIntervalMillis: 200, multiplier: 2, maxIntervalMillis: 5000}}\n\
         whatsapp:\n  apiBaseUrl: http://127.0.0.1:{sim}\n  apiVersion: v23.0\n  phoneNumberId: \"{SANDBOX_PHONE_NUMBER_ID}\"\n\
         \x20 accessToken: {SANDBOX_ACCESS_TOKEN}\n  appSecret: {SANDBOX_APP_SECRET}\n\
         \x20 webhook: {{listen: \"127.0.0.1:{hook}\", path: /whatsapp/webhook, verifyToken: sandbox-verify}}\n\
         store:\n  path: bot.db\n{templates_line}",
        pod = ports.pod,
        sim = ports.sim,
        hook = ports.webhook,
        bot = SANDBOX_BOT.1,
    );
    let path = opts.data_dir.join("bot-config.yaml");
    std::fs::write(&path, config)?;
    Ok(path)
}

/// A running sandbox: mock pod, WhatsApp simulator, bot and console on loopback.
pub struct Sandbox {
    pub pod: MockPod,
    pub sim: WhatsAppSim,
    pub bot: Bot,
    pub console: Console,
    /// The IM between the first advisor (Alice) and the bot.
    pub im: String,
    cancel: CancellationToken,
    /// Stops the state savers, once everything else has stopped.
    saving: CancellationToken,
    savers: Vec<tokio::task::JoinHandle<()>>,
}

impl Sandbox {
    /// Waits until the sandbox is cancelled (or the bot stops), then stops every part and saves
    /// the pod's and the simulator's state a last time.
    pub async fn wait(self) {
        if let Err(e) = self.bot.wait().await {
            tracing::error!(error = %e, "the sandbox's bot stopped");
        }
        self.cancel.cancel();
        self.console.shutdown().await;
        self.sim.shutdown().await;
        self.pod.shutdown().await;
        self.saving.cancel();
        for saver in self.savers {
            let _ = saver.await;
        }
    }

    /// Stops the sandbox (see [`Sandbox::wait`]).
    pub async fn stop(self) {
        self.cancel.cancel();
        self.wait().await;
    }
}

/// Starts the mock pod, the simulator, the bot and the console on loopback, with the pod's and
/// the simulator's state loaded from the data folder (and saved there as it changes).
pub async fn start_sandbox(
    opts: &SandboxOptions,
    cancel: CancellationToken,
) -> Result<Sandbox, AppError> {
    // A child token: a start that fails half-way stops what it started, not the caller.
    let cancel = cancel.child_token();
    let started = start_sandbox_parts(opts, cancel.clone()).await;
    if started.is_err() {
        cancel.cancel();
    }
    started
}

async fn start_sandbox_parts(
    opts: &SandboxOptions,
    cancel: CancellationToken,
) -> Result<Sandbox, AppError> {
    let sandbox_err = |e: &dyn std::fmt::Display| AppError::Sandbox(e.to_string());
    let wanted = SandboxPorts::from_base(opts.base_port)?;
    let bind = |port: u16| async move {
        tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| AppError::Startup(format!("cannot listen on 127.0.0.1:{port}: {e}")))
    };
    let pod_listener = bind(wanted.pod).await?;
    let sim_listener = bind(wanted.sim).await?;
    let console_listener = bind(wanted.console).await?;
    let ports = SandboxPorts {
        pod: pod_listener.local_addr()?.port(),
        sim: sim_listener.local_addr()?.port(),
        webhook: wanted.webhook,
        console: console_listener.local_addr()?.port(),
    };
    let config_path = prepare_sandbox(opts, &ports)?;
    let config = Config::load(&config_path)?;
    let templates = match config.templates.dir.join("symphony/help.hbs").exists() {
        true => Templates::load(&config.templates.dir)?,
        false => Templates::embedded()?,
    };
    let pod_state = opts.data_dir.join(SANDBOX_POD_STATE);
    let sim_state = opts.data_dir.join(SANDBOX_SIM_STATE);
    let fresh = |e: &dyn std::fmt::Display| {
        AppError::Sandbox(format!("{e} (delete the file to start the sandbox afresh)"))
    };
    let saved_pod = crate::sandbox::persist::load(&pod_state).map_err(|e| fresh(&e))?;
    let saved_sim = crate::sandbox::persist::load(&sim_state).map_err(|e| fresh(&e))?;

    let users = load_users(&opts.data_dir.join("users.yaml"))?;
    let pod = MockPod::start_on(pod_listener, MockPodConfig::new(users), cancel.clone())
        .await
        .map_err(|e| sandbox_err(&e))?;
    if let Some(saved) = &saved_pod {
        pod.restore(saved).map_err(|e| fresh(&format!("{}: {e}", pod_state.display())))?;
    }
    // Webhooks wait in the simulator until the bot's receiver is up and its address known.
    let sim_cfg =
        WhatsAppSimConfig::new(SANDBOX_ACCESS_TOKEN, SANDBOX_APP_SECRET, SANDBOX_PHONE_NUMBER_ID);
    let business_phone = sim_cfg.business_phone.clone();
    let sim = WhatsAppSim::start_on(sim_listener, sim_cfg, cancel.clone())
        .await
        .map_err(|e| sandbox_err(&e))?;
    if let Some(saved) = &saved_sim {
        sim.restore(saved).map_err(|e| fresh(&format!("{}: {e}", sim_state.display())))?;
    }
    for (phone, name) in SANDBOX_CONTACTS {
        sim.set_phone_name(phone, name);
    }
    let saving = CancellationToken::new();
    let every = Duration::from_secs(1);
    let savers = vec![
        crate::sandbox::persist::autosave(pod_state, every, pod.snapshotter(), saving.clone()),
        crate::sandbox::persist::autosave(sim_state, every, sim.snapshotter(), saving.clone()),
    ];

    let webhook_path = config.whatsapp.webhook.path.clone();
    let bot = Bot::start(config, templates, cancel.clone()).await?;
    if let Some(addr) = bot.webhook_addr {
        sim.set_webhook_url(&format!("http://{addr}{webhook_path}"));
    }
    let alice = SANDBOX_ADVISORS[0];
    let im = pod.create_im(&[alice.0, SANDBOX_BOT.0]).map_err(|e| sandbox_err(&e))?;

    let person =
        |(id, _, name): (i64, &str, &str)| DirectoryUser { user_id: id, name: name.into() };
    let directory = Directory {
        bot: person(SANDBOX_BOT),
        advisors: SANDBOX_ADVISORS.iter().copied().map(person).collect(),
        contacts: SANDBOX_CONTACTS
            .iter()
            .map(|(phone, name)| DirectoryContact { phone: (*phone).into(), name: (*name).into() })
            .collect(),
        business_phone,
    };
    let console_cfg = ConsoleConfig { pod_url: pod.url(), sim_url: sim.url(), directory };
    let console = Console::start_on(console_listener, console_cfg, cancel.clone())
        .await
        .map_err(|e| sandbox_err(&e))?;
    Ok(Sandbox { pod, sim, bot, console, im, cancel, saving, savers })
}

/// Runs the mock pod, the simulator, the bot and the console together on loopback until
/// cancelled.
pub async fn run_sandbox(opts: SandboxOptions, cancel: CancellationToken) -> Result<(), AppError> {
    let sandbox = start_sandbox(&opts, cancel).await?;
    let alice = SANDBOX_ADVISORS[0];
    let url = sandbox.pod.url();
    let sim_url = sandbox.sim.url();
    let im = &sandbox.im;
    println!(
        "\nwa-groups-bot sandbox is running.\n\n  console: {console}\n\n  \
         Open it in a browser: act as any advisor in Symphony (left) and as any contact's phone\n  \
         on WhatsApp (right). Try `/wa create \"Deal team\" +447911123456` in Alice's IM with the bot.\n\n  \
         mock pod: {url}  (control API under {url}/_sandbox/)\n  \
         WhatsApp simulator: {sim_url}  (control API under {sim_url}/_sandbox/wa/)\n  \
         bot: {} (user {}), logged in over RS512 with the key in {}\n  \
         advisors: {}\n  WhatsApp contacts: {}\n  \
         state: kept in {} (delete the folder to start afresh)\n\n\
         The same with curl: Alice asks the bot for help in their IM, then reads the answer:\n\n  \
         curl -s -XPOST {url}/_sandbox/streams/{im}/messages -H 'content-type: application/json' \\\n    \
         -d '{{\"as\": {}, \"messageML\": \"<messageML>/wa help</messageML>\"}}'\n  \
         curl -s {url}/_sandbox/streams/{im}/messages\n\n\
         Alice creates a WhatsApp group with Bob and a contact, who then sees the invitation:\n\n  \
         curl -s -XPOST {url}/_sandbox/streams/{im}/messages -H 'content-type: application/json' \\\n    \
         -d '{{\"as\": {}, \"messageML\": \"<messageML>/wa create \\\"Deal team\\\" <mention uid=\\\"10003\\\"/> +447911123456</messageML>\"}}'\n  \
         curl -s {sim_url}/_sandbox/wa/phones/447911123456/inbox\n\n\
         The contact taps the link from the invitation (the bot approves only invited contacts):\n\n  \
         curl -s -XPOST {sim_url}/_sandbox/wa/phones/447911123456/tap -H 'content-type: application/json' -d '{{\"link\": \"<the link>\"}}'\n\n\
         Ctrl-C stops everything.\n",
        SANDBOX_BOT.1,
        SANDBOX_BOT.0,
        opts.data_dir.display(),
        SANDBOX_ADVISORS
            .iter()
            .map(|(id, _, name)| format!("{name} ({id})"))
            .collect::<Vec<_>>()
            .join(", "),
        SANDBOX_CONTACTS
            .iter()
            .map(|(phone, name)| format!("{name} (+{phone})"))
            .collect::<Vec<_>>()
            .join(", "),
        opts.data_dir.display(),
        alice.0,
        alice.0,
        console = sandbox.console.url(),
    );
    sandbox.wait().await;
    Ok(())
}
