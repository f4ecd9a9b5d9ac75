//! The command line: what clap parses, before validation ([`super::Config`]).
//!
//! Signing secrets are deliberately *not* a clap argument: clap echoes invalid
//! values in its error messages and a `--secret` flag would show up in `ps`.
//! They are read from the environment ([`super::secrets`]).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use http::Uri;

use userdata_kit::{duration::parse as parse_duration, logging::LogFormat};

use super::{MetricsListen, defaults::*, limits::ConnectionArgs};

/// The `gateway` command line.
///
/// Without a subcommand the gateway serves with its environment and defaults,
/// so a bare `gateway` is `gateway serve`.
#[derive(Debug, Parser)]
#[command(name = "gateway", version, about)]
pub struct Cli {
    /// Log output format; the level comes from `RUST_LOG` (default `info`).
    #[arg(
        long,
        value_enum,
        env = "GATEWAY_LOG_FORMAT",
        default_value_t = LogFormat::Human,
        global = true
    )]
    pub log_format: LogFormat,

    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Parses nothing but `serve`'s options, so a bare `gateway` gets exactly the
/// defaults and environment variables `gateway serve` would.
#[derive(Debug, Parser)]
struct ServeDefaults {
    #[command(flatten)]
    serve: ServeArgs,
}

impl Cli {
    /// The subcommand to run, with `serve` standing in for "none given".
    /// Fails like any clap error when an environment variable is invalid.
    pub fn into_command(self) -> Result<Command, clap::Error> {
        match self.command {
            Some(command) => Ok(command),
            None => ServeDefaults::try_parse_from(["gateway"]).map(|d| Command::Serve(d.serve)),
        }
    }
}

/// The gateway's subcommands.
// Parsed once per process: boxing the larger variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Receive Clerk webhooks and apply them to user-service (the default).
    Serve(ServeArgs),
    /// Sign a JSON file exactly like Svix does and POST it to a gateway.
    Send(SendArgs),
    /// Bring user-service to the state of Clerk's Backend API: create missing
    /// users, update outdated ones, optionally delete those Clerk no longer
    /// has. Needs CLERK_SECRET_KEY.
    Reconcile(crate::reconcile::ReconcileArgs),
}

/// Options of `gateway serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on for webhooks (port 0 picks a free port). A
    /// non-loopback address needs `--tls-cert`/`--tls-key` or `--insecure`.
    #[arg(long, env = "GATEWAY_LISTEN", default_value_t = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// TLS certificate chain (PEM) to serve HTTPS with; needs `--tls-key`.
    #[arg(long, env = "GATEWAY_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM) to serve HTTPS with; needs `--tls-cert`.
    #[arg(long, env = "GATEWAY_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Serve plain HTTP on a non-loopback address, e.g. behind a proxy that
    /// terminates TLS. Logged as a warning.
    #[arg(long, env = "GATEWAY_INSECURE")]
    pub insecure: bool,

    /// How to reach user-service.
    #[command(flatten)]
    pub user_service: UserServiceArgs,

    /// How long a `session.*` event for a user user-service does not know
    /// (and that carries no user object) is answered 503, so Svix retries
    /// while the user's `user.created` may still be on its way; older events
    /// are acknowledged as `unknown_user`. Measured from the event's
    /// `timestamp`.
    #[arg(
        long,
        env = "GATEWAY_UNKNOWN_USER_RETRY_WINDOW",
        default_value = DEFAULT_UNKNOWN_USER_RETRY_WINDOW.text,
        value_parser = parse_duration
    )]
    pub unknown_user_retry_window: Duration,

    /// Most event writes sent to user-service in one `ApplyEvents` call
    /// (1 to 512). Writes queue only while `--upstream-batches-in-flight`
    /// calls are out, so an idle gateway sends each event at once. `1`
    /// sends each write as its own call (for a user-service without
    /// `EventService`).
    #[arg(
        long,
        env = "GATEWAY_UPSTREAM_BATCH_MAX",
        default_value_t = DEFAULT_UPSTREAM_BATCH_MAX,
        value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_UPSTREAM_BATCH))
    )]
    pub upstream_batch_max: u16,

    /// `ApplyEvents` calls to user-service in flight at once (1 to 256): one
    /// batch fills while the other commits. Raise it with more user-service
    /// replicas.
    #[arg(
        long,
        env = "GATEWAY_UPSTREAM_BATCHES_IN_FLIGHT",
        default_value_t = DEFAULT_UPSTREAM_BATCHES_IN_FLIGHT,
        value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_UPSTREAM_BATCHES_IN_FLIGHT))
    )]
    pub upstream_batches_in_flight: u16,

    /// How long `/readyz` waits for user-service's health check.
    #[arg(
        long,
        env = "GATEWAY_READINESS_TIMEOUT",
        default_value = DEFAULT_READINESS_TIMEOUT.text,
        value_parser = parse_duration
    )]
    pub readiness_timeout: Duration,

    /// Requests per second accepted from one client IP (an IPv6 client is
    /// its /64); `0` turns the limit off. Excess requests get 429.
    #[arg(long, env = "GATEWAY_RATE_LIMIT", default_value_t = DEFAULT_RATE_LIMIT)]
    pub rate_limit: u32,

    /// Requests one client IP may send at once before `--rate-limit` applies.
    #[arg(long, env = "GATEWAY_RATE_LIMIT_BURST", default_value_t = DEFAULT_RATE_LIMIT_BURST)]
    pub rate_limit_burst: u32,

    /// Same as `--trusted-proxy-hops 1` (kept for existing deployments).
    #[arg(long, env = "GATEWAY_TRUST_FORWARDED_FOR", conflicts_with = "trusted_proxy_hops")]
    pub trust_forwarded_for: bool,

    /// Number of proxies in front of the gateway that append to
    /// `X-Forwarded-For`. The client IP (for the rate limit) is then the
    /// entry that many places from the end; a request with fewer entries is
    /// keyed by its TCP peer. `0` ignores the header: set it only behind such
    /// proxies, or clients choose their own IP.
    #[arg(long, env = "GATEWAY_TRUSTED_PROXY_HOPS", default_value_t = DEFAULT_TRUSTED_PROXY_HOPS)]
    pub trusted_proxy_hops: u32,

    /// How long a `/readyz` answer is reused, so a flood of probes does not
    /// become a flood of health checks (concurrent probes also share one
    /// check). `0s` checks on every probe.
    #[arg(
        long,
        env = "GATEWAY_READINESS_CACHE",
        default_value = DEFAULT_READINESS_CACHE.text,
        value_parser = parse_duration
    )]
    pub readiness_cache: Duration,

    /// Timeouts and caps on connections and requests.
    #[command(flatten)]
    pub connections: ConnectionArgs,

    /// Address of the plain-HTTP Prometheus endpoint (`/metrics`), or `off`.
    #[arg(long, env = "GATEWAY_METRICS_LISTEN", default_value_t = MetricsListen::On(DEFAULT_METRICS_LISTEN))]
    pub metrics_listen: MetricsListen,
}

