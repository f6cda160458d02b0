//! Performs the outbox: each due effect with the clients, retried with capped backoff
//! (honouring `Retry-After`) across restarts, in order per order key, several keys at once. It
//! decides nothing: what followed (a room was created, an effect was given up) goes back to the
//! dispatcher as an [`Outcome`], in the same transaction as the effect's done mark. It only
//! checks, right before performing, the guard of an effect that grants access.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

mod create;
mod recorder;
mod relay;

pub use create::{ROOM_DESCRIPTION, carries_marker, room_description, wa_description};

use super::{Effect, Outcome};
use crate::config::{RetryConfig, TemplateRef};
use crate::domain::{ContactState, E164, GroupKey, WaMessageRecord};
use crate::metrics::{Metrics, RelayDirection};
use crate::store::{GroupRepo, OutboxRow, Source, Store, StoreError, Tx, now_ms};
use crate::symphony::SymphonyClient;
use crate::templates::Templates;
use crate::whatsapp::{Recipient, TemplateParam, WhatsAppClient};

/// Graph's "join request does not exist" (withdrawn, or settled already).
const JOIN_REQUEST_GONE: i64 = 131_213;

/// How many effects (of different order keys) run at once.
const PARALLEL_EFFECTS: usize = 32;

/// The guard of an [`Effect::ApproveJoin`], read right before the approval is performed: only a
/// contact still invited (or requesting) and not barred is let in, so an owner's `/wa remove`
/// decided since the request came is seen. An approval queued before guards existed (without
/// `key` and `phone`) is performed as it was decided.
pub fn approval_entitled(
    repo: &dyn GroupRepo,
    key: Option<GroupKey>,
    phone: Option<&E164>,
) -> Result<bool, StoreError> {
    let (Some(key), Some(phone)) = (key, phone) else { return Ok(true) };
    Ok(repo.contacts(key)?.iter().any(|c| {
        &c.phone == phone
            && !c.barred
            && matches!(c.state, ContactState::Invited | ContactState::Requested)
    }))
}

/// Why an attempt failed.
#[derive(Debug)]
struct Failure {
    retryable: bool,
    retry_after: Option<Duration>,
    message: String,
}

impl From<crate::symphony::SymphonyError> for Failure {
    fn from(e: crate::symphony::SymphonyError) -> Self {
        Failure {
            retryable: e.is_retryable(),
            retry_after: e.retry_after(),
            message: e.to_string(),
        }
    }
}

impl From<crate::whatsapp::WhatsAppError> for Failure {
    fn from(e: crate::whatsapp::WhatsAppError) -> Self {
        Failure { retryable: e.is_retryable(), retry_after: None, message: e.to_string() }
    }
}

impl From<crate::templates::TemplateError> for Failure {
    fn from(e: crate::templates::TemplateError) -> Self {
        permanent(e.to_string())
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure { retryable: true, retry_after: None, message: e.to_string() }
    }
}

fn permanent(message: impl Into<String>) -> Failure {
    Failure { retryable: false, retry_after: None, message: message.into() }
}

/// What a performed effect leaves to record, with its done mark.
#[derive(Debug, Default)]
struct Done {
    outcome: Option<Outcome>,
    /// WhatsApp messages sent (the message map).
    sent: Vec<WaMessageRecord>,
    /// A WhatsApp message now carried by this Symphony message.
    posted: Option<(String, String)>,
}

impl Done {
    fn outcome(outcome: Outcome) -> Self {
        Self { outcome: Some(outcome), ..Self::default() }
    }
}

/// Performs the outbox.
pub struct EffectExecutor {
    pub store: Store,
    pub symphony: SymphonyClient,
    /// `None` when WhatsApp is not configured: WhatsApp effects then fail permanently.
    pub whatsapp: Option<WhatsAppClient>,
    /// The WhatsApp description and the file notice are rendered from these.
    pub templates: Arc<Templates>,
    /// The `message` template (relays outside the window).
    pub message_template: TemplateRef,
    /// Attempts and backoff (the `retry` config).
    pub retry: RetryConfig,
    /// Notices sent, messages relayed and retries are counted here.
    pub metrics: Metrics,
    /// Woken when an outcome is queued.
    pub dispatcher: Arc<Notify>,
    /// Advisors' display names read while their room was being made, for the WhatsApp group's
    /// description that follows (a cache: the names are read again when missing or old).
    pub names: create::NameCache,
    /// Commits what performed effects leave, several at once.
    pub recorder: recorder::Recorder,
}

