//! Logging: `tracing` to stderr, text or JSON, filtered by `RUST_LOG` (default "info").

use std::io::IsTerminal;

use crate::config::LogFormat;

/// Installs the global subscriber; call once, before anything logs. Colours only when
/// stderr is a terminal, so log files and journald get plain text.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
