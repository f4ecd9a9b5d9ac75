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
use tracing::Instrument;

use crate::{
    clerk::{self, Event, Payload},
    error::WebhookError,
    http::MAX_BODY_BYTES,
    http::state::AppState,
    metrics::{Delivery, TYPE_UNKNOWN},
    request_id::RequestId,
    svix::verify,
    upstream::Outcome,
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
/// [`WebhookError`]; outcomes as 200 with [`OutcomeBody`]. Every answer is
/// logged once, without the body, and carries a [`Delivery`] extension for
/// the metrics.
pub async fn receive(
    State(state): State<AppState>,
    request_id: RequestId,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut event_type = None;
    let result = handle(&state, &request_id, &headers, body, &mut event_type).await;
    let delivery = Delivery {
        event_type: event_type.unwrap_or_else(|| TYPE_UNKNOWN.to_owned()),
        outcome: result.as_ref().ok().map(|outcome| outcome.as_str()),
    };
    let mut response = match result {
        Ok(outcome) => {
            (StatusCode::OK, Json(OutcomeBody { outcome: outcome.as_str(), request_id: request_id.as_str() }))
                .into_response()
        }
        Err(error) => error.into_response(),
    };
    response.extensions_mut().insert(delivery);
    response
}

/// Does the work; sets `event_type` (the metrics label) once the event is
/// verified and parsed.
async fn handle(
    state: &AppState,
    request_id: &RequestId,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    event_type: &mut Option<String>,
) -> Result<Outcome, WebhookError> {
    let (msg_id, event) = authenticate(state, headers, body).inspect_err(log_rejection)?;
    *event_type = Some(Delivery::label_for(&event.event_type));

    // From here on the request is genuine: log with what identifies it.
    let span = tracing::info_span!(
        "event",
        msg_id,
        event_type = %event.event_type,
        clerk_id = clerk_id(&event).unwrap_or("-"),
        instance_id = event.instance_id.as_deref().unwrap_or("-"),
    );
    let result = state.users.apply(&event, msg_id, request_id).instrument(span.clone()).await;
    span.in_scope(|| match &result {
        Ok(outcome) => log_outcome(*outcome),
        Err(error) => log_upstream_error(error),
    });
    result
}

/// Everything before user-service: content type, body, signature, parsing.
/// Returns the message id and the event.
fn authenticate<'h>(
    state: &AppState,
    headers: &'h HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(&'h str, Event), WebhookError> {
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
    let event = clerk::parse_event(&body).map_err(|invalid| {
        tracing::warn!(msg_id, field = invalid.field, error = %invalid, "verified webhook is not a valid event");
        WebhookError::from(invalid)
    })?;
    Ok((msg_id, event))
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
        Payload::SessionCreated(session) | Payload::SessionActivity(session) => Some(&session.user_id),
        Payload::Unhandled => None,
    }
}

fn log_outcome(outcome: Outcome) {
    let outcome_name = outcome.as_str();
    match outcome {
        Outcome::Unspecified => {
            tracing::warn!(outcome = outcome_name, "user-service replied without an event outcome");
        }
        Outcome::AlreadyExists | Outcome::AlreadyGone => tracing::warn!(
            outcome = outcome_name,
            "event acknowledged although user-service answered with an error code"
        ),
        Outcome::Applied
        | Outcome::Duplicate
        | Outcome::Stale
        | Outcome::UserDeleted
        | Outcome::Ignored
        | Outcome::UnknownUser => {
            tracing::info!(outcome = outcome_name, "webhook processed");
        }
    }
}

/// Logs a request refused before it reached user-service. The body is never
/// logged: it may hold personal data and, when forged, is attacker-controlled.
fn log_rejection(error: &WebhookError) {
    let status = error.status().as_u16();
    match error {
        // Logged with the message id where it is detected.
        WebhookError::InvalidEvent(_) => {}
        WebhookError::Misconfigured => tracing::error!(status, %error, "webhook refused"),
        // Counted in the metrics; a log line per refused request would let a
        // flood fill the logs.
        WebhookError::RateLimited { .. } | WebhookError::Overloaded => {}
        WebhookError::UnsupportedMediaType
        | WebhookError::PayloadTooLarge { .. }
        | WebhookError::UnreadableBody
        | WebhookError::MissingHeader(_)
        | WebhookError::MalformedHeader(_)
        | WebhookError::NonUtf8Body
        | WebhookError::InvalidSignature
        | WebhookError::SignatureExpired(_)
        | WebhookError::UpstreamRejected { .. }
        | WebhookError::UpstreamUnavailable { .. }
        | WebhookError::UnknownUser
        | WebhookError::UpstreamFailed { .. } => {
            tracing::warn!(status, %error, "webhook refused before verification succeeded");
        }
    }
}

/// Logs a genuine event user-service did not apply, with the gRPC details
/// that are kept out of the response.
fn log_upstream_error(error: &WebhookError) {
    let status = error.status().as_u16();
    match error {
        WebhookError::UpstreamUnavailable { code, message }
        | WebhookError::UpstreamRejected { code, message } => {
            tracing::warn!(status, grpc_code = ?code, grpc_message = %message, "webhook not applied");
        }
        WebhookError::UpstreamFailed { code, message }
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
        WebhookError::UpstreamFailed { code, message } => {
            tracing::error!(status, grpc_code = ?code, grpc_message = %message, "webhook not applied");
        }
        WebhookError::UnknownUser => {
            tracing::info!(status, "session for a user not created yet; asking Svix to retry");
        }
        WebhookError::UnsupportedMediaType
        | WebhookError::PayloadTooLarge { .. }
        | WebhookError::UnreadableBody
        | WebhookError::MissingHeader(_)
        | WebhookError::MalformedHeader(_)
        | WebhookError::NonUtf8Body
        | WebhookError::InvalidSignature
        | WebhookError::SignatureExpired(_)
        | WebhookError::InvalidEvent(_)
        | WebhookError::Misconfigured
        | WebhookError::RateLimited { .. }
        | WebhookError::Overloaded => tracing::error!(status, %error, "webhook not applied"),
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
