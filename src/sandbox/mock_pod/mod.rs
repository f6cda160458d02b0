//! The mock Symphony pod: login, pod, agent and Datafeed v2 endpoints with the official specs'
//! paths, shapes and status codes, plus the `/_sandbox/` control API (DESIGN.md §5.1) to act as
//! people and to inject faults. Everything lives in memory; one origin serves pod, login, relay
//! and agent.

mod api;
mod control;
mod presentation;
mod snapshot;
mod state;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use presentation::{Rendered, render as render_message_ml};
pub use state::PodStats;

/// What an observer of the pod sees ([`MockPod::observe`]), with when it happened.
#[derive(Debug, Clone)]
pub enum PodObservation {
    /// A message was posted (by anyone, the bot included).
    Posted { stream: String, user: i64, text: String, at: std::time::Instant },
    /// A datafeed read came in.
    FeedRead { user: i64, at: std::time::Instant },
}

#[derive(Debug, thiserror::Error)]
pub enum MockPodError {
    #[error("cannot read the users file {path}: {reason}")]
    Users { path: String, reason: String },
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Request(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum UserKind {
    Bot,
    Normal,
}

/// A user of the mock pod. `public_key_pem` is needed only by users who log in (bots).
#[derive(Debug, Clone)]
pub struct MockUser {
    pub id: i64,
    pub username: String,
    pub display_name: String,
    pub email: String,
    pub kind: UserKind,
    pub public_key_pem: Option<String>,
}

#[derive(Debug, Clone)]
pub struct MockPodConfig {
    pub users: Vec<MockUser>,
    /// How long an idle datafeed read is held before answering an empty batch (real pod: ~20 s).
    pub datafeed_hold: Duration,
    /// After this, an unacknowledged batch is handed out again, to whichever reader of the feed
    /// reads next (real pod: ~30 s; `mock-pod --datafeed-redeliver-ms`). Until then its events
    /// are in flight: no other reader gets them.
    pub redelivery_delay: Duration,
    /// A feed not read for this long is gone (real pod: 30 min).
    pub feed_expiry: Duration,
    /// Added before every product-API call is served (datafeed reads excepted: a long poll
    /// already waits), to play a distant pod (`--latency-ms`; the benchmark's create scenario).
    pub latency: Duration,
}

impl MockPodConfig {
    pub fn new(users: Vec<MockUser>) -> Self {
        Self {
            users,
            datafeed_hold: Duration::from_secs(20),
            redelivery_delay: Duration::from_secs(30),
            feed_expiry: Duration::from_secs(30 * 60),
            latency: Duration::ZERO,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserEntry {
    id: i64,
    username: String,
    display_name: String,
    email: String,
    #[serde(rename = "type")]
    kind: UserKind,
    public_key: Option<String>,
}

/// Reads a users YAML file: a list of `{id, username, displayName, email, type: BOT|NORMAL,
/// publicKey: <path to PEM, relative to the file>}`.
pub fn load_users(path: &Path) -> Result<Vec<MockUser>, MockPodError> {
    let err = |reason: String| MockPodError::Users { path: path.display().to_string(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let entries: Vec<UserEntry> = serde_norway::from_str(&text).map_err(|e| err(e.to_string()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut users = Vec::new();
    for e in entries {
        let public_key_pem = match e.public_key {
            Some(p) => {
                let p = base.join(p);
                let pem = std::fs::read_to_string(&p)
                    .map_err(|x| err(format!("{}: {x}", p.display())))?;
                jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes())
                    .map_err(|x| err(format!("{}: not an RSA public key: {x}", p.display())))?;
                Some(pem)
            }
            None => None,
        };
        users.push(MockUser {
            id: e.id,
            username: e.username,
            display_name: e.display_name,
            email: e.email,
            kind: e.kind,
            public_key_pem,
        });
    }
    Ok(users)
}

/// Shared state of a running mock pod.
#[derive(Clone)]
pub(crate) struct Shared {
    state: Arc<Mutex<state::PodState>>,
    /// Woken whenever events are queued, so long polls answer at once.
    events: Arc<Notify>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, state::PodState> {
        // A panic while holding the lock leaves consistent-enough test state: keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn notify(&self) {
        self.events.notify_waiters();
    }
}

/// A message as the mock pod stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostedMessage {
    pub message_id: String,
    pub user: i64,
    pub text: String,
    pub presentation_ml: String,
    pub attachments: Vec<PostedAttachment>,
}

/// A file attached to a posted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostedAttachment {
    pub file_id: String,
    pub name: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// A running mock pod.
pub struct MockPod {
    shared: Shared,
    addr: SocketAddr,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl MockPod {
    /// Starts on 127.0.0.1 with a port chosen by the OS.
    pub async fn start(cfg: MockPodConfig) -> Result<MockPod, MockPodError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Self::start_on(listener, cfg, CancellationToken::new()).await
    }

    /// Starts on a given listener; stops when `cancel` fires.
    pub async fn start_on(
        listener: tokio::net::TcpListener,
        cfg: MockPodConfig,
        cancel: CancellationToken,
    ) -> Result<MockPod, MockPodError> {
        let addr = listener.local_addr()?;
        let shared = Shared {
            state: Arc::new(Mutex::new(state::PodState::new(cfg))),
            events: Arc::new(Notify::new()),
        };
        let app = router(shared.clone());
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(e) = served.await {
                tracing::error!(error = %e, "mock pod stopped");
            }
        });
        tracing::info!(%addr, "mock pod listening");
        Ok(MockPod { shared, addr, cancel, task })
    }

    /// `http://127.0.0.1:PORT`: pod, login, relay and agent all live here.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on, every message posted and datafeed read is sent to the returned receiver
    /// (one observer at a time: a new call replaces the previous one). For benchmarks.
    pub fn observe(&self) -> tokio::sync::mpsc::UnboundedReceiver<PodObservation> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.shared.lock().observer = Some(tx);
        rx
    }

    /// Counters: logins, feeds, reads, redeliveries, faults served.
    pub fn stats(&self) -> PodStats {
        self.shared.lock().stats.clone()
    }

    /// The ids of the messages whose datafeed event was handed out more than once (its reader
    /// did not acknowledge it in time, as when it was killed).
    pub fn redelivered_messages(&self) -> std::collections::HashSet<String> {
        self.shared.lock().redelivered_messages.clone()
    }

    /// An IM/MIM between users (the first is the creator), as `POST /_sandbox/ims`.
    pub fn create_im(&self, members: &[i64]) -> Result<String, MockPodError> {
        let first = *members.first().ok_or_else(|| MockPodError::Request("no members".into()))?;
        let id =
            self.shared.lock().create_im(first, members.to_vec()).map_err(MockPodError::Request)?;
        self.shared.notify();
        Ok(id)
    }

    /// A room created by `owner` with `members`, as `POST /_sandbox/rooms`.
    pub fn create_room(
        &self,
        owner: i64,
        name: &str,
        members: &[i64],
    ) -> Result<String, MockPodError> {
        let id = {
            let mut st = self.shared.lock();
            let id = st.create_room(owner, name, "").map_err(MockPodError::Request)?;
            for m in members.iter().filter(|m| **m != owner) {
                st.membership(owner, &id, "add", *m).map_err(MockPodError::Request)?;
            }
            id
        };
        self.shared.notify();
        Ok(id)
    }

    /// A person posts MessageML, as `POST /_sandbox/streams/{sid}/messages`. Returns the id.
    pub fn post_message(
        &self,
        stream: &str,
        as_user: i64,
        message_ml: &str,
    ) -> Result<String, MockPodError> {
        let id = {
            let mut st = self.shared.lock();
            let names: std::collections::HashMap<i64, String> =
                st.users.iter().map(|(id, u)| (*id, u.display_name.clone())).collect();
            let rendered = presentation::render(message_ml, None, &presentation::names(&names))
                .map_err(MockPodError::Request)?;
            let v4 = st
                .post(
                    as_user,
                    &crate::sandbox::symphony_rules::url_safe_id(stream),
                    rendered,
                    Vec::new(),
                )
                .map_err(MockPodError::Request)?;
            v4["messageId"].as_str().unwrap_or_default().to_owned()
        };
        self.shared.notify();
        Ok(id)
    }

    /// The messages of a stream, oldest first: sender, plain text, PresentationML, attachments.
    pub fn messages(&self, stream: &str) -> Vec<PostedMessage> {
        let st = self.shared.lock();
        st.streams
            .get(&crate::sandbox::symphony_rules::url_safe_id(stream))
            .map(|s| {
                s.messages
                    .iter()
                    .map(|m| PostedMessage {
                        message_id: m.message_id.clone(),
                        user: m.user,
                        text: m.text.clone(),
                        presentation_ml: m.presentation_ml.clone(),
                        attachments: m
                            .attachments
                            .iter()
                            .map(|a| PostedAttachment {
                                file_id: a.id.clone(),
                                name: a.name.clone(),
                                content_type: a.content_type.clone(),
                                bytes: a.bytes.to_vec(),
                            })
                            .collect(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Streams as the control API lists them (`GET /_sandbox/streams`): id, type, name, active,
    /// members with their owner flag.
    pub fn streams(&self) -> Vec<serde_json::Value> {
        let st = self.shared.lock();
        let mut all: Vec<&state::Stream> = st.streams.values().collect();
        all.sort_by_key(|s| s.created_at);
        all.into_iter().map(control::stream_json).collect()
    }

    /// Streams, members and messages as a JSON document ([`MockPod::restore`] takes it back).
    pub fn snapshot(&self) -> serde_json::Value {
        snapshot::export(&self.shared.lock())
    }

    /// A function giving [`Self::snapshot`] at any time (for saving it from another task).
    pub fn snapshotter(&self) -> impl Fn() -> serde_json::Value + Send + Sync + 'static {
        let shared = self.shared.clone();
        move || snapshot::export(&shared.lock())
    }

    /// Replaces every stream with those of a [`MockPod::snapshot`]; on a bad document nothing
    /// changes. Meant for a pod nobody uses yet: no events are emitted.
    pub fn restore(&self, document: &serde_json::Value) -> Result<(), MockPodError> {
        snapshot::import(&mut self.shared.lock(), document).map_err(MockPodError::Request)
    }

    /// Faults for the next `count` calls whose path matches `path` (a regex).
    pub fn inject_fault(
        &self,
        method: Option<&str>,
        path: &str,
        status: u16,
        retry_after: Option<u64>,
        count: u32,
    ) -> Result<(), MockPodError> {
        let path = regex::Regex::new(path).map_err(|e| MockPodError::Request(e.to_string()))?;
        self.shared.lock().faults.add(crate::sandbox::faults::Fault {
            method: method.map(str::to_owned),
            path,
            status,
            code: None,
            retry_after,
            retry_after_date: false,
            hang: None,
            after: false,
            drop: false,
            remaining: count,
        });
        Ok(())
    }

    /// The next `count` calls whose path matches `path` hang for `hang` before being served.
    pub fn inject_hang(&self, path: &str, hang: Duration, count: u32) -> Result<(), MockPodError> {
        let path = regex::Regex::new(path).map_err(|e| MockPodError::Request(e.to_string()))?;
        self.shared.lock().faults.add(crate::sandbox::faults::Fault {
            method: None,
            path,
            status: 0,
            code: None,
            retry_after: None,
            retry_after_date: false,
            hang: Some(hang),
            after: false,
            drop: false,
            remaining: count,
        });
        Ok(())
    }

    /// Every session and key-manager token the pod has issued, expired ones included.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared.lock().issued_tokens.clone()
    }

    /// Every session and key-manager token stops working (next call → 401).
    pub fn expire_sessions(&self) {
        let mut st = self.shared.lock();
        st.sessions.clear();
        st.km_tokens.clear();
    }

    /// The ids of the live datafeeds (of every user), oldest first.
    pub fn datafeeds(&self) -> Vec<String> {
        let st = self.shared.lock();
        let mut feeds: Vec<&state::Feed> = st.feeds.values().filter(|f| !f.expired).collect();
        feeds.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        feeds.into_iter().map(|f| f.id.clone()).collect()
    }

    /// Every existing datafeed is gone at its next read (→ 400).
    pub fn expire_datafeeds(&self) {
        for f in self.shared.lock().feeds.values_mut() {
            f.expired = true;
        }
    }

    /// Stops serving and waits for the server task.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// Largest request body: messages carry attachments (the control API's base64 ones too).
const MAX_BODY_BYTES: usize = 140 * 1024 * 1024;

/// The whole HTTP surface: product API + control API.
pub(crate) fn router(shared: Shared) -> axum::Router {
    api::router(shared.clone())
        .merge(control::router(shared.clone()))
        .method_not_allowed_fallback(api::unsupported)
        .fallback(api::unsupported)
        .layer(axum::middleware::from_fn_with_state(shared, api::inject_faults))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
}
