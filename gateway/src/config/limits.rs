//! Limits that keep the public webhook port serving under hostile
//! connections: timeouts, connection caps, the global in-flight limit and the
//! HTTP/2 settings. The flags are grouped under "Connection limits" in
//! `gateway serve --help`; each default lives here once.

use std::time::Duration;

use clap::Args;
use userdata_kit::duration::parse as parse_duration;

use super::{ConfigError, defaults::DurationDefault};

/// Default `--header-read-timeout`: time for a request's headers to arrive.
pub const DEFAULT_HEADER_READ_TIMEOUT: DurationDefault = DurationDefault::new("10s");
/// Default `--idle-timeout`: a connection without a request in progress is
/// closed after this long.
pub const DEFAULT_IDLE_TIMEOUT: DurationDefault = DurationDefault::new("30s");
/// Default `--tls-handshake-timeout`.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: DurationDefault = DurationDefault::new("10s");
/// Default `--max-connections`: open connections, all clients together.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default `--max-connections-per-ip`.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;
/// Default `--max-handshakes-per-ip`: TLS handshakes in progress per client.
pub const DEFAULT_MAX_HANDSHAKES_PER_IP: usize = 16;
/// Default `--max-in-flight`: requests in progress, all clients together.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 512;
/// Without `--max-in-flight-per-ip`, one client may hold `1 /` this share of
/// `--max-in-flight` (256 of the default 512): a single host (8 HTTP/2
/// connections × 64 streams that never send their body) can then no longer
/// fill every place and turn Svix away, while one address can still have a
/// few hundred requests in progress (a burst of Svix retries, or our own
/// checks that hold ~200 slow requests and then deliver from the same
/// address).
pub const IN_FLIGHT_PER_IP_SHARE: usize = 2;

/// HTTP/2: streams one connection may have open at once.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 64;
/// HTTP/2: streams a client may open and reset before we accept them
/// (the "rapid reset" attack, CVE-2023-44487).
pub const H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// HTTP/2: streams we may reset because of client errors before the
/// connection is closed (CVE-2024-27316-style floods).
pub const H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 64;
/// HTTP/2: largest request header list, in bytes.
pub const MAX_HEADER_BYTES: u32 = 16 * 1024;
/// HTTP/1.1: largest read buffer, which bounds the request head (hyper's
/// smallest accepted value is 8 KiB).
pub const H1_MAX_BUF_BYTES: usize = 64 * 1024;
/// HTTP/1.1: most header fields in one request (Svix sends about ten).
pub const H1_MAX_HEADERS: usize = 64;
/// HTTP/2: how often an idle connection is pinged, and how long the answer
/// may take, so dead peers do not hold a connection slot.
pub const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// HTTP/2: how long a keep-alive ping may go unanswered.
pub const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection-limit flags of `gateway serve`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Connection limits")]
pub struct ConnectionArgs {
    /// Time a client has to send a request's headers, counted from the
    /// connection's start (or, on HTTP/1.1 keep-alive, from the previous
    /// answer). Slower clients are disconnected.
    #[arg(
        long,
        env = "GATEWAY_HEADER_READ_TIMEOUT",
        default_value = DEFAULT_HEADER_READ_TIMEOUT.text,
        value_parser = parse_duration
    )]
    pub header_read_timeout: Duration,

    /// A connection with no request in progress is closed after this long.
    #[arg(
        long,
        env = "GATEWAY_IDLE_TIMEOUT",
        default_value = DEFAULT_IDLE_TIMEOUT.text,
        value_parser = parse_duration
    )]
    pub idle_timeout: Duration,

    /// Time a client has to complete the TLS handshake.
    #[arg(
        long,
        env = "GATEWAY_TLS_HANDSHAKE_TIMEOUT",
        default_value = DEFAULT_TLS_HANDSHAKE_TIMEOUT.text,
        value_parser = parse_duration
    )]
    pub tls_handshake_timeout: Duration,

    /// Open connections, all clients together. At the cap a new connection
    /// replaces the oldest one without a request in progress, or is closed.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Open connections from one client IP (an IPv6 client is its /64). At
    /// the cap a new connection replaces that client's oldest one without a
    /// request in progress, or is closed.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS_PER_IP", default_value_t = DEFAULT_MAX_CONNECTIONS_PER_IP)]
    pub max_connections_per_ip: usize,

    /// TLS handshakes in progress from one client IP; a further one replaces
    /// that client's oldest pending handshake.
    #[arg(long, env = "GATEWAY_MAX_HANDSHAKES_PER_IP", default_value_t = DEFAULT_MAX_HANDSHAKES_PER_IP)]
    pub max_handshakes_per_ip: usize,

    /// Requests in progress, all clients together; further requests are
    /// answered 503 with `Retry-After` before their body is read.
    #[arg(long, env = "GATEWAY_MAX_IN_FLIGHT", default_value_t = DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,

    /// Requests in progress from one client IP (an IPv6 client is its /64;
    /// behind `--trusted-proxy-hops`, the forwarded client); further
    /// requests get 503 with `Retry-After` before their body is read.
    /// Default: half of `--max-in-flight`, so one host cannot take every
    /// place.
    #[arg(long, env = "GATEWAY_MAX_IN_FLIGHT_PER_IP")]
    pub max_in_flight_per_ip: Option<usize>,
}

