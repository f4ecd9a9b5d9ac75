//! Signing webhook bodies the way Svix does, for `gateway send` and tests.
//!
//! The signature is delegated to the svix crate (`Webhook::sign`), the same
//! code that verifies incoming requests, so what we send is exactly what Svix
//! would send: `v1,` + base64(HMAC-SHA256(key, "{msg_id}.{timestamp}.{body}")).

use http::{HeaderMap, HeaderValue, header};

use crate::{
    config::SigningSecret,
    svix::verify::{SVIX_ID, SVIX_SIGNATURE, SVIX_TIMESTAMP},
};

/// Why a body could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// Svix signs text; a body that is not UTF-8 cannot be signed.
    #[error("the body is not valid UTF-8, so it cannot be signed")]
    NonUtf8Body,
    /// The message id is empty or cannot be sent as a header value.
    #[error("the message id must be non-empty visible ASCII")]
    InvalidMessageId,
}

/// Returns the `svix-signature` value (`v1,<base64>`) for a body.
pub fn sign(secret: &SigningSecret, msg_id: &str, timestamp: i64, body: &[u8]) -> Result<String, SignError> {
    secret.webhook().sign(msg_id, timestamp, body).map_err(|_| SignError::NonUtf8Body)
}

/// Builds the headers Svix sends with a delivery: `svix-id`, `svix-timestamp`,
/// `svix-signature` and `content-type: application/json`.
pub fn sign_headers(
    secret: &SigningSecret,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<HeaderMap, SignError> {
    if msg_id.is_empty() || !msg_id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(SignError::InvalidMessageId);
    }
    let signature = sign(secret, msg_id, timestamp, body)?;
    let mut headers = HeaderMap::new();
    let id = HeaderValue::from_str(msg_id).map_err(|_| SignError::InvalidMessageId)?;
    // Both values are ASCII by construction (digits, base64), so the fallible
    // conversions below cannot fail; mapping keeps the function panic-free.
    let signature = HeaderValue::from_str(&signature).map_err(|_| SignError::NonUtf8Body)?;
    headers.insert(SVIX_ID, id);
    headers.insert(SVIX_TIMESTAMP, HeaderValue::from(timestamp));
    headers.insert(SVIX_SIGNATURE, signature);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(headers)
}

/// A fresh message id in Svix's style: `msg_` followed by 32 hex digits
/// (a UUIDv7, so ids also sort by creation time).
pub fn new_msg_id() -> String {
    format!("msg_{}", uuid::Uuid::now_v7().simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    // The published Standard Webhooks / Svix test vector (verified
    // independently with a plain HMAC-SHA256 computation).
    const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const VECTOR_MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const VECTOR_TIMESTAMP: i64 = 1_614_265_330;
    const VECTOR_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const VECTOR_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn vector_secret() -> SigningSecret {
        SigningSecret::parse(VECTOR_SECRET).unwrap()
    }

    #[test]
    fn signing_matches_the_published_svix_test_vector() {
        let signature = sign(&vector_secret(), VECTOR_MSG_ID, VECTOR_TIMESTAMP, VECTOR_BODY);
        assert_eq!(signature.as_deref(), Ok(VECTOR_SIGNATURE));
    }

    #[test]
    fn sign_headers_carries_id_timestamp_signature_and_json_content_type() {
        let headers = sign_headers(&vector_secret(), VECTOR_MSG_ID, VECTOR_TIMESTAMP, VECTOR_BODY).unwrap();
        assert_eq!(headers[SVIX_ID], VECTOR_MSG_ID);
        assert_eq!(headers[SVIX_TIMESTAMP], "1614265330");
        assert_eq!(headers[SVIX_SIGNATURE], VECTOR_SIGNATURE);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn headers_from_sign_headers_verify_with_svix() {
        let secret = vector_secret();
        let body = br#"{"type":"user.deleted","data":{"id":"user_1"}}"#;
        let now = std::time::UNIX_EPOCH.elapsed().unwrap().as_secs() as i64;
        let headers = sign_headers(&secret, &new_msg_id(), now, body).unwrap();
        assert!(secret.webhook().verify(body, &headers).is_ok());
    }

    #[test]
    fn non_utf8_bodies_and_bad_message_ids_are_refused() {
        let secret = vector_secret();
        assert_eq!(sign(&secret, "msg_1", 1, &[0xff, 0xfe]), Err(SignError::NonUtf8Body));
        assert_eq!(sign_headers(&secret, "", 1, b"{}"), Err(SignError::InvalidMessageId));
        assert_eq!(sign_headers(&secret, "msg 1", 1, b"{}"), Err(SignError::InvalidMessageId));
    }

    #[test]
    fn new_message_ids_look_like_svix_ids_and_differ() {
        let (a, b) = (new_msg_id(), new_msg_id());
        assert!(a.starts_with("msg_") && a.len() == 36);
        assert_ne!(a, b);
    }
}
