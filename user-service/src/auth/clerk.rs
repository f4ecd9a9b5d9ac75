//! Clerk session tokens, verified as Clerk's manual-verification guide says:
//! an RS256 signature by the instance's key (a configured PEM public key, or
//! the key its JWKS names by `kid`), `exp` and `nbf` with a small clock skew,
//! `iss` equal to the instance's issuer, `azp` (when present) among the
//! authorized origins, and `sub` a Clerk user id.

use std::{
    borrow::Cow,
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;

use super::{Jwks, SignedInUser};
use crate::domain::user::ClerkId;

/// Clock skew tolerated on `exp` and `nbf` (Clerk's SDKs allow 5 s).
pub const CLOCK_SKEW: Duration = Duration::from_secs(5);

/// Where the key that signs session tokens comes from.
#[derive(Debug)]
pub enum KeySource {
    /// One PEM public key (Clerk's "JWT public key", `CLERK_JWT_KEY`): no
    /// network needed.
    Pem(Arc<DecodingKey>),
    /// The instance's JWKS, fetched and cached.
    Jwks(Box<Jwks>),
}

impl KeySource {
    /// Reads a PEM public key. Accepts `\n` written as two characters, as
    /// environment variables often carry it.
    pub fn pem(text: &str) -> Result<Self, String> {
        let text = text.trim().replace("\\n", "\n");
        DecodingKey::from_rsa_pem(text.as_bytes())
            .map(|key| Self::Pem(Arc::new(key)))
            .map_err(|err| format!("CLERK_JWT_KEY is not an RSA public key in PEM form: {err}"))
    }
}

/// Why a session token was refused. Each names the check that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionRejection {
    /// Not three base64url parts with a JSON header.
    Malformed,
    /// Any `alg` but RS256 (including `none` and the HMAC algorithms).
    Algorithm,
    /// No `kid` in the header (needed to pick a key from the JWKS).
    MissingKeyId,
    /// A `kid` that the JWKS does not hold, even after a refresh.
    UnknownKeyId,
    /// The JWKS could not be fetched and no key is cached.
    KeysUnavailable,
    /// The signature does not verify.
    Signature,
    /// `exp` is past.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// `iss` is not the configured issuer.
    Issuer,
    /// `azp` is not among the authorized parties.
    AuthorizedParty,
    /// A required claim is absent.
    MissingClaim(&'static str),
    /// A claim has the wrong type.
    MalformedClaim(&'static str),
    /// `sub` is not a Clerk user id.
    Subject,
}

impl SessionRejection {
    /// A message naming the failed check; never quotes the token.
    pub fn message(&self) -> Cow<'static, str> {
        match self {
            Self::Malformed => "session token is not a well-formed JWT".into(),
            Self::Algorithm => "session token algorithm (alg) is not RS256".into(),
            Self::MissingKeyId => "session token header has no key id (kid)".into(),
            Self::UnknownKeyId => "session token key id (kid) is not in Clerk's JWKS".into(),
            Self::KeysUnavailable => "Clerk's signing keys cannot be fetched right now; retry later".into(),
            Self::Signature => "session token signature (RS256) does not verify".into(),
            Self::Expired => "session token has expired (exp)".into(),
            Self::NotYetValid => "session token is not valid yet (nbf)".into(),
            Self::Issuer => "session token issuer (iss) is not the configured Clerk issuer".into(),
            Self::AuthorizedParty => {
                "session token authorized party (azp) is not one of the authorized parties".into()
            }
            Self::MissingClaim(claim) => format!("session token has no `{claim}` claim").into(),
            Self::MalformedClaim(claim) => format!("session token claim `{claim}` is malformed").into(),
            Self::Subject => "session token subject (sub) is not a Clerk user id".into(),
        }
    }
}

/// The claims read after the signature and the time and issuer checks.
#[derive(Deserialize)]
struct Claims {
    // Optional here so that its absence is reported by the required-claims
    // check (naming `sub`) rather than as a malformed token.
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    azp: Option<String>,
    /// Checked by the validation (a required claim); read for how long the
    /// user stays signed in on a stream opened with the token.
    #[serde(default)]
    exp: Option<u64>,
}

/// The header fields read before choosing a key.
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// Verifies Clerk session tokens for one Clerk instance.
#[derive(Debug)]
pub struct ClerkVerifier {
    keys: KeySource,
    authorized_parties: Vec<String>,
    validation: Validation,
}

impl ClerkVerifier {
    /// Checks tokens issued by `issuer` (e.g. `https://clerk.example.com`),
    /// signed by a key from `keys`, whose `azp`, when present, must be one of
    /// `authorized_parties` (when that list is not empty, as Clerk's SDKs do).
    pub fn new(issuer: &str, authorized_parties: Vec<String>, keys: KeySource) -> Self {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = CLOCK_SKEW.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        Self { keys, authorized_parties, validation }
    }

    /// The configured issuer.
    pub fn issuer(&self) -> &str {
        self.validation.iss.as_ref().and_then(|set| set.iter().next()).map_or("", String::as_str)
    }

    /// Where keys come from.
    pub fn keys(&self) -> &KeySource {
        &self.keys
    }

    /// The signed-in user a session token stands for.
    pub async fn verify(&self, token: &str) -> Result<SignedInUser, SessionRejection> {
        let header = read_header(token)?;
        // Only RS256: refuses `none` and, above all, HS256 "signed" with the
        // public key (algorithm confusion).
        if header.alg != "RS256" {
            return Err(SessionRejection::Algorithm);
        }
        let key = match &self.keys {
            KeySource::Pem(key) => key.clone(),
            KeySource::Jwks(jwks) => {
                let kid = header.kid.as_deref().ok_or(SessionRejection::MissingKeyId)?;
                jwks.key(kid).await?
            }
        };
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &self.validation)
            .map_err(|err| rejection(err.kind()))?
            .claims;
        if let Some(azp) = &claims.azp
            && !self.authorized_parties.is_empty()
            && !self.authorized_parties.iter().any(|party| party == azp)
        {
            return Err(SessionRejection::AuthorizedParty);
        }
        let sub = claims.sub.ok_or(SessionRejection::MissingClaim("sub"))?;
        let clerk_id = ClerkId::parse(&sub).map_err(|_| SessionRejection::Subject)?.into_inner();
        let user = SignedInUser::new(clerk_id);
        // Checked arithmetic: an `exp` beyond what the clock can hold is no
        // end at all, not a panic.
        let until = claims
            .exp
            .and_then(|exp| UNIX_EPOCH.checked_add(Duration::from_secs(exp)))
            .and_then(|at| at.checked_add(CLOCK_SKEW));
        Ok(match until {
            Some(at) => user.valid_until(at),
            None => user,
        })
    }
}

