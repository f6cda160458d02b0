//! The WhatsApp Cloud API simulator: the Graph endpoints of the Groups API and messages under
//! any version prefix (Bearer-checked, Graph-shaped errors, Meta's limits), simulated phones
//! driven through `/_sandbox/wa/` (DESIGN.md §5.1), and webhooks in Meta's envelope, signed with
//! the app secret, delivered in order and retried with backoff until the receiver answers 200.
//! Given several webhook URLs (several bot instances), it spreads deliveries over them
//! round-robin and skips one that refuses connections, as a load balancer in front of them.

mod control;
mod graph;
mod media_rules;
mod snapshot;
mod state;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use state::SimStats;

/// A message the business sent, as an observer sees it ([`WhatsAppSim::observe`]).
#[derive(Debug, Clone)]
pub struct SentObservation {
    /// The group id, or the phone (digits) of a 1:1 message.
    pub chat: String,
    /// `text`, `template`, `image`, …
    pub kind: String,
    /// The text, or a template's first parameter.
    pub text: String,
    pub at: std::time::Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum WaSimError {
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Request(String),
}

/// How the simulator is set up.
#[derive(Clone)]
pub struct WhatsAppSimConfig {
    /// The Bearer token every Graph call must carry.
    pub access_token: String,
    /// Signs webhooks (`X-Hub-Signature-256`).
    pub app_secret: String,
    pub phone_number_id: String,
    /// The business number, digits (`display_phone_number`).
    pub business_phone: String,
    /// Where webhooks go, round-robin when several (none: kept until one is set).
    pub webhook_urls: Vec<String>,
    /// First retry delay of a failed webhook delivery (doubles, capped at 5 s).
    pub webhook_retry_initial: Duration,
    /// Added before every Graph call is served, to play a distant API (`--latency-ms`; the
    /// benchmark's create scenario).
    pub latency: Duration,
}

impl std::fmt::Debug for WhatsAppSimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhatsAppSimConfig")
            .field("phone_number_id", &self.phone_number_id)
            .field("business_phone", &self.business_phone)
            .field("webhook_urls", &self.webhook_urls)
            .finish_non_exhaustive()
    }
}

impl WhatsAppSimConfig {
    pub fn new(access_token: &str, app_secret: &str, phone_number_id: &str) -> Self {
        Self {
            access_token: access_token.to_owned(),
            app_secret: app_secret.to_owned(),
            phone_number_id: phone_number_id.to_owned(),
            business_phone: "447911000001".into(),
            webhook_urls: Vec::new(),
            webhook_retry_initial: Duration::from_millis(200),
            latency: Duration::ZERO,
        }
    }
}

/// One webhook to deliver: the change's `field` and `value`.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub field: String,
    pub value: Value,
}

/// Where webhooks go: the URLs, and which one the next attempt starts with.
#[derive(Debug, Default)]
struct WebhookTargets {
    urls: Vec<String>,
    next: usize,
}

#[derive(Clone)]
pub(crate) struct Shared {
    state: Arc<Mutex<state::SimState>>,
    webhooks: mpsc::UnboundedSender<Outgoing>,
    webhook_targets: Arc<Mutex<WebhookTargets>>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, state::SimState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a webhook (delivered in order by the delivery task).
    pub(crate) fn emit(&self, field: &str, value: Value) {
        let _ = self.webhooks.send(Outgoing { field: field.to_owned(), value });
    }
}

/// A running simulator.
pub struct WhatsAppSim {
    shared: Shared,
    addr: SocketAddr,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl WhatsAppSim {
    /// Starts on 127.0.0.1 with a port chosen by the OS.
    pub async fn start(cfg: WhatsAppSimConfig) -> Result<WhatsAppSim, WaSimError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Self::start_on(listener, cfg, CancellationToken::new()).await
    }

    /// Starts on a given listener; stops when `cancel` fires.
    pub async fn start_on(
        listener: tokio::net::TcpListener,
        cfg: WhatsAppSimConfig,
        cancel: CancellationToken,
    ) -> Result<WhatsAppSim, WaSimError> {
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Shared {
            webhook_targets: Arc::new(Mutex::new(WebhookTargets {
                urls: cfg.webhook_urls.clone(),
                next: 0,
            })),
            state: Arc::new(Mutex::new(state::SimState::new(cfg))),
            webhooks: tx,
        };
        let app = router(shared.clone()).fallback(unsupported);
        let stop = cancel.clone();
        let server = tokio::spawn(async move {
            if let Err(e) =
                axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await
            {
                tracing::error!(error = %e, "WhatsApp simulator stopped");
            }
        });
        let delivery = tokio::spawn(deliver(shared.clone(), rx, cancel.clone()));
        tracing::info!(%addr, "WhatsApp simulator listening");
        Ok(WhatsAppSim { shared, addr, cancel, tasks: vec![server, delivery] })
    }

