//! Command line, environment and the validated [`Config`] the server runs with.
//!
//! Signing secrets are deliberately *not* a clap argument: clap echoes invalid
//! values in its error messages and a `--secret` flag would show up in `ps`.
//! They are read from [`SIGNING_SECRET_ENV`] by [`SigningSecrets::from_env`],
//! whose errors name the variable and never the value.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use clap::{Args, Parser, Subcommand, ValueEnum};
use http::Uri;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};

pub mod limits;

use limits::{ConnectionArgs, ConnectionLimits};

/// Environment variable holding the Clerk (Svix) webhook signing secret(s).
pub const SIGNING_SECRET_ENV: &str = "CLERK_WEBHOOK_SIGNING_SECRET";

/// Environment variable holding user-service's bearer token itself (the
/// alternative to `--user-service-token-file`).
pub const USER_SERVICE_TOKEN_ENV: &str = "USER_SERVICE_TOKEN";

/// Default address of the Prometheus endpoint.
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9465);

/// Default per-client rate: requests per second.
pub const DEFAULT_RATE_LIMIT: u32 = 200;
/// Default per-client burst: requests accepted at once before the rate applies.
pub const DEFAULT_RATE_LIMIT_BURST: u32 = 400;

/// Default `--readiness-cache`: long enough to absorb a flood of probes,
/// short next to any orchestrator's probe period.
pub const DEFAULT_READINESS_CACHE: Duration = Duration::from_secs(1);
/// Longest accepted `--readiness-cache`.
pub const MAX_READINESS_CACHE: Duration = Duration::from_secs(10);

/// Fewest bytes a signing secret may decode to: Svix's own secrets are 24
/// random bytes (32 base64 characters), and a shorter one is a truncated paste
/// or a hand-made secret too weak to trust.
pub const MIN_SECRET_BYTES: usize = 24;

/// Default of `--unknown-user-retry-window`: Svix's retries in the first hour
/// (5 s, 5 min, 30 min) cover any realistic lag of a `user.created`.
pub const DEFAULT_UNKNOWN_USER_RETRY_WINDOW: Duration = Duration::from_secs(3600);

/// Svix gives up on a delivery attempt after 15 s.
pub const SVIX_DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);

/// Longest accepted `--upstream-timeout` / `--readiness-timeout`. It leaves
/// room, below Svix's 15 s, for reading the body and for the 14 s whole-request
/// limit (`routes::REQUEST_TIMEOUT`), so a slow upstream is answered 503 by
/// us rather than timed out by Svix.
pub const MAX_DEADLINE: Duration = Duration::from_secs(10);

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

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Options of `gateway serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on for webhooks (port 0 picks a free port). A
    /// non-loopback address needs `--tls-cert`/`--tls-key` or `--insecure`.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
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
        default_value = "1h",
        value_parser = parse_duration
    )]
    pub unknown_user_retry_window: Duration,

    /// How long `/readyz` waits for user-service's health check.
    #[arg(long, env = "GATEWAY_READINESS_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
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
    #[arg(long, env = "GATEWAY_TRUSTED_PROXY_HOPS", default_value_t = 0)]
    pub trusted_proxy_hops: u32,

    /// How long a `/readyz` answer is reused, so a flood of probes does not
    /// become a flood of health checks (concurrent probes also share one
    /// check). `0s` checks on every probe.
    #[arg(long, env = "GATEWAY_READINESS_CACHE", default_value = "1s", value_parser = parse_duration)]
    pub readiness_cache: Duration,

    /// Timeouts and caps on connections and requests.
    #[command(flatten)]
    pub connections: ConnectionArgs,

    /// Address of the plain-HTTP Prometheus endpoint (`/metrics`), or `off`.
    #[arg(long, env = "GATEWAY_METRICS_LISTEN", default_value = "127.0.0.1:9465")]
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
        default_value = "http://127.0.0.1:50051",
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
        default_value = "2s",
        value_parser = parse_duration
    )]
    pub user_service_check_interval: Duration,

    /// gRPC deadline for each call to user-service, e.g. `5s` or `1500ms`.
    /// At most 10s, to stay well below Svix's 15 s delivery timeout.
    #[arg(long, env = "GATEWAY_UPSTREAM_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,
}

/// Options of `gateway send`.
#[derive(Debug, Clone, Args)]
pub struct SendArgs {
    /// Webhook endpoint to POST to.
    #[arg(long, default_value = "http://127.0.0.1:8080/webhooks/clerk")]
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
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Everything the server needs, validated.
///
/// Build it from the command line with [`Config::from_args`], or directly in
/// tests (all fields are public).
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to bind; port 0 picks a free port (see `App::local_addr`).
    pub listen: SocketAddr,
    /// Serve HTTPS with this certificate and key instead of plain HTTP.
    pub tls: Option<ServerTls>,
    /// Allow plain HTTP on a non-loopback address.
    pub insecure: bool,
    /// gRPC endpoint of user-service, `http(s)://host:port`; the first
    /// replica when there are several.
    pub user_service_url: Uri,
    /// Further user-service replicas, balanced with `user_service_url`.
    pub user_service_replicas: Vec<Uri>,
    /// Bearer token sent to user-service on every call, if any.
    pub user_service_token: Option<UserServiceToken>,
    /// TLS settings for https:// user-service URLs.
    pub user_service_tls: UpstreamTls,
    /// With several replicas: how often each one's health is checked.
    pub replica_check_interval: Duration,
    /// Deadline of each call to user-service (also its connect timeout).
    pub upstream_timeout: Duration,
    /// How long `/readyz` waits for user-service's health check.
    pub readiness_timeout: Duration,
    /// Secrets accepted on incoming webhooks; any one may verify.
    pub signing_secrets: SigningSecrets,
    /// Per-client-IP rate limit.
    pub rate_limit: RateLimit,
    /// Proxies in front that append to `X-Forwarded-For`; 0 ignores the
    /// header (see [`crate::http::rate_limit::client_ip`]).
    pub trusted_proxy_hops: u32,
    /// How long a `/readyz` answer is reused; zero checks on every probe.
    pub readiness_cache: Duration,
    /// Timeouts and caps on connections and requests.
    pub connections: ConnectionLimits,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_listen: MetricsListen,
    /// How long a session event for an unknown user is answered 503 (see
    /// `--unknown-user-retry-window`).
    pub unknown_user_retry_window: Duration,
}

