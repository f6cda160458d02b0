//! The WhatsApp webhook receiver: `GET` answers Meta's verification handshake; `POST` checks
//! `X-Hub-Signature-256` over the raw body (constant time) before anything else, parses the
//! change into domain events, persists each one (redeliveries recognised), and only then
//! answers 200. Bad signature → 401, bad body → 400, store failure → 500 (Meta retries).

mod listener;
pub mod parse;

pub use listener::serve_with;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::Sha256;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::HttpLimits;
use crate::events::InboundEvent;
use crate::metrics::{EventSource, Metrics};
use crate::store::{Source, Store};

/// Meta sends payloads of up to 3 MB.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// What the receiver needs.
#[derive(Clone)]
pub struct WebhookState {
    pub store: Store,
    pub app_secret: SecretString,
    pub verify_token: SecretString,
    /// Woken after new events are persisted.
    pub wake: Arc<Notify>,
    /// Events received (and redeliveries dropped) are counted here.
    pub metrics: Metrics,
    /// Our phone number id: other numbers' changes are acknowledged and ignored.
    pub phone_number_id: String,
    /// Our WABA, when configured.
    pub waba_id: Option<String>,
}

impl std::fmt::Debug for WebhookState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookState").finish_non_exhaustive()
    }
}

/// `sha256=<hex>` of HMAC-SHA256(secret, body).
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks an `X-Hub-Signature-256` header value in constant time.
pub fn verify_signature(secret: &str, body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else { return false };
    let Ok(given) = hex::decode(hex_sig) else { return false };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(body);
    !secret.is_empty() && mac.verify_slice(&given).is_ok()
}

/// The receiver's routes at `path`.
pub fn router(path: &str, state: WebhookState) -> Router {
    Router::new()
        .route(path, get(handshake).post(receive))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serves `router` until `cancel` fires, with the default [`HttpLimits`] and Meta's body limit.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, router, HttpLimits::default(), MAX_BODY_BYTES, cancel).await
}

#[derive(Deserialize)]
struct Handshake {
    #[serde(rename = "hub.mode")]
    mode: Option<String>,
    #[serde(rename = "hub.verify_token")]
    verify_token: Option<String>,
    #[serde(rename = "hub.challenge")]
    challenge: Option<String>,
}

async fn handshake(State(state): State<WebhookState>, Query(q): Query<Handshake>) -> Response {
    let expected = state.verify_token.expose_secret();
    let token_ok = q.verify_token.as_deref().is_some_and(|t| {
        !expected.is_empty()
            && subtle::ConstantTimeEq::ct_eq(t.as_bytes(), expected.as_bytes()).into()
    });
    match (q.mode.as_deref(), token_ok, q.challenge) {
        (Some("subscribe"), true, Some(challenge)) => (StatusCode::OK, challenge).into_response(),
        _ => {
            tracing::warn!("webhook verification refused: wrong hub.verify_token or mode");
            StatusCode::FORBIDDEN.into_response()
        }
    }
}

async fn receive(State(state): State<WebhookState>, headers: HeaderMap, body: Bytes) -> Response {
    let header = headers.get("x-hub-signature-256").and_then(|v| v.to_str().ok());
    if !verify_signature(state.app_secret.expose_secret(), &body, header) {
        tracing::warn!(
            present = header.is_some(),
            "webhook refused: bad or missing X-Hub-Signature-256"
        );
        return (StatusCode::UNAUTHORIZED, "invalid signature").into_response();
    }
    let ours =
        parse::Ours { phone_number_id: &state.phone_number_id, waba_id: state.waba_id.as_deref() };
    let events = match parse::parse_ours(&body, &ours) {
        Ok(events) => events,
        Err(e) => {
            tracing::warn!(error = %e, "webhook refused: unreadable body");
            return (StatusCode::BAD_REQUEST, e.to_string()).into_response();
        }
    };
    // Off the async workers: a locked store makes SQLite wait (up to 5 s).
    let (store, metrics) = (state.store.clone(), state.metrics.clone());
    let persisted = tokio::task::spawn_blocking(move || -> Result<usize, String> {
        let mut stored = 0;
        for keyed in events {
            let payload = serde_json::to_value(InboundEvent::WhatsApp(keyed.event))
                .map_err(|e| e.to_string())?;
            match store.enqueue_inbound(Source::WhatsApp, &keyed.key, &payload) {
                Ok(true) => {
                    stored += 1;
                    metrics.inbound_event(EventSource::WhatsApp, true);
                }
                Ok(false) => {
                    metrics.inbound_event(EventSource::WhatsApp, false);
                    tracing::debug!(key = %keyed.key, "duplicate webhook event dropped");
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(stored)
    })
    .await;
    let stored = match persisted {
        Ok(Ok(stored)) => stored,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot persist a webhook event; Meta will retry");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        Err(e) => {
            tracing::error!(error = %e, "persisting a webhook event panicked; Meta will retry");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    if stored > 0 {
        crate::crashpoint::reached("a webhook persisted");
        state.wake.notify_one();
    }
    StatusCode::OK.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_meta_s_scheme() {
        let body = br#"{"object":"whatsapp_business_account"}"#;
        let sig = signature("app-secret", body);
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        assert!(verify_signature("app-secret", body, Some(&sig)));
        assert!(!verify_signature("other-secret", body, Some(&sig)));
        assert!(!verify_signature("app-secret", b"tampered", Some(&sig)));
        assert!(!verify_signature("app-secret", body, None));
        assert!(!verify_signature("app-secret", body, Some("sha1=abc")));
        assert!(!verify_signature("app-secret", body, Some("sha256=zz")));
        assert!(
            !verify_signature("", body, Some(&signature("", body))),
            "an empty secret accepts nothing"
        );
    }
}
