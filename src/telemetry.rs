//! Logging: a `tracing` subscriber to stderr, so that what a command prints (the sandbox's URLs,
//! the demo's transcript, `render`) stays apart on stdout. Text lines (coloured only when stderr
//! is a terminal) or one JSON object per line carrying the fields of the spans an event happened
//! in (`logging.format`, `WAGB__LOGGING__FORMAT`). `RUST_LOG` filters (default `info`).

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

pub use crate::config::LogFormat;

/// The environment variable that sets `logging.format` for every command.
pub const FORMAT_ENV: &str = "WAGB__LOGGING__FORMAT";

/// Which events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    /// `RUST_LOG` when set, else this directive (e.g. `info`).
    Default(&'static str),
    /// This directive whatever `RUST_LOG` says (e.g. `warn` for the demo, whose stdout is a
    /// transcript).
    Fixed(&'static str),
}

/// The format `WAGB__LOGGING__FORMAT` asks for (text when unset), or why it cannot be used.
pub fn format_from_env() -> Result<LogFormat, String> {
    match std::env::var(FORMAT_ENV) {
        Ok(value) => value.parse().map_err(|e| format!("{FORMAT_ENV}: {e}")),
        Err(_) => Ok(LogFormat::Text),
    }
}

/// Whether log lines may carry colour codes: only on a terminal, and not with `NO_COLOR`.
fn colours() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber. Calling it again is harmless (later calls are ignored).
pub fn init(format: LogFormat, verbosity: Verbosity) {
    let filter = match verbosity {
        Verbosity::Default(directive) => {
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(directive))
        }
        Verbosity::Fixed(directive) => EnvFilter::new(directive),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_target(false).with_ansi(colours()).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .with_ansi(false)
            .try_init(),
    };
}