fn read_header(token: &str) -> Result<Header, SessionRejection> {
    let encoded = token.split('.').next().ok_or(SessionRejection::Malformed)?;
    let json =
        URL_SAFE_NO_PAD.decode(encoded.trim_end_matches('=')).map_err(|_| SessionRejection::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| SessionRejection::Malformed)
}

fn rejection(kind: &ErrorKind) -> SessionRejection {
    match kind {
        ErrorKind::InvalidSignature => SessionRejection::Signature,
        ErrorKind::ExpiredSignature => SessionRejection::Expired,
        ErrorKind::ImmatureSignature => SessionRejection::NotYetValid,
        ErrorKind::InvalidIssuer => SessionRejection::Issuer,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
            SessionRejection::Algorithm
        }
        ErrorKind::MissingRequiredClaim(claim) => SessionRejection::MissingClaim(claim_name(claim)),
        ErrorKind::InvalidClaimFormat(claim) => SessionRejection::MalformedClaim(claim_name(claim)),
        _ => SessionRejection::Malformed,
    }
}

/// The name of a registered claim, from the few the checks know.
fn claim_name(claim: &str) -> &'static str {
    ["exp", "nbf", "iss", "sub", "aud"].into_iter().find(|known| *known == claim).unwrap_or("unknown")
}