/// How to reach user-service, validated: what `serve` and `reconcile` share.
#[derive(Debug, Clone)]
pub struct UserServiceConfig {
    /// The first replica.
    pub url: Uri,
    /// Further replicas, balanced with `url`.
    pub replicas: Vec<Uri>,
    /// Bearer token sent on every call, if any.
    pub token: Option<UserServiceToken>,
    /// TLS settings for https:// URLs.
    pub tls: UpstreamTls,
    /// With several replicas: how often each one's health is checked.
    pub check_interval: Duration,
    /// Deadline of each call (also its connect timeout).
    pub timeout: Duration,
    /// Deadline of each health check.
    pub health_timeout: Duration,
}

impl UserServiceConfig {
    /// Reads the token (file or [`USER_SERVICE_TOKEN_ENV`]) and validates the
    /// arguments; `health_timeout` bounds each replica health check.
    pub fn from_args(args: UserServiceArgs, health_timeout: Duration) -> Result<Self, ConfigError> {
        let mut urls = args.user_service_url.into_iter();
        let url = urls.next().ok_or(ConfigError::UserServiceUrl)?;
        let config = Self {
            url,
            replicas: urls.collect(),
            token: read_token(args.user_service_token_file)?,
            tls: UpstreamTls {
                ca: args.user_service_ca,
                client_cert: args.user_service_client_cert,
                client_key: args.user_service_client_key,
            },
            check_interval: args.user_service_check_interval,
            timeout: args.upstream_timeout,
            health_timeout,
        };
        config.validate()?;
        Ok(config)
    }

    /// Every replica: `url`, then the others.
    pub fn urls(&self) -> impl Iterator<Item = &Uri> {
        std::iter::once(&self.url).chain(self.replicas.iter())
    }

    /// Whether user-service is reached over TLS (all URLs are https://).
    pub fn uses_tls(&self) -> bool {
        self.url.scheme_str() == Some("https")
    }

    /// Checks the URLs, the TLS options and the deadlines.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let tls = self.uses_tls();
        for url in self.urls() {
            let scheme_ok = matches!(url.scheme_str(), Some("http" | "https"));
            // Credentials in the URL would be logged with it and are not how
            // gRPC authenticates; the token has its own setting.
            let authority_ok = url.authority().is_some_and(|a| !a.as_str().contains('@'));
            if !scheme_ok || !authority_ok {
                return Err(ConfigError::UserServiceUrl);
            }
            if (url.scheme_str() == Some("https")) != tls {
                return Err(ConfigError::MixedSchemes);
            }
        }
        if self.tls.is_set() && !tls {
            return Err(ConfigError::UpstreamTlsNeedsHttps);
        }
        if self.tls.client_cert.is_some() != self.tls.client_key.is_some() {
            return Err(ConfigError::ClientCertPair);
        }
        check_deadline("--upstream-timeout", self.timeout)?;
        if self.check_interval.is_zero() {
            return Err(ConfigError::CheckInterval);
        }
        Ok(())
    }
}

