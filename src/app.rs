//! Wiring: builds the clients, store and services, runs the tasks, stops them cleanly.
//! Nothing imports this module; it is the only one that knows every other.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::commands::{self, Command};
use crate::config::Config;
use crate::effects::{Effect, EffectExecutor};
use crate::events::WhatsAppEvent;
use crate::events::{InboundEvent, SymphonyEvent, SymphonyEventKind};
use crate::groups::service::{GroupService, GroupSettings, InfoExtras, Manage, Requester};
use crate::groups::{StreamId, UserId};
use crate::metrics::{EventSource, Metrics};
use crate::relay::{RelayService, WaInbound};
use crate::sandbox::console::{Console, ConsoleConfig, Directory, DirectoryContact, DirectoryUser};
use crate::sandbox::mock_pod::{MockPod, MockPodConfig, MockUser};
use crate::sandbox::wa_sim::{WhatsAppSim, WhatsAppSimConfig};
use crate::store::{InboundRow, Origin, Source, Store, StoreError};
use crate::symphony::datafeed::BatchHandler;
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
}

/// A running bot.
pub struct Bot {
    pub bot_user: UserId,
    pub store: Store,
    /// Where the WhatsApp webhook receiver listens (when an app secret is configured).
    pub webhook_addr: Option<SocketAddr>,
    /// The bot's HTTP listener (`whatsapp.webhook.listen`): `/healthz` and `/metrics` always,
    /// the webhook receiver too when an app secret is configured.
    pub http_addr: SocketAddr,
    cancel: CancellationToken,
    tracker: TaskTracker,
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
        let store = Store::open(&config.store.path)?;
        let metrics = Metrics::default();
        let symphony = SymphonyClient::new(&config.symphony)?.with_metrics(metrics.clone());
        symphony.authenticate().await?;
        let me = symphony.session_info().await?;
        let bot_user = me.id;
        tracing::info!(bot_user = %bot_user, "logged in to Symphony");

        let wake = Arc::new(Notify::new());
        let tracker = TaskTracker::new();

        // One HTTP listener: health and metrics always (an orchestrator probes them even when
        // WhatsApp is not set up), WhatsApp webhooks → store when an app secret is configured
        // (signature checked first; 200 only once persisted).
        let hook = &config.whatsapp.webhook;
        let listener = tokio::net::TcpListener::bind(hook.listen).await.map_err(|e| {
            AppError::Startup(format!(
                "cannot listen on {} (whatsapp.webhook.listen): {e}",
                hook.listen
            ))
        })?;
        let http_addr = listener.local_addr()?;
        let mut router = crate::monitoring::router(crate::monitoring::MonitoringState {
            store: store.clone(),
            metrics: metrics.clone(),
            datafeed_stale_after: config.symphony.read_timeout,
        });
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
                },
            ));
            tracing::info!(addr = %http_addr, path = %hook.path, "WhatsApp webhook receiver listening");
            Some(http_addr)
        };
        let http_cancel = cancel.clone();
        tracker.spawn(async move {
            if let Err(e) = crate::webhook::serve(listener, router, http_cancel).await {
                tracing::error!(error = %e, "the HTTP listener stopped");
            }
        });
        tracing::info!(addr = %http_addr, "serving /healthz and /metrics");

        // Datafeed → store: a batch is acknowledged only once every event is persisted.
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let feed =
            DatafeedLoop::new(symphony.clone(), config.symphony.datafeed.retry).on_ready(ready_tx);
        let feed_store = store.clone();
        let feed_metrics = metrics.clone();
        let feed_wake = wake.clone();
        let feed_cancel = cancel.clone();
        tracker.spawn(async move {
            let handler: BatchHandler = Box::new(move |events: Vec<SymphonyEvent>| {
                let store = feed_store.clone();
                let metrics = feed_metrics.clone();
                let wake = feed_wake.clone();
                Box::pin(async move {
                    for event in events {
                        let payload = serde_json::to_value(InboundEvent::Symphony(event.clone()))
                            .map_err(|e| e.to_string())?;
                        let new = store
                            .enqueue_inbound(Source::Symphony, &event.id, &payload)
                            .map_err(|e| e.to_string())?;
                        metrics.inbound_event(EventSource::Symphony, new);
                    }
                    wake.notify_one();
                    Ok(())
                })
            });
            if let Err(e) = feed.run(handler, feed_cancel.clone()).await {
                tracing::error!(error = %e, "datafeed loop stopped");
                feed_cancel.cancel();
            }
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
                    None
                }
            },
            None => None,
        };
        let templates = Arc::new(templates);
        let groups = Arc::new(GroupService {
            store: store.clone(),
            templates: templates.clone(),
            settings: GroupSettings {
                features: config.features,
                entitlements: config.entitlements.clone(),
                wa_templates: config.whatsapp.templates.clone(),
                business,
            },
        });
        if let Some(wa) = &whatsapp {
            let reconciler = Reconciler {
                store: store.clone(),
                whatsapp: wa.clone(),
                groups: groups.clone(),
                effects: effects_wake.clone(),
                timings,
            };
            tracker.spawn(reconciler.run(cancel.clone()));
        }
        let relay = Arc::new(RelayService { store: store.clone(), templates: templates.clone() });
        let executor = EffectExecutor {
            relay: relay.clone(),
            store: store.clone(),
            symphony: symphony.clone(),
            whatsapp,
            groups: groups.clone(),
            retry: config.symphony.retry,
            metrics: metrics.clone(),
        };
        tracker.spawn(executor.run(effects_wake.clone(), cancel.clone()));
        let dispatcher = Dispatcher {
            waiting: Default::default(),
            store: store.clone(),
            relay,
            templates,
            groups,
            symphony: symphony.clone(),
            bot_user,
            effects: effects_wake,
            metrics,
        };
        let dispatch_cancel = cancel.clone();
        tracker.spawn(async move { dispatcher.run(wake, dispatch_cancel).await });
        tracker.close();
        // Up means listening: an event sent from now on reaches the bot. If the loop gives up
        // first, the sender is dropped and so is this wait.
        if ready_rx.await.is_err() {
            cancel.cancel();
            tracker.wait().await;
            return Err(AppError::Startup(
                "the datafeed could not be started (see the log)".into(),
            ));
        }
        Ok(Bot { bot_user, store, webhook_addr, http_addr, cancel, tracker })
    }

    /// Waits until the bot stops (cancellation or a fatal error).
    pub async fn wait(self) {
        self.cancel.cancelled().await;
        if tokio::time::timeout(Duration::from_secs(10), self.tracker.wait()).await.is_err() {
            tracing::warn!("some tasks did not stop within 10 s");
        }
    }

    /// Stops the bot and waits for its tasks.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.wait().await;
    }
}

