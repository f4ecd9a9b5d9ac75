//! Prometheus metrics, served as text on a separate plain-HTTP listener.
//!
//! Each [`Metrics`] value owns its recorder (nothing is installed globally),
//! so two gateways in one process, as in tests, keep separate counts. The
//! metrics are described in `gateway/METRICS.md`.

use std::{sync::Arc, time::Duration};

use ::metrics::{Key, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tokio::net::TcpListener;
use tonic::Code;
use userdata_kit::{grpc_code, metrics_http};

/// Webhook deliveries answered, by event type and outcome.
pub const WEBHOOK_EVENTS_TOTAL: &str = "webhook_events_total";
/// Time to answer a webhook delivery.
pub const WEBHOOK_REQUEST_DURATION: &str = "webhook_request_duration_seconds";
/// gRPC calls made to user-service, by method and status code.
pub const UPSTREAM_REQUESTS_TOTAL: &str = "upstream_requests_total";
/// Time of each gRPC call to user-service, by method.
pub const UPSTREAM_REQUEST_DURATION: &str = "upstream_request_duration_seconds";
/// Writes per `ApplyEvents` call to user-service.
pub const UPSTREAM_BATCH_WRITES: &str = "upstream_batch_writes";
/// Writes waiting for a batch (all `ApplyEvents` slots busy).
pub const UPSTREAM_WRITES_QUEUED: &str = "upstream_writes_queued";
/// 1 while a user-service replica receives calls, 0 while it is left out.
pub const UPSTREAM_REPLICA_UP: &str = "upstream_replica_up";
/// Requests (any path) refused by the per-client rate limit.
pub const RATE_LIMITED_TOTAL: &str = "http_requests_rate_limited_total";

/// Connections open on the webhook port.
pub const CONNECTIONS_OPEN: &str = "http_connections_open";
/// Connections closed to make room for a new one under a cap.
pub const CONNECTIONS_EVICTED_TOTAL: &str = "http_connections_evicted_total";
/// Connections closed at once because a cap was reached and nothing could
/// give way, by `reason` (`per_ip`, `global`).
pub const CONNECTIONS_REFUSED_TOTAL: &str = "http_connections_refused_total";
/// Requests in progress on the webhook port.
pub const REQUESTS_IN_FLIGHT: &str = "http_requests_in_flight";
/// Requests answered 503 by the global in-flight limit.
pub const REQUESTS_SHED_TOTAL: &str = "http_requests_shed_total";

/// Webhook latency buckets, in seconds, up to Svix's 15 s timeout.
const WEBHOOK_BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0];
/// gRPC latency buckets, in seconds, up to the 10 s longest deadline.
const UPSTREAM_BUCKETS: [f64; 13] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Batch size buckets, in writes, up to the most `ApplyEvents` takes.
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), ::metrics::Level::INFO, Some(module_path!()));

