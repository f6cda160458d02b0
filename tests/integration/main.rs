//! The one integration-test binary: everything that crosses HTTP on loopback.
//! Each module drives the real library against the in-process mock pod over loopback.

mod support;

mod admin;
mod bdk_interop;
mod bench;
mod burst;
mod catch_up;
mod cli;
mod console;
mod crash;
mod create_form;
mod demo;
mod faults;
mod guarantees;
mod lifecycle;
mod logging;
mod media;
mod mock_pod;
mod pywa_interop;
mod relay;
mod sandbox_cli;
mod secrets;
mod several_instances;
mod soak;
mod symphony_client;
mod whatsapp;