    /// `http://127.0.0.1:PORT`: the Graph API base URL (`whatsapp.apiBaseUrl`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where webhooks go from now on (queued ones included).
    pub fn set_webhook_url(&self, url: &str) {
        self.set_webhook_urls(&[url]);
    }

    /// Webhooks go to these URLs from now on (queued ones included), spread round-robin, a URL
    /// that refuses the connection skipped: a load balancer in front of several instances.
    pub fn set_webhook_urls<S: AsRef<str>>(&self, urls: &[S]) {
        let mut targets = self.shared.webhook_targets.lock().unwrap_or_else(|e| e.into_inner());
        targets.urls = urls.iter().map(|u| u.as_ref().to_owned()).collect();
        targets.next = 0;
    }

    /// From now on, every message the business sends (and the simulator delivers) is sent to
    /// the returned receiver (one observer at a time). For benchmarks.
    pub fn observe(&self) -> mpsc::UnboundedReceiver<SentObservation> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.shared.lock().observer = Some(tx);
        rx
    }

    pub fn stats(&self) -> SimStats {
        self.shared.lock().stats.clone()
    }

    /// A group as the control API shows it (`GET /_sandbox/wa/groups/{id}`).
    pub fn group(&self, id: &str) -> Option<Value> {
        self.shared.lock().groups.get(id).map(state::Group::to_json)
    }

    /// Every group, oldest first, as `GET /_sandbox/wa/groups` shows them.
    pub fn groups(&self) -> Vec<Value> {
        let st = self.shared.lock();
        st.group_order
            .iter()
            .filter_map(|id| st.groups.get(id))
            .map(state::Group::to_json)
            .collect()
    }

    /// What a phone received (`GET /_sandbox/wa/phones/{phone}/inbox`).
    pub fn inbox(&self, phone: &str) -> Vec<Value> {
        self.shared
            .lock()
            .phones
            .get(phone)
            .map(|p| p.inbox.iter().map(state::Delivered::to_json).collect())
            .unwrap_or_default()
    }

    /// Groups and phones as a JSON document ([`WhatsAppSim::restore`] takes it back).
    pub fn snapshot(&self) -> Value {
        snapshot::export(&self.shared.lock())
    }

    /// A function giving [`Self::snapshot`] at any time (for saving it from another task).
    pub fn snapshotter(&self) -> impl Fn() -> Value + Send + Sync + 'static {
        let shared = self.shared.clone();
        move || snapshot::export(&shared.lock())
    }

    /// Replaces every group and phone with those of a [`WhatsAppSim::snapshot`]; on a bad
    /// document nothing changes. Meant for a simulator nobody uses yet: no webhooks are sent.
    pub fn restore(&self, document: &Value) -> Result<(), WaSimError> {
        snapshot::import(&mut self.shared.lock(), document).map_err(WaSimError::Request)
    }

    /// WhatsApp suspends a group (`true`) or lifts the suspension (`false`), as
    /// `POST /_sandbox/wa/groups/{id}/suspend` does. `false` when there is no such active group.
    pub fn set_suspended(&self, group: &str, suspended: bool) -> bool {
        control::suspend(&self.shared, group, suspended)
    }

    /// Gives a phone a WhatsApp username (as `PUT /_sandbox/wa/phones/{phone}`
    /// `{"username"}`): the business then sees it by `user_id` only.
    pub fn set_phone_username(&self, phone: &str, username: Option<&str>) {
        self.shared.lock().phone(phone.trim_start_matches('+')).username =
            username.map(str::to_owned);
    }

    /// Gives a phone a profile name (as `PUT /_sandbox/wa/phones/{phone}`).
    pub fn set_phone_name(&self, phone: &str, name: &str) {
        self.shared.lock().phone(phone.trim_start_matches('+')).name = Some(name.to_owned());
    }

    /// A phone taps an invite link: `requested`, `joined` or `refused` (with a reason).
    pub fn tap(&self, phone: &str, link: &str) -> Value {
        control::tap(&self.shared, phone, link)
    }

    /// A phone writes to the business (`to = None`) or to a group. Returns the message id.
    pub fn send_as_phone(
        &self,
        phone: &str,
        to: Option<&str>,
        text: &str,
        context: Option<&str>,
    ) -> Result<String, WaSimError> {
        control::phone_message(&self.shared, phone, to.unwrap_or("business"), text, context, None)
            .map_err(WaSimError::Request)
    }

    /// Stops serving and delivering.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

fn router(shared: Shared) -> axum::Router {
    graph::router(shared.clone())
        .merge(control::router(shared))
        .method_not_allowed_fallback(unsupported)
}