/// The gateway's metrics.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// An empty registry with every metric described.
    pub fn new() -> Self {
        let builder = PrometheusBuilder::new();
        // Only an empty bucket list is refused, and these are not empty.
        let builder = builder
            .set_buckets_for_metric(Matcher::Full(WEBHOOK_REQUEST_DURATION.to_owned()), &WEBHOOK_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(UPSTREAM_REQUEST_DURATION.to_owned()),
                    &UPSTREAM_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(UPSTREAM_BATCH_WRITES.to_owned()), &BATCH_BUCKETS)
            })
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let counters = [
            (WEBHOOK_EVENTS_TOTAL, "Webhook deliveries answered, by event type and outcome."),
            (UPSTREAM_REQUESTS_TOTAL, "gRPC calls to user-service, by method and status code."),
            (RATE_LIMITED_TOTAL, "Requests refused with 429 by the per-client rate limit."),
            (CONNECTIONS_EVICTED_TOTAL, "Idle connections closed to make room under a connection cap."),
            (CONNECTIONS_REFUSED_TOTAL, "Connections closed at once: a cap was reached and all were busy."),
            (REQUESTS_SHED_TOTAL, "Requests answered 503 by an in-flight limit (reason: global or per_ip)."),
        ];
        for (name, help) in counters {
            recorder.describe_counter(name.into(), None, help.into());
        }
        recorder.describe_histogram(
            WEBHOOK_REQUEST_DURATION.into(),
            Some(Unit::Seconds),
            "Time from receiving a webhook delivery to its answer.".into(),
        );
        recorder.describe_histogram(
            UPSTREAM_REQUEST_DURATION.into(),
            Some(Unit::Seconds),
            "Time of each gRPC call to user-service, by method.".into(),
        );
        recorder.describe_histogram(
            UPSTREAM_BATCH_WRITES.into(),
            Some(Unit::Count),
            "Writes per ApplyEvents call to user-service.".into(),
        );
        recorder.describe_gauge(
            UPSTREAM_WRITES_QUEUED.into(),
            None,
            "Writes waiting for a batch while every ApplyEvents slot is busy.".into(),
        );
        recorder.describe_gauge(
            UPSTREAM_REPLICA_UP.into(),
            None,
            "1 while a user-service replica receives calls, 0 while it is left out.".into(),
        );
        recorder.describe_gauge(
            CONNECTIONS_OPEN.into(),
            None,
            "Connections open on the webhook port.".into(),
        );
        recorder.describe_gauge(
            REQUESTS_IN_FLIGHT.into(),
            None,
            "Requests in progress on the webhook port.".into(),
        );
        let handle = recorder.handle();
        Self { recorder, handle }
    }

    /// Counts one answered webhook delivery.
    pub fn record_webhook(&self, event_type: String, outcome: &'static str, elapsed: Duration) {
        let labels = vec![Label::new("type", event_type), Label::from_static_parts("outcome", outcome)];
        self.recorder
            .register_counter(&Key::from_parts(WEBHOOK_EVENTS_TOTAL, labels), &METADATA)
            .increment(1);
        self.recorder
            .register_histogram(&Key::from_name(WEBHOOK_REQUEST_DURATION), &METADATA)
            .record(elapsed.as_secs_f64());
    }

    /// Counts one finished gRPC call to user-service.
    pub fn record_upstream(&self, method: &'static str, code: Code, elapsed: Duration) {
        let labels = vec![
            Label::from_static_parts("method", method),
            Label::from_static_parts("code", grpc_code::name(code)),
        ];
        self.recorder
            .register_counter(&Key::from_parts(UPSTREAM_REQUESTS_TOTAL, labels), &METADATA)
            .increment(1);
        let key =
            Key::from_parts(UPSTREAM_REQUEST_DURATION, vec![Label::from_static_parts("method", method)]);
        self.recorder.register_histogram(&key, &METADATA).record(elapsed.as_secs_f64());
    }

    /// Counts one `ApplyEvents` call of `writes` writes.
    pub fn record_upstream_batch(&self, writes: usize) {
        self.recorder
            .register_histogram(&Key::from_name(UPSTREAM_BATCH_WRITES), &METADATA)
            .record(writes as f64);
    }

    /// Adds `delta` (+ queued, - taken into a batch) to the queued writes.
    pub fn add_upstream_writes_queued(&self, delta: f64) {
        self.recorder.register_gauge(&Key::from_name(UPSTREAM_WRITES_QUEUED), &METADATA).increment(delta);
    }

    /// Sets whether the replica `replica` (its URL) receives calls.
    pub fn set_replica_up(&self, replica: impl Into<SharedString>, up: bool) {
        let key = Key::from_parts(UPSTREAM_REPLICA_UP, vec![Label::new("replica", replica.into())]);
        self.recorder.register_gauge(&key, &METADATA).set(if up { 1.0 } else { 0.0 });
    }

    /// Counts one request refused by the rate limit.
    pub fn record_rate_limited(&self) {
        self.recorder.register_counter(&Key::from_name(RATE_LIMITED_TOTAL), &METADATA).increment(1);
    }

    /// Adds `delta` (+1 opened, -1 closed) to the open connections.
    pub fn add_connections_open(&self, delta: f64) {
        self.recorder.register_gauge(&Key::from_name(CONNECTIONS_OPEN), &METADATA).increment(delta);
    }

    /// Counts connections closed to make room.
    pub fn record_connections_evicted(&self, count: u64) {
        if count > 0 {
            self.recorder
                .register_counter(&Key::from_name(CONNECTIONS_EVICTED_TOTAL), &METADATA)
                .increment(count);
        }
    }

    /// Counts one connection refused at a cap (`reason`: `per_ip`, `global`).
    pub fn record_connection_refused(&self, reason: &'static str) {
        let key =
            Key::from_parts(CONNECTIONS_REFUSED_TOTAL, vec![Label::from_static_parts("reason", reason)]);
        self.recorder.register_counter(&key, &METADATA).increment(1);
    }

    /// Adds `delta` (+1 started, -1 answered) to the requests in progress.
    pub fn add_requests_in_flight(&self, delta: f64) {
        self.recorder.register_gauge(&Key::from_name(REQUESTS_IN_FLIGHT), &METADATA).increment(delta);
    }

    /// Counts one request shed by an in-flight limit (`reason`: `global`,
    /// `per_ip`).
    pub fn record_shed(&self, reason: &'static str) {
        let key = Key::from_parts(REQUESTS_SHED_TOTAL, vec![Label::from_static_parts("reason", reason)]);
        self.recorder.register_counter(&key, &METADATA).increment(1);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Folds histogram samples into their buckets; run every few seconds so
    /// memory stays flat between scrapes.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped, and folds
/// histogram samples every few seconds.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let upkeep = {
        let metrics = metrics.clone();
        move || metrics.run_upkeep()
    };
    metrics_http::serve(listener, move || metrics.render(), upkeep).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_values_are_rendered_with_their_labels() {
        let metrics = Metrics::new();
        metrics.record_webhook("user.created".into(), "applied", Duration::from_millis(3));
        metrics.record_upstream("userdata.v1.UserService/CreateUser", Code::Ok, Duration::from_millis(2));
        let text = metrics.render();
        assert!(text.contains(r#"webhook_events_total{type="user.created",outcome="applied"} 1"#), "{text}");
        assert!(
            text.contains(
                r#"upstream_requests_total{method="userdata.v1.UserService/CreateUser",code="OK"} 1"#
            ),
            "{text}"
        );
    }
}
