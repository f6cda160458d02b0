//! The chat relay's decisions: which WhatsApp sends a room message causes, which room a
//! WhatsApp message goes to, and what a failed delivery causes. Like the group lifecycle it
//! performs no network call: it records what it must and returns effects.

use std::sync::Arc;

use serde_json::json;

use crate::domain::{
    ContactState, E164, GroupId, GroupKind, GroupRecord, GroupState, Recipient, StreamId,
    WaMessageRecord,
};
use crate::effects::Effect;
use crate::events::whatsapp::{WaError, WaUser};
use crate::events::{ReceivedMessage, WhatsAppEvent};
use crate::groups::service::ServiceError;
use crate::store::GroupRepo;
use crate::templates::Templates;

use super::format::quote_snippet as excerpt;
use super::{EXCERPT_CHARS, MAX_TEXT_CHARS, now_ms, split_text};

/// 131047: the customer-service window is closed (free text refused).
const WINDOW_CLOSED: i64 = 131_047;

pub struct RelayService {
    pub templates: Arc<Templates>,
}

/// A WhatsApp message as the relay needs it (the fields of [`WhatsAppEvent::Message`]).
#[derive(Debug, Clone, Copy)]
pub struct WaInbound<'a> {
    pub id: &'a str,
    pub from: &'a WaUser,
    pub profile_name: Option<&'a str>,
    pub group: Option<&'a GroupId>,
    pub context_id: Option<&'a str>,
    pub timestamp: Option<i64>,
    pub kind: &'a str,
    pub text: Option<&'a str>,
    pub caption: Option<&'a str>,
    pub media_id: Option<&'a str>,
    pub filename: Option<&'a str>,
}

impl<'a> WaInbound<'a> {
    /// The message fields of a webhook event, if it is a message.
    pub fn from_event(event: &'a WhatsAppEvent) -> Option<Self> {
        match event {
            WhatsAppEvent::Message {
                id,
                from,
                profile_name,
                group_id,
                context_id,
                timestamp,
                kind,
                text,
                caption,
                media_id,
                filename,
                ..
            } => Some(Self {
                id,
                from,
                profile_name: profile_name.as_deref(),
                group: group_id.as_ref(),
                context_id: context_id.as_deref(),
                timestamp: *timestamp,
                kind,
                text: text.as_deref(),
                caption: caption.as_deref(),
                media_id: media_id.as_deref(),
                filename: filename.as_deref(),
            }),
            _ => None,
        }
    }
}

impl RelayService {
    fn post(
        &self,
        stream: &StreamId,
        template: &str,
        data: serde_json::Value,
    ) -> Result<Effect, ServiceError> {
        crate::groups::service::post(&self.templates, stream, template, &data)
    }

    /// A Symphony member's message (not a command, not the bot's) in a stream: to the WhatsApp
    /// group (native) or to each contact (standard), prefixed with the sender's name.
    pub fn from_room(
        &self,
        tx: &dyn GroupRepo,
        message: &ReceivedMessage,
    ) -> Result<Vec<Effect>, ServiceError> {
        let Some(group) = tx.group_by_stream(&message.stream)? else {
            return Ok(Vec::new()); // not a group's room: nothing to relay
        };
        let text = super::format::to_whatsapp(&message.presentation_ml, message.data.as_deref())
            .unwrap_or_else(|_| message.text.clone());
        if text.trim().is_empty() && message.attachments.is_empty() {
            return Ok(Vec::new());
        }
        let author = message.sender_name.clone().unwrap_or_else(|| message.sender.to_string());
        let not_relayed = |reason: &str| -> Result<Vec<Effect>, ServiceError> {
            Ok(vec![self.post(
                &message.stream,
                "symphony/not_relayed",
                json!({"reason": reason}),
            )?])
        };
        match group.state {
            GroupState::Active => {}
            GroupState::Closed => return not_relayed("this WhatsApp group is closed."),
            GroupState::Failed => {
                return not_relayed("this room's WhatsApp group could not be created.");
            }
            GroupState::Creating | GroupState::AwaitingGroup => {
                return not_relayed(
                    "the WhatsApp group is still being created; send it again once it is ready.",
                );
            }
        }
        let recipients: Vec<Recipient> = match (group.kind, &group.wa_group) {
            (GroupKind::Native, Some(wa)) => vec![Recipient::Group(wa.clone())],
            (GroupKind::Native, None) => {
                return not_relayed("the WhatsApp group is still being created.");
            }
            (GroupKind::Standard, _) => tx
                .contacts(group.key)?
                .into_iter()
                .filter(|c| {
                    !c.barred && !matches!(c.state, ContactState::Left | ContactState::Removed)
                })
                .map(|c| Recipient::Phone(c.phone))
                .collect(),
        };
        if recipients.is_empty() {
            return not_relayed("this group has no WhatsApp contacts.");
        }
        let standard = group.kind == GroupKind::Standard;
        let full = self.templates.render(
            "whatsapp/relayed",
            &json!({"sender": author, "text": text, "group": if standard { group.name.as_str() } else { "" }}),
        )?;
        let quoted = excerpt(&text, EXCERPT_CHARS);
        let mut effects = Vec::new();
        for to in recipients {
            for file in &message.attachments {
                effects.push(Effect::RelayFileToWhatsApp {
                    group: group.key,
                    to: to.clone(),
                    stream: message.stream.clone(),
                    message_id: message.message_id.clone(),
                    file_id: file.id.clone(),
                    name: file.name.clone(),
                    author: author.clone(),
                });
            }
            if text.trim().is_empty() {
                continue;
            }
            for part in split_text(&full, MAX_TEXT_CHARS) {
                effects.push(Effect::RelayToWhatsApp {
                    group: group.key,
                    to: to.clone(),
                    text: part,
                    symphony_message: Some(message.message_id.clone()),
                    author: author.clone(),
                    excerpt: quoted.clone(),
                    template_only: false,
                });
            }
        }
        Ok(effects)
    }

