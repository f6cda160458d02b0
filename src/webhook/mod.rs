//! The WhatsApp webhook receiver: verify the signature, persist the event, then answer 200.
