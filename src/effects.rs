//! Side effects as data: the dispatcher decides them and writes them to the store's outbox in
//! the same transaction as the processed mark of the event that caused them; the executor here
//! performs them with the clients, retrying with capped backoff (honouring `Retry-After`) across
//! restarts, in order per stream or group.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::RetryConfig;
use crate::groups::service::GroupService;
use crate::groups::{GroupId, StreamId, UserId};
use crate::metrics::{Metrics, RelayDirection};
use crate::store::{GroupKey, OutboxRow, Store};
use crate::symphony::SymphonyClient;
use crate::whatsapp::{Recipient, TemplateParam, WhatsAppClient};

/// One side effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Effect {
    /// The bot posts MessageML in a Symphony stream.
    PostMessage {
        stream: StreamId,
        message_ml: String,
    },
    /// The room of a stored group (the bot its first owner); then its members and WhatsApp group.
    CreateRoom {
        group: i64,
    },
    AddMember {
        stream: StreamId,
        user: UserId,
    },
    PromoteOwner {
        stream: StreamId,
        user: UserId,
    },
    /// The WhatsApp group of a stored native group (`approval_required`).
    CreateWaGroup {
        group: i64,
    },
    /// A template message (to a phone or a group); `order` keeps a group's messages in order.
    SendWaTemplate {
        order: String,
        to: Recipient,
        name: String,
        language: String,
        params: Vec<TemplateParam>,
        /// The group it is about: the sent message is recorded, so a failed delivery is said
        /// in the group's room.
        #[serde(default)]
        group: Option<i64>,
        /// What it is, as the room is told if it fails ("invitation to Deal team", a notice).
        #[serde(default)]
        about: Option<String>,
    },
    ApproveJoin {
        group: GroupId,
        request_id: String,
    },
    RejectJoin {
        group: GroupId,
        request_id: String,
    },
    ResetInviteLink {
        group: GroupId,
    },
    RenameRoom {
        stream: StreamId,
        name: String,
    },
    RemoveMember {
        stream: StreamId,
        user: UserId,
    },
    DemoteOwner {
        stream: StreamId,
        user: UserId,
    },
    UpdateWaSubject {
        group: GroupId,
        subject: String,
    },
    /// Rewrites the WhatsApp group description from the current advisors' names.
    RefreshDescription {
        group: i64,
    },
    RemoveWaParticipants {
        group: GroupId,
        users: Vec<String>,
    },
    DeleteWaGroup {
        group: GroupId,
    },
    /// A chat message relayed to WhatsApp (a group, or one contact of a standard group): free
    /// text while that chat's 24-hour window is open, else the `message` template carrying it.
    /// Recorded in the message map once sent, so replies and failures find their way back.
    RelayToWhatsApp {
        group: i64,
        to: Recipient,
        text: String,
        /// The Symphony message it comes from.
        symphony_message: Option<String>,
        author: String,
        excerpt: String,
        /// Straight to the template (the free-text attempt failed with a closed window).
        template_only: bool,
    },
    /// A failed-delivery status that came before its message was recorded as sent (the webhook
    /// outran the send's response): looked at again shortly, through the outbox's retries.
    CheckStatus {
        message_id: String,
        recipient: Option<crate::events::whatsapp::WaUser>,
        errors: Vec<crate::events::whatsapp::WaError>,
    },
    /// A file of a room message sent to WhatsApp as media (downloaded from the agent, uploaded,
    /// sent with the author as caption); outside the window, a notice says a file was shared.
    RelayFileToWhatsApp {
        group: i64,
        to: Recipient,
        stream: StreamId,
        message_id: String,
        file_id: String,
        name: String,
        author: String,
    },
    /// A WhatsApp media message posted in the room with its file attached.
    PostRelayedFile {
        stream: StreamId,
        message_ml: String,
        wa_message: String,
        media_id: String,
        /// `image`, `document`, … (names the file when WhatsApp gives no file name).
        kind: String,
        filename: Option<String>,
    },
    /// A WhatsApp message posted in the room; the post's id is recorded against it.
    PostRelayed {
        stream: StreamId,
        message_ml: String,
        wa_message: String,
    },
}