    /// A WhatsApp message to the business: a group message goes to its group's room; a 1:1
    /// message to the room of the message it replies to, else the room that last wrote to the
    /// contact, else the contact's most recent group.
    pub fn from_whatsapp(
        &self,
        tx: &dyn GroupRepo,
        m: WaInbound<'_>,
    ) -> Result<Vec<Effect>, ServiceError> {
        // Username users come without their number: known by the user id seen before.
        let phone = crate::groups::service::phone_of(tx, m.from)?;
        if let Some(phone) = &phone
            && (m.profile_name.is_some() || m.from.user_id.is_some())
        {
            tx.set_contact_profile(phone, m.from.user_id.as_deref(), m.profile_name)?;
        }
        let at = m.timestamp.map_or_else(now_ms, |s| s.saturating_mul(1000));
        let replied = match m.context_id {
            Some(ctx) => tx.wa_message(ctx)?,
            None => None,
        };
        let group = match m.group {
            Some(wa) => {
                tx.open_window(wa.as_str(), at)?;
                tx.group_by_wa(wa)?
            }
            None => {
                let Some(phone) = &phone else {
                    tracing::info!("a 1:1 message from a user without a phone number; not routed");
                    return Ok(Vec::new());
                };
                tx.open_window(phone.as_str(), at)?;
                self.route_private(tx, phone, replied.as_ref())?
            }
        };
        let Some(group) = group else {
            tracing::info!(kind = m.kind, "a WhatsApp message for no known group; not relayed");
            return Ok(Vec::new());
        };
        let Some(stream) = group.stream.clone() else { return Ok(Vec::new()) };
        if group.state == GroupState::Closed {
            return Ok(Vec::new());
        }
        // A removed contact's message is not relayed, unless they wrote it before their removal
        // (WhatsApp's timestamp, to the second): only a participant can write in a group, and
        // its webhook may come late (Meta retries for days; the bot may have been down), after
        // the removal was decided.
        if let Some(p) = &phone
            && let Some(barred_at) = tx.barred_at(group.key, p)?
            && m.timestamp.is_none_or(|s| s.saturating_mul(1000) > barred_at)
        {
            tracing::warn!(group = group.key.0, "a message from a removed contact; not relayed");
            return Ok(Vec::new());
        }
        let text = match (m.kind, m.text, m.caption, m.filename) {
            ("text", Some(t), _, _) => t.to_owned(),
            (_, _, Some(caption), _) => caption.to_owned(),
            (_, _, None, Some(name)) => name.to_owned(),
            (kind, _, None, None) => format!("[{kind}]"),
        };
        let shown_phone =
            phone.as_ref().map_or_else(|| "unknown number".to_owned(), |p| p.to_string());
        let name = m
            .profile_name
            .map(str::to_owned)
            .or_else(|| m.from.username.clone())
            .unwrap_or_else(|| shown_phone.clone());
        let reply = replied
            .filter(|r| r.group == group.key)
            .map(|r| json!({"author": r.author, "excerpt": r.excerpt}));
        let message_ml = self.templates.render(
            "symphony/relayed",
            &json!({
                "name": name,
                "phone": shown_phone,
                "body": super::format::to_message_ml(&text),
                "private": m.group.is_none(),
                "reply": reply,
            }),
        )?;
        tx.record_wa_message(&WaMessageRecord {
            wa_message_id: m.id.to_owned(),
            group: group.key,
            inbound: true,
            phone,
            symphony_message_id: None,
            author: name,
            excerpt: excerpt(&text, EXCERPT_CHARS),
            kind: m.kind.to_owned(),
            body: None,
        })?;
        Ok(vec![match m.media_id {
            Some(media_id) => Effect::PostRelayedFile {
                stream,
                message_ml,
                wa_message: m.id.to_owned(),
                media_id: media_id.to_owned(),
                kind: m.kind.to_owned(),
                filename: m.filename.map(str::to_owned),
            },
            None => Effect::PostRelayed { stream, message_ml, wa_message: m.id.to_owned() },
        }])
    }

