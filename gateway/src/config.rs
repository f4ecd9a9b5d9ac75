//! Command line, environment and the validated [`Config`] the server runs with.
//!
//! Signing secrets are deliberately *not* a clap argument: clap echoes invalid
//! values in its error messages and a `--secret` flag would show up in `ps`.
//! They are read from [`SIGNING_SECRET_ENV`] by [`SigningSecrets::from_env`],
//! whose errors name the variable and never the value.

use std::{fmt, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use http::Uri;

/// Environment variable holding the Clerk (Svix) webhook signing secret(s).
pub const SIGNING_SECRET_ENV: &str = "CLERK_WEBHOOK_SIGNING_SECRET";

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
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Receive Clerk webhooks and apply them to user-service (the default).
    Serve(ServeArgs),
    /// Sign a JSON file exactly like Svix does and POST it to a gateway.
    Send(SendArgs),
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
    /// Address to listen on for HTTP (port 0 picks a free port).
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// gRPC endpoint of user-service (plain `http://`; TLS is not built in).
    #[arg(long, env = "USER_SERVICE_URL", default_value = "http://127.0.0.1:50051")]
    pub user_service_url: Uri,

    /// gRPC deadline for each call to user-service, e.g. `5s` or `1500ms`.
    /// At most 10s, to stay well below Svix's 15 s delivery timeout.
    #[arg(long, env = "GATEWAY_UPSTREAM_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,

    /// How long `/readyz` waits for user-service's health check.
    #[arg(long, env = "GATEWAY_READINESS_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub readiness_timeout: Duration,
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
    /// gRPC endpoint of user-service, `http://host:port`.
    pub user_service_url: Uri,
    /// Deadline of each call to user-service (also its connect timeout).
    pub upstream_timeout: Duration,
    /// How long `/readyz` waits for user-service's health check.
    pub readiness_timeout: Duration,
    /// Secrets accepted on incoming webhooks; any one may verify.
    pub signing_secrets: SigningSecrets,
}

impl Config {
    /// A config with the documented defaults and the given secrets.
    pub fn new(signing_secrets: SigningSecrets) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            user_service_url: Uri::from_static("http://127.0.0.1:50051"),
            upstream_timeout: Duration::from_secs(5),
            readiness_timeout: Duration::from_secs(1),
            signing_secrets,
        }
    }

    /// Validates the parsed arguments and reads the signing secrets from
    /// [`SIGNING_SECRET_ENV`].
    pub fn from_args(args: ServeArgs) -> Result<Self, ConfigError> {
        let config = Self {
            listen: args.listen,
            user_service_url: args.user_service_url,
            upstream_timeout: args.upstream_timeout,
            readiness_timeout: args.readiness_timeout,
            signing_secrets: SigningSecrets::from_env()?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the cross-field rules clap cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // tonic is built without TLS, so an https URL would only fail later,
        // on the first webhook; refuse it at startup instead.
        if self.user_service_url.scheme_str() != Some("http") || self.user_service_url.authority().is_none() {
            return Err(ConfigError::UserServiceUrl);
        }
        check_deadline("--upstream-timeout", self.upstream_timeout)?;
        check_deadline("--readiness-timeout", self.readiness_timeout)?;
        Ok(())
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
    /// The user-service URL is not plain `http://host:port`.
    #[error("--user-service-url / USER_SERVICE_URL must be an http://host:port URL (TLS is not supported)")]
    UserServiceUrl,
    /// A deadline is zero or above [`MAX_DEADLINE`].
    #[error("{flag} must be greater than 0 and at most 10s (Svix gives up after 15s)")]
    Deadline {
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
            SigningSecret::parse(part).ok_or(ConfigError::SecretMalformed { position: index + 1, count })
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
        other => return Err(format!("unknown duration unit `{other}` (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Throwaway secrets made up for these tests (base64 of ASCII text).
    const SECRET_A: &str = "whsec_dGVzdC1zZWNyZXQtYS0xMjM0NTY3OA==";
    const SECRET_B: &str = "whsec_dGVzdC1zZWNyZXQtYi0xMjM0NTY3OA==";

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
    fn durations_accept_ms_s_m_and_bare_seconds() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
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

    #[test]
    fn user_service_url_must_be_plain_http() {
        let Ok(secrets) = SigningSecrets::parse(SECRET_A) else {
            panic!("test secret must parse");
        };
        let mut config = Config::new(secrets);
        config.user_service_url = Uri::from_static("https://users.internal:50051");
        assert_eq!(config.validate(), Err(ConfigError::UserServiceUrl));
    }

    #[test]
    fn no_subcommand_means_serve_with_defaults() {
        let cli = Cli::try_parse_from(["gateway"]).and_then(Cli::into_command);
        match cli {
            Ok(Command::Serve(args)) => {
                assert_eq!(args.upstream_timeout, Duration::from_secs(5));
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
