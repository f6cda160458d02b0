//! WhatsApp webhook events, reduced to what the bot needs (filled in by the WhatsApp side).

use serde::{Deserialize, Serialize};

/// A WhatsApp webhook change turned into a domain event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum WhatsAppEvent {
    /// Any change type the bot does not act on: acknowledged and kept for the record.
    Other { field: String },
}
