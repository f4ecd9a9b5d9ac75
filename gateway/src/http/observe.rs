//! The webhook metrics layer: times and counts every delivery with the event
//! type and outcome the handler attached to its answer ([`Delivery`]).

use std::{sync::Arc, time::Instant};

use axum::{
    extract::{Request, State},
    http::{Method, StatusCode},
    middleware::Next,
    response::Response,
};

use super::CLERK_WEBHOOK_PATH;
use crate::metrics::Metrics;

/// `type` label of a delivery whose event was never verified (refused before,
/// or rate limited).
pub const TYPE_UNKNOWN: &str = "unknown";
/// `type` label of a verified event whose type is not a plain dotted name.
pub const TYPE_OTHER: &str = "other";

/// Outcome of a delivery answered 4xx (except 429): Svix retries, but only a
/// fix and a replay can help.
pub const OUTCOME_REJECTED: &str = "rejected";
/// Outcome of a delivery answered 429 or 5xx: a retry is expected to work.
pub const OUTCOME_RETRY_ASKED: &str = "retry_asked";

/// What the webhook handler tells the metrics layer about a delivery: put in
/// the response's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The verified event type, or [`TYPE_UNKNOWN`].
    pub event_type: String,
    /// The outcome of a 2xx answer (`applied`, `duplicate`, ...).
    pub outcome: Option<&'static str>,
}

impl Delivery {
    /// The `type` label for a verified event type: the type itself when it
    /// looks like Clerk's (`user.created`), else [`TYPE_OTHER`]. Only Clerk
    /// can sign events, so the set of values stays small.
    pub fn label_for(event_type: &str) -> String {
        let plain = (1..=64).contains(&event_type.len())
            && event_type
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_');
        if plain { event_type.to_owned() } else { TYPE_OTHER.to_owned() }
    }
}

/// The `outcome` label of an answer: the handler's outcome for 2xx,
/// [`OUTCOME_RETRY_ASKED`] for 429 and 5xx, [`OUTCOME_REJECTED`] for other 4xx.
pub fn outcome_label(status: StatusCode, delivery: Option<&Delivery>) -> &'static str {
    if status.is_success() {
        delivery.and_then(|d| d.outcome).unwrap_or("unknown")
    } else if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        OUTCOME_RETRY_ASKED
    } else {
        OUTCOME_REJECTED
    }
}

/// Times and counts every `POST` to the webhook path; other requests pass
/// untouched. Must sit outside the rate limit and the timeout so their
/// answers (429, 408) are counted too.
pub async fn observe_webhooks(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let is_webhook = request.method() == Method::POST && request.uri().path() == CLERK_WEBHOOK_PATH;
    if !is_webhook {
        return next.run(request).await;
    }
    let started = Instant::now();
    let response = next.run(request).await;
    let delivery = response.extensions().get::<Delivery>();
    let outcome = outcome_label(response.status(), delivery);
    let event_type = delivery.map_or_else(|| TYPE_UNKNOWN.to_owned(), |d| d.event_type.clone());
    metrics.record_webhook(event_type, outcome, started.elapsed());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(outcome: &'static str) -> Delivery {
        Delivery { event_type: "user.created".into(), outcome: Some(outcome) }
    }

    #[test]
    fn answers_map_to_outcomes_by_status_class() {
        assert_eq!(outcome_label(StatusCode::OK, Some(&ok("stale"))), "stale");
        assert_eq!(outcome_label(StatusCode::UNAUTHORIZED, None), OUTCOME_REJECTED);
        assert_eq!(outcome_label(StatusCode::REQUEST_TIMEOUT, None), OUTCOME_REJECTED);
        assert_eq!(outcome_label(StatusCode::TOO_MANY_REQUESTS, None), OUTCOME_RETRY_ASKED);
        assert_eq!(outcome_label(StatusCode::SERVICE_UNAVAILABLE, None), OUTCOME_RETRY_ASKED);
        assert_eq!(outcome_label(StatusCode::INTERNAL_SERVER_ERROR, None), OUTCOME_RETRY_ASKED);
    }

    #[test]
    fn odd_event_types_are_labelled_other() {
        assert_eq!(Delivery::label_for("session.created"), "session.created");
        assert_eq!(Delivery::label_for("User.Created"), TYPE_OTHER);
        assert_eq!(Delivery::label_for(""), TYPE_OTHER);
        assert_eq!(Delivery::label_for(&"a".repeat(65)), TYPE_OTHER);
    }
}
