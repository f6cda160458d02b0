//! The transport-neutral event vocabulary: what the Symphony datafeed and the WhatsApp webhook
//! turn their wire formats into. Events are plain serialisable data, so they can be persisted in
//! the store's inbound queue before anything acts on them.

pub mod symphony;
pub mod whatsapp;

use serde::{Deserialize, Serialize};

pub use symphony::{MessageAttachment, ReceivedMessage, SymphonyEvent, SymphonyEventKind};
pub use whatsapp::WhatsAppEvent;

/// Any event the bot reacts to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", content = "event", rename_all = "camelCase")]
#[allow(clippy::large_enum_variant)] // events are moved rarely; boxing would only add noise
pub enum InboundEvent {
    Symphony(SymphonyEvent),
    WhatsApp(WhatsAppEvent),
}
