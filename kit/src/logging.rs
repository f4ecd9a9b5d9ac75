//! Logs: `tracing` events as readable lines or JSON, on stderr.

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_subscriber::{EnvFilter, filter::LevelFilter};

/// How logs are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// Readable lines for a terminal.
    #[default]
    Human,
    /// One JSON object per line, for log collectors: the event's fields at
    /// the top level beside `timestamp`, `level` and `target`, and the
    /// current span under `span`.
    Json,
}

/// Installs the global tracing subscriber.
///
/// The level comes from `RUST_LOG` (default `info`; a directive that does
/// not parse is skipped rather than stopping the service). Logs go to
/// stderr, so a command's result on stdout (`gateway send`) stays clean.
/// Calling this twice is harmless: the first subscriber stays.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::builder().with_default_directive(LevelFilter::INFO.into()).from_env_lossy();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes help a person at a terminal; in files and log
        // collectors they are noise.
        .with_ansi(std::io::stderr().is_terminal());
    // `try_init` fails only when a subscriber is already set (a second call,
    // a test harness); keeping that one is the right outcome.
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_named_human_and_json() {
        assert_eq!(LogFormat::from_str("human", false), Ok(LogFormat::Human));
        assert_eq!(LogFormat::from_str("json", false), Ok(LogFormat::Json));
        assert!(LogFormat::from_str("xml", false).is_err());
        assert_eq!(LogFormat::default(), LogFormat::Human);
    }

    #[test]
    fn a_second_init_is_harmless() {
        init(LogFormat::Json);
        init(LogFormat::Human);
    }
}
