//! Liveness and readiness probes.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;
use tokio::sync::Mutex;

use crate::{http::state::AppState, upstream::Replicas};

/// Each replica's health-check result, as `/readyz` last saw it.
type Results = Arc<Vec<Result<(), String>>>;

/// User-service's health as `/readyz` reports it: checked at most once per
/// `ttl`, and by one probe at a time, so a flood of probes on the public port
/// costs user-service one health call per `ttl` (per replica) rather than
/// one per probe.
#[derive(Debug)]
pub struct Readiness {
    replicas: Arc<Replicas>,
    timeout: Duration,
    ttl: Duration,
    /// The last results and when their check started. Held across the check
    /// itself, so probes arriving meanwhile wait for it and share it.
    last: Mutex<Option<(Instant, Results)>>,
}

impl Readiness {
    /// Checks `replicas` with `timeout`, reusing an answer for `ttl`.
    pub fn new(replicas: Arc<Replicas>, timeout: Duration, ttl: Duration) -> Self {
        Self { replicas, timeout, ttl, last: Mutex::new(None) }
    }

    /// The results of a check that started at most `ttl` ago, or, with a
    /// zero `ttl`, after this call: never older than the probe itself.
    async fn results(&self) -> Results {
        let asked = Instant::now();
        let mut last = self.last.lock().await;
        if let Some((checked, results)) = last.as_ref() {
            let fresh = if self.ttl.is_zero() { *checked >= asked } else { checked.elapsed() < self.ttl };
            if fresh {
                return results.clone();
            }
        }
        let started = Instant::now();
        let results = Arc::new(self.replicas.check_all(self.timeout).await);
        *last = Some((started, results.clone()));
        results
    }
}

/// `GET /healthz`: 200 whenever the process can answer HTTP at all. It does
/// not look at user-service, so an upstream outage never gets us restarted.
pub async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, Json(json!({"status": "ok"})))
}

/// `GET /readyz`: 200 when user-service's `grpc.health.v1.Health/Check` for
/// the whole server (service `""`) answers `SERVING` within the readiness
/// timeout, on any one replica when there are several; else 503 with the
/// reason. The answer may be up to `--readiness-cache` old (see
/// [`Readiness`]).
pub async fn readyz(State(state): State<AppState>) -> Response {
    let results = state.readiness.results().await;
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
