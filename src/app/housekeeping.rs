//! The bot's own chores, on a timer: groups whose `group_create` never came are looked for by
//! their marker (what is found goes to the dispatcher as an outcome), and old rows are pruned.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::BotTimings;
use crate::effects::{EffectExecutor, Outcome};
use crate::store::{Source, Store, now_ms};

/// The bot's own chores: a created group whose `group_create` never came is looked for by its
/// marker among the number's groups (found: set up as usual; not found: failed), and old rows
/// are pruned. What it finds goes to the dispatcher as an outcome, decided in the group's order
/// (so a late webhook and the reconciler never both act).
pub(super) struct Housekeeping {
    pub(super) store: Store,
    pub(super) executor: Arc<EffectExecutor>,
    pub(super) wake: Arc<Notify>,
    pub(super) timings: BotTimings,
    pub(super) retention: Duration,
}

impl Housekeeping {
    pub(super) async fn run(self, cancel: CancellationToken) {
        let mut last_prune: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(self.timings.reconcile_every) => {}
            }
            if let Err(e) = self.reconcile().await {
                tracing::warn!(error = %e, "reconciliation failed; will try again");
            }
            if last_prune.is_none_or(|at| at.elapsed() >= Duration::from_secs(3_600)) {
                last_prune = Some(std::time::Instant::now());
                let before = now_ms()
                    .saturating_sub(i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX));
                match self.store.prune(before) {
                    Ok(p) => tracing::info!(
                        events = p.events,
                        effects = p.effects,
                        messages = p.messages,
                        "pruned old rows"
                    ),
                    Err(e) => tracing::warn!(error = %e, "pruning failed; will try again"),
                }
            }
        }
    }

    async fn reconcile(&self) -> Result<(), String> {
        let timeout = i64::try_from(self.timings.group_create_timeout.as_millis()).unwrap_or(0);
        let overdue = self
            .store
            .read(|r| r.groups_awaiting_webhook(now_ms().saturating_sub(timeout)))
            .map_err(|e| e.to_string())?;
        for group in overdue {
            let Some(marker) = group.reference.as_deref() else { continue };
            let found = self.executor.find_wa_group(marker).await?;
            let outcome = match found {
                Some(wa_group) => {
                    tracing::warn!(group = %wa_group, "group_create never came; the group was found by its marker");
                    let invite_link = match &self.executor.whatsapp {
                        Some(wa) => {
                            Some(wa.invite_link(&wa_group).await.map_err(|e| e.to_string())?)
                        }
                        None => None,
                    };
                    Outcome::WaGroupFound { group: group.key, wa_group, invite_link }
                }
                None => Outcome::WaGroupMissing { group: group.key },
            };
            let payload = serde_json::to_value(&outcome).map_err(|e| e.to_string())?;
            self.store
                .enqueue_inbound(Source::Outcome, &format!("reconcile:{}", group.key.0), &payload)
                .map_err(|e| e.to_string())?;
            self.wake.notify_one();
        }
        Ok(())
    }
}
