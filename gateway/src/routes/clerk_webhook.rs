//! `POST /webhooks/clerk`: check, verify, parse, apply, answer.
//!
//! The order matters: nothing about the body is trusted (not even parsed)
//! before the Svix signature over the raw bytes has been verified, and
//! nothing reaches user-service before that.

use axum::{
    Json,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use crate::{
    apply::Outcome,
    clerk::{self, Event, Payload},
    error::WebhookError,
    request_id::RequestId,
    routes::MAX_BODY_BYTES,
    state::AppState,
    verify,
};

/// The JSON body of a 200 answer.
#[derive(Debug, Serialize)]
pub struct OutcomeBody<'a> {
    /// What the event did (see [`Outcome::as_str`]).
    pub outcome: &'static str,
    /// The request id, also in the `x-request-id` header.
    pub request_id: &'a str,
}

/// Handles one delivery. Errors are answered as described on
/// [`WebhookError`]; outcomes as 200 with [`OutcomeBody`].
pub async fn receive(
    State(state): State<AppState>,
    request_id: RequestId,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match handle(&state, &request_id, &headers, body).await {
        Ok(outcome) => {
            (StatusCode::OK, Json(OutcomeBody { outcome: outcome.as_str(), request_id: request_id.as_str() }))
                .into_response()
        }
        Err(error) => {
            log_error(&error);
            error.into_response()
        }
    }
}

async fn handle(
    state: &AppState,
    request_id: &RequestId,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Outcome, WebhookError> {
    check_content_type(headers)?;
    let body = body.map_err(|rejection| {
        // axum answers an over-limit body with this status; anything else is
        // an I/O problem such as the client hanging up.
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            WebhookError::PayloadTooLarge { limit: MAX_BODY_BYTES }
        } else {
            WebhookError::UnreadableBody
        }
    })?;

    state.verifier.verify(&body, headers)?;
    let msg_id = verify::message_id(headers)?;

    let event = clerk::parse_event(&body)?;
    let outcome = state.users.apply(&event, msg_id, request_id).await?;
    log_outcome(&event, msg_id, outcome);
    Ok(outcome)
}

/// Accepts `application/json`, optionally with parameters; a `charset`, if
/// given, must be UTF-8 because Svix signs UTF-8 text.
fn check_content_type(headers: &HeaderMap) -> Result<(), WebhookError> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .ok_or(WebhookError::UnsupportedMediaType)?;
    let mut parts = value.split(';');
    let media_type = parts.next().unwrap_or_default().trim();
    if !media_type.eq_ignore_ascii_case("application/json") {
        return Err(WebhookError::UnsupportedMediaType);
    }
    for parameter in parts {
        let Some((name, param_value)) = parameter.split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("charset") {
            let charset = param_value.trim().trim_matches('"');
            if !(charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("utf8")) {
                return Err(WebhookError::UnsupportedMediaType);
            }
        }
    }
    Ok(())
}

fn clerk_id(event: &Event) -> Option<&str> {
    match &event.payload {
        Payload::UserCreated(user) | Payload::UserUpdated(user) => Some(&user.id),
        Payload::UserDeleted(deleted) => Some(&deleted.id),
        Payload::Unhandled => None,
    }
}

fn log_outcome(event: &Event, msg_id: &str, outcome: Outcome) {
    let clerk_id = clerk_id(event).unwrap_or("-");
    match outcome {
        Outcome::Unspecified => tracing::warn!(
            event_type = %event.event_type, msg_id, clerk_id, outcome = outcome.as_str(),
            "user-service replied without an event outcome"
        ),
        Outcome::AlreadyExists | Outcome::AlreadyGone => tracing::warn!(
            event_type = %event.event_type, msg_id, clerk_id, outcome = outcome.as_str(),
            "event acknowledged although user-service answered with an error code"
        ),
        Outcome::Applied | Outcome::Duplicate | Outcome::Stale | Outcome::UserDeleted | Outcome::Ignored => {
            tracing::info!(
                event_type = %event.event_type,
                msg_id,
                clerk_id,
                instance_id = event.instance_id.as_deref().unwrap_or("-"),
                outcome = outcome.as_str(),
                "webhook processed"
            )
        }
    }
}

/// Logs a failure without the body (it may hold personal data and, when
/// forged, is attacker-controlled).
fn log_error(error: &WebhookError) {
    let status = error.status().as_u16();
    match error {
        WebhookError::UpstreamUnavailable { code, message }
        | WebhookError::UpstreamRejected { code, message } => {
            tracing::warn!(status, grpc_code = ?code, grpc_message = %message, "webhook not applied");
        }
        WebhookError::UpstreamFailed { code, message } => {
            tracing::error!(status, grpc_code = ?code, grpc_message = %message, "webhook not applied");
        }
        WebhookError::Misconfigured => tracing::error!(status, %error, "webhook not applied"),
        WebhookError::InvalidEvent(_) => {
            tracing::warn!(status, %error, "verified webhook is not a valid event");
        }
        WebhookError::UnsupportedMediaType
        | WebhookError::PayloadTooLarge { .. }
        | WebhookError::UnreadableBody
        | WebhookError::MissingHeader(_)
        | WebhookError::MalformedHeader(_)
        | WebhookError::NonUtf8Body
        | WebhookError::InvalidSignature
        | WebhookError::SignatureExpired(_) => {
            tracing::warn!(status, %error, "webhook rejected before verification succeeded");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_content_type(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn json_content_types_with_or_without_utf8_charset_are_accepted() {
        for value in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
        ] {
            assert!(check_content_type(&with_content_type(value)).is_ok(), "{value}");
        }
    }

    #[test]
    fn other_content_types_and_charsets_are_refused() {
        for value in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/jsonx",
            "application/json; charset=latin1",
        ] {
            assert!(check_content_type(&with_content_type(value)).is_err(), "{value}");
        }
        assert!(check_content_type(&HeaderMap::new()).is_err());
    }
}