impl Effect {
    /// The bot posts `template` (a `symphony/…` MessageML template) rendered with `data`.
    pub fn post(
        templates: &crate::templates::Templates,
        stream: &StreamId,
        template: &str,
        data: &serde_json::Value,
    ) -> Result<Effect, crate::templates::TemplateError> {
        Ok(Effect::PostMessage {
            stream: stream.clone(),
            message_ml: templates.render(template, data)?,
        })
    }

    /// Effects with the same key are performed in order.
    pub fn order_key(&self) -> String {
        match self {
            Effect::PostMessage { stream, .. }
            | Effect::PostRelayed { stream, .. }
            | Effect::PostRelayedFile { stream, .. }
            | Effect::AddMember { stream, .. }
            | Effect::PromoteOwner { stream, .. }
            | Effect::RenameRoom { stream, .. }
            | Effect::RemoveMember { stream, .. }
            | Effect::DemoteOwner { stream, .. } => format!("stream:{stream}"),
            Effect::CreateRoom { group }
            | Effect::CreateWaGroup { group }
            | Effect::RefreshDescription { group } => format!("group:{group}"),
            Effect::SendWaTemplate { order, .. } => format!("wa:{order}"),
            Effect::RelayToWhatsApp { to: Recipient::Group(group), .. }
            | Effect::RelayFileToWhatsApp { to: Recipient::Group(group), .. } => {
                format!("wa:{group}")
            }
            Effect::RelayToWhatsApp { to: Recipient::Phone(phone), .. }
            | Effect::RelayFileToWhatsApp { to: Recipient::Phone(phone), .. } => {
                format!("wa:{phone}")
            }
            Effect::CheckStatus { message_id, .. } => format!("status:{message_id}"),
            Effect::ApproveJoin { group, .. }
            | Effect::RejectJoin { group, .. }
            | Effect::ResetInviteLink { group }
            | Effect::UpdateWaSubject { group, .. }
            | Effect::RemoveWaParticipants { group, .. }
            | Effect::DeleteWaGroup { group } => format!("wa:{group}"),
        }
    }

    /// `(order key, JSON)` as the outbox stores it.
    pub fn to_outbox(&self) -> Result<(String, serde_json::Value), serde_json::Error> {
        Ok((self.order_key(), serde_json::to_value(self)?))
    }
}

/// How many effects (of different streams or groups) run at once.
const PARALLEL_EFFECTS: usize = 8;

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
    /// `None` when WhatsApp is not configured: WhatsApp effects then fail permanently.
    pub whatsapp: Option<WhatsAppClient>,
    /// Decides what follows a created room.
    pub groups: Arc<GroupService>,
    /// Decides what follows a failed delivery.
    pub relay: Arc<crate::relay::RelayService>,
    /// Attempts and backoff (the `retry` config).
    pub retry: RetryConfig,
    /// Notices sent, messages relayed and retries are counted here.
    pub metrics: Metrics,
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

impl From<crate::groups::service::ServiceError> for Failure {
    fn from(e: crate::groups::service::ServiceError) -> Self {
        Failure { retryable: true, retry_after: None, message: e.to_string() }
    }
}

impl From<crate::templates::TemplateError> for Failure {
    fn from(e: crate::templates::TemplateError) -> Self {
        permanent(e.to_string())
    }
}

impl From<crate::store::StoreError> for Failure {
    fn from(e: crate::store::StoreError) -> Self {
        Failure { retryable: true, retry_after: None, message: e.to_string() }
    }
}

