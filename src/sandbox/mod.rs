//! The sandbox: a mock Symphony pod and a WhatsApp Cloud API simulator, usable in-process by
//! tests and as `mock-pod` / `whatsapp-sim` commands by anyone's CI. They depend on wire formats
//! only, never on the bot's internals; `demo` plays the product's scenario through their control
//! APIs, as a person would.

pub mod demo;
pub mod faults;
pub mod mock_pod;
pub mod wa_sim;
