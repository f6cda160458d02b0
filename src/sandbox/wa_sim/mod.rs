//! The WhatsApp Cloud API simulator: Graph endpoints, simulated phones, signed webhooks.
