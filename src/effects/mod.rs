//! Side effects as data, and what came of them. Deciders return [`Effect`]s; the store queues
//! them in the outbox in the same transaction as the decision; the [`executor`] performs them,
//! in order per [`OrderKey`], and reports what followed as an [`Outcome`], an inbound event
//! decided like any other (so that one place decides).

pub mod executor;

use serde::{Deserialize, Serialize};

use crate::domain::{E164, GroupId, GroupKey, StreamId, UserId};
use crate::events::whatsapp::{WaError, WaUser};
use crate::whatsapp::{Recipient, TemplateParam};

pub use executor::EffectExecutor;

/// One side effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Effect {
    /// The bot posts MessageML in a Symphony stream.
    PostMessage {
        stream: StreamId,
        message_ml: String,
    },
    /// The room of a stored group (the bot its first owner, the group's marker as a keyword);
    /// its outcome is [`Outcome::RoomCreated`].
    CreateRoom {
        group: GroupKey,
    },
    AddMember {
        stream: StreamId,
        user: UserId,
    },
    PromoteOwner {
        stream: StreamId,
        user: UserId,
    },
    /// The WhatsApp group of a stored native group (`approval_required`, the group's marker in
    /// its description); its outcome is [`Outcome::WaGroupRequested`] or, when a lost earlier
    /// attempt's group is recognised, [`Outcome::WaGroupFound`].
    CreateWaGroup {
        group: GroupKey,
    },
    /// A template message (to a phone or a group); `order` keeps a chat's messages in order.
    SendWaTemplate {
        order: String,
        to: Recipient,
        name: String,
        language: String,
        params: Vec<TemplateParam>,
        /// The group it is about: the sent message is recorded, so a failed delivery is said
        /// in the group's room.
        #[serde(default)]
        group: Option<GroupKey>,
        /// What it is, as the room is told if it fails ("invitation to Deal team", a notice).
        #[serde(default)]
        about: Option<String>,
    },
    /// Approves a join request, if, when it runs, `phone` is still an invited contact of
    /// `key`'s group and not barred; otherwise the request is rejected instead.
    ApproveJoin {
        group: GroupId,
        request_id: String,
        #[serde(default)]
        key: Option<GroupKey>,
        #[serde(default)]
        phone: Option<E164>,
    },
    RejectJoin {
        group: GroupId,
        request_id: String,
    },
    /// A new invite link (the old one dies); its outcome is [`Outcome::InviteLinkReset`].
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
        group: GroupKey,
    },
    /// Removes participants (phones as WhatsApp ids, or business-scoped user ids).
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
        group: GroupKey,
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
        recipient: Option<WaUser>,
        errors: Vec<WaError>,
    },
    /// A file of a room message sent to WhatsApp as media (downloaded from the agent, uploaded,
    /// sent with the author as caption); outside the window, a notice says a file was shared.
    RelayFileToWhatsApp {
        group: GroupKey,
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

/// Effects with the same key are performed in order, one at a time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OrderKey {
    /// A Symphony stream: posts and room changes.
    Stream(StreamId),
    /// One person's membership of a room: added before promoted, each person's changes in
    /// order, different people's at once (a new group's members are added in parallel).
    Member(StreamId, UserId),
    /// A stored group's creation steps.
    Group(GroupKey),
    /// A WhatsApp chat: a group id, or a contact's phone for 1:1 messages.
    WaChat(String),
    /// A deferred status check.
    Status(String),
}

impl std::fmt::Display for OrderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OrderKey::Stream(s) => write!(f, "stream:{s}"),
            OrderKey::Member(s, u) => write!(f, "member:{s}:{u}"),
            OrderKey::Group(g) => write!(f, "group:{}", g.0),
            OrderKey::WaChat(c) => write!(f, "wa:{c}"),
            OrderKey::Status(m) => write!(f, "status:{m}"),
        }
    }
}

impl Effect {
    /// Effects with the same key are performed in order.
    pub fn order_key(&self) -> OrderKey {
        match self {
            Effect::PostMessage { stream, .. }
            | Effect::PostRelayed { stream, .. }
            | Effect::PostRelayedFile { stream, .. }
            | Effect::RenameRoom { stream, .. } => OrderKey::Stream(stream.clone()),
            Effect::AddMember { stream, user }
            | Effect::PromoteOwner { stream, user }
            | Effect::RemoveMember { stream, user }
            | Effect::DemoteOwner { stream, user } => OrderKey::Member(stream.clone(), *user),
            Effect::CreateRoom { group }
            | Effect::CreateWaGroup { group }
            | Effect::RefreshDescription { group } => OrderKey::Group(*group),
            Effect::SendWaTemplate { order, .. } => OrderKey::WaChat(order.clone()),
            Effect::RelayToWhatsApp { to, .. } | Effect::RelayFileToWhatsApp { to, .. } => {
                OrderKey::WaChat(to.chat().to_owned())
            }
            Effect::CheckStatus { message_id, .. } => OrderKey::Status(message_id.clone()),
            Effect::ApproveJoin { group, .. }
            | Effect::RejectJoin { group, .. }
            | Effect::ResetInviteLink { group }
            | Effect::UpdateWaSubject { group, .. }
            | Effect::RemoveWaParticipants { group, .. }
            | Effect::DeleteWaGroup { group } => OrderKey::WaChat(group.as_str().to_owned()),
        }
    }

    /// `(order key, JSON)` as the outbox stores it.
    pub fn to_outbox(&self) -> Result<crate::store::QueuedEffect, serde_json::Error> {
        Ok((self.order_key().to_string(), serde_json::to_value(self)?))
    }
}

/// Queues-ready form of a decision's effects; an effect that cannot be serialised is a bug in
/// this program, reported as an error rather than dropped.
pub fn to_outbox(effects: &[Effect]) -> Result<Vec<crate::store::QueuedEffect>, serde_json::Error> {
    effects.iter().map(Effect::to_outbox).collect()
}

/// What followed from an effect, fed back to the dispatcher as an inbound event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Outcome {
    /// A group's room exists (created, or recognised by its marker after a lost answer).
    RoomCreated { group: GroupKey, stream: StreamId },
    /// WhatsApp accepted the create call; its `group_create` webhook will carry `request_id`.
    WaGroupRequested { group: GroupKey, request_id: String },
    /// The WhatsApp group of a lost create answer, recognised by its marker.
    WaGroupFound { group: GroupKey, wa_group: GroupId, invite_link: Option<String> },
    /// The reconciler listed the number's groups and none carries this group's marker: the
    /// WhatsApp group was never made.
    WaGroupMissing { group: GroupKey },
    /// The invite link was reset.
    InviteLinkReset { group: GroupId, invite_link: String },
    /// An effect was given up: its room is told.
    Failed { effect: Effect, reason: String },
    /// A file went as a notice (the window was closed): the room is told why.
    FileNotSent { stream: StreamId, name: String },
    /// A failed delivery whose message is now recorded (after a [`Effect::CheckStatus`]).
    DeliveryFailed { message_id: String, recipient: Option<WaUser>, errors: Vec<WaError> },
}
