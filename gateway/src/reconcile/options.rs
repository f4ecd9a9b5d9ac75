//! `gateway reconcile`'s command line and the validated [`Options`] it runs
//! with.
//!
//! Clerk's secret key is not a flag, like the webhook signing secret: it is
//! read from [`CLERK_SECRET_KEY_ENV`] so it never shows in `ps` or in clap's
//! error messages.

use std::{fmt, time::Duration};

use clap::Args;
use http::HeaderValue;
use reqwest::Url;

use crate::{
    config::{ConfigError, UserServiceArgs, UserServiceConfig},
    reconcile::retry::RetryPolicy,
};

/// Environment variable holding Clerk's secret key (`sk_live_…`, `sk_test_…`).
pub const CLERK_SECRET_KEY_ENV: &str = "CLERK_SECRET_KEY";
/// Clerk's Backend API.
pub const DEFAULT_CLERK_API_URL: &str = "https://api.clerk.com";
/// Default `--max-deletes`: enough for the odd user deleted while webhooks
/// were lost, far too few for a wrong instance or an empty listing.
pub const DEFAULT_MAX_DELETES: usize = 10;
/// Largest page `GET /v1/users` serves (and the default).
pub const MAX_PAGE_SIZE: u32 = 500;
/// Default `--concurrency`: writes in flight at once towards user-service.
pub const DEFAULT_CONCURRENCY: usize = 16;
/// Highest `--concurrency`: well below user-service's default of 256
/// concurrent requests, so a reconcile never makes it shed webhooks.
pub const MAX_CONCURRENCY: usize = 128;

/// Options of `gateway reconcile`.
#[derive(Debug, Clone, Args)]
pub struct ReconcileArgs {
    /// Base URL of Clerk's Backend API (`/v1/users` is appended). Plain
    /// `http://` is accepted for loopback addresses only, since the secret
    /// key travels with every request.
    #[arg(long, env = "CLERK_API_URL", default_value = DEFAULT_CLERK_API_URL)]
    pub clerk_api_url: String,

    /// How to reach user-service (the same options as `serve`).
    #[command(flatten)]
    pub user_service: UserServiceArgs,

    /// Read both sides and print what would change (counts and a sample per
    /// category), without writing anything.
    #[arg(long, env = "GATEWAY_RECONCILE_DRY_RUN")]
    pub dry_run: bool,

    /// Also delete local users that Clerk no longer has (off by default).
    #[arg(long, env = "GATEWAY_RECONCILE_DELETE_MISSING")]
    pub delete_missing: bool,

    /// With `--delete-missing`: refuse to run (and write nothing) when more
    /// local users than this would be deleted, unless `--force` is given.
    #[arg(long, env = "GATEWAY_RECONCILE_MAX_DELETES", default_value_t = DEFAULT_MAX_DELETES)]
    pub max_deletes: usize,

    /// With `--delete-missing`: delete however many users are missing.
    #[arg(long, requires = "delete_missing")]
    pub force: bool,

    /// Users per `GET /v1/users` page (1 to 500).
    #[arg(
        long,
        env = "GATEWAY_RECONCILE_PAGE_SIZE",
        default_value_t = MAX_PAGE_SIZE,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PAGE_SIZE))
    )]
    pub page_size: u32,

    /// Writes to user-service in flight at once (1 to 128).
    #[arg(
        long,
        env = "GATEWAY_RECONCILE_CONCURRENCY",
        default_value_t = DEFAULT_CONCURRENCY,
        value_parser = parse_concurrency
    )]
    pub concurrency: usize,
}

fn parse_concurrency(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(value) if (1..=MAX_CONCURRENCY).contains(&value) => Ok(value),
        _ => Err(format!("must be a whole number from 1 to {MAX_CONCURRENCY}")),
    }
}

/// Clerk's secret key. `Debug` is redacted and the header value is marked
/// sensitive; there is no way to read the key back as text.
#[derive(Clone)]
pub struct ClerkSecretKey(HeaderValue);

