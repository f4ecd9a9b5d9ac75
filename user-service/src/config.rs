//! Configuration from command-line flags and environment variables.

use std::{net::SocketAddr, num::NonZeroUsize, path::PathBuf, time::Duration};

use clap::Parser;
use userdata_kit::{duration, logging::LogFormat};

/// user-service: the gRPC service that owns users and their data.
#[derive(Debug, Clone, Parser)]
#[command(name = "user-service", version, about)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "USER_SERVICE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Database: `postgres://…` for PostgreSQL, `sqlite://path` for an embedded
    /// SQLite file (created, with its directory, on first run).
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://data/userdata.db", hide_env_values = true)]
    pub database_url: String,

    /// Maximum database connections in the pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 8)]
    pub max_connections: u32,

    /// How long a request waits for a database connection before failing
    /// with UNAVAILABLE.
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT", default_value = "3s", value_parser = duration::parse)]
    pub acquire_timeout: Duration,

    /// Most webhook-event writes committed together in one transaction
    /// (group commit: writes that queue while the database is busy share
    /// one commit; an idle service commits each at once). 1 turns it off.
    #[arg(long, env = "GROUP_COMMIT_MAX", default_value_t = crate::store::GROUP_COMMIT_MAX, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub group_commit_max: u16,

    /// Do not apply database migrations at startup.
    #[arg(long, env = "SKIP_MIGRATIONS")]
    pub skip_migrations: bool,

    /// How often the database is checked for the health service.
    #[arg(long, env = "HEALTH_CHECK_INTERVAL", default_value = "2s", value_parser = duration::parse)]
    pub health_check_interval: Duration,

    /// How long idempotency records (webhook ids) are kept: at least 48h,
    /// since Svix retries a delivery for about 28 hours and a retry arriving
    /// after its record is gone would be applied twice; at most 3650d.
    #[arg(long, env = "IDEMPOTENCY_RETENTION", default_value = "7d", value_parser = idempotency_retention)]
    pub idempotency_retention: Duration,

    /// How long the change log keeps changes; a follower whose cursor is
    /// older gets OUT_OF_RANGE and reloads.
    #[arg(long, env = "CHANGE_RETENTION", default_value = "90d", value_parser = duration::parse_positive)]
    pub change_retention: Duration,

    /// How often an idle `WatchChanges` stream gets a heartbeat with its
    /// cursor.
    #[arg(long, env = "CHANGE_HEARTBEAT_INTERVAL", default_value = "15s", value_parser = duration::parse_positive)]
    pub change_heartbeat_interval: Duration,

    /// How often the change log is read without a wake-up (a safety net:
    /// commits here and NOTIFY from other replicas wake followers at once).
    #[arg(long, env = "CHANGE_POLL_INTERVAL", default_value = "1s", value_parser = duration::parse_positive)]
    pub change_poll_interval: Duration,

    /// Changes held in memory for `WatchChanges` followers that are busy
    /// sending; a follower further behind reads the log instead (never
    /// blocking writers).
    #[arg(long, env = "CHANGE_FANOUT_CAPACITY", default_value = "4096")]
    pub change_fanout_capacity: NonZeroUsize,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Bearer tokens file; turns authentication on. One client per line:
    /// `name scopes token`, scopes a comma-separated list of `read`, `write`,
    /// `admin` and `audit` (each named explicitly: none implies another),
    /// the token in clear (at least 16 characters) or as
    /// `sha256:<64 hex digits>` (the SHA-256 of the token). A word starting
    /// with `#` starts a comment. A malformed line stops startup.
    #[arg(long = "auth-tokens", env = "USER_SERVICE_AUTH_TOKENS_FILE", value_name = "FILE")]
    pub auth_tokens: Option<PathBuf>,

    /// Clerk session tokens: the issuer (`iss`) of the instance, its Frontend
    /// API URL such as `https://clerk.example.com`. Turns session-token
    /// authentication on; the keys come from `CLERK_JWT_KEY`, else from
    /// `CLERK_JWKS_URL`, else from `<issuer>/.well-known/jwks.json`.
    #[arg(long, env = "CLERK_ISSUER", value_name = "URL")]
    pub clerk_issuer: Option<String>,

    /// Clerk's JWT public key (PEM), for verifying session tokens without
    /// fetching the JWKS ("networkless" verification).
    #[arg(
        long,
        env = "CLERK_JWT_KEY",
        value_name = "PEM",
        hide_env_values = true,
        requires = "clerk_issuer"
    )]
    pub clerk_jwt_key: Option<String>,

    /// The instance's JWKS URL (default `<CLERK_ISSUER>/.well-known/jwks.json`).
    #[arg(
        long,
        env = "CLERK_JWKS_URL",
        value_name = "URL",
        requires = "clerk_issuer",
        conflicts_with = "clerk_jwt_key"
    )]
    pub clerk_jwks_url: Option<String>,

    /// Origins a session token's `azp` may name (comma-separated, e.g.
    /// `https://app.example.com`). Empty: `azp` is not checked.
    #[arg(long, env = "CLERK_AUTHORIZED_PARTIES", value_name = "ORIGINS", value_delimiter = ',', value_parser = origin)]
    pub clerk_authorized_parties: Vec<String>,

    /// Least time between two fetches of the JWKS (a token with an unknown
    /// `kid` triggers one).
    #[arg(long, env = "CLERK_JWKS_MIN_REFRESH", default_value = "10s", value_parser = duration::parse)]
    pub clerk_jwks_min_refresh: Duration,

    /// Browser origins allowed to call over gRPC-Web (comma-separated, e.g.
    /// `https://app.example.com`). Empty: no CORS headers, so browsers on
    /// other origins cannot call.
    #[arg(long, env = "USER_SERVICE_CORS_ORIGINS", value_name = "ORIGINS", value_delimiter = ',', value_parser = origin)]
    pub cors_origins: Vec<String>,

    /// HTTP/2 streams (calls) one connection may have open at once.
    #[arg(long, env = "USER_SERVICE_HTTP2_MAX_CONCURRENT_STREAMS", default_value_t = 100)]
    pub http2_max_concurrent_streams: u32,

    /// A connection older than this is asked to reconnect (GOAWAY); calls in
    /// flight get `MAX_CONNECTION_AGE_GRACE` more to finish.
    #[arg(long, env = "USER_SERVICE_MAX_CONNECTION_AGE", default_value = "1h", value_parser = duration::parse_positive)]
    pub max_connection_age: Duration,

    /// Allow serving on a non-loopback address without authentication.
    #[arg(long, env = "USER_SERVICE_INSECURE")]
    pub insecure: bool,

    /// TLS certificate chain (PEM) for the gRPC port; needs `--tls-key`.
    #[arg(long, env = "USER_SERVICE_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM) for the gRPC port; needs `--tls-cert`.
    #[arg(long, env = "USER_SERVICE_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// CA certificates (PEM) that client certificates must chain to; makes
    /// client certificates mandatory (mutual TLS). Needs `--tls-cert`.
    #[arg(long, env = "USER_SERVICE_TLS_CLIENT_CA", value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Do not serve gRPC reflection.
    #[arg(long, env = "USER_SERVICE_NO_REFLECTION")]
    pub no_reflection: bool,

    /// Longest time one call may take before it fails with DEADLINE_EXCEEDED.
    #[arg(long, env = "USER_SERVICE_REQUEST_TIMEOUT", default_value = "10s", value_parser = duration::parse_positive)]
    pub request_timeout: Duration,

    /// Calls served at once; calls beyond it fail at once with UNAVAILABLE
    /// (health checks are not counted).
    #[arg(long, env = "USER_SERVICE_MAX_CONCURRENT_REQUESTS", default_value = "256")]
    pub max_concurrent_requests: NonZeroUsize,

    /// Address of the plain-HTTP Prometheus endpoint (`/metrics`), or `off`.
    #[arg(long, env = "USER_SERVICE_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    pub metrics_listen: MetricsListen,
}

