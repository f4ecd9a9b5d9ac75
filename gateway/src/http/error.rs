//! The answer and the log line for every failure, in one place.
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

use crate::error::{RequestError, UpstreamError};

/// Seconds a client should wait before retrying after a 503. Svix keeps its
/// own schedule; this is for humans and other callers.
pub const RETRY_AFTER_SECONDS: u32 = 5;

/// The JSON body of every error answer.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// The request field at fault, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
}

impl RequestError {
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
            | Self::InvalidEvent(_) => StatusCode::BAD_REQUEST,
            Self::InvalidSignature | Self::SignatureExpired(_) => StatusCode::UNAUTHORIZED,
            Self::Overloaded | Self::ClientOverloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::Misconfigured => StatusCode::INTERNAL_SERVER_ERROR,
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
            Self::UnsupportedMediaType => Some("content-type"),
            Self::PayloadTooLarge { .. }
            | Self::UnreadableBody
            | Self::NonUtf8Body
            | Self::Misconfigured
            | Self::RateLimited { .. }
            | Self::Overloaded
            | Self::ClientOverloaded => None,
        }
    }

    /// Seconds to send as `Retry-After`, if any.
    fn retry_after(&self) -> Option<u32> {
        match self {
            Self::RateLimited { retry_after } => Some(*retry_after),
            // Shedding lasts as long as a burst does: come back soon.
            Self::Overloaded | Self::ClientOverloaded => Some(1),
            _ => None,
        }
    }

    /// Logs a request refused before it reached user-service. The body is
    /// never logged: it may hold personal data and, when forged, is
    /// attacker-controlled.
    pub fn log(&self) {
        let status = self.status().as_u16();
        match self {
            // Logged with the message id where it is detected.
            Self::InvalidEvent(_) => {}
            Self::Misconfigured => tracing::error!(status, error = %self, "webhook refused"),
            // Counted in the metrics; a log line per refused request would let
            // a flood fill the logs.
            Self::RateLimited { .. } | Self::Overloaded | Self::ClientOverloaded => {}
            Self::UnsupportedMediaType
            | Self::PayloadTooLarge { .. }
            | Self::UnreadableBody
            | Self::MissingHeader(_)
            | Self::MalformedHeader(_)
            | Self::NonUtf8Body
            | Self::InvalidSignature
            | Self::SignatureExpired(_) => {
                tracing::warn!(status, error = %self, "webhook refused before verification succeeded");
            }
        }
    }
}

impl UpstreamError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Rejected { .. } => StatusCode::BAD_REQUEST,
            Self::Unavailable { .. } | Self::UnknownUser => StatusCode::SERVICE_UNAVAILABLE,
            Self::Failed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The request field at fault, reported as `"field"` in the body.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::UnknownUser => Some("data.user_id"),
            Self::Rejected { .. } | Self::Unavailable { .. } | Self::Failed { .. } => None,
        }
    }

    /// Logs a genuine event user-service did not apply, with the gRPC
    /// details that are kept out of the response.
    pub fn log(&self) {
        let status = self.status().as_u16();
        match self {
            Self::Unavailable { code, message } | Self::Rejected { code, message } => {
                tracing::warn!(status, grpc_code = ?code, grpc_message = %message, "webhook not applied");
            }
            Self::Failed { code, message }
                if matches!(code, tonic::Code::Unauthenticated | tonic::Code::PermissionDenied) =>
            {
                tracing::error!(
                    status,
                    grpc_code = ?code,
                    grpc_message = %message,
                    hint = "check the user-service token (--user-service-token-file or USER_SERVICE_TOKEN) \
                            and that its client has the `write` scope",
                    "webhook not applied: user-service refused the gateway's credentials"
                );
            }
            Self::Failed { code, message } => {
                tracing::error!(status, grpc_code = ?code, grpc_message = %message, "webhook not applied");
            }
            Self::UnknownUser => {
                tracing::info!(status, "session for a user not created yet; asking Svix to retry");
            }
        }
    }
}

/// An error answer: `status`, the JSON [`ErrorBody`] and, if given or for
/// any 503, `Retry-After`.
fn answer(
    status: StatusCode,
    error: String,
    field: Option<&'static str>,
    retry_after: Option<u32>,
) -> Response {
    let retry_after =
        retry_after.or((status == StatusCode::SERVICE_UNAVAILABLE).then_some(RETRY_AFTER_SECONDS));
    let mut response = (status, Json(ErrorBody { error, field })).into_response();
    if let Some(seconds) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

impl IntoResponse for RequestError {
    fn into_response(self) -> Response {
        answer(self.status(), self.to_string(), self.field(), self.retry_after())
    }
}

impl IntoResponse for UpstreamError {
    fn into_response(self) -> Response {
        answer(self.status(), self.to_string(), self.field(), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TimestampSkew;

    #[test]
    fn upstream_unavailable_is_503_with_retry_after_and_no_upstream_message() {
        let response = UpstreamError::Unavailable {
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
        let error = UpstreamError::Failed {
            code: tonic::Code::Internal,
            message: "pq: relation users does not exist".into(),
        };
        assert!(!error.to_string().contains("relation"));
    }

    #[test]
    fn rate_limited_is_429_with_its_own_retry_after() {
        let response = RequestError::RateLimited { retry_after: 2 }.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers().get(header::RETRY_AFTER), Some(&HeaderValue::from(2_u32)));
    }

    #[test]
    fn overload_is_503_with_a_one_second_retry_after() {
        for error in [RequestError::Overloaded, RequestError::ClientOverloaded] {
            let response = error.into_response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(response.headers().get(header::RETRY_AFTER), Some(&HeaderValue::from(1_u32)));
        }
    }

    #[test]
    fn signature_problems_are_401_and_header_problems_400() {
        assert_eq!(RequestError::InvalidSignature.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(RequestError::SignatureExpired(TimestampSkew::TooOld).status(), StatusCode::UNAUTHORIZED);
        assert_eq!(RequestError::MissingHeader("svix-id").status(), StatusCode::BAD_REQUEST);
    }
}
