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

use super::{
    MAX_BODY_BYTES,
    observe::{Delivery, TYPE_UNKNOWN},
    state::AppState,
};
use crate::{
    clerk::{self, Event, Payload},
    error::RequestError,
    request_id::RequestId,
    svix,
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

/// Handles one delivery. Errors are answered and logged as `http::error`
/// says; outcomes as 200 with [`OutcomeBody`]. Every answer is logged once,
/// without the body, and carries a [`Delivery`] extension for the metrics.
pub async fn receive(
    State(state): State<AppState>,
    request_id: RequestId,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (msg_id, event) = match authenticate(&state, &headers, body) {
        Ok(verified) => verified,
        Err(error) => {
            error.log();
            return with_delivery(error.into_response(), TYPE_UNKNOWN.to_owned(), None);
        }
    };
    let event_type = Delivery::label_for(&event.event_type);

    // From here on the request is genuine: log with what identifies it.
    let span = tracing::info_span!(
        "event",
        msg_id,
        event_type = %event.event_type,
        clerk_id = clerk_id(&event).unwrap_or("-"),
        instance_id = event.instance_id.as_deref().unwrap_or("-"),
        // The `ApplyEvents` call the event's write went in (`upstream/batch.rs`).
        upstream_request_id = tracing::field::Empty,
    );
    let result = state.users.apply(&event, msg_id, &request_id).instrument(span.clone()).await;
    let _entered = span.enter();
    match result {
        Ok(outcome) => {
            log_outcome(outcome);
            let body = OutcomeBody { outcome: outcome.as_str(), request_id: request_id.as_str() };
            with_delivery((StatusCode::OK, Json(body)).into_response(), event_type, Some(outcome.as_str()))
        }
        Err(error) => {
            error.log();
            with_delivery(error.into_response(), event_type, None)
        }
    }
}

/// Tells the metrics layer what the answer was about.
fn with_delivery(mut response: Response, event_type: String, outcome: Option<&'static str>) -> Response {
    response.extensions_mut().insert(Delivery { event_type, outcome });
    response
}

/// Everything before user-service: content type, body, signature, parsing.
/// Returns the message id and the event.
fn authenticate<'h>(
    state: &AppState,
    headers: &'h HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(&'h str, Event), RequestError> {
    check_content_type(headers)?;
    let body = body.map_err(|rejection| {
        // axum answers an over-limit body with this status; anything else is
        // an I/O problem such as the client hanging up.
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            RequestError::PayloadTooLarge { limit: MAX_BODY_BYTES }
        } else {
            RequestError::UnreadableBody
        }
    })?;
    state.verifier.verify(&body, headers)?;
    let msg_id = svix::message_id(headers)?;
    let event = clerk::parse_event(&body).map_err(|invalid| {
        tracing::warn!(msg_id, field = invalid.field, error = %invalid, "verified webhook is not a valid event");
        RequestError::from(invalid)
    })?;
    Ok((msg_id, event))
}

/// Accepts `application/json`, optionally with parameters; a `charset`, if
/// given, must be UTF-8 because Svix signs UTF-8 text.
fn check_content_type(headers: &HeaderMap) -> Result<(), RequestError> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .ok_or(RequestError::UnsupportedMediaType)?;
    let mut parts = value.split(';');
    let media_type = parts.next().unwrap_or_default().trim();
    if !media_type.eq_ignore_ascii_case("application/json") {
        return Err(RequestError::UnsupportedMediaType);
    }
    for parameter in parts {
        let Some((name, param_value)) = parameter.split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("charset") {
            let charset = param_value.trim().trim_matches('"');
            if !(charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("utf8")) {
                return Err(RequestError::UnsupportedMediaType);
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
