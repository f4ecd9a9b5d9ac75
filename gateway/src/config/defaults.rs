//! Every default and bound of the configuration, written once.
//!
//! Durations are written as their flag text (what `--help` shows and clap
//! parses) and read into a [`Duration`] at compile time ([`DurationDefault`]),
//! so the command line and [`Config::new`](super::Config::new) cannot drift
//! apart.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

/// A default duration: the flag text clap shows and parses, and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationDefault {
    /// As written on the command line, e.g. `5s`.
    pub text: &'static str,
    /// The same, read.
    pub value: Duration,
}

impl DurationDefault {
    /// Reads `text` (a whole number then `ms`, `s`, `m` or `h`) at compile
    /// time; a malformed default fails the build, never a run.
    pub const fn new(text: &'static str) -> Self {
        let bytes = text.as_bytes();
        let mut index = 0;
        let mut number: u64 = 0;
        while index < bytes.len() && bytes[index].is_ascii_digit() {
            number = number * 10 + (bytes[index] - b'0') as u64;
            index += 1;
        }
        let value = match (bytes.len() - index, if index < bytes.len() { bytes[index] } else { 0 }) {
            (2, b'm') if bytes[index + 1] == b's' => Duration::from_millis(number),
            (1, b's') => Duration::from_secs(number),
            (1, b'm') => Duration::from_secs(number * 60),
            (1, b'h') => Duration::from_secs(number * 3600),
            _ => panic!("a default duration is a whole number followed by ms, s, m or h"),
        };
        Self { text, value }
    }
}

/// `--listen`.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
/// `--user-service-url`.
pub const DEFAULT_USER_SERVICE_URL: &str = "http://127.0.0.1:50051";
/// `--user-service-check-interval`.
pub const DEFAULT_USER_SERVICE_CHECK_INTERVAL: DurationDefault = DurationDefault::new("2s");
/// `--upstream-timeout`.
pub const DEFAULT_UPSTREAM_TIMEOUT: DurationDefault = DurationDefault::new("5s");
/// `--upstream-batch-max`: a whole group commit of user-service's (its
/// `--group-commit-max` default) in one call.
pub const DEFAULT_UPSTREAM_BATCH_MAX: u16 = 64;
/// Most writes `EventService.ApplyEvents` takes in one call.
pub const MAX_UPSTREAM_BATCH: u16 = 512;
/// `--upstream-batches-in-flight`: two calls out at once, so one batch fills
/// while the other commits. Measured on the yardstick against 4 and 8:
/// bigger batches, fewer commits, 13 % more `user.created` per second and
/// 16 % less CPU per event than 4 (BENCHMARKS.md, issue #16).
pub const DEFAULT_UPSTREAM_BATCHES_IN_FLIGHT: u16 = 2;
/// Most accepted `--upstream-batches-in-flight`.
pub const MAX_UPSTREAM_BATCHES_IN_FLIGHT: u16 = 256;
/// `--readiness-timeout`.
pub const DEFAULT_READINESS_TIMEOUT: DurationDefault = DurationDefault::new("1s");
/// `--readiness-cache`: long enough to absorb a flood of probes, short next
/// to any orchestrator's probe period.
pub const DEFAULT_READINESS_CACHE: DurationDefault = DurationDefault::new("1s");
/// Longest accepted `--readiness-cache`.
pub const MAX_READINESS_CACHE: Duration = Duration::from_secs(10);
/// `--unknown-user-retry-window`: Svix's retries in the first hour (5 s,
/// 5 min, 30 min) cover any realistic lag of a `user.created`.
pub const DEFAULT_UNKNOWN_USER_RETRY_WINDOW: DurationDefault = DurationDefault::new("1h");
/// `--rate-limit`: requests per second per client.
pub const DEFAULT_RATE_LIMIT: u32 = 200;
/// `--rate-limit-burst`: requests accepted at once before the rate applies.
pub const DEFAULT_RATE_LIMIT_BURST: u32 = 400;
/// `--trusted-proxy-hops`: `X-Forwarded-For` is ignored.
pub const DEFAULT_TRUSTED_PROXY_HOPS: u32 = 0;
/// `--metrics-listen` (the `/metrics` endpoint).
pub const DEFAULT_METRICS_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9465);
/// `gateway send --url`.
pub const DEFAULT_SEND_URL: &str = "http://127.0.0.1:8080/webhooks/clerk";
/// `gateway send --timeout`: above Svix's own 15 s.
pub const DEFAULT_SEND_TIMEOUT: DurationDefault = DurationDefault::new("20s");

/// Svix gives up on a delivery attempt after 15 s.
pub const SVIX_DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest accepted `--upstream-timeout` / `--readiness-timeout`. It leaves
/// room, below Svix's 15 s, for reading the body and for the 14 s whole-request
/// limit (`http::REQUEST_TIMEOUT`), so a slow upstream is answered 503 by us
/// rather than timed out by Svix.
pub const MAX_DEADLINE: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::limits;

    #[test]
    fn every_default_reads_as_the_command_line_parses_it() {
        for default in [
            DEFAULT_USER_SERVICE_CHECK_INTERVAL,
            DEFAULT_UPSTREAM_TIMEOUT,
            DEFAULT_READINESS_TIMEOUT,
            DEFAULT_READINESS_CACHE,
            DEFAULT_UNKNOWN_USER_RETRY_WINDOW,
            DEFAULT_SEND_TIMEOUT,
            limits::DEFAULT_HEADER_READ_TIMEOUT,
            limits::DEFAULT_IDLE_TIMEOUT,
            limits::DEFAULT_TLS_HANDSHAKE_TIMEOUT,
        ] {
            assert_eq!(userdata_kit::duration::parse(default.text), Ok(default.value), "{}", default.text);
        }
        assert_eq!(DurationDefault::new("1500ms").value, Duration::from_millis(1500));
        assert_eq!(DurationDefault::new("2m").value, Duration::from_secs(120));
    }
}
