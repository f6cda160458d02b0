//! The sandbox: a mock Symphony pod and a WhatsApp Cloud API simulator, usable in-process by
//! tests and as `mock-pod` / `whatsapp-sim` commands by anyone's CI. They depend on wire formats
//! only, never on the bot's internals. The `sandbox` command adds a web console to play both
//! sides, and keeps both worlds in its data folder; `demo` plays the product's scenario through
//! the control APIs, as a person would.

pub mod console;
pub mod demo;
pub mod faults;
pub mod mock_pod;
pub mod persist;
mod symphony_rules;
pub mod wa_sim;
