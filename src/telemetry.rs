//! Logging: a `tracing` subscriber filtered by `RUST_LOG` (default `info`), to stderr so that
//! what a command prints (the sandbox's URLs, the demo's transcript, `render`) stays apart.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Calling it twice is harmless (the second call is ignored).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}