impl EffectExecutor {
    /// Runs until `cancel`, woken by `wake` when new effects are queued. A slow effect holds
    /// only its own key: the others go on around it.
    pub async fn run(self: Arc<Self>, wake: Arc<Notify>, cancel: CancellationToken) {
        let mut running: JoinSet<()> = JoinSet::new();
        let mut busy: HashMap<tokio::task::Id, i64> = HashMap::new();
        loop {
            let mut idle = None;
            while busy.len() < PARALLEL_EFFECTS {
                let room = PARALLEL_EFFECTS - busy.len();
                let taken: Vec<i64> = busy.values().copied().collect();
                let due = match self.store.due_outbox(room, &taken) {
                    Ok(due) => due,
                    Err(e) => {
                        tracing::error!(error = %e, "the outbox cannot be read; retrying");
                        idle = Some(Duration::from_secs(1));
                        break;
                    }
                };
                let all = due.len() < room; // nothing else is due now: not asked again
                for row in due {
                    let me = self.clone();
                    let id = row.id;
                    let handle = running.spawn(async move { me.attempt(row).await });
                    busy.insert(handle.id(), id);
                }
                if all {
                    break;
                }
            }
            // With every slot taken, a finished effect wakes the loop; else the next due one.
            let idle = idle.unwrap_or_else(|| {
                if busy.len() < PARALLEL_EFFECTS {
                    self.until_next_due()
                } else {
                    Duration::from_secs(5)
                }
            });
            tokio::select! {
                () = cancel.cancelled() => {
                    // Stopping mid-call leaves the effects in the outbox: performed after the restart.
                    running.abort_all();
                    return;
                }
                Some(finished) = running.join_next_with_id(), if !running.is_empty() => {
                    self.finished(finished, &mut busy);
                    // Effects whose records were committed together finish together: all of
                    // them before the outbox is asked again.
                    while let Some(finished) = running.try_join_next_with_id() {
                        self.finished(finished, &mut busy);
                    }
                }
                () = wake.notified() => {}
                () = tokio::time::sleep(idle) => {}
            }
        }
    }

    /// Frees a finished effect's slot; one that panicked is given up.
    fn finished(
        &self,
        finished: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
        busy: &mut HashMap<tokio::task::Id, i64>,
    ) {
        let task = match &finished {
            Ok((task, ())) => *task,
            Err(e) => e.id(),
        };
        let row = busy.remove(&task);
        if let (Err(e), Some(row)) = (finished, row)
            && e.is_panic()
        {
            tracing::error!(id = row, "performing an effect panicked; it is given up");
            let _ = self
                .store
                .transaction(|tx| tx.finish_effect(row, Some("the bot panicked performing it")));
        }
    }

    fn until_next_due(&self) -> Duration {
        match self.store.next_outbox_due() {
            Ok(Some(at)) => Duration::from_millis((at - now_ms()).clamp(10, 5_000).unsigned_abs()),
            _ => Duration::from_secs(5),
        }
    }

