//! The HTTP surface: which path goes to which handler, and the layers around
//! them.

use std::time::Duration;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    http::StatusCode,
    middleware,
    routing::{get, post},
};
use tower_http::timeout::TimeoutLayer;

use crate::{config::SVIX_DELIVERY_TIMEOUT, request_id, state::AppState};

pub mod clerk_webhook;
pub mod health;

/// Largest webhook body accepted (256 KiB). Clerk user payloads are a few KiB;
/// the limit keeps a forged request from making us buffer megabytes.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Upper bound on a whole request. A reply after Svix's 15 s is wasted, and a
/// client trickling its body must not hold a task forever.
pub const REQUEST_TIMEOUT: Duration = SVIX_DELIVERY_TIMEOUT.saturating_sub(Duration::from_secs(1));

/// Path of the Clerk webhook endpoint.
pub const CLERK_WEBHOOK_PATH: &str = "/webhooks/clerk";

/// Builds the router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route(CLERK_WEBHOOK_PATH, post(clerk_webhook::receive).layer(DefaultBodyLimit::max(MAX_BODY_BYTES)))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
        // Outermost, so even timeouts and 404s carry a request id.
        .layer(middleware::from_fn(request_id::middleware))
        .with_state(state)
}
