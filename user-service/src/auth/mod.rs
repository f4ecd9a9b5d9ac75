//! Authentication: who is calling.
//!
//! Two kinds of bearer token are accepted in `authorization: Bearer <token>`:
//! service tokens from the tokens file ([`Tokens`], each naming a client and
//! its [`Scopes`]) and Clerk session tokens, RS256 JWTs that a signed-in user's
//! browser gets from Clerk ([`ClerkVerifier`]). Either way the result is one
//! [`Principal`]. Tokens are never logged nor echoed in errors.

mod clerk;
mod jwks;
mod principal;
mod scope;
mod tokens;

use std::borrow::Cow;

use tonic::Code;

pub use self::{
    clerk::{CLOCK_SKEW, ClerkVerifier, KeySource, SessionRejection},
    jwks::{Jwks, JwksSettings},
    principal::{ANONYMOUS_ACTOR, Principal, SignedInUser, USER_ACTOR_PREFIX},
    scope::{Scope, Scopes},
    tokens::{Client, MIN_TOKEN_LEN, ParseError, Tokens},
};

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// No `authorization: Bearer …` header.
    Missing,
    /// A bearer token that is neither a known service token nor a session
    /// token (or a malformed header).
    Invalid,
    /// A Clerk session token that failed a check.
    Session(SessionRejection),
}

impl Rejection {
    /// A message for the caller; never contains the token.
    pub fn message(&self) -> Cow<'static, str> {
        match self {
            Self::Missing => "missing bearer token: send `authorization: Bearer <token>`".into(),
            Self::Invalid => "invalid bearer token".into(),
            Self::Session(why) => why.message(),
        }
    }

    /// The gRPC code: UNAUTHENTICATED, except UNAVAILABLE when Clerk's keys
    /// cannot be fetched (the token may well be good; retry later).
    pub fn code(&self) -> Code {
        match self {
            Self::Session(SessionRejection::KeysUnavailable) => Code::Unavailable,
            _ => Code::Unauthenticated,
        }
    }

    /// The `ErrorInfo.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Session(SessionRejection::KeysUnavailable) => "CLERK_KEYS_UNAVAILABLE",
            _ => "UNAUTHENTICATED",
        }
    }
}

/// Every way a caller can authenticate, as configured. With neither service
/// tokens nor Clerk configured there is no `Authenticator` and authentication
/// is off.
#[derive(Debug)]
pub struct Authenticator {
    tokens: Option<Tokens>,
    clerk: Option<ClerkVerifier>,
}

impl Authenticator {
    /// Accepts the service tokens in `tokens` and Clerk session tokens
    /// checked by `clerk`; `None` when neither is given.
    pub fn new(tokens: Option<Tokens>, clerk: Option<ClerkVerifier>) -> Option<Self> {
        (tokens.is_some() || clerk.is_some()).then_some(Self { tokens, clerk })
    }

    /// The service tokens, if configured.
    pub fn tokens(&self) -> Option<&Tokens> {
        self.tokens.as_ref()
    }

    /// The Clerk session-token verifier, if configured.
    pub fn clerk(&self) -> Option<&ClerkVerifier> {
        self.clerk.as_ref()
    }

    /// The caller whose credential the `authorization` header carries.
    pub async fn authenticate(
        &self,
        authorization: Option<&http::HeaderValue>,
    ) -> Result<Principal, Rejection> {
        let header = authorization.ok_or(Rejection::Missing)?;
        let token = bearer_token(header).ok_or(Rejection::Invalid)?;
        if let Some(client) = self.tokens.as_ref().and_then(|tokens| tokens.find(token)) {
            return Ok(Principal::Service(client.clone()));
        }
        match &self.clerk {
            // Only something shaped like a JWT is worth a signature check;
            // anything else is a wrong service token.
            Some(clerk) if looks_like_jwt(token) => {
                let token = std::str::from_utf8(token).map_err(|_| Rejection::Invalid)?;
                clerk.verify(token).await.map(Principal::User).map_err(Rejection::Session)
            }
            _ => Err(Rejection::Invalid),
        }
    }
}

/// The token of an `authorization: Bearer <token>` header (scheme
/// case-insensitive).
fn bearer_token(header: &http::HeaderValue) -> Option<&[u8]> {
    let value = header.as_bytes();
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Three base64url parts separated by dots (the last may be empty, as in an
/// unsigned `alg: none` token, which verification then refuses by name).
fn looks_like_jwt(token: &[u8]) -> bool {
    token.iter().filter(|b| **b == b'.').count() == 2
        && token.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    const TOKEN: &str = "0123456789abcdef-reader";

    fn header(value: &str) -> HeaderValue {
        HeaderValue::from_str(value).unwrap()
    }

    fn service_only() -> Authenticator {
        Authenticator::new(Some(Tokens::parse(&format!("reader read {TOKEN}")).unwrap()), None).unwrap()
    }

    #[tokio::test]
    async fn a_service_token_authenticates_its_client() {
        let principal = service_only().authenticate(Some(&header(&format!("bearer {TOKEN}")))).await.unwrap();
        assert_eq!(principal.actor(), "reader");
        assert!(principal.has_scope(Scope::Read) && !principal.has_scope(Scope::Write));
    }

    #[tokio::test]
    async fn missing_malformed_and_unknown_tokens_are_rejected() {
        let auth = service_only();
        assert_eq!(auth.authenticate(None).await, Err(Rejection::Missing));
        for bad in [TOKEN, &format!("Basic {TOKEN}"), "Bearer  ", "Bearer 0123456789abcdef", "Bearer a.b.c"] {
            assert_eq!(auth.authenticate(Some(&header(bad))).await, Err(Rejection::Invalid), "{bad:?}");
        }
    }

    #[test]
    fn nothing_configured_means_no_authenticator() {
        assert!(Authenticator::new(None, None).is_none());
    }

    #[test]
    fn jwt_shape_is_three_base64url_parts() {
        assert!(looks_like_jwt(b"eyJh.eyJz.c2ln"));
        assert!(looks_like_jwt(b"eyJh.eyJz."));
        assert!(!looks_like_jwt(b"eyJh.eyJz"));
        assert!(!looks_like_jwt(b"a.b.c.d"));
        assert!(!looks_like_jwt(b"a b.c.d"));
    }
}