    async fn attempt(&self, row: OutboxRow) {
        if let Err(e) = self.try_attempt(&row).await {
            // The effect stays due: tried again on a later pass.
            tracing::error!(id = row.id, error = %e, "the outbox could not record an attempt");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    #[tracing::instrument(skip_all, fields(effect = row.id, key = %row.order_key))]
    async fn try_attempt(&self, row: &OutboxRow) -> Result<(), StoreError> {
        let effect: Effect = match serde::Deserialize::deserialize(&row.effect) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(id = row.id, error = %e, "an unreadable effect is given up");
                let reason = format!("unreadable effect: {e}");
                return self.store.transaction(|tx| tx.finish_effect(row.id, Some(&reason)));
            }
        };
        let started = std::time::Instant::now();
        let performed = self.perform(&effect).await;
        tracing::debug!(
            ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            ok = performed.is_ok(),
            "effect performed"
        );
        match performed {
            Ok(done) => {
                let outcome = done.outcome.as_ref().map(serde_json::to_value).transpose()?;
                let Done { sent, posted, .. } = done;
                let id = row.id;
                let has_outcome = outcome.is_some();
                // Performed: from now on only its record is retried, never the effect (a
                // store that cannot write must not make a message go twice).
                self.record(id, move |tx| {
                    for record in &sent {
                        tx.record_wa_message(record)?;
                    }
                    if let Some((wa, symphony)) = &posted {
                        tx.set_wa_message_symphony(wa, symphony)?;
                    }
                    if let Some(outcome) = &outcome {
                        tx.enqueue_inbound(Source::Outcome, &format!("outbox:{id}"), outcome)?;
                    }
                    tx.finish_effect(id, None)
                })
                .await;
                crate::crashpoint::reached("an effect done");
                if has_outcome {
                    self.dispatcher.notify_one();
                }
                Ok(())
            }
            Err(f)
                if let Some(wait) =
                    self.retry.next_wait(row.attempts + 1, f.retryable, f.retry_after) =>
            {
                tracing::warn!(id = row.id, attempts = row.attempts + 1, ?wait, error = %f.message, "effect failed; will retry");
                self.metrics.outbox_retry();
                self.store.outbox_retry(row.id, wait, &f.message)
            }
            Err(f) => {
                tracing::error!(id = row.id, key = %row.order_key, error = %f.message, "effect given up");
                // The dispatcher decides what to say, and where.
                let outcome =
                    serde_json::to_value(Outcome::Failed { effect, reason: f.message.clone() })?;
                // Given up: recorded once the store takes it, not tried again meanwhile.
                let (id, reason) = (row.id, f.message.clone());
                self.record(id, move |tx| {
                    tx.enqueue_inbound(Source::Outcome, &format!("outbox:{id}"), &outcome)?;
                    tx.finish_effect(id, Some(&reason))
                })
                .await;
                self.dispatcher.notify_one();
                Ok(())
            }
        }
    }

    /// Commits what became of effect `id` (`write`, off the async workers: it may wait for
    /// SQLite's lock), retried with a growing pause (1 s to 5 s) until the store takes it: the
    /// effect stays claimed by this task meanwhile, so it is not performed again. A stop in
    /// between leaves it pending: performed again after the restart (at least once).
    async fn record(
        &self,
        id: i64,
        write: impl Fn(&dyn Tx) -> Result<(), StoreError> + Send + Sync + 'static,
    ) {
        let write: recorder::Write = Arc::new(write);
        let mut failures = 0u32;
        loop {
            let error = match self.recorder.write(&self.store, write.clone()).await {
                Ok(()) => break,
                Err(recorder::RecordError::Store(e)) => e.to_string(),
                Err(recorder::RecordError::Lost) => {
                    tracing::error!(
                        id,
                        "an effect's result was not recorded (its record panicked, or the bot is stopping): performed again after a restart"
                    );
                    return;
                }
            };
            failures += 1;
            if failures == 1 {
                tracing::error!(id, %error, "an effect's result cannot be recorded yet; retrying the record, not the effect");
            }
            tokio::time::sleep(Duration::from_secs(u64::from(failures.min(5)))).await;
        }
        if failures > 0 {
            tracing::info!(id, failures, "an effect's result recorded");
        }
    }

    fn whatsapp(&self) -> Result<&WhatsAppClient, Failure> {
        self.whatsapp.as_ref().ok_or_else(|| {
            permanent("WhatsApp is not configured (whatsapp.phoneNumberId, accessToken)")
        })
    }

    fn window_open(&self, to: &Recipient) -> Result<bool, Failure> {
        let last = self.store.read(|r| r.last_inbound(to.chat()))?;
        Ok(last.is_some_and(|at| crate::whatsapp::rules::window_open(at, now_ms())))
    }