    /// The room a contact's 1:1 message belongs to.
    fn route_private(
        &self,
        tx: &dyn GroupRepo,
        phone: &E164,
        replied: Option<&WaMessageRecord>,
    ) -> Result<Option<GroupRecord>, ServiceError> {
        let mut candidates = Vec::new();
        candidates.extend(replied.map(|r| r.group));
        candidates.extend(tx.last_group_messaging(phone)?);
        candidates.extend(tx.groups_of_contact(phone)?);
        for key in candidates {
            let Some(group) = tx.group(key)? else { continue };
            if group.state == GroupState::Active && !tx.is_barred(key, phone)? {
                return Ok(Some(group));
            }
        }
        Ok(None)
    }

    /// A message status. A failed free-text send because the window had closed is resent
    /// through the template (once); any other failure is reported in the room. A failure for
    /// a message not recorded yet is looked at again through the outbox (`deferred` is then
    /// true, and an unknown message is "not yet").
    pub fn on_status(
        &self,
        tx: &dyn GroupRepo,
        message_id: &str,
        status: &str,
        recipient: Option<&WaUser>,
        errors: &[WaError],
        deferred: bool,
    ) -> Result<Vec<Effect>, ServiceError> {
        if status != "failed" {
            return Ok(Vec::new());
        }
        let Some(sent) = tx.wa_message(message_id)? else {
            if deferred {
                return Err(ServiceError::NotYet(format!("message {message_id} is not recorded")));
            }
            return Ok(vec![Effect::CheckStatus {
                message_id: message_id.to_owned(),
                recipient: recipient.cloned(),
                errors: errors.to_vec(),
            }]);
        };
        if sent.inbound {
            return Ok(Vec::new());
        }
        let Some(group) = tx.group(sent.group)? else { return Ok(Vec::new()) };
        let to = match (&sent.phone, &group.wa_group) {
            (Some(p), _) => Some(Recipient::Phone(p.clone())),
            (None, Some(wa)) => Some(Recipient::Group(wa.clone())),
            (None, None) => None,
        };
        let window_closed = errors.iter().any(|e| e.code == WINDOW_CLOSED);
        if window_closed
            && sent.kind == "text"
            && let (Some(to), Some(body)) = (to, sent.body.clone())
        {
            if !tx.claim_template_fallback(message_id)? {
                return Ok(Vec::new()); // already resent (a status per participant)
            }
            return Ok(vec![Effect::RelayToWhatsApp {
                group: group.key,
                to,
                text: body,
                symphony_message: sent.symphony_message_id,
                author: sent.author,
                excerpt: sent.excerpt,
                template_only: true,
            }]);
        }
        let Some(stream) = &group.stream else { return Ok(Vec::new()) };
        let recipient = recipient
            .and_then(|u| u.wa_id.as_deref())
            .and_then(|p| E164::parse(p).ok())
            .or(sent.phone)
            .map_or_else(|| "the WhatsApp group".to_owned(), |p| p.to_string());
        let reason = WaError::describe(errors);
        let reason = if reason.is_empty() { "no reason given".to_owned() } else { reason };
        Ok(vec![self.post(
            stream,
            "symphony/delivery_failed",
            json!({"recipient": recipient, "author": sent.author, "excerpt": sent.excerpt, "reason": reason}),
        )?])
    }
}