/// The user-service token from `file` or [`USER_SERVICE_TOKEN_ENV`] (not
/// both), if either is set.
fn read_token(file: Option<PathBuf>) -> Result<Option<UserServiceToken>, ConfigError> {
    let env_token = match std::env::var(USER_SERVICE_TOKEN_ENV) {
        // Blank counts as unset, as a compose file passing an empty
        // variable through would have it; the token is optional.
        Ok(text) if text.trim().is_empty() => None,
        Ok(text) => Some(text),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(ConfigError::TokenMalformed { origin: USER_SERVICE_TOKEN_ENV.into() });
        }
    };
    match (file, env_token) {
        (Some(_), Some(_)) => Err(ConfigError::TokenConflict),
        (Some(path), None) => UserServiceToken::from_file(&path).map(Some),
        (None, Some(text)) => UserServiceToken::parse(&text, USER_SERVICE_TOKEN_ENV).map(Some),
        (None, None) => Ok(None),
    }
}

/// The certificate and key the webhook endpoint serves HTTPS with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM.
    pub key: PathBuf,
}

/// TLS towards user-service (used with https:// URLs only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamTls {
    /// CA certificates (PEM) to trust instead of the system's roots.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; goes with `client_key`.
    pub client_cert: Option<PathBuf>,
    /// Client private key (PEM); goes with `client_cert`.
    pub client_key: Option<PathBuf>,
}

impl UpstreamTls {
    /// Whether any TLS option is set.
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.client_cert.is_some() || self.client_key.is_some()
    }
}

/// A token bucket per client IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Tokens added per second; 0 turns the limit off.
    pub per_second: u32,
    /// Bucket size: requests accepted at once.
    pub burst: u32,
}

impl RateLimit {
    /// No limit.
    pub const OFF: Self = Self { per_second: 0, burst: 0 };

    /// Whether requests are limited at all.
    pub fn is_on(&self) -> bool {
        self.per_second > 0
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self { per_second: DEFAULT_RATE_LIMIT, burst: DEFAULT_RATE_LIMIT_BURST }
    }
}

/// Where `/metrics` is served, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsListen {
    /// No metrics endpoint, and nothing recorded.
    Off,
    /// Serve on this address (port 0 picks a free port).
    On(SocketAddr),
}

impl FromStr for MetricsListen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(Self::Off);
        }
        text.parse()
            .map(Self::On)
            .map_err(|_| format!("`{text}` is neither an address like 127.0.0.1:9465 nor `off`"))
    }
}

impl fmt::Display for MetricsListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::On(addr) => addr.fmt(f),
        }
    }
}

