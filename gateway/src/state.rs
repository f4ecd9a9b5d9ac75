//! Shared state handed to every request handler.

use std::time::Duration;

use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

use crate::{apply::UserSync, verify::Verifier};

/// What handlers need: the verifier, the user-service client and the health
/// client. Cloning is cheap (the gRPC channel is shared).
#[derive(Debug, Clone)]
pub struct AppState {
    /// Verifies Svix signatures.
    pub verifier: Verifier,
    /// Applies events to user-service.
    pub users: UserSync,
    /// Asks user-service whether it is serving, for `/readyz`.
    pub health: HealthClient<Channel>,
    /// How long `/readyz` waits for the health check.
    pub readiness_timeout: Duration,
}