fn permanent(message: impl Into<String>) -> Failure {
    Failure { retryable: false, retry_after: None, message: message.into() }
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
            // At most one effect per order key is due at a time, so running the batch
            // concurrently keeps each stream's and group's order while groups proceed in parallel.
            // Stopping mid-call leaves the effects in the outbox: performed after the restart.
            let batch = futures::stream::iter(due)
                .map(|row| async move { self.attempt(&row).await })
                .buffer_unordered(PARALLEL_EFFECTS);
            let results: Vec<_> = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                r = batch.collect() => r,
            };
            for r in results {
                r?;
            }
        }
    }

    async fn attempt(&self, row: &OutboxRow) -> Result<(), crate::store::StoreError> {
        let effect: Effect = match serde_json::from_value(row.effect.clone()) {
            Ok(e) => e,
            Err(e) => return self.store.outbox_failed(row.id, &format!("unreadable effect: {e}")),
        };
        match self.perform(&effect).await {
            Ok(follow_ups) => {
                let queued: Vec<_> = follow_ups.iter().filter_map(|e| e.to_outbox().ok()).collect();
                self.store.outbox_done_with(row.id, &queued)
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
                // Said in the group's room, through the outbox like any message. A message that
                // cannot be posted is not reported in its own room: it stays in the outbox
                // (failed_at, last_error) and in the log.
                let report = self.failure_report(&effect, &f.message);
                let queued: Vec<_> = report.iter().filter_map(|e| e.to_outbox().ok()).collect();
                self.store.outbox_failed_with(row.id, &f.message, &queued)
            }
        }
    }

    /// A room message about an effect given up, when there is a room to tell.
    fn failure_report(&self, effect: &Effect, reason: &str) -> Option<Effect> {
        let (what, stream) = match effect {
            Effect::PostMessage { .. } | Effect::PostRelayed { .. } => return None,
            Effect::PostRelayedFile { .. } => return None, // performed without the file instead
            Effect::RelayFileToWhatsApp { to, stream, name, author, .. } => {
                let who = to.shown();
                (format!("send {author}'s file \"{name}\" to {who}"), Some(stream.clone()))
            }
            Effect::CheckStatus { .. } => return None, // not ours after all: nothing to say
            Effect::RelayToWhatsApp { group, to, author, excerpt, .. } => {
                let who = to.shown();
                let stream =
                    self.store.group(GroupKey(*group)).ok().flatten().and_then(|g| g.stream);
                (format!("relay {author}'s message \"{excerpt}\" to {who}"), stream)
            }
            Effect::CreateRoom { .. } => return None,
            Effect::AddMember { stream, user } => {
                (format!("add user {user} to the room"), Some(stream.clone()))
            }
            Effect::PromoteOwner { stream, user } => {
                (format!("make user {user} an owner"), Some(stream.clone()))
            }
            Effect::RenameRoom { stream, .. } => {
                ("rename the room".to_owned(), Some(stream.clone()))
            }
            Effect::RemoveMember { stream, user } => {
                (format!("remove user {user} from the room"), Some(stream.clone()))
            }
            Effect::DemoteOwner { stream, user } => {
                (format!("demote user {user}"), Some(stream.clone()))
            }
            Effect::CreateWaGroup { group } | Effect::RefreshDescription { group } => {
                let stream =
                    self.store.group(GroupKey(*group)).ok().flatten().and_then(|g| g.stream);
                let what = if matches!(effect, Effect::CreateWaGroup { .. }) {
                    "create the WhatsApp group"
                } else {
                    "update the WhatsApp group description"
                };
                (what.to_owned(), stream)
            }
            Effect::SendWaTemplate { order, to, .. } => {
                let who = to.shown();
                let stream = self
                    .store
                    .group_by_wa(&GroupId(order.clone()))
                    .ok()
                    .flatten()
                    .and_then(|g| g.stream);
                (format!("send a WhatsApp message to {who}"), stream)
            }
            Effect::ApproveJoin { group, .. }
            | Effect::RejectJoin { group, .. }
            | Effect::ResetInviteLink { group }
            | Effect::UpdateWaSubject { group, .. }
            | Effect::RemoveWaParticipants { group, .. }
            | Effect::DeleteWaGroup { group } => {
                let what = match effect {
                    Effect::ApproveJoin { .. } => "approve a join request",
                    Effect::RejectJoin { .. } => "reject a join request",
                    Effect::ResetInviteLink { .. } => "reset the invite link",
                    Effect::UpdateWaSubject { .. } => "rename the WhatsApp group",
                    Effect::RemoveWaParticipants { .. } => {
                        "remove participants from the WhatsApp group"
                    }
                    _ => "delete the WhatsApp group",
                };
                (
                    what.to_owned(),
                    self.store.group_by_wa(group).ok().flatten().and_then(|g| g.stream),
                )
            }
        };
        let stream = stream?;
        let message_ml = self
            .groups
            .templates
            .render("symphony/effect_failed", &serde_json::json!({"what": what, "reason": reason}))
            .ok()?;
        Some(Effect::PostMessage { stream, message_ml })
    }

    /// The WhatsApp group description: the advisors' current display names.
    async fn description(&self, key: GroupKey) -> Result<String, Failure> {
        let mut names = Vec::new();
        for (user, _) in self.store.advisors(key)? {
            let shown = self.symphony.user_by_id(user).await?.and_then(|u| u.display_name);
            names.push(shown.unwrap_or_else(|| user.to_string()));
        }
        Ok(self.groups.description(&names)?)
    }

    /// A Symphony file to WhatsApp as media, or, outside the window (WhatsApp takes no free
    /// media then), a notice through the template that a file was shared, and the room told.
    #[allow(clippy::too_many_arguments)]
    async fn relay_file(
        &self,
        group: GroupKey,
        to: &Recipient,
        stream: &StreamId,
        message_id: &str,
        file_id: &str,
        name: &str,
        author: &str,
    ) -> Result<Vec<Effect>, Failure> {
        let wa = self.whatsapp()?;
        let open = self
            .store
            .last_inbound(to.chat())?
            .is_some_and(|at| crate::relay::window_open(at, crate::relay::now_ms()));
        let record = |id: String, kind: &str| {
            self.store.record_wa_message(&crate::store::WaMessageRecord {
                wa_message_id: id,
                group,
                inbound: false,
                phone: to.phone().cloned(),
                symphony_message_id: Some(message_id.to_owned()),
                author: author.to_owned(),
                excerpt: name.to_owned(),
                kind: kind.to_owned(),
                body: None,
            })
        };
        if !open {
            let t = &self.groups.settings.wa_templates.message;
            let text = self.groups.templates.render(
                "whatsapp/file_shared",
                &serde_json::json!({"sender": author, "name": name}),
            )?;
            // The notice is short (a name): one part.
            let part = crate::relay::template_parts(&text).concat();
            let id =
                wa.send_template(to, &t.name, &t.language, &[TemplateParam::Text(part)]).await?;
            record(id, "template")?;
            let reason = format!(
                "{name} was not sent: WhatsApp takes files only within 24 hours of a contact's last message, so a notice that you shared it was sent instead."
            );
            let message_ml = self
                .groups
                .templates
                .render("symphony/not_relayed", &serde_json::json!({"reason": reason}))?;
            return Ok(vec![Effect::PostMessage { stream: stream.clone(), message_ml }]);
        }
        let bytes = self.symphony.download_attachment(stream, message_id, file_id).await?;
        let mime = mime_guess::from_path(name).first_or_octet_stream().essence_str().to_owned();
        let kind = crate::whatsapp::media::MediaKind::for_mime(&mime)
            .ok_or_else(|| permanent(format!("WhatsApp does not take {mime} files")))?;
        let file =
            crate::whatsapp::OutgoingFile { filename: name.to_owned(), mime, bytes: bytes.into() };
        let caption = format!("*{author}*");
        let caption = kind.takes_caption().then_some(caption.as_str());
        let id = wa.send_file(to, kind, &file, caption).await?;
        self.metrics.relayed(RelayDirection::ToWhatsApp);
        record(id, "media")?;
        Ok(Vec::new())
    }

    fn whatsapp(&self) -> Result<&WhatsAppClient, Failure> {
        self.whatsapp.as_ref().ok_or_else(|| {
            permanent("WhatsApp is not configured (whatsapp.phoneNumberId, accessToken)")
        })
    }

    /// Performs one effect; returns what follows from it.
    async fn perform(&self, effect: &Effect) -> Result<Vec<Effect>, Failure> {
        match effect {
            Effect::PostMessage { stream, message_ml } => {
                self.symphony.send_message(stream, message_ml, None).await?;
                Ok(Vec::new())
            }
            Effect::CreateRoom { group } => {
                let key = GroupKey(*group);
                let record = self
                    .store
                    .group(key)?
                    .ok_or_else(|| permanent(format!("group {group} is not stored")))?;
                // Re-entry after a crash: the room exists already, continue from there.
                let stream = match record.stream {
                    Some(stream) => stream,
                    None => {
                        // An earlier attempt may have created the room without our hearing of
                        // it: adopt that room instead of making a second one.
                        let earlier = self.store.mark_create_attempt(key, true)?;
                        let mut adopted = None;
                        if earlier {
                            for (sid, name) in self.symphony.my_rooms().await? {
                                if name == record.name
                                    && self.store.group_by_stream(&sid)?.is_none()
                                {
                                    tracing::warn!(room = %sid, "adopting the room an earlier attempt created");
                                    adopted = Some(sid);
                                    break;
                                }
                            }
                        }
                        let stream = match adopted {
                            Some(sid) => sid,
                            None => {
                                self.symphony
                                    .create_room(
                                        &record.name,
                                        "WhatsApp group managed by wa-groups-bot",
                                    )
                                    .await?
                                    .stream
                            }
                        };
                        self.store.set_group_stream(key, &stream)?;
                        stream
                    }
                };
                Ok(self.groups.after_room_created(key, &stream)?)
            }
            Effect::AddMember { stream, user } => {
                self.symphony.add_member(stream, *user).await?;
                Ok(Vec::new())
            }
            Effect::PromoteOwner { stream, user } => {
                self.symphony.promote_owner(stream, *user).await?;
                Ok(Vec::new())
            }
            Effect::CreateWaGroup { group } => {
                let key = GroupKey(*group);
                let record = self
                    .store
                    .group(key)?
                    .ok_or_else(|| permanent(format!("group {group} is not stored")))?;
                if record.create_request_id.is_some() {
                    return Ok(Vec::new()); // already asked; the webhook will come
                }
                // An earlier attempt may have created the group without our hearing of it.
                if self.store.mark_create_attempt(key, false)? {
                    let wa = self.whatsapp()?;
                    for g in wa.all_groups().await? {
                        if g.subject.as_deref() == Some(record.name.as_str())
                            && self.store.group_by_wa(&g.id)?.is_none()
                        {
                            tracing::warn!(group = %g.id, "adopting the WhatsApp group an earlier attempt created");
                            let link = wa.invite_link(&g.id).await?;
                            return Ok(self.groups.adopt_group(key, &g.id, Some(&link))?);
                        }
                    }
                }
                let description = self.description(key).await?;
                let request_id =
                    self.whatsapp()?.create_group(&record.name, &description, true).await?;
                self.store.set_group_request(key, &request_id)?;
                Ok(Vec::new())
            }
            Effect::SendWaTemplate { to, name, language, params, group, about, .. } => {
                let id = self.whatsapp()?.send_template(to, name, language, params).await?;
                if let Some(group) = group {
                    self.store.record_wa_message(&crate::store::WaMessageRecord {
                        wa_message_id: id,
                        group: GroupKey(*group),
                        inbound: false,
                        phone: to.phone().cloned(),
                        symphony_message_id: None,
                        author: "wa-groups-bot".to_owned(),
                        excerpt: crate::relay::format::quote_snippet(
                            about.as_deref().unwrap_or(name),
                            crate::relay::EXCERPT_CHARS,
                        ),
                        kind: "template".to_owned(),
                        body: None,
                    })?;
                }
                self.metrics.notice_sent(name);
                Ok(Vec::new())
            }
            Effect::ApproveJoin { group, request_id } => {
                let outcome = self
                    .whatsapp()?
                    .approve_join_requests(group, std::slice::from_ref(request_id))
                    .await?;
                if let Some((_, errors)) = outcome.failed.first() {
                    tracing::warn!(?errors, "a join request could not be approved");
                }
                Ok(Vec::new())
            }
            Effect::RejectJoin { group, request_id } => {
                self.whatsapp()?
                    .reject_join_requests(group, std::slice::from_ref(request_id))
                    .await?;
                Ok(Vec::new())
            }
            Effect::RenameRoom { stream, name } => {
                self.symphony.rename_room(stream, name).await?;
                Ok(Vec::new())
            }
            Effect::RemoveMember { stream, user } => {
                self.symphony.remove_member(stream, *user).await?;
                Ok(Vec::new())
            }
            Effect::DemoteOwner { stream, user } => {
                self.symphony.demote_owner(stream, *user).await?;
                Ok(Vec::new())
            }
            Effect::UpdateWaSubject { group, subject } => {
                self.whatsapp()?.update_group(group, Some(subject), None).await?;
                Ok(Vec::new())
            }
            Effect::RefreshDescription { group } => {
                let key = GroupKey(*group);
                let Some(wa) = self.store.group(key)?.and_then(|g| g.wa_group) else {
                    return Ok(Vec::new());
                };
                let description = self.description(key).await?;
                self.whatsapp()?.update_group(&wa, None, Some(&description)).await?;
                Ok(Vec::new())
            }
            Effect::RemoveWaParticipants { group, users } => {
                self.whatsapp()?.remove_participants(group, users).await?;
                Ok(Vec::new())
            }
            Effect::DeleteWaGroup { group } => {
                self.whatsapp()?.delete_group(group).await?;
                Ok(Vec::new())
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
                let open = !template_only
                    && self
                        .store
                        .last_inbound(to.chat())?
                        .is_some_and(|at| crate::relay::window_open(at, crate::relay::now_ms()));
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
                        let t = &self.groups.settings.wa_templates.message;
                        let mut ids = Vec::new();
                        for part in crate::relay::template_parts(text) {
                            let param = [TemplateParam::Text(part)];
                            ids.push((
                                wa.send_template(to, &t.name, &t.language, &param).await?,
                                "template",
                            ));
                        }
                        ids
                    }
                };
                // Each part is recorded, so that a reply to any of them finds the message.
                for (id, kind) in sent {
                    self.store.record_wa_message(&crate::store::WaMessageRecord {
                        wa_message_id: id,
                        group: GroupKey(*group),
                        inbound: false,
                        phone: to.phone().cloned(),
                        symphony_message_id: symphony_message.clone(),
                        author: author.clone(),
                        excerpt: excerpt.clone(),
                        kind: kind.to_owned(),
                        body: Some(text.clone()),
                    })?;
                }
                self.metrics.relayed(RelayDirection::ToWhatsApp);
                Ok(Vec::new())
            }
            Effect::CheckStatus { message_id, recipient, errors } => {
                Ok(self.relay.on_status(message_id, "failed", recipient.as_ref(), errors, true)?)
            }
            Effect::RelayFileToWhatsApp {
                group,
                to,
                stream,
                message_id,
                file_id,
                name,
                author,
            } => {
                self.relay_file(GroupKey(*group), to, stream, message_id, file_id, name, author)
                    .await
            }
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
                        name: crate::relay::file_name(filename.as_deref(), kind, &mime),
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
                self.store.set_wa_message_symphony(wa_message, &sent.message_id)?;
                Ok(Vec::new())
            }
            Effect::PostRelayed { stream, message_ml, wa_message } => {
                let sent = self.symphony.send_message(stream, message_ml, None).await?;
                self.metrics.relayed(RelayDirection::ToSymphony);
                self.store.set_wa_message_symphony(wa_message, &sent.message_id)?;
                Ok(Vec::new())
            }
            Effect::ResetInviteLink { group } => {
                let link = self.whatsapp()?.reset_invite_link(group).await?;
                if let Some(record) = self.store.group_by_wa(group)? {
                    self.store.set_group_created(record.key, group, Some(&link))?;
                }
                Ok(Vec::new())
            }
        }
    }
}