impl Config {
    /// A config with the command line's defaults and the given secrets,
    /// except that `/metrics` is off: a library user (or test) opts in.
    pub fn new(signing_secrets: SigningSecrets) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: None,
            insecure: false,
            user_service_url: Uri::from_static("http://127.0.0.1:50051"),
            user_service_replicas: Vec::new(),
            user_service_token: None,
            user_service_tls: UpstreamTls::default(),
            replica_check_interval: Duration::from_secs(2),
            upstream_timeout: Duration::from_secs(5),
            readiness_timeout: Duration::from_secs(1),
            signing_secrets,
            rate_limit: RateLimit::default(),
            trusted_proxy_hops: 0,
            readiness_cache: DEFAULT_READINESS_CACHE,
            connections: ConnectionLimits::default(),
            metrics_listen: MetricsListen::Off,
            unknown_user_retry_window: DEFAULT_UNKNOWN_USER_RETRY_WINDOW,
        }
    }

    /// Validates the parsed arguments, reads the signing secrets from
    /// [`SIGNING_SECRET_ENV`] and the user-service token from its file or
    /// [`USER_SERVICE_TOKEN_ENV`].
    pub fn from_args(args: ServeArgs) -> Result<Self, ConfigError> {
        let tls = match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some(ServerTls { cert, key }),
            (None, None) => None,
            _ => return Err(ConfigError::ServerTlsPair),
        };
        let user_service = UserServiceConfig::from_args(args.user_service, args.readiness_timeout)?;
        let config = Self {
            listen: args.listen,
            tls,
            insecure: args.insecure,
            user_service_url: user_service.url,
            user_service_replicas: user_service.replicas,
            user_service_token: user_service.token,
            user_service_tls: user_service.tls,
            replica_check_interval: user_service.check_interval,
            upstream_timeout: user_service.timeout,
            readiness_timeout: args.readiness_timeout,
            signing_secrets: SigningSecrets::from_env()?,
            rate_limit: RateLimit { per_second: args.rate_limit, burst: args.rate_limit_burst },
            trusted_proxy_hops: if args.trust_forwarded_for { 1 } else { args.trusted_proxy_hops },
            readiness_cache: args.readiness_cache,
            connections: args.connections.into(),
            metrics_listen: args.metrics_listen,
            unknown_user_retry_window: args.unknown_user_retry_window,
        };
        config.validate()?;
        Ok(config)
    }

    /// The user-service part of the config (`/readyz`'s timeout bounds the
    /// health checks).
    pub fn user_service(&self) -> UserServiceConfig {
        UserServiceConfig {
            url: self.user_service_url.clone(),
            replicas: self.user_service_replicas.clone(),
            token: self.user_service_token.clone(),
            tls: self.user_service_tls.clone(),
            check_interval: self.replica_check_interval,
            timeout: self.upstream_timeout,
            health_timeout: self.readiness_timeout,
        }
    }

    /// Every user-service replica: `user_service_url`, then the others.
    pub fn user_service_urls(&self) -> impl Iterator<Item = &Uri> {
        std::iter::once(&self.user_service_url).chain(self.user_service_replicas.iter())
    }

    /// Replaces the user-service replicas; does nothing for an empty list.
    pub fn set_user_service_urls(&mut self, urls: impl IntoIterator<Item = Uri>) {
        let mut urls = urls.into_iter();
        if let Some(first) = urls.next() {
            self.user_service_url = first;
            self.user_service_replicas = urls.collect();
        }
    }

    /// Whether user-service is reached over TLS (all URLs are https://).
    pub fn user_service_uses_tls(&self) -> bool {
        self.user_service_url.scheme_str() == Some("https")
    }

    /// Checks the cross-field rules clap cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.user_service().validate()?;
        check_deadline("--readiness-timeout", self.readiness_timeout)?;
        if self.rate_limit.is_on() && self.rate_limit.burst == 0 {
            return Err(ConfigError::RateLimitBurst);
        }
        if self.tls.is_none() && !self.insecure && !self.listen.ip().is_loopback() {
            return Err(ConfigError::PlainHttpOnPublicAddress(self.listen));
        }
        if self.readiness_cache > MAX_READINESS_CACHE {
            return Err(ConfigError::ReadinessCache);
        }
        self.connections.validate()
    }
}

/// A deadline of zero would fail every call, and one near Svix's 15 s would
/// let Svix time out before we answer.
fn check_deadline(flag: &'static str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() || value > MAX_DEADLINE {
        return Err(ConfigError::Deadline { flag });
    }
    Ok(())
}

