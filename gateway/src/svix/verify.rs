//! Svix signature verification against one or more secrets.

use ::svix::webhooks::WebhookError as SvixError;
use http::HeaderMap;

use crate::{
    config::SigningSecrets,
    error::{RequestError, TimestampSkew},
};

/// Header carrying the Svix message id (also the idempotency key).
pub const SVIX_ID: &str = "svix-id";
/// Header carrying the signing time in Unix seconds.
pub const SVIX_TIMESTAMP: &str = "svix-timestamp";
/// Header carrying space-separated `v1,<base64>` signatures.
pub const SVIX_SIGNATURE: &str = "svix-signature";
/// Unbranded (Standard Webhooks) equivalent of [`SVIX_ID`], which the svix
/// crate also accepts.
pub const WEBHOOK_ID: &str = "webhook-id";

/// Checks that a body was signed by Clerk with one of our secrets.
#[derive(Debug, Clone)]
pub struct Verifier {
    secrets: SigningSecrets,
}

impl Verifier {
    /// A verifier accepting any of `secrets`.
    pub fn new(secrets: SigningSecrets) -> Self {
        Self { secrets }
    }

    /// Verifies the raw body against the Svix headers, within Svix's 5 minute
    /// timestamp tolerance. Succeeds if any configured secret verifies.
    pub fn verify(&self, body: &[u8], headers: &HeaderMap) -> Result<(), RequestError> {
        let mut last = SvixError::InvalidSignature;
        for secret in self.secrets.iter() {
            match secret.webhook().verify(body, headers) {
                Ok(()) => return Ok(()),
                // Only a signature mismatch depends on the secret; header and
                // timestamp problems would repeat for every other secret.
                Err(SvixError::InvalidSignature) => last = SvixError::InvalidSignature,
                Err(other) => return Err(map_svix_error(other)),
            }
        }
        Err(map_svix_error(last))
    }
}

/// The message id a verified request was signed with: `svix-id`, or
/// `webhook-id` when only the unbranded headers were sent.
pub fn message_id(headers: &HeaderMap) -> Result<&str, RequestError> {
    headers
        .get(SVIX_ID)
        .or_else(|| headers.get(WEBHOOK_ID))
        .ok_or(RequestError::MissingHeader(SVIX_ID))?
        .to_str()
        .map_err(|_| RequestError::MalformedHeader(SVIX_ID))
}

fn header_name(svix_name: &'static str) -> &'static str {
    // svix names headers by suffix ("id", "timestamp", "signature").
    match svix_name {
        "id" => SVIX_ID,
        "timestamp" => SVIX_TIMESTAMP,
        "signature" => SVIX_SIGNATURE,
        _ => "svix-*",
    }
}

fn map_svix_error(error: SvixError) -> RequestError {
    match error {
        SvixError::MissingHeader(name) => RequestError::MissingHeader(header_name(name)),
        SvixError::InvalidHeader(name) => RequestError::MalformedHeader(header_name(name)),
        SvixError::InvalidTimestamp => RequestError::MalformedHeader(SVIX_TIMESTAMP),
        SvixError::TimestampTooOldError => RequestError::SignatureExpired(TimestampSkew::TooOld),
        SvixError::FutureTimestampError => RequestError::SignatureExpired(TimestampSkew::InFuture),
        SvixError::InvalidSignature => RequestError::InvalidSignature,
        SvixError::InvalidPayload => RequestError::NonUtf8Body,
        // Only `Webhook::new` reports these, and secrets are parsed at startup.
        SvixError::InvalidSecret(_) | SvixError::EmptySecret => RequestError::Misconfigured,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::SigningSecrets, svix::sign_headers};

    const SECRET_A: &str = "whsec_dGVzdC1zZWNyZXQtYS0wMTIzNDU2Nzg5YWJjZA==";
    const SECRET_B: &str = "whsec_dGVzdC1zZWNyZXQtYi0wMTIzNDU2Nzg5YWJjZA==";
    const BODY: &[u8] = br#"{"type":"user.created"}"#;

    fn secrets(text: &str) -> SigningSecrets {
        SigningSecrets::parse(text).unwrap()
    }

    fn now() -> i64 {
        std::time::UNIX_EPOCH.elapsed().unwrap().as_secs() as i64
    }

    #[test]
    fn a_body_signed_with_any_configured_secret_verifies() {
        let verifier = Verifier::new(secrets(&format!("{SECRET_A} {SECRET_B}")));
        let headers = sign_headers(secrets(SECRET_B).first(), "msg_1", now(), BODY).unwrap();
        assert!(verifier.verify(BODY, &headers).is_ok());
    }

    #[test]
    fn a_body_signed_with_another_secret_is_an_invalid_signature() {
        let verifier = Verifier::new(secrets(SECRET_A));
        let headers = sign_headers(secrets(SECRET_B).first(), "msg_1", now(), BODY).unwrap();
        assert!(matches!(verifier.verify(BODY, &headers), Err(RequestError::InvalidSignature)));
    }

    #[test]
    fn a_timestamp_outside_five_minutes_is_expired_either_way() {
        let verifier = Verifier::new(secrets(SECRET_A));
        for (offset, skew) in [(-301, TimestampSkew::TooOld), (301, TimestampSkew::InFuture)] {
            let headers = sign_headers(secrets(SECRET_A).first(), "msg_1", now() + offset, BODY).unwrap();
            assert!(
                matches!(verifier.verify(BODY, &headers), Err(RequestError::SignatureExpired(s)) if s == skew)
            );
        }
    }

    #[test]
    fn missing_headers_are_named() {
        let verifier = Verifier::new(secrets(SECRET_A));
        let full = sign_headers(secrets(SECRET_A).first(), "msg_1", now(), BODY).unwrap();
        for name in [SVIX_ID, SVIX_TIMESTAMP, SVIX_SIGNATURE] {
            let mut headers = full.clone();
            headers.remove(name);
            assert!(
                matches!(verifier.verify(BODY, &headers), Err(RequestError::MissingHeader(n)) if n == name)
            );
        }
    }
}