/// How long the bot waits for things that may never come.
#[derive(Debug, Clone, Copy)]
pub struct BotTimings {
    /// A WhatsApp group whose `group_create` webhook has not come after this is looked up.
    pub group_create_timeout: Duration,
    /// How often the reconciler looks.
    pub reconcile_every: Duration,
}

impl Default for BotTimings {
    fn default() -> Self {
        Self {
            group_create_timeout: Duration::from_secs(120),
            reconcile_every: Duration::from_secs(30),
        }
    }
}

/// Heals what webhooks did not say: a created group whose `group_create` never came is found
/// through the list of groups (and set up as usual), or reported as failed in its room.
struct Reconciler {
    store: Store,
    whatsapp: WhatsAppClient,
    groups: Arc<GroupService>,
    effects: Arc<Notify>,
    timings: BotTimings,
}

impl Reconciler {
    async fn run(self, cancel: CancellationToken) {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(self.timings.reconcile_every) => {}
            }
            if let Err(e) = self.reconcile().await {
                tracing::warn!(error = %e, "reconciliation failed; will try again");
            }
        }
    }

    async fn reconcile(&self) -> Result<(), String> {
        let overdue = self
            .store
            .groups_awaiting_webhook(self.timings.group_create_timeout)
            .map_err(|e| e.to_string())?;
        if overdue.is_empty() {
            return Ok(());
        }
        let existing = self.whatsapp.all_groups().await.map_err(|e| e.to_string())?;
        for group in overdue {
            let Some(request_id) = group.create_request_id.clone() else { continue };
            let linked =
                |id: &crate::groups::GroupId| self.store.group_by_wa(id).ok().flatten().is_some();
            let found = existing
                .iter()
                .find(|g| g.subject.as_deref() == Some(group.name.as_str()) && !linked(&g.id));
            let effects = match found {
                Some(g) => {
                    tracing::warn!(group = %g.id, "group_create never came; the group was found by listing");
                    let link = self.whatsapp.invite_link(&g.id).await.map_err(|e| e.to_string())?;
                    self.groups.on_group_created(&request_id, &g.id, Some(&link))
                }
                None => {
                    let error = crate::events::whatsapp::WaError {
                        code: 0,
                        title: None,
                        message: Some("WhatsApp never confirmed the group, and it does not exist".into()),
                        details: None,
                    };
                    self.groups.on_group_create_failed(&request_id, &[error])
                }
            }
            .map_err(|e| e.to_string())?;
            let queued: Vec<_> = effects.iter().filter_map(|e| e.to_outbox().ok()).collect();
            self.store.queue_effects(&queued).map_err(|e| e.to_string())?;
            self.effects.notify_one();
        }
        Ok(())
    }
}