/// Why the configuration was refused. Each message is one line that names the
/// setting and never contains a secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The secret variable is unset or blank.
    #[error(
        "{SIGNING_SECRET_ENV} is not set: expected one or more `whsec_<base64>` secrets separated by spaces or commas"
    )]
    SecretMissing,
    /// The secret variable is not valid Unicode.
    #[error("{SIGNING_SECRET_ENV} is not valid UTF-8")]
    SecretNotUnicode,
    /// One of the secrets is not `whsec_<base64>`.
    #[error("{SIGNING_SECRET_ENV}: secret {position} of {count} is not of the form `whsec_<base64>`")]
    SecretMalformed {
        /// 1-based position of the bad secret in the list.
        position: usize,
        /// How many secrets the variable holds.
        count: usize,
    },
    /// A user-service URL is not `http(s)://host:port`.
    #[error(
        "--user-service-url / USER_SERVICE_URL must be one or more http://host:port or https://host:port \
         URLs separated by commas, without credentials"
    )]
    UserServiceUrl,
    /// Some user-service URLs are https:// and others http://.
    #[error("--user-service-url / USER_SERVICE_URL: all replicas must use the same scheme (http or https)")]
    MixedSchemes,
    /// A user-service TLS option was given for http:// URLs.
    #[error(
        "--user-service-ca, --user-service-client-cert and --user-service-client-key need https:// \
         user-service URLs"
    )]
    UpstreamTlsNeedsHttps,
    /// Only one of the client certificate and key was given.
    #[error("--user-service-client-cert and --user-service-client-key go together")]
    ClientCertPair,
    /// Only one of `--tls-cert` and `--tls-key` was given.
    #[error("--tls-cert and --tls-key go together")]
    ServerTlsPair,
    /// Both a token file and the token variable are set.
    #[error(
        "set either --user-service-token-file / USER_SERVICE_TOKEN_FILE or {USER_SERVICE_TOKEN_ENV}, not both"
    )]
    TokenConflict,
    /// The token file cannot be read.
    #[error("cannot read the user-service token file {}: {reason}", path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// The token is blank or not one word of visible ASCII.
    #[error(
        "{origin}: the user-service token must be one word of visible ASCII characters (the token alone, \
         no `Bearer`)"
    )]
    TokenMalformed {
        /// Where the token came from: the file or the variable.
        origin: String,
    },
    /// Plain HTTP on a non-loopback address without `--insecure`.
    #[error(
        "refusing to serve plain HTTP on {0}: give --tls-cert and --tls-key, or --insecure when a proxy \
         in front terminates TLS"
    )]
    PlainHttpOnPublicAddress(SocketAddr),
    /// The rate limit is on with a burst of zero, which would refuse everything.
    #[error("--rate-limit-burst must be at least 1 while --rate-limit is on (0 turns the limit off)")]
    RateLimitBurst,
    /// The replica check interval is zero.
    #[error("--user-service-check-interval must be greater than 0")]
    CheckInterval,
    /// A deadline is zero or above [`MAX_DEADLINE`].
    #[error("{flag} must be greater than 0 and at most 10s (Svix gives up after 15s)")]
    Deadline {
        /// The offending flag.
        flag: &'static str,
    },
    /// One of the secrets decodes to fewer bytes than Svix's secrets have.
    #[error(
        "{SIGNING_SECRET_ENV}: secret {position} of {count} is shorter than Svix's signing secrets \
         ({MIN_SECRET_BYTES} bytes after base64 decoding)"
    )]
    SecretTooShort {
        /// 1-based position of the short secret in the list.
        position: usize,
        /// How many secrets the variable holds.
        count: usize,
    },
    /// `--readiness-cache` is above [`MAX_READINESS_CACHE`].
    #[error("--readiness-cache must be at most 10s, or /readyz would hide an outage")]
    ReadinessCache,
    /// A connection timeout is zero or above a minute.
    #[error("{flag} must be greater than 0 and at most 60s")]
    ConnectionTimeout {
        /// The offending flag.
        flag: &'static str,
    },
    /// A connection or request cap is zero, which would refuse everything.
    #[error("{flag} must be at least 1")]
    ZeroCap {
        /// The offending flag.
        flag: &'static str,
    },
}

/// One Svix signing secret (`whsec_<base64>`), already decoded.
///
/// `Debug` is redacted and there is no way to get the secret back out, so it
/// cannot end up in a log line by accident.
#[derive(Clone)]
pub struct SigningSecret(Arc<svix::webhooks::Webhook>);

impl SigningSecret {
    /// Parses `whsec_<base64>`; the prefix is required because a secret pasted
    /// without it is almost always a copy/paste mistake.
    pub fn parse(text: &str) -> Option<Self> {
        let encoded = text.strip_prefix("whsec_")?;
        if encoded.is_empty() {
            return None;
        }
        svix::webhooks::Webhook::new(encoded).ok().map(|webhook| Self(Arc::new(webhook)))
    }

    /// The svix verifier/signer keyed with this secret.
    pub fn webhook(&self) -> &svix::webhooks::Webhook {
        &self.0
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret([redacted])")
    }
}

/// The non-empty list of accepted signing secrets.
///
/// Several secrets exist side by side while a secret is being rotated: the
/// old one keeps verifying until Clerk has switched to the new one.
#[derive(Clone, Debug)]
pub struct SigningSecrets {
    // Stored split so "at least one" is a type fact, not a runtime check.
    first: SigningSecret,
    rest: Vec<SigningSecret>,
}

impl SigningSecrets {
    /// Parses one or more `whsec_<base64>` secrets separated by spaces or
    /// commas.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let parts: Vec<&str> =
            text.split(|c: char| c == ',' || c.is_whitespace()).filter(|part| !part.is_empty()).collect();
        let count = parts.len();
        let mut secrets = parts.iter().enumerate().map(|(index, part)| {
            let position = index + 1;
            let secret =
                SigningSecret::parse(part).ok_or(ConfigError::SecretMalformed { position, count })?;
            if decoded_len(part) < MIN_SECRET_BYTES {
                return Err(ConfigError::SecretTooShort { position, count });
            }
            Ok(secret)
        });
        let first = secrets.next().ok_or(ConfigError::SecretMissing)??;
        let rest = secrets.collect::<Result<Vec<_>, _>>()?;
        Ok(Self { first, rest })
    }

    /// Reads and parses [`SIGNING_SECRET_ENV`].
    pub fn from_env() -> Result<Self, ConfigError> {
        match std::env::var(SIGNING_SECRET_ENV) {
            Ok(text) => Self::parse(&text),
            Err(std::env::VarError::NotPresent) => Err(ConfigError::SecretMissing),
            Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::SecretNotUnicode),
        }
    }

    /// The first secret: the one `gateway send` signs with.
    pub fn first(&self) -> &SigningSecret {
        &self.first
    }

    /// All secrets, in configured order.
    pub fn iter(&self) -> impl Iterator<Item = &SigningSecret> {
        std::iter::once(&self.first).chain(self.rest.iter())
    }

    /// How many secrets are configured (at least one).
    pub fn len(&self) -> usize {
        1 + self.rest.len()
    }

    /// Always false: an empty list cannot be constructed.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// How many bytes the base64 after `whsec_` decodes to (the text has
