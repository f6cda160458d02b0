//! The chat relay between a Symphony room and its WhatsApp group or contacts.

pub mod format;