impl ClerkSecretKey {
    /// Parses a key: surrounding whitespace is ignored, the rest must be one
    /// word of visible ASCII.
    pub fn parse(text: &str) -> Result<Self, ReconcileConfigError> {
        let key = text.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ReconcileConfigError::SecretKeyMalformed);
        }
        let mut value = HeaderValue::try_from(format!("Bearer {key}"))
            .map_err(|_| ReconcileConfigError::SecretKeyMalformed)?;
        value.set_sensitive(true);
        Ok(Self(value))
    }

    /// Reads and parses [`CLERK_SECRET_KEY_ENV`].
    pub fn from_env() -> Result<Self, ReconcileConfigError> {
        match std::env::var(CLERK_SECRET_KEY_ENV) {
            Ok(text) if text.trim().is_empty() => Err(ReconcileConfigError::SecretKeyMissing),
            Ok(text) => Self::parse(&text),
            Err(std::env::VarError::NotPresent) => Err(ReconcileConfigError::SecretKeyMissing),
            Err(std::env::VarError::NotUnicode(_)) => Err(ReconcileConfigError::SecretKeyMalformed),
        }
    }

    /// The `Authorization` header value, `Bearer <key>`.
    pub(crate) fn authorization(&self) -> HeaderValue {
        self.0.clone()
    }
}

impl fmt::Debug for ClerkSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClerkSecretKey([redacted])")
    }
}

/// Where and how to read Clerk's users.
#[derive(Debug, Clone)]
pub struct ClerkApiConfig {
    /// Base URL, without `/v1`.
    pub base_url: Url,
    /// The instance's secret key.
    pub secret_key: ClerkSecretKey,
    /// Users per page (1 to [`MAX_PAGE_SIZE`]).
    pub page_size: u32,
    /// Limit of each HTTP request, body included.
    pub request_timeout: Duration,
    /// Retries of 5xx answers and dropped connections; a 429 waits for its
    /// `Retry-After` instead.
    pub retry: RetryPolicy,
}

impl ClerkApiConfig {
    /// Timeout of one Backend API request.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

    /// A config with the defaults for `base_url` and `secret_key`.
    pub fn new(base_url: Url, secret_key: ClerkSecretKey) -> Self {
        Self {
            base_url,
            secret_key,
            page_size: MAX_PAGE_SIZE,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
            retry: RetryPolicy::CLERK,
        }
    }
}

/// Which local users missing from Clerk are deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteMissing {
    /// None: they are reported and kept (the default).
    Off,
    /// At most `max`, else the run refuses; any number when `force`.
    On {
        /// `--max-deletes`.
        max: usize,
        /// `--force`.
        force: bool,
    },
}

/// Everything a reconcile run needs, validated. Build it from the command
/// line with [`Options::from_args`], or directly (all fields are public).
#[derive(Debug, Clone)]
pub struct Options {
    /// Clerk's Backend API.
    pub clerk: ClerkApiConfig,
    /// user-service.
    pub user_service: UserServiceConfig,
    /// Write nothing; report what would change.
    pub dry_run: bool,
    /// What to do with local users Clerk does not have.
    pub delete_missing: DeleteMissing,
    /// Writes in flight at once.
    pub concurrency: usize,
    /// Retries of transient gRPC failures (`UNAVAILABLE`, deadlines, ...).
    pub write_retry: RetryPolicy,
}

impl Options {
    /// The defaults for a Clerk API and a user-service.
    pub fn new(clerk: ClerkApiConfig, user_service: UserServiceConfig) -> Self {
        Self {
            clerk,
            user_service,
            dry_run: false,
            delete_missing: DeleteMissing::Off,
            concurrency: DEFAULT_CONCURRENCY,
            write_retry: RetryPolicy::USER_SERVICE,
        }
    }

    /// Validates the arguments and reads the secret key and the user-service
    /// token from the environment.
    pub fn from_args(args: ReconcileArgs) -> Result<Self, ReconcileConfigError> {
        let base_url = parse_clerk_api_url(&args.clerk_api_url)?;
        let secret_key = ClerkSecretKey::from_env()?;
        let timeout = args.user_service.upstream_timeout;
        let user_service = UserServiceConfig::from_args(args.user_service, timeout)?;
        let mut clerk = ClerkApiConfig::new(base_url, secret_key);
        clerk.page_size = args.page_size;
        let mut options = Self::new(clerk, user_service);
        options.dry_run = args.dry_run;
        options.delete_missing = if args.delete_missing {
            DeleteMissing::On { max: args.max_deletes, force: args.force }
        } else {
            DeleteMissing::Off
        };
        options.concurrency = args.concurrency;
        Ok(options)
    }
}

