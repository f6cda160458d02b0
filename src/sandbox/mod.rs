//! The sandbox: a mock Symphony pod and a WhatsApp Cloud API simulator, usable in-process by
//! tests and as `mock-pod` / `whatsapp-sim` commands by anyone's CI. They depend on wire formats
//! only, never on the bot's internals. The `sandbox` command keeps both worlds in its data
//! folder.

pub mod faults;
pub mod mock_pod;
pub mod persist;
pub mod wa_sim;