/// Runs the bot until cancelled.
pub async fn run(config: Config, cancel: CancellationToken) -> Result<(), AppError> {
    let templates = Templates::load(&config.templates.dir)?;
    let bot = Bot::start(config, templates, cancel).await?;
    bot.wait().await;
    Ok(())
}

/// Takes persisted inbound events in order and decides what they cause; each event's effects are
/// queued in the outbox in the same transaction as its processed mark.
struct Dispatcher {
    /// When each event first could not be decided yet ("not yet"): given up after a minute.
    waiting: std::sync::Mutex<std::collections::HashMap<i64, std::time::Instant>>,
    store: Store,
    relay: Arc<RelayService>,
    templates: Arc<Templates>,
    groups: Arc<GroupService>,
    /// Live reads only (a room's owners before a management command); actions go through effects.
    symphony: SymphonyClient,
    bot_user: UserId,
    /// Wakes the effect executor.
    effects: Arc<Notify>,
    /// Commands are counted here.
    metrics: Metrics,
}

/// Why an event could not be decided now.
enum Undecided {
    /// Worth trying again later (the pod could not be read): the event stays pending.
    Retry(String),
    /// Came before what it refers to: retried for a while, then dropped.
    NotYet(String),
    /// Will never work: logged, and the event is marked processed.
    Drop(String),
}

impl From<crate::groups::service::ServiceError> for Undecided {
    fn from(e: crate::groups::service::ServiceError) -> Self {
        match e {
            crate::groups::service::ServiceError::NotYet(reason) => Undecided::NotYet(reason),
            other => Undecided::Retry(other.to_string()),
        }
    }
}

impl From<TemplateError> for Undecided {
    fn from(e: TemplateError) -> Self {
        Undecided::Drop(e.to_string())
    }
}

