//! Why a configuration is refused.

use std::{net::SocketAddr, path::PathBuf};

use super::{
    MAX_UPSTREAM_BATCH, MAX_UPSTREAM_BATCHES_IN_FLIGHT, MIN_SECRET_BYTES, SIGNING_SECRET_ENV,
    USER_SERVICE_TOKEN_ENV,
};

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
    /// A batch size or in-flight count out of range.
    #[error(
        "--upstream-batch-max must be 1 to {MAX_UPSTREAM_BATCH} and --upstream-batches-in-flight 1 to \
         {MAX_UPSTREAM_BATCHES_IN_FLIGHT}"
    )]
    UpstreamBatch,
    /// The rate limit is on with a burst of zero, which would refuse everything.
    #[error("--rate-limit-burst must be at least 1 while --rate-limit is on (0 turns the limit off)")]
    RateLimitBurst,
    /// The replica check interval is zero.
    #[error("--user-service-check-interval must be greater than 0")]
    CheckInterval,
    /// A deadline is zero or above [`super::MAX_DEADLINE`].
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
    /// `--readiness-cache` is above [`super::MAX_READINESS_CACHE`].
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
