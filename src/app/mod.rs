//! Wiring: builds the clients, store and services, runs the tasks under supervision, stops
//! them cleanly. Nothing imports this module; it is the only one that knows every other.

mod housekeeping;
mod sandbox;

use housekeeping::Housekeeping;
pub use sandbox::{
    MockPodTimings, SANDBOX_ACCESS_TOKEN, SANDBOX_ADVISORS, SANDBOX_APP_SECRET, SANDBOX_BOT,
    SANDBOX_CONTACTS, SANDBOX_PHONE_NUMBER_ID, Sandbox, SandboxOptions, SandboxPorts, keygen,
    prepare_sandbox, run_demo, run_mock_pod, run_sandbox, run_whatsapp_sim, start_sandbox,
};

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use secrecy::ExposeSecret;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::commands::router::CommandRouter;
use crate::config::Config;
use crate::dispatch::{Decider, DispatchPolicy, Dispatcher};
use crate::domain::UserId;
use crate::effects::EffectExecutor;
use crate::groups::service::{GroupService, GroupSettings};
use crate::metrics::{Metrics, TaskState};
use crate::relay::RelayService;
use crate::store::{Store, StoreError};
use crate::symphony::{DatafeedLoop, SymphonyClient, SymphonyError};
use crate::templates::{TemplateError, Templates};
use crate::whatsapp::WhatsAppClient;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Templates(#[from] TemplateError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Symphony: {0}")]
    Symphony(#[from] SymphonyError),
    #[error(transparent)]
    Keys(#[from] crate::keys::KeyError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Sandbox(String),
    #[error("{0}")]
    Startup(String),
    /// A task the bot needs stopped: the process must exit non-zero so that it is restarted.
    #[error("the bot stopped: {0}")]
    Fatal(String),
}

/// A running bot.
pub struct Bot {
    pub bot_user: UserId,
    pub store: Store,
    /// Where the WhatsApp webhook receiver listens (when an app secret is configured).
    pub webhook_addr: Option<SocketAddr>,
    /// The bot's HTTP listener (`whatsapp.webhook.listen`): the webhook receiver when an app
    /// secret is configured, and `/healthz` and `/metrics` unless `monitoring.listen` is set.
    pub http_addr: SocketAddr,
    /// Where `/healthz` and `/metrics` are served: `monitoring.listen`, else `http_addr`.
    pub monitoring_addr: SocketAddr,
    pub metrics: Metrics,
    cancel: CancellationToken,
    tracker: TaskTracker,
    /// Why the bot stopped on its own, if it did.
    fatal: Arc<Mutex<Option<String>>>,
    /// Held until the bot has stopped: no second instance on the same SQLite store.
    _instance: Option<crate::store::InstanceLock>,
}

/// Runs long-lived tasks: each one's state is shown by `/healthz`; one that ends while the bot
/// runs (an error, a panic, or just returning) stops the whole bot with its reason.
#[derive(Clone)]
struct Supervisor {
    tracker: TaskTracker,
    metrics: Metrics,
    cancel: CancellationToken,
    fatal: Arc<Mutex<Option<String>>>,
}

impl Supervisor {
    fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        let me = self.clone();
        self.metrics.task_state(name, TaskState::Running);
        self.tracker.spawn(async move {
            let ended = AssertUnwindSafe(task).catch_unwind().await;
            let reason = match ended {
                Ok(Ok(())) if me.cancel.is_cancelled() => None,
                Ok(Ok(())) => Some(format!("{name} ended")),
                Ok(Err(e)) => Some(format!("{name}: {e}")),
                Err(_) => Some(format!("{name} panicked")),
            };
            let Some(reason) = reason else { return };
            tracing::error!(task = name, %reason, "a task the bot needs stopped; stopping");
            me.metrics.task_state(name, TaskState::Stopped(reason.clone()));
            me.fatal.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(reason);
            me.cancel.cancel();
        });
    }
}

impl Bot {
    /// Logs in, then starts the datafeed loop and the dispatcher. Returns once the bot is up.
    pub async fn start(
        config: Config,
        templates: Templates,
        cancel: CancellationToken,
    ) -> Result<Bot, AppError> {
        Self::start_with(config, templates, cancel, BotTimings::default()).await
    }

    /// [`Bot::start`] with other timings (tests shorten them).
    pub async fn start_with(
        config: Config,
        templates: Templates,
        cancel: CancellationToken,
        timings: BotTimings,
    ) -> Result<Bot, AppError> {
        // SQLite takes one instance; PostgreSQL (store.url) any number.
        let instance = match config.store.is_shared() {
            true => None,
            false => Some(crate::store::InstanceLock::acquire(&config.store.path)?),
        };
        let store = Store::open_config(&config.store)?;
        let metrics = Metrics::default();
        let symphony = SymphonyClient::new(&config.symphony)?.with_metrics(metrics.clone());
        symphony.authenticate().await?;
        let me = symphony.session_info().await?;
        let bot_user = me.id;
        tracing::info!(bot_user = %bot_user, "logged in to Symphony");

        let wake = Arc::new(Notify::new());
        let tracker = TaskTracker::new();
        let fatal = Arc::new(Mutex::new(None));
        let supervisor = Supervisor {
            tracker: tracker.clone(),
            metrics: metrics.clone(),
            cancel: cancel.clone(),
            fatal: fatal.clone(),
        };

        // The HTTP listener: health and metrics always (an orchestrator probes them even when
        // WhatsApp is not set up) unless they have their own, WhatsApp webhooks → store when an
        // app secret is configured (signature checked first; 200 only once persisted). Both
        // listeners cut slow and oversized requests (`whatsapp.webhook.*` limits).
        let hook = &config.whatsapp.webhook;
        let listener = tokio::net::TcpListener::bind(hook.listen).await.map_err(|e| {
            AppError::Startup(format!(
                "cannot listen on {} (whatsapp.webhook.listen): {e}",
                hook.listen
            ))
        })?;
        let http_addr = listener.local_addr()?;
        let monitoring = crate::monitoring::router(crate::monitoring::MonitoringState {
            store: store.clone(),
            metrics: metrics.clone(),
            datafeed_stale_after: config.symphony.read_timeout,
            probing: Default::default(),
        });
        // `/healthz` and `/metrics` on their own listener (`monitoring.listen`), else here.
        let (mut router, monitoring_addr) = match config.monitoring.listen {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                    AppError::Startup(format!("cannot listen on {addr} (monitoring.listen): {e}"))
                })?;
                let monitoring_addr = listener.local_addr()?;
                let cancel = cancel.clone();
                let limits = hook.limits;
                supervisor.spawn("monitoring http", async move {
                    crate::webhook::serve_with(listener, monitoring, limits, 64 * 1024, cancel)
                        .await
                        .map_err(|e| e.to_string())
                });
                (axum::Router::new(), monitoring_addr)
            }
            None => (monitoring, http_addr),
        };
        let webhook_addr = if config.whatsapp.app_secret.expose_secret().is_empty() {
            tracing::warn!("whatsapp.appSecret is not set: the WhatsApp webhook receiver is off");
            None
        } else {
            router = router.merge(crate::webhook::router(
                &hook.path,
                crate::webhook::WebhookState {
                    store: store.clone(),
                    app_secret: config.whatsapp.app_secret.clone(),
                    verify_token: hook.verify_token.clone(),
                    wake: wake.clone(),
                    metrics: metrics.clone(),
                    phone_number_id: config.whatsapp.phone_number_id.clone(),
                    waba_id: config.whatsapp.waba_id.clone(),
                },
            ));
            tracing::info!(addr = %http_addr, path = %hook.path, "WhatsApp webhook receiver listening");
            Some(http_addr)
        };
        let http_cancel = cancel.clone();
        let limits = hook.limits;
        supervisor.spawn("http", async move {
            crate::webhook::serve_with(
                listener,
                router,
                limits,
                crate::webhook::MAX_BODY_BYTES,
                http_cancel,
            )
            .await
            .map_err(|e| e.to_string())
        });
        tracing::info!(addr = %monitoring_addr, "serving /healthz and /metrics");

        // Datafeed → store: a batch is acknowledged only once every event is persisted.
        // Persisting lives in `intake` (messages keyed by message id, the
        // watermark advanced); each new feed first catches up on what was posted without one.
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let feed = DatafeedLoop::new(symphony.clone(), config.symphony.datafeed.retry)
            .on_ready(ready_tx)
            .on_new_feed(crate::intake::catch_up_hook(
                store.clone(),
                crate::symphony::CatchUp::new(symphony.clone(), bot_user),
            ));
        // Filled once the dispatcher exists: events are decided on receipt from then on.
        let on_receipt = crate::intake::OnReceipt::default();
        let handler = crate::intake::batch_handler(
            store.clone(),
            metrics.clone(),
            wake.clone(),
            bot_user,
            on_receipt.clone(),
        );
        let feed_cancel = cancel.clone();
        supervisor.spawn("datafeed", async move {
            feed.run(handler, feed_cancel).await.map_err(|e| e.to_string())
        });

        let effects_wake = Arc::new(Notify::new());
        let whatsapp = if config.whatsapp.is_configured() {
            Some(
                WhatsAppClient::new(&config.whatsapp, config.symphony.retry)
                    .map_err(|e| AppError::Startup(e.to_string()))?
                    .with_metrics(metrics.clone()),
            )
        } else {
            tracing::warn!(
                "whatsapp.phoneNumberId / accessToken not set: WhatsApp groups cannot be created"
            );
            None
        };
        let business = match &whatsapp {
            Some(wa) => match wa.business_number().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the business phone number; it will not be refused as a contact");
                    Default::default()
                }
            },
            None => Default::default(),
        };
        let templates = Arc::new(templates);
        let groups = Arc::new(GroupService {
            templates: templates.clone(),
            settings: GroupSettings {
                features: config.features,
                entitlements: config.entitlements.clone(),
                wa_templates: config.whatsapp.templates.clone(),
                business,
            },
        });
        let relay = Arc::new(RelayService { templates: templates.clone() });
        let executor = Arc::new(EffectExecutor {
            store: store.clone(),
            symphony: symphony.clone(),
            whatsapp,
            templates: templates.clone(),
            message_template: config.whatsapp.templates.message.clone(),
            retry: config.symphony.retry,
            metrics: metrics.clone(),
            dispatcher: wake.clone(),
            names: Default::default(),
            recorder: Default::default(),
        });
        let housekeeping = Housekeeping {
            store: store.clone(),
            executor: executor.clone(),
            wake: wake.clone(),
            timings,
            retention: Duration::from_secs(u64::from(config.store.retention_days) * 86_400),
        };
        let housekeeping_cancel = cancel.clone();
        supervisor.spawn("housekeeping", async move {
            housekeeping.run(housekeeping_cancel).await;
            Ok(())
        });
        let executor_cancel = cancel.clone();
        let executor_wake = effects_wake.clone();
        supervisor.spawn("executor", async move {
            executor.run(executor_wake, executor_cancel).await;
            Ok(())
        });
        let decider = Decider {
            router: CommandRouter {
                templates: templates.clone(),
                groups: groups.clone(),
                relay: relay.clone(),
                bot: bot_user,
                metrics: metrics.clone(),
            },
            groups,
            relay,
            templates,
            live: symphony.clone(),
        };
        let dispatcher = Arc::new(Dispatcher::new(
            store.clone(),
            decider,
            effects_wake,
            metrics.clone(),
            timings.dispatch,
        ));
        let _ = on_receipt.set(dispatcher.clone());
        let dispatch_cancel = cancel.clone();
        supervisor.spawn("dispatcher", async move {
            dispatcher.run(wake, dispatch_cancel).await;
            Ok(())
        });
        tracker.close();
        // Up means listening: an event sent from now on reaches the bot. If the loop gives up
        // first, the sender is dropped and so is this wait.
        if ready_rx.await.is_err() {
            cancel.cancel();
            tracker.wait().await;
            let why = fatal.lock().unwrap_or_else(|e| e.into_inner()).clone();
            return Err(AppError::Startup(format!(
                "the datafeed could not be started: {}",
                why.unwrap_or_else(|| "see the log".into())
            )));
        }
        Ok(Bot {
            bot_user,
            store,
            webhook_addr,
            http_addr,
            monitoring_addr,
            metrics,
            cancel,
            tracker,
            fatal,
            _instance: instance,
        })
    }

    /// Waits until the bot stops: `Ok` when it was cancelled, the reason when a task it needs
    /// ended on its own (the process should then exit non-zero).
    pub async fn wait(self) -> Result<(), AppError> {
        self.cancel.cancelled().await;
        if tokio::time::timeout(Duration::from_secs(10), self.tracker.wait()).await.is_err() {
            tracing::warn!("some tasks did not stop within 10 s");
        }
        match self.fatal.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(reason) => Err(AppError::Fatal(reason)),
            None => Ok(()),
        }
    }

    /// Stops the bot and waits for its tasks.
    pub async fn stop(self) {
        self.cancel.cancel();
        if let Err(e) = self.wait().await {
            tracing::warn!(error = %e, "the bot had stopped on its own");
        }
    }
}

