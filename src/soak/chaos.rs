//! The chaos: random faults on both mocks (the pod's and the Graph API's 5xx, 429 with
//! `Retry-After`, answers lost after the call was carried out, an expired datafeed, a datafeed
//! read hanging past the read timeout and expired sessions; webhooks duplicated, reordered, failed after delivery) and random SIGKILLs of the
//! bot followed by a restart, all drawn from the run's seed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;

use super::BotRunner;
use super::model::KillMark;
use super::script::Ctx;
use crate::bench::BotProcess;

/// Pod endpoints the bot calls that a transient error may hit.
const POD_PATHS: &[&str] = &[
    r"^/agent/v4/stream/[^/]+/message/create$",
    r"^/pod/v3/room/create$",
    r"^/pod/v1/room/[^/]+/membership/(add|remove|promoteOwner)$",
    r"^/pod/v3/room/[^/]+/update$",
    r"^/pod/v2/room/[^/]+/membership/list$",
    DATAFEED_READ,
    r"^/pod/v3/users$",
];

const DATAFEED_READ: &str = r"^/agent/v5/datafeeds/[^/]+/read$";

/// Pod calls whose answer may be lost after they were carried out without the call being a
/// message (a message performed again is the documented at-least-once): what the bot creates
/// (adopted by its marker) and membership and room changes.
const POD_AFTER_PATHS: &[&str] = &[
    r"^/pod/v3/room/create$",
    r"^/pod/v1/room/[^/]+/membership/(add|remove|promoteOwner)$",
    r"^/pod/v3/room/[^/]+/update$",
];

/// Graph endpoints the bot calls.
const GRAPH_PATHS: &[&str] = &[
    r"/messages$",
    r"/groups$",
    r"/participants$",
    r"/join_requests$",
    r"/invite_link$",
    r"^/v[0-9.]+/[0-9]+$",
];

/// Graph calls whose answer may be lost after they were carried out (messages excepted, as for
/// the pod): the group's creation (adopted by its marker), a subject or description update, an
/// approval or rejection, a removal, a link reset.
const GRAPH_AFTER: &[(&str, &str)] = &[
    ("POST", r"/groups$"),
    ("POST", r"^/v[0-9.]+/[0-9]+$"),
    ("POST", r"/join_requests$"),
    ("DELETE", r"/join_requests$"),
    ("DELETE", r"/participants$"),
    ("POST", r"/invite_link$"),
];

