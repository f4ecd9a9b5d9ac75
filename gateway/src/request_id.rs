//! Per-request id: taken from `x-request-id` when sane, generated otherwise,
//! attached to the tracing span, forwarded to user-service and echoed back.

use std::{convert::Infallible, time::Instant};

use axum::{
    extract::{FromRequestParts, Request},
    http::{HeaderName, HeaderValue, request::Parts},
    middleware::Next,
    response::Response,
};
use tracing::Instrument;

/// Name of the HTTP header and gRPC metadata key carrying the request id.
pub const REQUEST_ID: &str = "x-request-id";

/// [`REQUEST_ID`] as an HTTP header name.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static(REQUEST_ID);

/// Longest incoming request id we keep; longer ones are replaced.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The id of the current request.
///
/// Extract it in a handler; without the [`middleware`] (e.g. a handler tested
/// alone) a fresh id is generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// Uses `incoming` when it is sane, else generates a UUIDv7.
    pub fn from_incoming(incoming: Option<&HeaderValue>) -> Self {
        incoming.and_then(|value| value.to_str().ok()).and_then(Self::parse).unwrap_or_else(Self::generate)
    }

    /// `text` as an id, when it is sane (see [`is_sane`]).
    pub fn parse(text: &str) -> Option<Self> {
        is_sane(text).then(|| Self(text.to_owned()))
    }

    /// A new random, time-ordered id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A request id is only propagated if it cannot pollute logs or headers:
/// 1 to 128 characters from a conservative set.
pub fn is_sane(text: &str) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'='))
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| Self::from_incoming(parts.headers.get(REQUEST_ID_HEADER))))
    }
}

/// Assigns the request id, runs the request inside a span carrying it, and
/// sets `x-request-id` on the response.
pub async fn middleware(mut request: Request, next: Next) -> Response {
    let id = RequestId::from_incoming(request.headers().get(REQUEST_ID_HEADER));
    let span = tracing::info_span!(
        "http",
        request_id = %id.as_str(),
        method = %request.method(),
        path = %request.uri().path(),
    );
    request.extensions_mut().insert(id.clone());
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    if let Ok(value) = HeaderValue::from_str(id.as_str()) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    // Handlers log what happened at info; this line is for debugging (and
    // keeps probe traffic out of the default log level).
    span.in_scope(|| {
        tracing::debug!(
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request finished"
        );
    });
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sane_incoming_id_is_kept() {
        let value = HeaderValue::from_static("req-42_abc.def");
        assert_eq!(RequestId::from_incoming(Some(&value)).as_str(), "req-42_abc.def");
    }

    #[test]
    fn insane_or_missing_ids_are_replaced_by_a_uuid() {
        let long = "a".repeat(MAX_REQUEST_ID_LEN + 1);
        for value in [
            None,
            Some(HeaderValue::from_static("")),
            Some(HeaderValue::from_static("has space")),
            Some(HeaderValue::from_static("quote\"d")),
            HeaderValue::from_str(&long).ok(),
        ] {
            let id = RequestId::from_incoming(value.as_ref());
            assert!(uuid::Uuid::parse_str(id.as_str()).is_ok(), "{value:?}");
        }
    }
}