/// Parses `--clerk-api-url`: http(s), no credentials, plain http only on
/// loopback; a trailing `/v1` is dropped so both spellings work.
pub fn parse_clerk_api_url(text: &str) -> Result<Url, ReconcileConfigError> {
    let bad = || ReconcileConfigError::ClerkApiUrl;
    let mut url = Url::parse(text.trim()).map_err(|_| bad())?;
    if !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
        return Err(bad());
    }
    let host = url.host_str().ok_or_else(bad)?.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => return Err(ReconcileConfigError::ClerkApiPlainHttp),
        _ => return Err(bad()),
    }
    let path = url.path().trim_end_matches('/');
    let path = path.strip_suffix("/v1").unwrap_or(path).to_owned();
    url.set_path(&path);
    Ok(url)
}

/// Why `gateway reconcile` cannot start. Each message is one line naming the
/// setting, never its secret value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReconcileConfigError {
    /// The secret key variable is unset or blank.
    #[error(
        "{CLERK_SECRET_KEY_ENV} is not set: give the secret key (sk_live_… or sk_test_…) of the Clerk instance to read"
    )]
    SecretKeyMissing,
    /// The secret key is not one word of visible ASCII.
    #[error(
        "{CLERK_SECRET_KEY_ENV} must be one word of visible ASCII characters (the key alone, no `Bearer`)"
    )]
    SecretKeyMalformed,
    /// `--clerk-api-url` is not an http(s) URL without credentials or query.
    #[error("--clerk-api-url / CLERK_API_URL must be an https:// URL such as {DEFAULT_CLERK_API_URL}")]
    ClerkApiUrl,
    /// `--clerk-api-url` is plain http on a non-loopback host.
    #[error(
        "--clerk-api-url / CLERK_API_URL: plain http:// is only accepted on loopback addresses (the secret key \
         would travel in clear)"
    )]
    ClerkApiPlainHttp,
    /// A user-service option is invalid.
    #[error(transparent)]
    UserService(#[from] ConfigError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_url_takes_https_or_loopback_http_and_drops_a_trailing_v1() {
        let parsed = |text: &str| parse_clerk_api_url(text).map(|url| url.to_string());
        assert_eq!(parsed("https://api.clerk.com"), Ok("https://api.clerk.com/".into()));
        assert_eq!(parsed("https://api.clerk.com/v1/"), Ok("https://api.clerk.com/".into()));
        assert_eq!(parsed("http://127.0.0.1:8099"), Ok("http://127.0.0.1:8099/".into()));
        assert_eq!(parsed("http://localhost:8099/proxy/v1"), Ok("http://localhost:8099/proxy".into()));
        assert_eq!(parsed("http://api.example.test"), Err(ReconcileConfigError::ClerkApiPlainHttp));
        for bad in ["ftp://api.clerk.com", "https://user:pw@api.clerk.com", "api.clerk.com", "https://a?x=1"]
        {
            assert_eq!(parsed(bad), Err(ReconcileConfigError::ClerkApiUrl), "{bad}");
        }
    }

    #[test]
    fn secret_keys_are_trimmed_redacted_and_one_word() {
        let key = ClerkSecretKey::parse(" sk_test_0123456789abcdef \n");
        let value = key.as_ref().map(|k| k.authorization());
        assert_eq!(
            value.as_ref().map(|v| v.to_str().unwrap_or_default()),
            Ok("Bearer sk_test_0123456789abcdef")
        );
        assert!(value.is_ok_and(|v| v.is_sensitive()));
        let debug = key.map(|k| format!("{k:?}")).unwrap_or_default();
        assert!(debug.contains("redacted") && !debug.contains("sk_test"), "{debug}");
        for bad in ["", "  ", "sk test", "sk_t\u{e9}st"] {
            assert_eq!(ClerkSecretKey::parse(bad).map(|_| ()), Err(ReconcileConfigError::SecretKeyMalformed));
        }
    }

    #[test]
    fn concurrency_is_bounded() {
        assert_eq!(parse_concurrency("16"), Ok(16));
        assert!(parse_concurrency("0").is_err());
        assert!(parse_concurrency("129").is_err());
        assert!(parse_concurrency("many").is_err());
    }
}