/// How long the bot waits for things that may never come, and how its dispatcher retries.
#[derive(Debug, Clone, Copy)]
pub struct BotTimings {
    /// A WhatsApp group whose `group_create` webhook has not come after this is looked up.
    pub group_create_timeout: Duration,
    /// How often the reconciler looks.
    pub reconcile_every: Duration,
    /// The dispatcher's retries and parallelism.
    pub dispatch: DispatchPolicy,
}

impl Default for BotTimings {
    fn default() -> Self {
        Self {
            group_create_timeout: Duration::from_secs(120),
            reconcile_every: Duration::from_secs(30),
            dispatch: DispatchPolicy::default(),
        }
    }
}

/// The async runtime `run` wants for `config`. With a store of its own (SQLite) one thread:
/// its work is one writer's short local calls between network waits, and a second worker
/// only added hand-offs between threads (P1: 98 vs 115-120 us of CPU a command, and more
/// replies a second; the few slow steps, SQLite's commits, persistence and the health probe,
/// run on blocking threads either way). With a shared store (PostgreSQL) every store call waits
/// for a round trip on the calling thread: there the workers run other keys meanwhile.
pub fn runtime(config: &Config) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match config.store.is_shared() {
        true => tokio::runtime::Builder::new_multi_thread(),
        false => tokio::runtime::Builder::new_current_thread(),
    };
    builder.enable_all().build()
}

/// Runs the bot until cancelled; an error when it stopped on its own.
pub async fn run(config: Config, cancel: CancellationToken) -> Result<(), AppError> {
    let templates = Templates::load(&config.templates.dir)?;
    let bot = Bot::start(config, templates, cancel).await?;
    bot.wait().await
}
