//! Every way a webhook delivery can fail, and the HTTP answer for each.
//!
//! Svix retries every non-2xx answer (4xx included) on a fixed schedule for
//! about 27 hours, then marks the message failed in the Clerk dashboard where
//! it can be replayed. So the choice is between *acknowledging* (2xx: the
//! message is done) and *failing* (anything else: retried, then visible). 4xx
//! marks "retrying will not help, a human should look"; 5xx marks "retrying may
//! help". The full table is in `gateway/STATUS_CODES.md` and on
//! [`crate::upstream`].

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use crate::clerk::InvalidEvent;

/// Seconds a client should wait before retrying after a 503. Svix keeps its
/// own schedule; this is for humans and other callers.
pub const RETRY_AFTER_SECONDS: u32 = 5;

/// Why a webhook delivery was not applied.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// `Content-Type` is not `application/json` (415).
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    /// The body exceeds the size limit (413).
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body could not be read, e.g. the client hung up (400).
    #[error("request body could not be read")]
    UnreadableBody,
    /// A required Svix header is absent (400).
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// A Svix header is present but unusable, e.g. a non-numeric timestamp
    /// (400).
    #[error("malformed header {0}")]
    MalformedHeader(&'static str),
    /// The body is not UTF-8, so Svix cannot have signed it (400).
    #[error("request body is not valid UTF-8")]
    NonUtf8Body,
    /// No `v1` signature matches any configured secret (401).
    #[error("no valid webhook signature")]
    InvalidSignature,
    /// `svix-timestamp` is more than 5 minutes away from our clock (401): a
    /// replayed or badly delayed request. Svix re-signs every retry with a
    /// fresh timestamp, so genuine deliveries are not affected.
    #[error("webhook signature timestamp is {0}")]
    SignatureExpired(TimestampSkew),
    /// The verified body can never be applied (400).
    #[error(transparent)]
    InvalidEvent(#[from] InvalidEvent),
    /// user-service refused the event for a reason retrying cannot fix (400).
    #[error("user-service rejected the event ({code:?}): {message}")]
    UpstreamRejected {
        /// gRPC status code.
        code: tonic::Code,
        /// gRPC status message, passed on because it says what to fix.
        message: String,
    },
    /// user-service could not be reached or asked us to come back later (503
    /// with `Retry-After`).
    #[error("user-service unavailable ({code:?}); retry later")]
    UpstreamUnavailable {
        /// gRPC status code (`Unavailable`, `DeadlineExceeded`, ...).
        code: tonic::Code,
        /// gRPC status message; logged, not sent to the client.
        message: String,
    },
    /// A `session.*` event names a user user-service does not know, and the
    /// event is young enough that its `user.created` may still come (503 with
    /// `Retry-After`).
    #[error("the session's user is not known to user-service yet; retry later")]
    UnknownUser,
    /// user-service failed internally or the call is misconfigured (500).
    #[error("user-service failed ({code:?})")]
    UpstreamFailed {
        /// gRPC status code.
        code: tonic::Code,
        /// gRPC status message; logged, not sent to the client.
        message: String,
    },
    /// The gateway itself is misconfigured (500).
    #[error("webhook verifier is misconfigured")]
    Misconfigured,
    /// The client sent more requests than its rate limit allows (429 with
    /// `Retry-After`).
    #[error("too many requests; retry later")]
    RateLimited {
        /// Seconds until a request will be accepted again.
        retry_after: u32,
    },
    /// Too many requests are in progress on the gateway as a whole; refused
    /// before reading the body.
    #[error("the gateway is busy; retry later")]
    Overloaded,
}

/// Which side of the tolerance window a signature timestamp fell on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimestampSkew {
    /// Older than the tolerance.
    #[error("too old")]
    TooOld,
    /// Further in the future than the tolerance.
    #[error("in the future")]
    InFuture,
}

