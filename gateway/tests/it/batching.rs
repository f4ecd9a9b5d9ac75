//! Event writes reach user-service in `ApplyEvents` batches: alone while the
//! gateway is idle, together when they queue behind the calls in flight, and
//! never more than `--upstream-batch-max` in one call.

use std::time::Duration;

use futures::future::join_all;
use gateway::config::{MetricsListen, UpstreamBatch};

use crate::support::{Answer, FakeUpstream, Gateway, SECRET, config, user_event, wait_for_metric};

/// A gateway in front of `upstream` batching as `batch` says, `/metrics` on.
async fn batching_gateway(upstream: &FakeUpstream, batch: UpstreamBatch) -> Gateway {
    let mut config = config(upstream.url(), SECRET);
    config.metrics_listen = MetricsListen::On("127.0.0.1:0".parse().unwrap());
    config.upstream_batch = batch;
    Gateway::start_with(config).await
}

/// Delivers one `user.created` while user-service holds its replies, then
/// `queued` more once that one has arrived (every other one for a Clerk id
/// the fake answers `stale`); releases the replies when all of them wait in
/// the gateway's queue. Returns every answer, the first one's first.
async fn deliver_behind_a_held_call(
    upstream: &FakeUpstream,
    gateway: &Gateway,
    queued: usize,
) -> Vec<Answer> {
    upstream.hold();
    let lead = user_event("user.created", "user_lead");
    let first = gateway.post_signed("msg_lead", &lead);
    let rest = async {
        upstream.wait_for_calls(1).await;
        let bodies: Vec<(String, String)> = (0..queued)
            .map(|n| (format!("msg_queued_{n}"), user_event("user.created", &queued_user(n))))
            .collect();
        let posts = join_all(bodies.iter().map(|(id, body)| gateway.post_signed(id, body)));
        let release = async {
            let want = queued as f64;
            wait_for_metric(gateway, "upstream_writes_queued", Duration::from_secs(10), |v| v == want).await;
            upstream.release();
        };
        tokio::join!(posts, release).0
    };
    let (first, rest) = tokio::join!(first, rest);
    std::iter::once(first).chain(rest).collect()
}

/// The Clerk id of queued delivery `n`: every odd one is answered `stale`.
fn queued_user(n: usize) -> String {
    if n % 2 == 1 { format!("user_stale_{n}") } else { format!("user_queued_{n}") }
}

#[tokio::test]
async fn an_idle_gateway_sends_each_write_at_once_on_its_own() {
    let upstream = FakeUpstream::start().await;
    let gateway = batching_gateway(&upstream, UpstreamBatch::default()).await;

    for n in 0..3 {
        let answer =
            gateway.post_signed(&format!("msg_idle_{n}"), &user_event("user.created", "user_idle")).await;
        assert_eq!(answer.status, 200, "{:?}", answer.json);
    }

    assert_eq!(upstream.batches(), [1, 1, 1]);
}

#[tokio::test]
async fn writes_queued_behind_a_busy_call_go_together_in_the_next() {
    let upstream = FakeUpstream::start().await;
    let gateway = batching_gateway(&upstream, UpstreamBatch { max: 64, in_flight: 1 }).await;

    let answers = deliver_behind_a_held_call(&upstream, &gateway, 5).await;

    // The fake answers in reverse order: each webhook still gets its own
    // write's outcome.
    let outcomes: Vec<&str> =
        answers.iter().map(|a| a.json["outcome"].as_str().unwrap_or_default()).collect();
    assert_eq!(outcomes, ["applied", "applied", "stale", "applied", "stale", "applied"]);
    assert_eq!(upstream.batches(), [1, 5]);
    assert_eq!(upstream.calls().len(), 6);
}

#[tokio::test]
async fn a_call_carries_at_most_upstream_batch_max_writes() {
    let upstream = FakeUpstream::start().await;
    let gateway = batching_gateway(&upstream, UpstreamBatch { max: 2, in_flight: 1 }).await;

    let answers = deliver_behind_a_held_call(&upstream, &gateway, 5).await;

    assert!(answers.iter().all(|answer| answer.status == 200));
    assert_eq!(upstream.batches(), [1, 2, 2, 1]);
}

#[tokio::test]
async fn with_a_batch_max_of_one_each_write_is_its_own_single_call() {
    let upstream = FakeUpstream::start().await;
    let gateway = batching_gateway(&upstream, UpstreamBatch { max: 1, in_flight: 4 }).await;

    let answer = gateway.post_signed("msg_single", &user_event("user.created", "user_single")).await;

    assert_eq!(answer.status, 200);
    assert!(upstream.batches().is_empty(), "ApplyEvents was called: {:?}", upstream.batches());
    assert_eq!(upstream.calls().len(), 1);
}

#[tokio::test]
async fn each_write_of_a_batch_carries_its_webhooks_request_id() {
    let upstream = FakeUpstream::start().await;
    let gateway = batching_gateway(&upstream, UpstreamBatch { max: 64, in_flight: 1 }).await;

    let answers = deliver_behind_a_held_call(&upstream, &gateway, 3).await;

    let mut answered: Vec<String> =
        answers.iter().map(|a| a.json["request_id"].as_str().unwrap_or_default().to_owned()).collect();
    let mut forwarded: Vec<String> =
        upstream.calls().iter().map(|c| c.request_id().unwrap_or_default()).collect();
    answered.sort();
    forwarded.sort();
    assert_eq!(forwarded, answered);
    assert_eq!(upstream.batches(), [1, 3]);
}
