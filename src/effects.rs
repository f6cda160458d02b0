//! Side effects as data: the dispatcher decides them and writes them to the store's outbox in
//! the same transaction as the processed mark of the event that caused them; the executor here
//! performs them with the clients, retrying with capped backoff (honouring `Retry-After`) across
//! restarts, in order per stream or group.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::RetryConfig;
use crate::groups::StreamId;
use crate::store::{OutboxRow, Store};
use crate::symphony::SymphonyClient;

/// One side effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Effect {
    /// The bot posts MessageML in a Symphony stream.
    PostMessage { stream: StreamId, message_ml: String },
}

impl Effect {
    /// Effects with the same key are performed in order.
    pub fn order_key(&self) -> String {
        match self {
            Effect::PostMessage { stream, .. } => format!("stream:{stream}"),
        }
    }

    /// `(order key, JSON)` as the outbox stores it.
    pub fn to_outbox(&self) -> Result<(String, serde_json::Value), serde_json::Error> {
        Ok((self.order_key(), serde_json::to_value(self)?))
    }
}

/// Why an attempt failed.
#[derive(Debug)]
struct Failure {
    retryable: bool,
    retry_after: Option<Duration>,
    message: String,
}

/// Performs the outbox.
pub struct EffectExecutor {
    pub store: Store,
    pub symphony: SymphonyClient,
    /// Attempts and backoff (the `retry` config).
    pub retry: RetryConfig,
}

impl EffectExecutor {
    /// Runs until `cancel`, woken by `wake` when new effects are queued.
    pub async fn run(self, wake: Arc<Notify>, cancel: CancellationToken) {
        loop {
            let idle = match self.drain(&cancel).await {
                Ok(()) => self.until_next_due(),
                Err(e) => {
                    tracing::error!(error = %e, "the outbox cannot be read; retrying");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = wake.notified() => {}
                () = tokio::time::sleep(idle) => {}
            }
        }
    }

    fn until_next_due(&self) -> Duration {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        match self.store.next_outbox_due() {
            Ok(Some(at)) => Duration::from_millis((at - now).clamp(10, 5_000) as u64),
            _ => Duration::from_secs(5),
        }
    }

    async fn drain(&self, cancel: &CancellationToken) -> Result<(), crate::store::StoreError> {
        loop {
            let due = self.store.due_outbox(50)?;
            if due.is_empty() {
                return Ok(());
            }
            for row in due {
                // Stopping mid-call leaves the effect in the outbox: it is performed after the
                // restart (at least once).
                tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    r = self.attempt(&row) => r?,
                }
            }
        }
    }

    async fn attempt(&self, row: &OutboxRow) -> Result<(), crate::store::StoreError> {
        let effect: Effect = match serde_json::from_value(row.effect.clone()) {
            Ok(e) => e,
            Err(e) => return self.store.outbox_failed(row.id, &format!("unreadable effect: {e}")),
        };
        match self.perform(&effect).await {
            Ok(()) => self.store.outbox_done(row.id),
            Err(f)
                if let Some(wait) =
                    self.retry.next_wait(row.attempts + 1, f.retryable, f.retry_after) =>
            {
                tracing::warn!(id = row.id, attempts = row.attempts + 1, ?wait, error = %f.message, "effect failed; will retry");
                self.store.outbox_retry(row.id, wait, &f.message)
            }
            Err(f) => {
                // A message that cannot be posted cannot be reported in its own room either:
                // the failure stays in the outbox (failed_at, last_error) and in the log.
                tracing::error!(id = row.id, key = %row.order_key, error = %f.message, "effect given up");
                self.store.outbox_failed(row.id, &f.message)
            }
        }
    }

    async fn perform(&self, effect: &Effect) -> Result<(), Failure> {
        match effect {
            Effect::PostMessage { stream, message_ml } => {
                self.symphony.send_message(stream, message_ml, None).await.map(|_| ()).map_err(
                    |e| Failure {
                        retryable: e.is_retryable(),
                        retry_after: e.retry_after(),
                        message: e.to_string(),
                    },
                )
            }
        }
    }
}