impl WebhookError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        // Exhaustive on purpose: a new variant must pick its status here.
        match self {
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnreadableBody
            | Self::MissingHeader(_)
            | Self::MalformedHeader(_)
            | Self::NonUtf8Body
            | Self::InvalidEvent(_)
            | Self::UpstreamRejected { .. } => StatusCode::BAD_REQUEST,
            Self::InvalidSignature | Self::SignatureExpired(_) => StatusCode::UNAUTHORIZED,
            Self::UpstreamUnavailable { .. } | Self::Overloaded | Self::UnknownUser => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::UpstreamFailed { .. } | Self::Misconfigured => StatusCode::INTERNAL_SERVER_ERROR,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The request field at fault, reported as `"field"` in the body.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::MissingHeader(name) | Self::MalformedHeader(name) => Some(name),
            Self::InvalidEvent(invalid) => invalid.field,
            Self::SignatureExpired(_) => Some("svix-timestamp"),
            Self::InvalidSignature => Some("svix-signature"),
            Self::UnknownUser => Some("data.user_id"),
            Self::UnsupportedMediaType => Some("content-type"),
            Self::PayloadTooLarge { .. }
            | Self::UnreadableBody
            | Self::NonUtf8Body
            | Self::UpstreamRejected { .. }
            | Self::UpstreamUnavailable { .. }
            | Self::UpstreamFailed { .. }
            | Self::Misconfigured
            | Self::RateLimited { .. }
            | Self::Overloaded => None,
        }
    }
}

/// The JSON body of every error answer.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// The request field at fault, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
}

impl IntoResponse for WebhookError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = match &self {
            Self::RateLimited { retry_after } => Some(*retry_after),
            // Shedding lasts as long as a burst does: come back soon.
            Self::Overloaded => Some(1),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => Some(RETRY_AFTER_SECONDS),
            _ => None,
        };
        let body = ErrorBody { error: self.to_string(), field: self.field() };
        let mut response = (status, Json(body)).into_response();
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A serde_json error as a reason that names what was expected but never
/// the value found: serde's own text quotes it (`invalid type: string
/// "ada@example.com", expected a sequence`), and a webhook's values are
/// personal data that must not reach logs or the answer to Svix.
pub fn json_error(error: &serde_json::Error) -> String {
    let message = error.to_string();
    let expected =
        |rest: &str| rest.split_once(", expected ").map_or(String::new(), |(_, e)| format!(", expected {e}"));
    for kind in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(kind) {
            // The kind of value (`string`, `integer`, `map`, ...), not the value.
            let found = rest.split([' ', ',']).next().unwrap_or_default();
            return format!("{} ({found}){}", kind.trim_end_matches(": "), expected(rest));
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        return format!("unknown variant{}", expected(rest));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_name_the_expectation_but_never_the_value() {
        let error = serde_json::from_str::<Vec<String>>(r#""ada@example.com""#).unwrap_err();
        let reason = json_error(&error);
        assert!(reason.starts_with("invalid type (string), expected a sequence"), "{reason}");
        assert!(!reason.contains("ada"), "{reason}");
        let syntax = serde_json::from_str::<Vec<String>>("[").unwrap_err();
        assert_eq!(json_error(&syntax), syntax.to_string());
    }

    #[test]
    fn upstream_unavailable_is_503_with_retry_after_and_no_upstream_message() {
        let response = WebhookError::UpstreamUnavailable {
            code: tonic::Code::Unavailable,
            message: "dial tcp 10.0.0.7:50051: connection refused".into(),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from(RETRY_AFTER_SECONDS))
        );
    }

    #[test]
    fn the_display_of_upstream_failures_hides_the_upstream_message() {
        let error = WebhookError::UpstreamFailed {
            code: tonic::Code::Internal,
            message: "pq: relation users does not exist".into(),
        };
        assert!(!error.to_string().contains("relation"));
    }

    #[test]
    fn rate_limited_is_429_with_its_own_retry_after() {
        let response = WebhookError::RateLimited { retry_after: 2 }.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers().get(header::RETRY_AFTER), Some(&HeaderValue::from(2_u32)));
    }

    #[test]
    fn signature_problems_are_401_and_header_problems_400() {
        assert_eq!(WebhookError::InvalidSignature.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(WebhookError::SignatureExpired(TimestampSkew::TooOld).status(), StatusCode::UNAUTHORIZED);
        assert_eq!(WebhookError::MissingHeader("svix-id").status(), StatusCode::BAD_REQUEST);
    }
}
