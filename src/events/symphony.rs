//! Symphony datafeed events, reduced to what the bot needs (`V4Event` → [`SymphonyEvent`]).

use serde::{Deserialize, Serialize};

use crate::domain::{StreamId, UserId};

/// One datafeed event. `id` is the datafeed's `id` (stable across redeliveries), used to
/// process each event once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SymphonyEvent {
    pub id: String,
    /// Milliseconds since the epoch, as the datafeed gives it.
    pub timestamp: i64,
    /// `initiator.user.userId`: who caused the event (the bot itself included).
    pub initiator: Option<UserId>,
    /// The display name of the user a membership event is about (`affectedUser`), if given.
    #[serde(default)]
    pub affected_name: Option<String>,
    pub kind: SymphonyEventKind,
}

impl SymphonyEvent {
    /// A message `bot` sent itself: never reacted to.
    pub fn is_own_message(&self, bot: UserId) -> bool {
        matches!(&self.kind, SymphonyEventKind::MessageSent(m)
            if m.sender == bot || self.initiator == Some(bot))
    }

    /// The key the inbound queue recognises the event by, whichever way it came: a message by
    /// its message id ([`message_key`]: the datafeed and the catch-up after a feed loss may
    /// both bring it), any other event by its datafeed event id.
    pub fn dedupe_key(&self) -> String {
        match &self.kind {
            SymphonyEventKind::MessageSent(m) => message_key(&m.message_id),
            _ => self.id.clone(),
        }
    }
}

/// `msg:<message id>`, the id in its URL-safe form (datafeed payloads may carry standard base64).
pub fn message_key(message_id: &str) -> String {
    format!("msg:{}", crate::domain::to_url_safe_id(message_id))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum SymphonyEventKind {
    MessageSent(ReceivedMessage),
    InstantMessageCreated {
        stream: StreamId,
    },
    RoomCreated {
        stream: StreamId,
        name: Option<String>,
    },
    RoomUpdated {
        stream: StreamId,
        name: Option<String>,
    },
    RoomDeactivated {
        stream: StreamId,
    },
    RoomReactivated {
        stream: StreamId,
    },
    UserJoinedRoom {
        stream: StreamId,
        user: UserId,
    },
    UserLeftRoom {
        stream: StreamId,
        user: UserId,
    },
    MemberPromotedToOwner {
        stream: StreamId,
        user: UserId,
    },
    MemberDemotedFromOwner {
        stream: StreamId,
        user: UserId,
    },
    /// An Elements form submitted (`SYMPHONYELEMENTSACTION`); the submitter is the initiator.
    ElementsAction {
        stream: StreamId,
        form_message_id: String,
        form_id: String,
        values: serde_json::Value,
        /// The submitter's email, when the datafeed gives it (entitlement lists may name emails).
        #[serde(default)]
        initiator_email: Option<String>,
    },
    /// Any other event type: acknowledged and ignored.
    Other {
        event_type: String,
    },
}

/// A message as the bot sees it: PresentationML reduced to plain text plus mentions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceivedMessage {
    pub message_id: String,
    pub stream: StreamId,
    /// `IM`, `ROOM`, `POST`… as the datafeed says.
    pub stream_type: Option<String>,
    pub sender: UserId,
    pub sender_name: Option<String>,
    /// The sender's email, when the datafeed gives it (entitlement lists may name emails).
    #[serde(default)]
    pub sender_email: Option<String>,
    /// Plain text of the message (mentions rendered as `@Display Name`).
    pub text: String,
    /// Mentioned users, by id, in order of appearance.
    pub mentions: Vec<UserId>,
    /// The raw PresentationML, kept for later conversions (relay formatting).
    pub presentation_ml: String,
    /// The raw EntityJSON `data`, if any.
    pub data: Option<String>,
    /// Files attached to the message (`V4Message.attachments`), downloadable by id.
    #[serde(default)]
    pub attachments: Vec<MessageAttachment>,
}

/// One `V4AttachmentInfo` of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageAttachment {
    /// The file id (`fileId` of the download call).
    pub id: String,
    pub name: String,
    /// Bytes.
    pub size: Option<u64>,
}

/// One attachment of a stream, as the pod lists them (`StreamAttachmentItem`): what `/wa info`
/// shows.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentInfo {
    pub message_id: String,
    #[serde(default)]
    pub ingestion_date: Option<i64>,
    #[serde(default)]
    pub user_id: Option<UserId>,
    pub file_id: String,
    pub name: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default, rename = "content-type", alias = "contentType")]
    pub content_type: Option<String>,
}
