//! Logging setup: `tracing` events rendered as human-readable lines or JSON.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, filter::LevelFilter};

use crate::config::LogFormat;

/// Installs the global tracing subscriber.
///
/// The level comes from `RUST_LOG` (default `info`; an invalid value falls back
/// to the default rather than stopping the service). Logs go to stderr so that
/// `gateway send` can print its result on stdout. Calling this twice is
/// harmless: the second call leaves the first subscriber in place.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::builder().with_default_directive(LevelFilter::INFO.into()).from_env_lossy();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes help a person at a terminal; in files and log
        // collectors they are noise.
        .with_ansi(std::io::stderr().is_terminal());
    // `try_init` only fails when a subscriber is already set (e.g. by a test
    // harness); keeping the existing one is the right outcome then.
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
}