/// Injects one random fault every 0.3 to 2 s until the deadline; returns how many of each kind.
pub(crate) async fn faults(ctx: Arc<Ctx>, seed: u64) -> (BTreeMap<String, u64>, Vec<String>) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xFA17_5EED);
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors = Vec::new();
    while Instant::now() < ctx.deadline {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..2000))).await;
        let roll = rng.gen_range(0..100);
        let (kind, done) = match roll {
            0..=19 => {
                let path = POD_PATHS[rng.gen_range(0..POD_PATHS.len())];
                let status = [500, 502, 503][rng.gen_range(0..3)];
                let count = rng.gen_range(1..=2);
                let body = json!({"path": path, "status": status, "count": count});
                ("pod 5xx", ctx.pod_post("/faults", body).await)
            }
            20..=29 => {
                let path = POD_PATHS[rng.gen_range(0..POD_PATHS.len())];
                let body = json!({"path": path, "status": 429, "retryAfter": 1, "count": 1});
                ("pod 429", ctx.pod_post("/faults", body).await)
            }
            30..=36 => {
                let path = POD_AFTER_PATHS[rng.gen_range(0..POD_AFTER_PATHS.len())];
                let body = json!({"method": "POST", "path": path, "status": 502, "after": true, "count": 1});
                ("pod answer lost (after)", ctx.pod_post("/faults", body).await)
            }
            37..=39 => {
                ctx.pod.expire_datafeeds();
                ("pod datafeed expired", Ok(()))
            }
            40..=41 => {
                ctx.pod.expire_sessions();
                ("pod sessions expired", Ok(()))
            }
            42 => {
                // Past the bot's readTimeout (10 s): the read is given up, its batch comes back.
                let body = json!({"path": DATAFEED_READ, "hangMs": 11_000, "count": 1});
                ("pod datafeed read hangs", ctx.pod_post("/faults", body).await)
            }
            43..=62 => {
                let path = GRAPH_PATHS[rng.gen_range(0..GRAPH_PATHS.len())];
                let status = [500, 503][rng.gen_range(0..2)];
                let count = rng.gen_range(1..=2);
                let body = json!({"path": path, "status": status, "code": 2, "count": count});
                ("Graph 5xx", ctx.sim_post("/faults", body).await)
            }
            63..=72 => {
                let path = GRAPH_PATHS[rng.gen_range(0..GRAPH_PATHS.len())];
                let body = json!({"path": path, "status": 429, "code": 130429, "retryAfter": 1, "count": 1});
                ("Graph 429", ctx.sim_post("/faults", body).await)
            }
            73..=79 => {
                let (method, path) = GRAPH_AFTER[rng.gen_range(0..GRAPH_AFTER.len())];
                let body = json!({"method": method, "path": path, "status": 500, "code": 2, "after": true, "count": 1});
                ("Graph answer lost (after)", ctx.sim_post("/faults", body).await)
            }
            80..=87 => {
                let n = rng.gen_range(1..=2);
                (
                    "webhook duplicated",
                    ctx.sim_post("/webhooks/faults", json!({"duplicate": n})).await,
                )
            }
            88..=93 => (
                "webhook reordered",
                ctx.sim_post("/webhooks/faults", json!({"reorder": true})).await,
            ),
            _ => {
                let n = rng.gen_range(1..=2);
                (
                    "webhook failed after delivery",
                    ctx.sim_post("/webhooks/faults", json!({"failFirst": n})).await,
                )
            }
        };
        match done {
            Ok(()) => *counts.entry(kind.to_owned()).or_default() += 1,
            Err(e) => errors.push(format!("injecting a fault ({kind}): {e}")),
        }
    }
    (counts, errors)
}

/// What the killer did.
#[derive(Debug, Default)]
pub(crate) struct Kills {
    pub kills: u64,
    pub marks: Vec<KillMark>,
    pub errors: Vec<String>,
}

/// SIGKILLs the bot every 10 to 30 s (a few a minute) until the deadline, and starts it again
/// after 0.1 to 0.6 s; before the restart, notes how many messages each chat has (a copy
/// before and after that is a call repeated at the kill).
pub(crate) async fn kills(
    ctx: Arc<Ctx>,
    runner: Arc<BotRunner>,
    bot: Arc<tokio::sync::Mutex<Option<BotProcess>>>,
    seed: u64,
) -> Kills {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x0DEA_DB07);
    let mut out = Kills::default();
    loop {
        let wait = Duration::from_millis(rng.gen_range(10_000..30_000));
        if Instant::now() + wait >= ctx.deadline {
            break;
        }
        tokio::time::sleep(wait).await;
        let mut slot = bot.lock().await;
        if let Some(running) = slot.take() {
            if let Err(e) = running.kill().await {
                tracing::warn!(error = %e, "the bot could not be killed");
            }
            out.kills += 1;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..600))).await;
        out.marks.push(mark(&ctx).await);
        match runner.start().await {
            Ok(p) => *slot = Some(p),
            Err(e) => {
                out.errors.push(format!("the bot did not come back after a SIGKILL: {e}"));
                break;
            }
        }
    }
    out
}

/// How many messages every chat has now: streams, WhatsApp groups, phones' inboxes.
pub(crate) async fn mark(ctx: &Ctx) -> KillMark {
    let mut m = KillMark::new();
    for s in ctx.pod.streams() {
        if let Some(id) = s["streamId"].as_str() {
            m.insert(id.to_owned(), ctx.pod.messages(id).len());
        }
    }
    for g in ctx.sim.groups() {
        if let (Some(id), Some(msgs)) = (g["id"].as_str(), g["messages"].as_array()) {
            m.insert(id.to_owned(), msgs.len());
        }
    }
    for phone in super::known_phones(ctx).await {
        let n = super::inbox_1to1(ctx, &phone).len();
        m.insert(format!("inbox:{phone}"), n);
    }
    m
}
