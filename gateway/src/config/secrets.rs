//! Secrets: the Svix signing secrets and the user-service bearer token.
//!
//! Signing secrets are read from [`SIGNING_SECRET_ENV`] by
//! [`SigningSecrets::from_env`], whose errors name the variable and never the
//! value; `Debug` is redacted on every type here.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use tonic::metadata::{AsciiMetadataValue, MetadataValue};

use super::ConfigError;

/// Environment variable holding the Clerk (Svix) webhook signing secret(s).
pub const SIGNING_SECRET_ENV: &str = "CLERK_WEBHOOK_SIGNING_SECRET";

/// Environment variable holding user-service's bearer token itself (the
/// alternative to `--user-service-token-file`).
pub const USER_SERVICE_TOKEN_ENV: &str = "USER_SERVICE_TOKEN";

/// Fewest bytes a signing secret may decode to: Svix's own secrets are 24
/// random bytes (32 base64 characters), and a shorter one is a truncated paste
/// or a hand-made secret too weak to trust.
pub const MIN_SECRET_BYTES: usize = 24;

/// The user-service token from `file` or [`USER_SERVICE_TOKEN_ENV`] (not
/// both), if either is set.
pub(super) fn read_token(file: Option<PathBuf>) -> Result<Option<UserServiceToken>, ConfigError> {
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

/// One Svix signing secret (`whsec_<base64>`), already decoded.
///
/// `Debug` is redacted and there is no way to get the secret back out, so it
/// cannot end up in a log line by accident.
#[derive(Clone)]
pub struct SigningSecret(Arc<::svix::webhooks::Webhook>);

impl SigningSecret {
    /// Parses `whsec_<base64>`; the prefix is required because a secret pasted
    /// without it is almost always a copy/paste mistake.
    pub fn parse(text: &str) -> Option<Self> {
        let encoded = text.strip_prefix("whsec_")?;
        if encoded.is_empty() {
            return None;
        }
        ::svix::webhooks::Webhook::new(encoded).ok().map(|webhook| Self(Arc::new(webhook)))
    }

    /// The svix verifier/signer keyed with this secret.
    pub fn webhook(&self) -> &::svix::webhooks::Webhook {
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