/// already been checked to be valid base64).
fn decoded_len(text: &str) -> usize {
    let encoded = text.trim_start_matches("whsec_").trim_end_matches('=');
    encoded.len() * 6 / 8
}

/// The bearer token the gateway presents to user-service (a client with the
/// `write` scope in user-service's tokens file).
///
/// `Debug` is redacted and the value is marked sensitive, so HTTP/2 header
/// compression never indexes it; there is no way to read it back as text.
#[derive(Clone)]
pub struct UserServiceToken(AsciiMetadataValue);

impl UserServiceToken {
    /// Parses a token: surrounding whitespace is ignored, the rest must be one
    /// word of visible ASCII. `origin` names where it came from, for the
    /// error (never the value).
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let token = text.trim();
        let malformed = || ConfigError::TokenMalformed { origin: origin.to_owned() };
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(malformed());
        }
        let mut value: AsciiMetadataValue =
            MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| malformed())?;
        value.set_sensitive(true);
        Ok(Self(value))
    }

    /// Reads a token file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| ConfigError::TokenFile { path: path.to_owned(), reason: err.to_string() })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The `authorization` metadata value, `Bearer <token>`.
    pub(crate) fn authorization(&self) -> AsciiMetadataValue {
        self.0.clone()
    }
}

impl fmt::Debug for UserServiceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UserServiceToken([redacted])")
    }
}

/// Parses one user-service URL, ignoring surrounding spaces (so `a, b` works).
pub fn parse_uri(text: &str) -> Result<Uri, String> {
    let text = text.trim();
    text.parse().map_err(|_| format!("`{text}` is not a URL like http://host:port"))
}

