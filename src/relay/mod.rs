//! The chat relay between a Symphony room and its WhatsApp group or contacts.

pub mod format;
pub mod service;

pub use service::{RelayService, WaInbound};

pub use crate::markup::EXCERPT_CHARS;
pub use crate::whatsapp::rules::{
    MAX_TEMPLATE_PARAM_CHARS, MAX_TEXT_CHARS, WINDOW_MS, file_name, now_ms, split_text,
    template_parts, window_open,
};
