//! WhatsApp webhook events, reduced to what the bot needs: one event per group item, message or
//! status of a webhook change. Contacts are identified by `wa_id` (phone digits) and, when
//! present, the business-scoped user id (BSUID, `user_id`).

use serde::{Deserialize, Serialize};

use crate::domain::GroupId;

/// A WhatsApp user as a webhook names them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaUser {
    /// Phone digits without `+` (may be absent for users with a username).
    pub wa_id: Option<String>,
    /// Business-scoped user id, e.g. `US.13491208655302741918`.
    pub user_id: Option<String>,
    pub username: Option<String>,
    /// What the business passed in (remove requests echo it).
    pub input: Option<String>,
}

/// One error of a webhook item (`errors[]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaError {
    pub code: i64,
    pub title: Option<String>,
    pub message: Option<String>,
    pub details: Option<String>,
}

impl WaError {
    /// Errors as people read them: `Message (code); …` (the title when there is no message).
    pub fn describe(errors: &[WaError]) -> String {
        errors
            .iter()
            .map(|e| {
                let text = e.message.as_deref().or(e.title.as_deref()).unwrap_or_default();
                format!("{text} ({})", e.code)
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A WhatsApp user as a webhook's `contacts` shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaContact {
    pub user: WaUser,
    /// Their profile name (what they call themselves on WhatsApp).
    pub name: Option<String>,
}

/// A participant the business failed to remove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedParticipant {
    pub input: Option<String>,
    pub errors: Vec<WaError>,
}

/// The outcome of one setting in a `group_settings_update`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingOutcome {
    pub text: Option<String>,
    pub successful: bool,
    pub errors: Vec<WaError>,
}

/// A WhatsApp webhook change turned into a domain event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum WhatsAppEvent {
    /// `group_lifecycle_update` / `group_create`, success.
    GroupCreated {
        request_id: Option<String>,
        group_id: GroupId,
        subject: Option<String>,
        invite_link: Option<String>,
        join_approval_mode: Option<String>,
    },
    /// `group_create` carrying `errors`.
    GroupCreateFailed { request_id: Option<String>, subject: Option<String>, errors: Vec<WaError> },
    /// `group_lifecycle_update` / `group_delete` (with `errors` if it failed).
    GroupDeleted { request_id: Option<String>, group_id: GroupId, errors: Vec<WaError> },
    /// `group_participants_add`: people joined (by link, or after approval).
    ParticipantsAdded { group_id: GroupId, reason: Option<String>, participants: Vec<WaUser> },
    /// `group_participants_remove`: `initiated_by` is `business` or `participant` (left).
    ParticipantsRemoved {
        group_id: GroupId,
        request_id: Option<String>,
        initiated_by: Option<String>,
        removed: Vec<WaUser>,
        failed: Vec<FailedParticipant>,
        errors: Vec<WaError>,
    },
    /// `group_join_request_created`: someone tapped the link of an `approval_required` group.
    JoinRequestCreated {
        group_id: GroupId,
        join_request_id: String,
        user: WaUser,
        reason: Option<String>,
    },
    /// `group_join_request_revoked`: they cancelled it.
    JoinRequestRevoked { group_id: GroupId, join_request_id: String, user: WaUser },
    /// `group_settings_update`: the outcome of a subject/description change.
    SettingsUpdated {
        group_id: GroupId,
        request_id: Option<String>,
        subject: Option<SettingOutcome>,
        description: Option<SettingOutcome>,
        errors: Vec<WaError>,
    },
    /// `group_status_update` / `group_suspend`.
    GroupSuspended { group_id: GroupId },
    /// `group_status_update` / `group_suspend_cleared`.
    GroupSuspendCleared { group_id: GroupId },
    /// `messages`: a message to the business (1:1) or in a group (`group_id`).
    Message {
        id: String,
        from: WaUser,
        profile_name: Option<String>,
        group_id: Option<GroupId>,
        /// `context.id`: the message this one replies to.
        context_id: Option<String>,
        timestamp: Option<i64>,
        /// `text`, `image`, `document`, … or `unsupported`.
        kind: String,
        text: Option<String>,
        /// Media id for media messages (downloaded later through the API).
        media_id: Option<String>,
        caption: Option<String>,
        /// The media's MIME type, e.g. `image/jpeg`.
        #[serde(default)]
        mime_type: Option<String>,
        /// A document's file name.
        #[serde(default)]
        filename: Option<String>,
        errors: Vec<WaError>,
    },
    /// `messages` / `statuses`: what happened to a message the business sent.
    Status {
        message_id: String,
        /// `sent`, `delivered`, `read`, `failed`.
        status: String,
        recipient_id: Option<String>,
        recipient_type: Option<String>,
        /// For group messages: which participant this status is about.
        participant: Option<WaUser>,
        timestamp: Option<i64>,
        errors: Vec<WaError>,
        /// The recipient's profile, which WhatsApp sends with the delivered and read statuses
        /// of a 1:1 message: their number (when shown), user id and profile name.
        #[serde(default)]
        contact: Option<WaContact>,
    },
    /// Any change the bot does not act on: acknowledged and kept for the record.
    Other { field: String, kind: Option<String> },
}

impl WhatsAppEvent {
    /// The group this event is about, if any (events are ordered per group).
    pub fn group(&self) -> Option<&GroupId> {
        match self {
            WhatsAppEvent::GroupCreated { group_id, .. }
            | WhatsAppEvent::GroupDeleted { group_id, .. }
            | WhatsAppEvent::ParticipantsAdded { group_id, .. }
            | WhatsAppEvent::ParticipantsRemoved { group_id, .. }
            | WhatsAppEvent::JoinRequestCreated { group_id, .. }
            | WhatsAppEvent::JoinRequestRevoked { group_id, .. }
            | WhatsAppEvent::SettingsUpdated { group_id, .. }
            | WhatsAppEvent::GroupSuspended { group_id }
            | WhatsAppEvent::GroupSuspendCleared { group_id } => Some(group_id),
            WhatsAppEvent::Message { group_id, .. } => group_id.as_ref(),
            WhatsAppEvent::GroupCreateFailed { .. }
            | WhatsAppEvent::Status { .. }
            | WhatsAppEvent::Other { .. } => None,
        }
    }
}
