//! Shared state handed to every request handler.

use std::sync::Arc;

use crate::{
    http::health::Readiness,
    svix::Verifier,
    upstream::{Replicas, UserSync},
};

/// What handlers need: the verifier, the user-service client and the
/// replicas' health checks. Cloning is cheap (the gRPC channels are shared).
#[derive(Debug, Clone)]
pub struct AppState {
    /// Verifies Svix signatures.
    pub verifier: Verifier,
    /// Applies events to user-service.
    pub users: UserSync,
    /// Asks each user-service replica whether it is serving, for `/readyz`.
    pub replicas: Arc<Replicas>,
    /// `/readyz`'s view of user-service's health, checked at most once per
    /// `--readiness-cache`.
    pub readiness: Arc<Readiness>,
}
