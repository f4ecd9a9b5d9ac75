//! Liveness and readiness probes.

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

use crate::state::AppState;

/// `GET /healthz`: 200 whenever the process can answer HTTP at all. It does
/// not look at user-service, so an upstream outage never gets us restarted.
pub async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, Json(json!({"status": "ok"})))
}

/// `GET /readyz`: 200 when user-service's `grpc.health.v1.Health/Check` for
/// the whole server (service `""`) answers `SERVING` within the readiness
/// timeout, else 503 with the reason.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let mut client = state.health.clone();
    let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
    request.set_timeout(state.readiness_timeout);
    let reply = tokio::time::timeout(state.readiness_timeout, client.check(request)).await;
    let not_ready = match reply {
        Ok(Ok(response)) => match response.get_ref().status() {
            ServingStatus::Serving => {
                return (StatusCode::OK, Json(json!({"status": "ready"}))).into_response();
            }
            other => format!("user-service reports {}", other.as_str_name()),
        },
        Ok(Err(status)) => format!("user-service health check failed: {:?}", status.code()),
        Err(_) => "user-service health check timed out".to_owned(),
    };
    // Debug, not info: probes repeat every few seconds during an outage.
    tracing::debug!(reason = %not_ready, "not ready");
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "not_ready", "reason": not_ready})))
        .into_response()
}