/// How to reach user-service: shared by `gateway serve` and `gateway
/// reconcile`, so both take the same flags and variables.
#[derive(Debug, Clone, Args)]
pub struct UserServiceArgs {
    /// gRPC endpoint of user-service, `http://host:port` or `https://host:port`.
    /// Several replicas, separated by commas, share the calls; a replica that
    /// fails its health check gets none until it recovers.
    #[arg(
        long,
        env = "USER_SERVICE_URL",
        default_value = DEFAULT_USER_SERVICE_URL,
        value_delimiter = ',',
        value_parser = parse_uri
    )]
    pub user_service_url: Vec<Uri>,

    /// File holding the bearer token sent to user-service (surrounding
    /// whitespace is ignored). Alternatively set `USER_SERVICE_TOKEN`.
    #[arg(long, env = "USER_SERVICE_TOKEN_FILE", value_name = "FILE")]
    pub user_service_token_file: Option<PathBuf>,

    /// CA certificates (PEM) that user-service's certificate must chain to,
    /// instead of the system's roots. Needs https:// URLs.
    #[arg(long, env = "USER_SERVICE_CA", value_name = "FILE")]
    pub user_service_ca: Option<PathBuf>,

    /// Client certificate (PEM) presented to user-service (mutual TLS); needs
    /// `--user-service-client-key` and https:// URLs.
    #[arg(long, env = "USER_SERVICE_CLIENT_CERT", value_name = "FILE", requires = "user_service_client_key")]
    pub user_service_client_cert: Option<PathBuf>,

    /// Private key (PEM) of `--user-service-client-cert`.
    #[arg(long, env = "USER_SERVICE_CLIENT_KEY", value_name = "FILE", requires = "user_service_client_cert")]
    pub user_service_client_key: Option<PathBuf>,

    /// With several user-service URLs: how often each replica's health is
    /// checked to take it out of (or back into) the balancer.
    #[arg(
        long,
        env = "GATEWAY_USER_SERVICE_CHECK_INTERVAL",
        default_value = DEFAULT_USER_SERVICE_CHECK_INTERVAL.text,
        value_parser = parse_duration
    )]
    pub user_service_check_interval: Duration,

    /// gRPC deadline for each call to user-service, e.g. `5s` or `1500ms`.
    /// At most 10s, to stay well below Svix's 15 s delivery timeout.
    #[arg(
        long,
        env = "GATEWAY_UPSTREAM_TIMEOUT",
        default_value = DEFAULT_UPSTREAM_TIMEOUT.text,
        value_parser = parse_duration
    )]
    pub upstream_timeout: Duration,
}

/// Options of `gateway send`.
#[derive(Debug, Clone, Args)]
pub struct SendArgs {
    /// Webhook endpoint to POST to.
    #[arg(long, default_value = DEFAULT_SEND_URL)]
    pub url: String,

    /// File whose bytes are sent, unchanged, as the request body.
    #[arg(long)]
    pub file: PathBuf,

    /// Svix message id (`svix-id`); a random `msg_...` when omitted.
    #[arg(long)]
    pub msg_id: Option<String>,

    /// Signing time in Unix seconds (`svix-timestamp`); now when omitted.
    #[arg(long, allow_negative_numbers = true)]
    pub timestamp: Option<i64>,

    /// How long to wait for the gateway's answer, e.g. `20s`.
    #[arg(long, default_value = DEFAULT_SEND_TIMEOUT.text, value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Parses one user-service URL, ignoring surrounding spaces (so `a, b` works).
pub fn parse_uri(text: &str) -> Result<Uri, String> {
    let text = text.trim();
    text.parse().map_err(|_| format!("`{text}` is not a URL like http://host:port"))
}
