//! Liveness and readiness probes.

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::state::AppState;

/// `GET /healthz`: 200 whenever the process can answer HTTP at all. It does
/// not look at user-service, so an upstream outage never gets us restarted.
pub async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, Json(json!({"status": "ok"})))
}

/// `GET /readyz`: 200 when user-service's `grpc.health.v1.Health/Check` for
/// the whole server (service `""`) answers `SERVING` within the readiness
/// timeout, on any one replica when there are several; else 503 with the
/// reason.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let results = state.replicas.check_all(state.readiness_timeout).await;
    let serving = results.iter().filter(|result| result.is_ok()).count();
    if serving > 0 {
        let body = if results.len() > 1 {
            json!({"status": "ready", "replicas_serving": serving, "replicas": results.len()})
        } else {
            json!({"status": "ready"})
        };
        return (StatusCode::OK, Json(body)).into_response();
    }
    let not_ready = match results.as_slice() {
        [Err(reason)] => reason.clone(),
        // Replicas by position: their URLs are internal and this port is not.
        _ => {
            let reasons: Vec<String> = results
                .iter()
                .enumerate()
                .filter_map(|(index, result)| {
                    result.as_ref().err().map(|r| format!("replica {}: {r}", index + 1))
                })
                .collect();
            format!("no user-service replica is serving ({})", reasons.join("; "))
        }
    };
    // Debug, not info: probes repeat every few seconds during an outage.
    tracing::debug!(reason = %not_ready, "not ready");
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "not_ready", "reason": not_ready})))
        .into_response()
}
