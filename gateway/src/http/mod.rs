//! The HTTP side of the gateway, outside in: the accept loop ([`server`],
//! [`tls`], [`connections`]), the layers every request passes ([`observe`],
//! [`shed`], [`rate_limit`], request id, timeout), the handlers ([`webhook`],
//! [`health`]), and how each failure is answered and logged ([`error`]).

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::DefaultBodyLimit,
    http::StatusCode,
    middleware,
    routing::{get, post},
};
use tower_http::timeout::TimeoutLayer;

use crate::{config::SVIX_DELIVERY_TIMEOUT, metrics::Metrics, request_id};

use self::{rate_limit::RateLimitState, shed::InFlight, state::AppState};

pub mod connections;
pub mod error;
pub mod health;
pub mod observe;
pub mod rate_limit;
pub mod server;
pub mod shed;
pub mod state;
pub mod tls;
pub mod webhook;

/// Largest webhook body accepted (256 KiB). Clerk user payloads are a few KiB;
/// the limit keeps a forged request from making us buffer megabytes.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Upper bound on a whole request. A reply after Svix's 15 s is wasted, and a
/// client trickling its body must not hold a task forever.
pub const REQUEST_TIMEOUT: Duration = SVIX_DELIVERY_TIMEOUT.saturating_sub(Duration::from_secs(1));

/// Path of the Clerk webhook endpoint.
pub const CLERK_WEBHOOK_PATH: &str = "/webhooks/clerk";

/// The optional layers around the routes.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    /// Per-client rate limit; none when off.
    pub rate_limit: Option<RateLimitState>,
    /// Webhook metrics; none when metrics are off.
    pub metrics: Option<Arc<Metrics>>,
    /// Global limit on requests in progress; none for no limit.
    pub in_flight: Option<Arc<InFlight>>,
}

/// Builds the router. From the outside in: request id (so every answer and
/// log line has one), webhook metrics (so 503, 429 and 408 answers are
/// counted), the global in-flight limit, the rate limit, whole-request
/// timeout, body limit on the webhook route. The two limits come before the
/// body is read.
///
/// The rate limit needs the peer address: serve the router with
/// `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn router(state: AppState, layers: Layers) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route(CLERK_WEBHOOK_PATH, post(webhook::receive).layer(DefaultBodyLimit::max(MAX_BODY_BYTES)))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT));
    if let Some(limit) = layers.rate_limit {
        router = router.layer(middleware::from_fn_with_state(limit, rate_limit::limit));
    }
    if let Some(in_flight) = layers.in_flight {
        router = router.layer(middleware::from_fn_with_state(in_flight, shed::limit));
    }
    if let Some(metrics) = layers.metrics {
        router = router.layer(middleware::from_fn_with_state(metrics, observe::observe_webhooks));
    }
    // Outermost, so even timeouts, 429s and 404s carry a request id.
    router.layer(middleware::from_fn(request_id::middleware)).with_state(state)
}