impl Dispatcher {
    async fn run(self, wake: Arc<Notify>, cancel: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let delay = match self.drain().await {
                Ok(()) => {
                    failures = 0;
                    Duration::from_secs(5)
                }
                Err(reason) => {
                    failures += 1;
                    let delay = Duration::from_millis(200 * 2u64.pow(failures.min(7)));
                    tracing::warn!(%reason, ?delay, "event handling failed; will retry");
                    delay
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = wake.notified() => {}
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn drain(&self) -> Result<(), String> {
        loop {
            let rows = self.store.pending_inbound(100).map_err(|e| e.to_string())?;
            if rows.is_empty() {
                return Ok(());
            }
            for row in rows {
                let effects = match self.decide(&row).await {
                    Ok(effects) => effects,
                    Err(Undecided::NotYet(reason)) => {
                        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
                        let since = *waiting.entry(row.id).or_insert_with(std::time::Instant::now);
                        if since.elapsed() < Duration::from_secs(60) {
                            return Err(reason);
                        }
                        waiting.remove(&row.id);
                        tracing::warn!(id = row.id, %reason, "event dropped: what it refers to never appeared");
                        Vec::new()
                    }
                    Err(Undecided::Retry(reason)) => return Err(reason),
                    Err(Undecided::Drop(reason)) => {
                        tracing::error!(id = row.id, key = %row.dedupe_key, %reason, "event dropped: it cannot be handled");
                        Vec::new()
                    }
                };
                let queued: Vec<_> = effects.iter().filter_map(|e| e.to_outbox().ok()).collect();
                self.store.complete_inbound(row.id, &queued).map_err(|e| e.to_string())?;
                if !queued.is_empty() {
                    self.effects.notify_one();
                }
            }
        }
    }

    /// What an event causes.
    async fn decide(&self, row: &InboundRow) -> Result<Vec<Effect>, Undecided> {
        let event: InboundEvent = serde_json::from_value(row.payload.clone())
            .map_err(|e| Undecided::Drop(format!("undecodable stored event: {e}")))?;
        match event {
            InboundEvent::Symphony(event) => self.on_symphony(event).await,
            InboundEvent::WhatsApp(event) => self.on_whatsapp(event),
        }
    }

    fn on_whatsapp(&self, event: WhatsAppEvent) -> Result<Vec<Effect>, Undecided> {
        // Names and numbers stay out of the log.
        let kind = serde_json::to_value(&event)
            .ok()
            .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
            .unwrap_or_default();
        tracing::info!(%kind, group = ?event.group(), "WhatsApp event received");
        let g = &self.groups;
        Ok(match &event {
            WhatsAppEvent::GroupCreated { request_id: Some(r), group_id, invite_link, .. } => {
                g.on_group_created(r, group_id, invite_link.as_deref())?
            }
            WhatsAppEvent::GroupCreateFailed { request_id: Some(r), errors, .. } => {
                g.on_group_create_failed(r, errors)?
            }
            WhatsAppEvent::JoinRequestCreated { group_id, join_request_id, user, .. } => {
                g.on_join_request(group_id, join_request_id, user)?
            }
            WhatsAppEvent::ParticipantsAdded { group_id, participants, .. } => {
                g.on_participants_added(group_id, participants)?
            }
            WhatsAppEvent::ParticipantsRemoved { group_id, initiated_by, removed, .. } => {
                g.on_participants_removed(group_id, initiated_by.as_deref(), removed)?
            }
            WhatsAppEvent::Message { .. } => match WaInbound::from_event(&event) {
                Some(m) => self.relay.from_whatsapp(m)?,
                None => Vec::new(),
            },
            WhatsAppEvent::Status { message_id, status, participant, errors, .. } => {
                self.relay.on_status(message_id, status, participant.as_ref(), errors, false)?
            }
            _ => Vec::new(),
        })
    }

    async fn on_symphony(&self, event: SymphonyEvent) -> Result<Vec<Effect>, Undecided> {
        let g = &self.groups;
        let name = event.affected_name.as_deref();
        let bot = self.bot_user;
        Ok(match event.kind {
            SymphonyEventKind::MessageSent(message) => {
                return self.on_message(&event.id, event.initiator, message).await;
            }
            SymphonyEventKind::RoomUpdated { stream, name: Some(new_name) } => {
                g.on_room_renamed(&stream, &new_name)?
            }
            SymphonyEventKind::UserJoinedRoom { stream, user } => {
                g.on_joined(&stream, user, name, bot)?
            }
            SymphonyEventKind::UserLeftRoom { stream, user } => {
                g.on_membership(&stream, user, name, None, bot)?
            }
            SymphonyEventKind::MemberPromotedToOwner { stream, user } => {
                g.on_membership(&stream, user, name, Some(true), bot)?
            }
            SymphonyEventKind::MemberDemotedFromOwner { stream, user } => {
                g.on_membership(&stream, user, name, Some(false), bot)?
            }
            SymphonyEventKind::RoomDeactivated { stream } => g.on_room_deactivated(&stream)?,
            SymphonyEventKind::ElementsAction {
                stream,
                form_message_id,
                form_id,
                values,
                initiator_email,
            } => {
                // One group per form, however often it is submitted.
                let origin =
                    Origin { key: format!("form:{form_message_id}"), event: event.id.clone() };
                let who = (event.initiator, initiator_email);
                self.on_form_submitted(who, stream, &form_id, &values, &origin)?
            }
            _ => Vec::new(),
        })
    }

    /// A submission of the create form runs the command's create, as its submitter, answering
    /// in the stream of the form; values that cannot be used bring the form back with every
    /// problem and what was typed. Other forms are not the bot's.
    fn on_form_submitted(
        &self,
        (initiator, email): (Option<UserId>, Option<String>),
        stream: StreamId,
        form_id: &str,
        values: &serde_json::Value,
        origin: &Origin,
    ) -> Result<Vec<Effect>, Undecided> {
        if !commands::form::is_create_submission(form_id, values) {
            return Ok(Vec::new());
        }
        let user = initiator
            .ok_or_else(|| Undecided::Drop("a form submission without its submitter".into()))?;
        tracing::info!(%user, form_id, "create form submitted");
        let who = Requester { user, email, stream };
        match commands::form::parse_create_form(values) {
            Ok(r) => Ok(self.groups.create(
                &who,
                &r.name,
                &r.advisors,
                &r.contacts,
                r.standard,
                origin,
            )?),
            Err(invalid) => {
                let form = &invalid.submitted;
                let message_ml =
                    commands::form::render_create_form(&self.templates, form, &invalid.problems)?;
                Ok(vec![Effect::PostMessage { stream: who.stream, message_ml }])
            }
        }
    }

    async fn on_message(
        &self,
        event_id: &str,
        initiator: Option<UserId>,
        message: crate::events::ReceivedMessage,
    ) -> Result<Vec<Effect>, Undecided> {
        // The bot's own messages come back through the datafeed: never react to them.
        if message.sender == self.bot_user || initiator == Some(self.bot_user) {
            return Ok(Vec::new());
        }
        let segments =
            crate::symphony::messageml::parse(&message.presentation_ml, message.data.as_deref())
                .map_err(|e| Undecided::Drop(format!("unreadable message: {e}")))?
                .segments;
        let who = Requester {
            user: message.sender,
            email: message.sender_email.clone(),
            stream: message.stream.clone(),
        };
        let reply = |ml: String| {
            Ok(vec![Effect::PostMessage { stream: message.stream.clone(), message_ml: ml }])
        };
        let parsed = commands::parse(&segments, self.bot_user);
        match &parsed {
            Ok(Some(command)) => self.metrics.command(command.name()),
            Err(_) => self.metrics.command("invalid"),
            Ok(None) => {}
        }
        let manage = match parsed {
            Ok(None) => return Ok(self.relay.from_room(&message)?),
            Ok(Some(Command::Help)) => return reply(self.templates.help()?),
            Ok(Some(Command::CreateForm)) => {
                let form = commands::form::CreateForm::default();
                return reply(commands::form::render_create_form(&self.templates, &form, &[])?);
            }
            Ok(Some(Command::Create { name, advisors, contacts, standard })) => {
                let origin = Origin { key: event_id.to_owned(), event: event_id.to_owned() };
                return Ok(self
                    .groups
                    .create(&who, &name, &advisors, &contacts, standard, &origin)?);
            }
            Ok(Some(Command::Info)) => Manage::Info(self.info_extras(&message.stream).await?),
            Ok(Some(Command::Rename { name })) => Manage::Rename(name),
            Ok(Some(Command::Add { advisors, contacts })) => Manage::Add { advisors, contacts },
            Ok(Some(Command::Remove { advisors, contacts })) => {
                Manage::Remove { advisors, contacts }
            }
            Ok(Some(Command::Promote { advisor })) => Manage::Promote(advisor),
            Ok(Some(Command::Demote { advisor })) => Manage::Demote(advisor),
            Ok(Some(Command::Invite { contacts })) => Manage::Invite(contacts),
            Err(e) => return reply(self.templates.usage(&e.to_string(), e.usage())?),
        };
        // Ownership is checked against the pod's live membership, never a cache.
        let owners = if matches!(manage, Manage::Info(_))
            || self.store.group_by_stream(&message.stream).ok().flatten().is_none()
        {
            None
        } else {
            let members = self.symphony.room_members(&message.stream).await.map_err(|e| {
                if e.is_retryable() {
                    Undecided::Retry(e.to_string())
                } else {
                    Undecided::Drop(e.to_string())
                }
            })?;
            Some(members.into_iter().filter(|m| m.owner).map(|m| m.user).collect::<Vec<_>>())
        };
        Ok(self.groups.manage(&who, manage, owners.as_deref())?)
    }

    /// The live part of `/wa info`: the room's attachments and the names of the people shown.
    async fn info_extras(&self, stream: &StreamId) -> Result<InfoExtras, Undecided> {
        let mut extras = InfoExtras::default();
        let Some(group) =
            self.store.group_by_stream(stream).map_err(|e| Undecided::Retry(e.to_string()))?
        else {
            return Ok(extras); // not a group's room: the service says so
        };
        let live = |e: SymphonyError| {
            if e.is_retryable() {
                Undecided::Retry(e.to_string())
            } else {
                Undecided::Drop(e.to_string())
            }
        };
        extras.attachments = self.symphony.stream_attachments(stream).await.map_err(live)?;
        let advisors =
            self.store.advisors(group.key).map_err(|e| Undecided::Retry(e.to_string()))?;
        let mut people: Vec<UserId> = advisors.into_iter().map(|(u, _)| u).collect();
        people.extend(extras.attachments.iter().filter_map(|a| a.user_id));
        people.sort();
        people.dedup();
        for user in people {
            if let Some(name) =
                self.symphony.user_by_id(user).await.map_err(live)?.and_then(|u| u.display_name)
            {
                extras.names.insert(user, name);
            }
        }
        Ok(extras)
    }
}

// ----- the other commands of the binary -----

/// Runs the mock pod alone until cancelled.
pub async fn run_mock_pod(
    listen: SocketAddr,
    users: &Path,
    hold: Duration,
    cancel: CancellationToken,
) -> Result<(), AppError> {
    let users = load_users(users)?;
    let mut cfg = MockPodConfig::new(users);
    cfg.datafeed_hold = hold;
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
        self.bot.wait().await;
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