/// Parses a duration such as `5s`, `1500ms`, `2m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("`{text}` is not a duration like 5s or 1500ms"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown duration unit `{other}` (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Throwaway secrets made up for these tests (base64 of ASCII text).
    const SECRET_A: &str = "whsec_dGVzdC1zZWNyZXQtYS0wMTIzNDU2Nzg5YWJjZA==";
    const SECRET_B: &str = "whsec_dGVzdC1zZWNyZXQtYi0wMTIzNDU2Nzg5YWJjZA==";

    #[test]
    fn a_single_secret_is_accepted() {
        let secrets = SigningSecrets::parse(SECRET_A).map(|s| s.len());
        assert_eq!(secrets, Ok(1));
    }

    #[test]
    fn secrets_may_be_separated_by_spaces_commas_or_both() {
        for text in [
            format!("{SECRET_A} {SECRET_B}"),
            format!("{SECRET_A},{SECRET_B}"),
            format!(" {SECRET_A} ,\n{SECRET_B} "),
        ] {
            assert_eq!(SigningSecrets::parse(&text).map(|s| s.len()), Ok(2), "{text}");
        }
    }

    #[test]
    fn a_blank_value_counts_as_missing() {
        assert_eq!(SigningSecrets::parse("  , ").map(|s| s.len()), Err(ConfigError::SecretMissing));
    }

    #[test]
    fn a_secret_without_the_whsec_prefix_is_rejected_by_position() {
        let text = format!("{SECRET_A} dGVzdC1zZWNyZXQ=");
        assert_eq!(
            SigningSecrets::parse(&text).map(|s| s.len()),
            Err(ConfigError::SecretMalformed { position: 2, count: 2 })
        );
    }

    #[test]
    fn a_secret_shorter_than_svix_secrets_is_rejected_by_position() {
        // 23 bytes: one short of Svix's 24.
        let short = "whsec_dGVzdC1zZWNyZXQtMDEyMzQ1Njc4OWE=";
        let text = format!("{SECRET_A} {short}");
        assert_eq!(
            SigningSecrets::parse(&text).map(|s| s.len()),
            Err(ConfigError::SecretTooShort { position: 2, count: 2 })
        );
        // Svix's own form: 32 base64 characters, 24 bytes.
        assert_eq!(SigningSecrets::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").map(|s| s.len()), Ok(1));
    }

    #[test]
    fn trust_forwarded_for_means_one_trusted_hop_and_conflicts_with_hops() {
        assert_eq!(serve_args(&[]).trusted_proxy_hops, 0);
        let argv = ["gateway", "serve", "--trust-forwarded-for", "--trusted-proxy-hops", "2"];
        assert!(Cli::try_parse_from(argv).is_err());
        assert!(serve_args(&["--trust-forwarded-for"]).trust_forwarded_for);
        assert_eq!(serve_args(&["--trusted-proxy-hops", "2"]).trusted_proxy_hops, 2);
    }

    #[test]
    fn connection_limit_flags_reach_the_config_defaults() {
        let args = serve_args(&["--header-read-timeout", "3s", "--max-connections-per-ip", "7"]);
        let limits = ConnectionLimits::from(args.connections);
        assert_eq!(limits.header_read_timeout, Duration::from_secs(3));
        assert_eq!(limits.max_connections_per_ip, 7);
        assert_eq!(limits.idle_timeout, crate::config::limits::DEFAULT_IDLE_TIMEOUT);
    }

    #[test]
    fn a_readiness_cache_above_ten_seconds_is_refused() {
        let mut config = test_config();
        config.readiness_cache = Duration::from_secs(11);
        assert_eq!(config.validate(), Err(ConfigError::ReadinessCache));
        config.readiness_cache = Duration::ZERO;
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn a_secret_that_is_not_base64_is_rejected() {
        for bad in ["whsec_", "whsec_not base64!", "whsec_%%%%"] {
            assert!(SigningSecrets::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_and_debug_output_never_contain_the_secret() {
        let bad = "whsec_c2VjcmV0LXRoYXQtbXVzdC1ub3QtbGVhaw==@";
        let message = SigningSecrets::parse(bad).map(|_| String::new()).unwrap_or_else(|e| e.to_string());
        assert!(message.contains(SIGNING_SECRET_ENV));
        assert!(!message.contains("c2VjcmV0"));

        let secrets = SigningSecrets::parse(SECRET_A).map(|s| format!("{s:?}"));
        let debug = secrets.unwrap_or_default();
        assert!(debug.contains("redacted"));
        assert!(!debug.contains("dGVzdC"));
    }

    #[test]
    fn durations_accept_ms_s_m_h_and_bare_seconds() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0.5s"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("5 hours").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn deadlines_above_ten_seconds_or_zero_are_refused() {
        let Ok(secrets) = SigningSecrets::parse(SECRET_A) else {
            panic!("test secret must parse");
        };
        let mut config = Config::new(secrets);
        assert_eq!(config.validate(), Ok(()));
        config.upstream_timeout = MAX_DEADLINE;
        assert_eq!(config.validate(), Ok(()));
        config.upstream_timeout = Duration::from_millis(10_001);
        assert_eq!(config.validate(), Err(ConfigError::Deadline { flag: "--upstream-timeout" }));
        config.upstream_timeout = Duration::ZERO;
        assert!(config.validate().is_err());
    }

    fn test_config() -> Config {
        let Ok(secrets) = SigningSecrets::parse(SECRET_A) else {
            panic!("test secret must parse");
        };
        Config::new(secrets)
    }

    fn serve_args(args: &[&str]) -> ServeArgs {
        let argv = ["gateway", "serve"].into_iter().chain(args.iter().copied());
        match Cli::try_parse_from(argv).and_then(Cli::into_command) {
            Ok(Command::Serve(args)) => args,
            other => panic!("expected serve, got {other:?}"),
        }
    }

    #[test]
    fn user_service_urls_may_be_http_or_https_but_not_mixed() {
        let mut config = test_config();
        config.user_service_url = Uri::from_static("https://users.internal:50051");
        assert_eq!(config.validate(), Ok(()));
        config.user_service_replicas = vec![Uri::from_static("http://users-2.internal:50051")];
        assert_eq!(config.validate(), Err(ConfigError::MixedSchemes));
        config.set_user_service_urls([Uri::from_static("ftp://users.internal")]);
        assert_eq!(config.validate(), Err(ConfigError::UserServiceUrl));
        config.set_user_service_urls([Uri::from_static("http://user:pw@users.internal:50051")]);
        assert_eq!(config.validate(), Err(ConfigError::UserServiceUrl));
    }

    #[test]
    fn a_comma_separated_url_list_becomes_replicas() {
        let args = serve_args(&["--user-service-url", "http://a:1, http://b:2,http://c:3"]);
        assert_eq!(args.user_service.user_service_url.len(), 3);
        assert_eq!(args.user_service.user_service_url[1], Uri::from_static("http://b:2"));
    }

    #[test]
    fn upstream_tls_options_need_https_urls() {
        let mut config = test_config();
        config.user_service_tls.ca = Some("ca.pem".into());
        assert_eq!(config.validate(), Err(ConfigError::UpstreamTlsNeedsHttps));
        config.user_service_url = Uri::from_static("https://users.internal:50051");
        assert_eq!(config.validate(), Ok(()));
        config.user_service_tls.client_cert = Some("client.pem".into());
        assert_eq!(config.validate(), Err(ConfigError::ClientCertPair));
    }

    #[test]
    fn a_client_cert_without_its_key_is_refused_by_the_parser() {
        let argv = ["gateway", "serve", "--user-service-client-cert", "c.pem"];
        assert!(Cli::try_parse_from(argv).is_err());
        assert!(Cli::try_parse_from(["gateway", "serve", "--tls-key", "k.pem"]).is_err());
    }

    #[test]
    fn plain_http_on_a_non_loopback_address_needs_insecure() {
        let mut config = test_config();
        config.listen = "0.0.0.0:8080".parse().unwrap_or(config.listen);
        assert!(matches!(config.validate(), Err(ConfigError::PlainHttpOnPublicAddress(_))));
        config.insecure = true;
        assert_eq!(config.validate(), Ok(()));
        config.insecure = false;
        config.tls = Some(ServerTls { cert: "c.pem".into(), key: "k.pem".into() });
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn a_rate_limit_without_burst_is_refused_and_zero_turns_it_off() {
        let mut config = test_config();
        config.rate_limit = RateLimit { per_second: 10, burst: 0 };
        assert_eq!(config.validate(), Err(ConfigError::RateLimitBurst));
        config.rate_limit = RateLimit::OFF;
        assert_eq!(config.validate(), Ok(()));
        assert!(!config.rate_limit.is_on());
    }

    #[test]
    fn metrics_listen_is_an_address_or_off() {
        assert_eq!("off".parse(), Ok(MetricsListen::Off));
        assert_eq!("127.0.0.1:9465".parse(), Ok(MetricsListen::On(DEFAULT_METRICS_LISTEN)));
        assert!("9465".parse::<MetricsListen>().is_err());
        assert_eq!(serve_args(&[]).metrics_listen, MetricsListen::On(DEFAULT_METRICS_LISTEN));
    }

    #[test]
    fn tokens_are_trimmed_and_must_be_one_visible_word() {
        let token = UserServiceToken::parse("  gateway-token-0123456789\n", "file");
        let value = token.map(|t| t.authorization());
        assert_eq!(
            value.as_ref().map(|v| v.to_str().unwrap_or_default()),
            Ok("Bearer gateway-token-0123456789")
        );
        for bad in ["", "  \n", "two words", "t\u{e9}l\u{e9}phone"] {
            assert!(UserServiceToken::parse(bad, "file").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn token_errors_and_debug_never_contain_the_token() {
        let message = UserServiceToken::parse("secret token", "USER_SERVICE_TOKEN")
            .map(|_| String::new())
            .unwrap_or_else(|e| e.to_string());
        assert!(message.contains("USER_SERVICE_TOKEN") && !message.contains("secret"), "{message}");
        let debug = UserServiceToken::parse("gateway-token-0123456789", "x").map(|t| format!("{t:?}"));
        let debug = debug.unwrap_or_default();
        assert!(debug.contains("redacted") && !debug.contains("gateway-token"), "{debug}");
    }

    #[test]
    fn no_subcommand_means_serve_with_defaults() {
        let cli = Cli::try_parse_from(["gateway"]).and_then(Cli::into_command);
        match cli {
            Ok(Command::Serve(args)) => {
                assert_eq!(args.user_service.upstream_timeout, Duration::from_secs(5));
                assert_eq!(args.unknown_user_retry_window, DEFAULT_UNKNOWN_USER_RETRY_WINDOW);
            }
            other => panic!("expected serve, got {other:?}"),
        }
    }

    #[test]
    fn send_takes_url_file_msg_id_and_timestamp() {
        let cli = Cli::try_parse_from([
            "gateway",
            "send",
            "--url",
            "http://127.0.0.1:9/webhooks/clerk",
            "--file",
            "event.json",
            "--msg-id",
            "msg_1",
            "--timestamp",
            "1700000000",
        ])
        .and_then(Cli::into_command);
        match cli {
            Ok(Command::Send(args)) => {
                assert_eq!(args.msg_id.as_deref(), Some("msg_1"));
                assert_eq!(args.timestamp, Some(1_700_000_000));
            }
            other => panic!("expected send, got {other:?}"),
        }
    }
}