pub use userdata_kit::metrics_http::MetricsListen;

/// Parses a browser origin: `http` or `https`, a host and an optional port,
/// nothing else (no path, no trailing slash, no `*`).
pub fn origin(text: &str) -> Result<String, String> {
    let text = text.trim();
    let bad = || format!("{text:?} is not an origin like https://app.example.com");
    let rest = text.strip_prefix("https://").or_else(|| text.strip_prefix("http://")).ok_or_else(bad)?;
    let valid = !rest.is_empty()
        && rest.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
        && http::HeaderValue::from_str(text).is_ok();
    if valid { Ok(text.to_owned()) } else { Err(bad()) }
}

/// Shortest `--idempotency-retention`: Svix's retry window (about 28 hours)
/// with a margin, so a retried delivery always finds its record.
pub const MIN_IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(48 * 3600);

/// Longest `--idempotency-retention` (ten years): beyond it the prune's
/// cut-off would leave the range of timestamps.
pub const MAX_IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(3650 * 86_400);

/// Checks an idempotency retention against
/// [`MIN_IDEMPOTENCY_RETENTION`]..=[`MAX_IDEMPOTENCY_RETENTION`]; the error
/// names the flag and the reason.
pub fn check_idempotency_retention(retention: Duration) -> Result<Duration, String> {
    if retention < MIN_IDEMPOTENCY_RETENTION {
        return Err("--idempotency-retention must be at least 48h: Svix retries a delivery for about \
                    28 hours, and a retry arriving after its record was pruned would be applied twice"
            .to_owned());
    }
    if retention > MAX_IDEMPOTENCY_RETENTION {
        return Err("--idempotency-retention must be at most 3650d".to_owned());
    }
    Ok(retention)
}

