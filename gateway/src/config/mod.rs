//! Command line, environment and the validated [`Config`] the server runs with.
//!
//! [`cli`] is what clap parses, [`defaults`] every default (once), [`secrets`]
//! the signing secrets and the user-service token (read from the environment
//! or a file, never echoed), [`limits`] the connection limits, [`error`] why a
//! configuration is refused. [`Config::from_args`] turns the first into a
//! validated [`Config`].

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use http::Uri;

pub mod cli;
pub mod defaults;
pub mod error;
pub mod limits;
pub mod secrets;

pub use cli::{Cli, Command, SendArgs, ServeArgs, UserServiceArgs, parse_uri};
pub use defaults::*;
pub use error::ConfigError;
use limits::ConnectionLimits;
use secrets::read_token;
pub use secrets::{
    MIN_SECRET_BYTES, SIGNING_SECRET_ENV, SigningSecret, SigningSecrets, USER_SERVICE_TOKEN_ENV,
    UserServiceToken,
};

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
    /// How event writes are batched into `ApplyEvents` calls.
    pub upstream_batch: UpstreamBatch,
}

/// How event writes are batched into `EventService.ApplyEvents` calls
/// (`--upstream-batch-max`, `--upstream-batches-in-flight`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamBatch {
    /// Most writes in one call; 1 sends each write as its own call.
    pub max: usize,
    /// Calls in flight at once; writes queue behind them.
    pub in_flight: usize,
}

impl Default for UpstreamBatch {
    fn default() -> Self {
        Self {
            max: usize::from(DEFAULT_UPSTREAM_BATCH_MAX),
            in_flight: usize::from(DEFAULT_UPSTREAM_BATCHES_IN_FLIGHT),
        }
    }
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

pub use userdata_kit::metrics_http::MetricsListen;

impl Config {
    /// A config with the command line's defaults and the given secrets,
    /// except that `/metrics` is off: a library user (or test) opts in.
    pub fn new(signing_secrets: SigningSecrets) -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            tls: None,
            insecure: false,
            user_service_url: Uri::from_static(DEFAULT_USER_SERVICE_URL),
            user_service_replicas: Vec::new(),
            user_service_token: None,
            user_service_tls: UpstreamTls::default(),
            replica_check_interval: DEFAULT_USER_SERVICE_CHECK_INTERVAL.value,
            upstream_timeout: DEFAULT_UPSTREAM_TIMEOUT.value,
            readiness_timeout: DEFAULT_READINESS_TIMEOUT.value,
            signing_secrets,
            rate_limit: RateLimit::default(),
            trusted_proxy_hops: DEFAULT_TRUSTED_PROXY_HOPS,
            readiness_cache: DEFAULT_READINESS_CACHE.value,
            connections: ConnectionLimits::default(),
            metrics_listen: MetricsListen::Off,
            unknown_user_retry_window: DEFAULT_UNKNOWN_USER_RETRY_WINDOW.value,
            upstream_batch: UpstreamBatch::default(),
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
            upstream_batch: UpstreamBatch {
                max: usize::from(args.upstream_batch_max),
                in_flight: usize::from(args.upstream_batches_in_flight),
            },
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
        let batch = self.upstream_batch;
        if !(1..=usize::from(MAX_UPSTREAM_BATCH)).contains(&batch.max)
            || !(1..=usize::from(MAX_UPSTREAM_BATCHES_IN_FLIGHT)).contains(&batch.in_flight)
        {
            return Err(ConfigError::UpstreamBatch);
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

#[cfg(test)]
mod tests;
