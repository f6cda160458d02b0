//! The monitoring endpoints on the bot's HTTP listener (the WhatsApp webhook's port, or their
//! own with `monitoring.listen`):
//! `GET /healthz` (the datafeed loop alive and the store writable) and `GET /metrics`
//! (Prometheus text). They are served whether or not the webhook receiver is on.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::metrics::{Metrics, OutboxDepth};
use crate::store::Store;

pub use crate::config::{HEALTH_PATH, METRICS_PATH};

/// What the endpoints read.
#[derive(Clone, Debug)]
pub struct MonitoringState {
    pub store: Store,
    pub metrics: Metrics,
    /// The datafeed loop is alive when it read its feed (or set it up) less than this long ago.
    /// The bot uses `readTimeout`: every read that succeeds returns within it, and a healthy
    /// loop reads again at once, so a longer silence means reads fail or hang.
    pub datafeed_stale_after: Duration,
    /// A write probe is under way (it may wait behind the bot's own writes for the store's
    /// lock): the next `/healthz` does not start another one.
    pub probing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// How long `/healthz` waits for its write probe: the probe itself waits 1 s for another
/// process's lock, but queues behind the bot's own writes, which wait up to 5 s each.
const PROBE_WAIT: Duration = Duration::from_secs(2);

/// `GET /healthz` and `GET /metrics`.
pub fn router(state: MonitoringState) -> Router {
    Router::new()
        .route(HEALTH_PATH, get(health))
        .route(METRICS_PATH, get(metrics))
        .with_state(state)
}

async fn health(State(state): State<MonitoringState>) -> Response {
    let mut problems = Vec::new();
    let silence = state.metrics.datafeed_silence();
    let limit = state.datafeed_stale_after;
    let datafeed_ok = silence.is_some_and(|s| s <= limit);
    match silence {
        None => problems.push("datafeed: the loop has not set up its feed".to_owned()),
        Some(s) if !datafeed_ok => problems.push(format!(
            "datafeed: no read answered for {:.1} s (limit {:.1} s)",
            s.as_secs_f64(),
            limit.as_secs_f64()
        )),
        Some(_) => {}
    }
    // The probe may wait for SQLite's lock: off the async workers, and not for long.
    use std::sync::atomic::Ordering;
    let written = if state.probing.swap(true, Ordering::SeqCst) {
        Err("the last write probe is still waiting: the store is locked or stalled".to_owned())
    } else {
        let (store, probing) = (state.store.clone(), state.probing.clone());
        let probe = tokio::task::spawn_blocking(move || {
            let written = store.probe_write();
            probing.store(false, Ordering::SeqCst);
            written
        });
        match tokio::time::timeout(PROBE_WAIT, probe).await {
            Ok(Ok(written)) => written.map_err(|e| e.to_string()),
            Ok(Err(e)) => {
                state.probing.store(false, Ordering::SeqCst);
                Err(e.to_string())
            }
            Err(_) => Err(format!(
                "no write within {} s: the store is locked or stalled",
                PROBE_WAIT.as_secs()
            )),
        }
    };
    let store_error = written.err();
    if let Some(e) = &store_error {
        problems.push(format!("store: not writable: {e}"));
    }
    let tasks = state.metrics.task_states();
    for (task, s) in &tasks {
        if let crate::metrics::TaskState::Stopped(reason) = s {
            problems.push(format!("{task}: stopped: {reason}"));
        }
    }
    let healthy = problems.is_empty();
    let body = json!({
        "status": if healthy { "ok" } else { "unhealthy" },
        "problems": problems,
        "datafeed": {
            "ok": datafeed_ok,
            "lastReadSecondsAgo": silence.map(|s| (s.as_secs_f64() * 1000.0).round() / 1000.0),
            "limitSeconds": limit.as_secs_f64(),
        },
        "store": { "ok": store_error.is_none(), "error": store_error },
        "tasks": tasks.iter().map(|(task, s)| (task.to_string(), match s {
            crate::metrics::TaskState::Running => json!({"state": "running"}),
            crate::metrics::TaskState::Stopped(reason) => json!({"state": "stopped", "reason": reason}),
        })).collect::<serde_json::Map<_, _>>(),
    });
    if !healthy {
        tracing::warn!(problems = ?body["problems"], "health check failed");
    }
    let status = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<MonitoringState>) -> Response {
    let store = state.store.clone();
    let depth = tokio::task::spawn_blocking(move || {
        Ok::<_, crate::store::StoreError>((store.outbox_counts()?, store.count_failed_inbound()?))
    })
    .await;
    let outbox = match depth {
        Ok(Ok(((pending, failed), events_set_aside))) => {
            Some(OutboxDepth { pending, failed, events_set_aside })
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "metrics: the outbox depth cannot be read");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "metrics: the outbox depth cannot be read");
            None
        }
    };
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(outbox),
    )
        .into_response()
}