/// Parses `--idempotency-retention` (see [`check_idempotency_retention`]).
pub fn idempotency_retention(text: &str) -> Result<Duration, String> {
    check_idempotency_retention(duration::parse(text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_flags_take_the_shared_grammar() {
        let config = Config::try_parse_from([
            "user-service",
            "--acquire-timeout",
            "500ms",
            "--change-retention",
            "7d",
            "--health-check-interval",
            "1.5s",
            "--request-timeout",
            "2",
        ])
        .expect("durations parse");
        assert_eq!(config.acquire_timeout, Duration::from_millis(500));
        assert_eq!(config.change_retention, Duration::from_secs(604_800));
        assert_eq!(config.health_check_interval, Duration::from_millis(1500));
        assert_eq!(config.request_timeout, Duration::from_secs(2));
        assert!(Config::try_parse_from(["user-service", "--acquire-timeout", "x"]).is_err());
        // Intervals and timeouts that must not be zero refuse it.
        assert!(Config::try_parse_from(["user-service", "--change-poll-interval", "0s"]).is_err());
    }

    #[test]
    fn metrics_listen_is_an_address_or_off() {
        assert_eq!("off".parse(), Ok(MetricsListen::Off));
        assert_eq!("127.0.0.1:9464".parse(), Ok(MetricsListen::On(SocketAddr::from(([127, 0, 0, 1], 9464)))));
        assert!("9464".parse::<MetricsListen>().is_err());
    }

    #[test]
    fn defaults_are_safe() {
        let config = Config::try_parse_from(["user-service"]).expect("defaults parse");
        assert_eq!(config.request_timeout, Duration::from_secs(10));
        assert_eq!(config.max_concurrent_requests.get(), 256);
        assert_eq!(config.metrics_listen, MetricsListen::On(SocketAddr::from(([127, 0, 0, 1], 9464))));
        assert!(config.auth_tokens.is_none() && !config.insecure && !config.no_reflection);
        assert!(config.clerk_issuer.is_none() && config.cors_origins.is_empty());
        assert_eq!(config.http2_max_concurrent_streams, 100);
        assert_eq!(config.change_retention, Duration::from_secs(90 * 86_400));
    }

    #[test]
    fn origins_are_scheme_host_and_port_only() {
        assert_eq!(origin("https://app.example.com"), Ok("https://app.example.com".into()));
        assert_eq!(origin("http://localhost:5173"), Ok("http://localhost:5173".into()));
        for bad in ["*", "app.example.com", "https://app.example.com/", "https://", "ftp://x", "https://a b"]
        {
            assert!(origin(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lists_of_origins_are_comma_separated() {
        let config = Config::try_parse_from([
            "user-service",
            "--cors-origins",
            "https://a.example.com,http://localhost:5173",
        ])
        .unwrap();
        assert_eq!(config.cors_origins, ["https://a.example.com", "http://localhost:5173"]);
    }

    #[test]
    fn clerk_keys_need_an_issuer_and_only_one_source() {
        assert!(Config::try_parse_from(["user-service", "--clerk-jwks-url", "https://x/jwks"]).is_err());
        assert!(
            Config::try_parse_from([
                "user-service",
                "--clerk-issuer",
                "https://x",
                "--clerk-jwks-url",
                "https://x/jwks",
                "--clerk-jwt-key",
                "pem"
            ])
            .is_err()
        );
    }

    #[test]
    fn idempotency_retention_below_48_hours_is_refused_at_startup() {
        for short in ["0s", "1h", "28h", "47h"] {
            let error = Config::try_parse_from(["user-service", "--idempotency-retention", short])
                .expect_err(short)
                .to_string();
            assert!(error.contains("at least 48h") && error.contains("Svix"), "{short}: {error}");
        }
        let config = Config::try_parse_from(["user-service", "--idempotency-retention", "48h"]);
        assert_eq!(config.map(|c| c.idempotency_retention).ok(), Some(MIN_IDEMPOTENCY_RETENTION));
    }

    #[test]
    fn idempotency_retention_beyond_ten_years_is_refused() {
        assert!(Config::try_parse_from(["user-service", "--idempotency-retention", "3651d"]).is_err());
        let huge = format!("{}d", u64::MAX);
        assert!(Config::try_parse_from(["user-service", "--idempotency-retention", &huge]).is_err());
        assert!(check_idempotency_retention(Duration::MAX).is_err());
    }

    #[test]
    fn a_tls_key_without_a_certificate_is_refused() {
        assert!(Config::try_parse_from(["user-service", "--tls-key", "k.pem"]).is_err());
        assert!(Config::try_parse_from(["user-service", "--tls-client-ca", "ca.pem"]).is_err());
    }
}