/// What Graph answers for a path or method it does not serve (a Graph error), and what the
/// control API answers for a call it does not have (`{"error": "..."}`).
async fn unsupported(method: axum::http::Method, uri: axum::http::Uri) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let path = uri.path();
    if path.starts_with("/_sandbox/") {
        let body = json!({"error": format!("the control API has no {method} {path}")});
        return (axum::http::StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    }
    graph::unsupported_request(method.as_str(), path)
}

/// The simulator's routes, for serving it beside other routers on one port.
pub fn routes(sim: &WhatsAppSim) -> axum::Router {
    router(sim.shared.clone())
}

/// `X-Hub-Signature-256` as Meta computes it: `sha256=` and the hex HMAC-SHA256 of the raw body,
/// keyed with the app secret.
pub(crate) fn sign(app_secret: &str, body: &[u8]) -> String {
    use hmac::Mac as _;
    // HMAC takes keys of any length: the `else` is never taken.
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(app_secret.as_bytes()) else {
        return String::new();
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Delivers webhooks one at a time, in order, retrying each until the receiver answers 200.
async fn deliver(
    shared: Shared,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    cancel: CancellationToken,
) {
    let http =
        reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
    let mut held: Option<Outgoing> = None;
    loop {
        let next = tokio::select! {
            () = cancel.cancelled() => return,
            n = rx.recv() => match n { Some(n) => n, None => return },
        };
        // Reorder fault: hold this one back and send it after the next.
        let reorder = {
            let mut st = shared.lock();
            std::mem::take(&mut st.delivery_faults.reorder)
        };
        if reorder && held.is_none() {
            held = Some(next);
            continue;
        }
        let mut batch = vec![next];
        batch.extend(held.take());
        for item in batch {
            let copies = {
                let mut st = shared.lock();
                if st.delivery_faults.duplicate > 0 {
                    st.delivery_faults.duplicate -= 1;
                    2
                } else {
                    1
                }
            };
            for _ in 0..copies {
                if !deliver_one(&shared, &http, &item, &cancel).await {
                    return;
                }
            }
        }
    }
}

/// Sends one webhook until a 200; `false` when cancelled.
async fn deliver_one(
    shared: &Shared,
    http: &reqwest::Client,
    item: &Outgoing,
    cancel: &CancellationToken,
) -> bool {
    let (body, secret, initial) = {
        let st = shared.lock();
        let envelope = json!({
            "object": "whatsapp_business_account",
            "entry": [{"id": "102290129340398", "changes": [{"value": item.value, "field": item.field}]}],
        });
        (envelope.to_string(), st.cfg.app_secret.clone(), st.cfg.webhook_retry_initial)
    };
    let signature = sign(&secret, body.as_bytes());
    let mut wait = initial;
    loop {
        if attempt(shared, http, &body, &signature).await {
            return true;
        }
        tokio::select! {
            () = cancel.cancelled() => return false,
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// One delivery attempt, as through a round-robin load balancer: the next URL in turn, and the
/// following ones at once while a URL refuses the connection. `true` once a receiver answered
/// 200 (and no `failFirst` fault pretends otherwise); the turn then moves past that URL.
async fn attempt(shared: &Shared, http: &reqwest::Client, body: &str, signature: &str) -> bool {
    let (urls, start) = {
        let targets = shared.webhook_targets.lock().unwrap_or_else(|e| e.into_inner());
        (targets.urls.clone(), targets.next)
    };
    for k in 0..urls.len() {
        let i = (start + k) % urls.len();
        shared.lock().stats.webhook_attempts += 1;
        let sent = http
            .post(&urls[i])
            .header("content-type", "application/json")
            .header("x-hub-signature-256", signature)
            .body(body.to_owned())
            .send()
            .await;
        {
            let mut targets = shared.webhook_targets.lock().unwrap_or_else(|e| e.into_inner());
            if targets.urls == urls {
                targets.next = (i + 1) % urls.len();
            }
        }
        let ok = match sent {
            Err(e) if e.is_connect() => {
                shared.lock().stats.webhooks_refused += 1;
                tracing::debug!(url = %urls[i], "webhook receiver refused the connection; next one");
                continue;
            }
            Ok(r) => r.status().as_u16() == 200,
            Err(_) => false,
        };
        let mut st = shared.lock();
        if ok && st.delivery_faults.fail_first > 0 {
            // Delivered, but the simulator acts as if the answer never came: it retries.
            st.delivery_faults.fail_first -= 1;
            return false;
        }
        if ok {
            st.stats.webhooks_delivered += 1;
        }
        return ok;
    }
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn webhooks_are_signed_as_meta_signs_them() {
        // HMAC-SHA256 test vector (key "key", the quick brown fox).
        assert_eq!(
            super::sign("key", b"The quick brown fox jumps over the lazy dog"),
            "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }
}
