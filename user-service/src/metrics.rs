//! Prometheus metrics, served as text on a separate plain-HTTP listener.
//!
//! The recorder belongs to the [`Metrics`] value, not to the process: two
//! servers in one process (as in tests) keep separate counts.

use std::{sync::Arc, time::Duration};

use ::metrics::{Key, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tokio::net::TcpListener;
use tonic::Code;

use userdata_kit::{grpc_code, metrics_http};

use crate::{feed::Feed, store::Store};

/// Calls handled, by method and gRPC code.
pub const REQUESTS_TOTAL: &str = "grpc_server_requests_total";
/// Call latency, by method.
pub const REQUEST_DURATION: &str = "grpc_server_request_duration_seconds";
/// Database pool connections, by state (`idle`, `in_use`).
pub const POOL_CONNECTIONS: &str = "db_pool_connections";

/// Transactions that committed two or more webhook-event writes together.
pub const WRITE_GROUPS: &str = "db_write_groups_total";
/// Writes committed in those transactions.
pub const GROUPED_WRITES: &str = "db_grouped_writes_total";
/// Groups rolled back by a database error, whose writes then ran alone.
pub const GROUP_ROLLBACKS: &str = "db_write_group_rollbacks_total";

/// Change-log followers connected (`WatchChanges` streams).
pub const CHANGE_FOLLOWERS: &str = "change_stream_followers";
/// Time from a change's commit to its sending to a follower.
pub const CHANGE_DELIVERY: &str = "change_stream_delivery_seconds";
/// How long the furthest-behind follower has had a change waiting.
pub const CHANGE_LAG: &str = "change_stream_max_lag_seconds";
/// Followers that fell behind the live fan-out and read the log instead.
pub const CHANGE_FALLBACKS: &str = "change_stream_fallbacks_total";

/// Upper bounds of the latency histogram's buckets, in seconds.
const LATENCY_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), ::metrics::Level::INFO, Some(module_path!()));

/// This server's metrics.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// An empty registry with the metrics described.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.to_owned()), &LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(CHANGE_DELIVERY.to_owned()), &LATENCY_BUCKETS)
            })
            // Fails only for an empty list of buckets, which this is not.
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        recorder.describe_counter(
            REQUESTS_TOTAL.into(),
            None,
            "gRPC calls handled, by method and status code.".into(),
        );
        recorder.describe_histogram(
            REQUEST_DURATION.into(),
            Some(Unit::Seconds),
            "Time from receiving a gRPC call to its final status, by method.".into(),
        );
        recorder.describe_gauge(
            POOL_CONNECTIONS.into(),
            None,
            "Database pool connections, by state (idle, in_use).".into(),
        );
        recorder.describe_gauge(CHANGE_FOLLOWERS.into(), None, "WatchChanges streams connected.".into());
        recorder.describe_histogram(
            CHANGE_DELIVERY.into(),
            Some(Unit::Seconds),
            "Time from a change's commit to its sending on a WatchChanges stream.".into(),
        );
        recorder.describe_gauge(
            CHANGE_LAG.into(),
            Some(Unit::Seconds),
            "How long the furthest-behind WatchChanges follower has had a change waiting (0: none).".into(),
        );
        recorder.describe_counter(
            CHANGE_FALLBACKS.into(),
            None,
            "Followers that fell behind the live fan-out and read the change log instead.".into(),
        );
        for (name, help) in [
            (
                WRITE_GROUPS,
                "Transactions that committed two or more webhook-event writes together (group commit).",
            ),
            (GROUPED_WRITES, "Webhook-event writes committed in those transactions."),
            (GROUP_ROLLBACKS, "Groups rolled back by a database error; their writes then ran one by one."),
        ] {
            recorder.describe_counter(name.into(), None, help.into());
        }
        let handle = recorder.handle();
        Self { recorder, handle }
    }

    /// Sets the number of change followers.
    pub fn set_change_followers(&self, count: usize) {
        let key = Key::from_static_name(CHANGE_FOLLOWERS);
        self.recorder.register_gauge(&key, &METADATA).set(count as f64);
    }

    /// Records one change sent to a follower, `age` after its commit.
    pub fn record_change_delivery(&self, age: Duration) {
        let key = Key::from_static_name(CHANGE_DELIVERY);
        self.recorder.register_histogram(&key, &METADATA).record(age.as_secs_f64());
    }

    /// Counts a follower that fell back to reading the log.
    pub fn count_change_fallback(&self) {
        let key = Key::from_static_name(CHANGE_FALLBACKS);
        self.recorder.register_counter(&key, &METADATA).increment(1);
    }

    /// Sets the lag of the furthest-behind follower.
    pub fn set_change_lag(&self, lag: Duration) {
        let key = Key::from_static_name(CHANGE_LAG);
        self.recorder.register_gauge(&key, &METADATA).set(lag.as_secs_f64());
    }

    /// Counts one finished call.
    pub fn record_call(&self, method: &'static str, code: Code, elapsed: Duration) {
        let code = grpc_code::name(code);
        let counter = Key::from_parts(
            REQUESTS_TOTAL,
            vec![Label::from_static_parts("method", method), Label::from_static_parts("code", code)],
        );
        self.recorder.register_counter(&counter, &METADATA).increment(1);
        let histogram = Key::from_parts(REQUEST_DURATION, vec![Label::from_static_parts("method", method)]);
        self.recorder.register_histogram(&histogram, &METADATA).record(elapsed.as_secs_f64());
    }

    /// Sets the pool gauges.
    pub fn set_pool(&self, pool: crate::store::PoolStats) {
        for (state, value) in [("in_use", pool.in_use), ("idle", pool.idle), ("waiting", pool.waiting)] {
            let key = Key::from_parts(POOL_CONNECTIONS, vec![Label::from_static_parts("state", state)]);
            self.recorder.register_gauge(&key, &METADATA).set(f64::from(value));
        }
    }

    /// Sets the group-commit counters.
    pub fn set_groups(&self, stats: crate::store::GroupStats) {
        for (name, value) in [
            (WRITE_GROUPS, stats.groups),
            (GROUPED_WRITES, stats.grouped_writes),
            (GROUP_ROLLBACKS, stats.rollbacks),
        ] {
            self.recorder.register_counter(&Key::from_static_name(name), &METADATA).absolute(value);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Drains histogram samples into their buckets; call it every few
    /// seconds so memory stays flat between scrapes.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped, sampling
/// the pool of `store` and the followers of `feed` at each scrape; runs
/// upkeep every few seconds.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, store: Arc<dyn Store>, feed: Arc<Feed>) {
    let upkeep = {
        let metrics = metrics.clone();
        move || metrics.run_upkeep()
    };
    let scrape = move || {
        metrics.set_pool(store.pool_stats());
        metrics.set_groups(store.group_stats());
        metrics.set_change_followers(feed.followers());
        metrics.set_change_lag(feed.max_lag());
        metrics.render()
    };
    metrics_http::serve(listener, scrape, upkeep).await;
}