    /// Performs one effect.
    async fn perform(&self, effect: &Effect) -> Result<Done, Failure> {
        match effect {
            Effect::PostMessage { stream, message_ml } => {
                self.symphony.send_message(stream, message_ml, None).await?;
                Ok(Done::default())
            }
            Effect::CreateRoom { group } => self.create_room(*group).await,
            Effect::AddMember { stream, user } => {
                self.symphony.add_member(stream, *user).await?;
                Ok(Done::default())
            }
            Effect::PromoteOwner { stream, user } => {
                self.symphony.promote_owner(stream, *user).await?;
                Ok(Done::default())
            }
            Effect::CreateWaGroup { group } => self.create_wa_group(*group).await,
            Effect::SendWaTemplate { to, name, language, params, group, about, .. } => {
                let id = self.whatsapp()?.send_template(to, name, language, params).await?;
                self.metrics.notice_sent(name);
                let sent = group
                    .map(|group| WaMessageRecord {
                        wa_message_id: id,
                        group,
                        inbound: false,
                        phone: to.phone().cloned(),
                        symphony_message_id: None,
                        author: "wa-groups-bot".to_owned(),
                        excerpt: crate::markup::quote_snippet(
                            about.as_deref().unwrap_or(name),
                            crate::markup::EXCERPT_CHARS,
                        ),
                        kind: "template".to_owned(),
                        body: None,
                    })
                    .into_iter()
                    .collect();
                Ok(Done { sent, ..Done::default() })
            }
            Effect::ApproveJoin { group, request_id, key, phone } => {
                let entitled = self.store.read(|r| approval_entitled(r, *key, phone.as_ref()))?;
                let wa = self.whatsapp()?;
                let ids = std::slice::from_ref(request_id);
                if !entitled {
                    tracing::warn!(group = %group, "a join request no longer entitled is rejected instead");
                    wa.reject_join_requests(group, ids).await?;
                    return Ok(Done::default());
                }
                let outcome = wa.approve_join_requests(group, ids).await?;
                if let Some((_, errors)) = outcome.failed.first() {
                    // Withdrawn meanwhile: nothing to approve, nothing to say.
                    if errors.iter().any(|e| e.code == JOIN_REQUEST_GONE) {
                        tracing::info!(group = %group, "a join request was withdrawn before its approval");
                        return Ok(Done::default());
                    }
                    let reason = crate::events::whatsapp::WaError::describe(errors);
                    return Err(permanent(format!("WhatsApp did not approve it: {reason}")));
                }
                Ok(Done::default())
            }
            Effect::RejectJoin { group, request_id } => {
                let outcome = self
                    .whatsapp()?
                    .reject_join_requests(group, std::slice::from_ref(request_id))
                    .await?;
                if let Some((_, errors)) = outcome.failed.first() {
                    tracing::info!(
                        ?errors,
                        "a join request could not be rejected (settled already?)"
                    );
                }
                Ok(Done::default())
            }
            Effect::RenameRoom { stream, name } => {
                self.symphony.rename_room(stream, name).await?;
                Ok(Done::default())
            }
            Effect::RemoveMember { stream, user } => {
                self.symphony.remove_member(stream, *user).await?;
                Ok(Done::default())
            }
            Effect::DemoteOwner { stream, user } => {
                self.symphony.demote_owner(stream, *user).await?;
                Ok(Done::default())
            }
            Effect::UpdateWaSubject { group, subject } => {
                self.whatsapp()?.update_group(group, Some(subject), None).await?;
                Ok(Done::default())
            }
            Effect::RefreshDescription { group } => {
                let record = self.store.read(|r| r.group(*group))?;
                let Some((wa, reference)) = record.and_then(|g| Some((g.wa_group?, g.reference)))
                else {
                    return Ok(Done::default());
                };
                let description = self.description(*group, reference.as_deref()).await?;
                self.whatsapp()?.update_group(&wa, None, Some(&description)).await?;
                Ok(Done::default())
            }
            Effect::RemoveWaParticipants { group, users } => {
                self.whatsapp()?.remove_participants(group, users).await?;
                Ok(Done::default())
            }
            Effect::DeleteWaGroup { group } => {
                self.whatsapp()?.delete_group(group).await?;
                Ok(Done::default())
            }
            Effect::RelayToWhatsApp {
                group,
                to,
                text,
                symphony_message,
                author,
                excerpt,
                template_only,
            } => {
                let wa = self.whatsapp()?;
                let open = !template_only && self.window_open(to)?;
                let sent = if open {
                    match wa.send_text(to, text).await {
                        Ok(id) => Some((id, "text")),
                        // Our clock said open, WhatsApp says closed: the template it is.
                        Err(e) if e.is_window_closed() => None,
                        Err(e) => return Err(e.into()),
                    }
                } else {
                    None
                };
                let sent = match sent {
                    Some(sent) => vec![sent],
                    None => {
                        let t = &self.message_template;
                        let mut ids = Vec::new();
                        for part in crate::whatsapp::rules::template_parts(text) {
                            let param = [TemplateParam::Text(part)];
                            ids.push((
                                wa.send_template(to, &t.name, &t.language, &param).await?,
                                "template",
                            ));
                        }
                        ids
                    }
                };
                self.metrics.relayed(RelayDirection::ToWhatsApp);
                // Each part is recorded, so that a reply to any of them finds the message.
                let sent = sent
                    .into_iter()
                    .map(|(id, kind)| WaMessageRecord {
                        wa_message_id: id,
                        group: *group,
                        inbound: false,
                        phone: to.phone().cloned(),
                        symphony_message_id: symphony_message.clone(),
                        author: author.clone(),
                        excerpt: excerpt.clone(),
                        kind: kind.to_owned(),
                        body: Some(text.clone()),
                    })
                    .collect();
                Ok(Done { sent, ..Done::default() })
            }
            Effect::CheckStatus { message_id, recipient, errors } => {
                if self.store.read(|r| r.wa_message(message_id))?.is_none() {
                    // Still not recorded: looked at again (or, after the retries, not ours).
                    return Err(Failure {
                        retryable: true,
                        retry_after: None,
                        message: format!("message {message_id} is not recorded yet"),
                    });
                }
                Ok(Done::outcome(Outcome::DeliveryFailed {
                    message_id: message_id.clone(),
                    recipient: recipient.clone(),
                    errors: errors.clone(),
                }))
            }
            Effect::RelayFileToWhatsApp {
                group,
                to,
                stream,
                message_id,
                file_id,
                name,
                author,
            } => self.relay_file(*group, to, stream, message_id, file_id, name, author).await,
            Effect::PostRelayedFile {
                stream,
                message_ml,
                wa_message,
                media_id,
                kind,
                filename,
            } => {
                let file = match self.whatsapp()?.download_media(media_id).await {
                    Ok((bytes, mime)) => Ok(crate::symphony::Attachment {
                        name: crate::whatsapp::rules::file_name(filename.as_deref(), kind, &mime),
                        content_type: mime,
                        bytes: bytes.into(),
                    }),
                    Err(e) if e.is_retryable() => return Err(e.into()),
                    Err(e) => {
                        // The message still reaches the room, saying why its file does not.
                        tracing::warn!(error = %e, "a WhatsApp file could not be fetched");
                        Err(format!("it could not be fetched from WhatsApp: {e}"))
                    }
                };
                let without_file = |why: &str| {
                    let note = format!(
                        "<p><i>(the file is not attached: {})</i></p></messageML>",
                        crate::templates::escape_message_ml(why)
                    );
                    message_ml.replacen("</messageML>", &note, 1)
                };
                let sent = match &file {
                    Ok(f) => match self
                        .symphony
                        .send_message_with_attachments(
                            stream,
                            message_ml,
                            None,
                            std::slice::from_ref(f),
                        )
                        .await
                    {
                        Ok(sent) => sent,
                        Err(e) if e.is_retryable() => return Err(e.into()),
                        // Symphony refused the file (size, type, policy): the words still go.
                        Err(e) => {
                            tracing::warn!(error = %e, "Symphony refused a WhatsApp file");
                            let ml = without_file(&format!("Symphony refused it: {e}"));
                            self.symphony.send_message(stream, &ml, None).await?
                        }
                    },
                    Err(why) => {
                        let ml = without_file(why);
                        self.symphony.send_message(stream, &ml, None).await?
                    }
                };
                self.metrics.relayed(RelayDirection::ToSymphony);
                Ok(Done { posted: Some((wa_message.clone(), sent.message_id)), ..Done::default() })
            }
            Effect::PostRelayed { stream, message_ml, wa_message } => {
                let sent = self.symphony.send_message(stream, message_ml, None).await?;
                self.metrics.relayed(RelayDirection::ToSymphony);
                Ok(Done { posted: Some((wa_message.clone(), sent.message_id)), ..Done::default() })
            }
            Effect::ResetInviteLink { group } => {
                let link = self.whatsapp()?.reset_invite_link(group).await?;
                Ok(Done::outcome(Outcome::InviteLinkReset {
                    group: group.clone(),
                    invite_link: link,
                }))
            }
        }
    }
}