/// The validated connection limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// See [`ConnectionArgs::header_read_timeout`].
    pub header_read_timeout: Duration,
    /// See [`ConnectionArgs::idle_timeout`].
    pub idle_timeout: Duration,
    /// See [`ConnectionArgs::tls_handshake_timeout`].
    pub tls_handshake_timeout: Duration,
    /// See [`ConnectionArgs::max_connections`].
    pub max_connections: usize,
    /// See [`ConnectionArgs::max_connections_per_ip`].
    pub max_connections_per_ip: usize,
    /// See [`ConnectionArgs::max_handshakes_per_ip`].
    pub max_handshakes_per_ip: usize,
    /// See [`ConnectionArgs::max_in_flight`].
    pub max_in_flight: usize,
    /// See [`ConnectionArgs::max_in_flight_per_ip`]; `None` for the default
    /// share of `max_in_flight` ([`ConnectionLimits::in_flight_per_ip`]).
    pub max_in_flight_per_ip: Option<usize>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT.value,
            idle_timeout: DEFAULT_IDLE_TIMEOUT.value,
            tls_handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT.value,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            max_handshakes_per_ip: DEFAULT_MAX_HANDSHAKES_PER_IP,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_in_flight_per_ip: None,
        }
    }
}

impl From<ConnectionArgs> for ConnectionLimits {
    fn from(args: ConnectionArgs) -> Self {
        Self {
            header_read_timeout: args.header_read_timeout,
            idle_timeout: args.idle_timeout,
            tls_handshake_timeout: args.tls_handshake_timeout,
            max_connections: args.max_connections,
            max_connections_per_ip: args.max_connections_per_ip,
            max_handshakes_per_ip: args.max_handshakes_per_ip,
            max_in_flight: args.max_in_flight,
            max_in_flight_per_ip: args.max_in_flight_per_ip,
        }
    }
}

impl ConnectionLimits {
    /// Requests one client may have in progress: `--max-in-flight-per-ip`,
    /// or by default `max_in_flight / IN_FLIGHT_PER_IP_SHARE` (at least 1).
    pub fn in_flight_per_ip(&self) -> usize {
        self.max_in_flight_per_ip.unwrap_or((self.max_in_flight / IN_FLIGHT_PER_IP_SHARE).max(1))
    }

    /// Every timeout must be positive and every cap at least 1: a zero would
    /// refuse all traffic. Timeouts are at most a minute, so a typo such as
    /// `10m` cannot quietly undo the protection.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let timeouts = [
            ("--header-read-timeout", self.header_read_timeout),
            ("--idle-timeout", self.idle_timeout),
            ("--tls-handshake-timeout", self.tls_handshake_timeout),
        ];
        for (flag, value) in timeouts {
            if value.is_zero() || value > Duration::from_secs(60) {
                return Err(ConfigError::ConnectionTimeout { flag });
            }
        }
        let caps = [
            ("--max-connections", self.max_connections),
            ("--max-connections-per-ip", self.max_connections_per_ip),
            ("--max-handshakes-per-ip", self.max_handshakes_per_ip),
            ("--max-in-flight", self.max_in_flight),
            ("--max-in-flight-per-ip", self.in_flight_per_ip()),
        ];
        for (flag, value) in caps {
            if value == 0 {
                return Err(ConfigError::ZeroCap { flag });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(ConnectionLimits::default().validate(), Ok(()));
    }

    #[test]
    fn zero_or_over_a_minute_timeouts_are_refused_by_flag() {
        let mut limits = ConnectionLimits { header_read_timeout: Duration::ZERO, ..Default::default() };
        assert_eq!(limits.validate(), Err(ConfigError::ConnectionTimeout { flag: "--header-read-timeout" }));
        limits.header_read_timeout = DEFAULT_HEADER_READ_TIMEOUT.value;
        limits.idle_timeout = Duration::from_secs(61);
        assert_eq!(limits.validate(), Err(ConfigError::ConnectionTimeout { flag: "--idle-timeout" }));
    }

    #[test]
    fn zero_caps_are_refused_by_flag() {
        let limits = ConnectionLimits { max_in_flight: 0, ..Default::default() };
        assert_eq!(limits.validate(), Err(ConfigError::ZeroCap { flag: "--max-in-flight" }));
        let limits = ConnectionLimits { max_in_flight_per_ip: Some(0), ..Default::default() };
        assert_eq!(limits.validate(), Err(ConfigError::ZeroCap { flag: "--max-in-flight-per-ip" }));
    }

    #[test]
    fn one_client_may_hold_half_the_in_flight_places_unless_told_otherwise() {
        assert_eq!(ConnectionLimits::default().in_flight_per_ip(), 256);
        let limits = ConnectionLimits { max_in_flight: 1, ..Default::default() };
        assert_eq!(limits.in_flight_per_ip(), 1);
        let limits = ConnectionLimits { max_in_flight_per_ip: Some(500), ..Default::default() };
        assert_eq!(limits.in_flight_per_ip(), 500);
    }
}
