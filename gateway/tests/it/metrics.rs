//! `/metrics`: each delivery outcome is counted once, upstream calls by
//! method and code, and each gateway keeps its own counts.

use gateway::config::{MetricsListen, RateLimit};
use tonic::Code;
use userdata_proto::v1::EventOutcome;

use crate::support::{FOREIGN_SECRET, FakeUpstream, Gateway, Reply, SECRET, config, now, signed, user_event};

/// A gateway in front of `upstream` with `/metrics` on a free port.
async fn gateway_with_metrics(upstream: &FakeUpstream) -> Gateway {
    let mut config = config(upstream.url(), SECRET);
    config.metrics_listen = MetricsListen::On("127.0.0.1:0".parse().unwrap());
    Gateway::start_with(config).await
}

/// The value of the sample of `metric` whose labels include all of
/// `labels`, or 0 when there is none (Prometheus text format).
pub fn sample(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (name, rest) = series.split_once('{').unwrap_or((series, "}"));
            let rest = rest.strip_suffix('}')?;
            let wanted = name == metric
                && labels
                    .iter()
                    .all(|(key, value)| rest.split(',').any(|pair| pair == format!("{key}=\"{value}\"")));
            if wanted { value.parse::<f64>().ok() } else { None }
        })
        .sum()
}

pub(crate) fn events(text: &str, event_type: &str, outcome: &str) -> f64 {
    sample(text, "webhook_events_total", &[("type", event_type), ("outcome", outcome)])
}

/// Delivers one `user.created` answered with `reply`, and returns the count
/// of `(user.created, outcome)` afterwards.
async fn count_after_reply(reply: Reply, outcome: &str) -> f64 {
    let upstream = FakeUpstream::start().await;
    upstream.reply_with(reply);
    let gateway = gateway_with_metrics(&upstream).await;
    gateway.post_signed("msg_counted", &user_event("user.created", "user_counted")).await;
    events(&gateway.metrics().await, "user.created", outcome)
}

#[tokio::test]
async fn an_applied_event_is_counted_as_applied() {
    assert_eq!(count_after_reply(Reply::Outcome(EventOutcome::Applied, false), "applied").await, 1.0);
}

#[tokio::test]
async fn a_replayed_event_is_counted_as_duplicate() {
    assert_eq!(count_after_reply(Reply::Outcome(EventOutcome::Applied, true), "duplicate").await, 1.0);
}

#[tokio::test]
async fn a_stale_event_is_counted_as_stale() {
    assert_eq!(count_after_reply(Reply::Outcome(EventOutcome::Stale, false), "stale").await, 1.0);
}

#[tokio::test]
async fn an_event_for_a_deleted_user_is_counted_as_user_deleted() {
    assert_eq!(
        count_after_reply(Reply::Outcome(EventOutcome::UserDeleted, false), "user_deleted").await,
        1.0
    );
}

#[tokio::test]
async fn an_unavailable_user_service_is_counted_as_retry_asked() {
    assert_eq!(count_after_reply(Reply::Fail(Code::Unavailable, "down"), "retry_asked").await, 1.0);
}

#[tokio::test]
async fn an_internal_error_is_counted_as_retry_asked() {
    assert_eq!(count_after_reply(Reply::Fail(Code::Internal, "bug"), "retry_asked").await, 1.0);
}

#[tokio::test]
async fn an_invalid_argument_is_counted_as_rejected() {
    assert_eq!(count_after_reply(Reply::Fail(Code::InvalidArgument, "bad email"), "rejected").await, 1.0);
}

#[tokio::test]
async fn an_event_type_we_do_not_sync_is_counted_as_ignored_under_its_type() {
    let upstream = FakeUpstream::start().await;
    let gateway = gateway_with_metrics(&upstream).await;
    let body = r#"{"type":"organization.created","object":"event","data":{"id":"org_1"}}"#;

    gateway.post_signed("msg_org", body).await;

    assert_eq!(events(&gateway.metrics().await, "organization.created", "ignored"), 1.0);
}

#[tokio::test]
async fn a_forged_delivery_is_counted_as_rejected_with_an_unknown_type() {
    let upstream = FakeUpstream::start().await;
    let gateway = gateway_with_metrics(&upstream).await;
    let body = user_event("user.created", "user_forged");

    let answer = gateway.post(signed(FOREIGN_SECRET, "msg_forged", now(), &body), body).await;

    assert_eq!(answer.status, 401);
    assert_eq!(events(&gateway.metrics().await, "unknown", "rejected"), 1.0);
}

#[tokio::test]
async fn a_rate_limited_delivery_is_counted_as_retry_asked() {
    let upstream = FakeUpstream::start().await;
    let mut config = config(upstream.url(), SECRET);
    config.metrics_listen = MetricsListen::On("127.0.0.1:0".parse().unwrap());
    config.rate_limit = RateLimit { per_second: 1, burst: 1 };
    let gateway = Gateway::start_with(config).await;
    // An unsigned delivery fails (400) and so takes the only token.
    let forged = gateway
        .http
        .post(gateway.url("/webhooks/clerk"))
        .header("content-type", "application/json")
        .body(user_event("user.created", "user_rl"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 400);

    let answer = gateway.post_signed("msg_rl_2", &user_event("user.created", "user_rl")).await;

    assert_eq!(answer.status, 429);
    let text = gateway.metrics().await;
    assert_eq!(events(&text, "unknown", "retry_asked"), 1.0);
    assert_eq!(sample(&text, "http_requests_rate_limited_total", &[]), 1.0);
}

#[tokio::test]
async fn each_delivery_is_timed() {
    let upstream = FakeUpstream::start().await;
    let gateway = gateway_with_metrics(&upstream).await;

    gateway.post_signed("msg_timed_1", &user_event("user.created", "user_timed")).await;
    gateway.post_signed("msg_timed_2", &user_event("user.updated", "user_timed")).await;

    assert_eq!(sample(&gateway.metrics().await, "webhook_request_duration_seconds_count", &[]), 2.0);
}

#[tokio::test]
async fn upstream_calls_are_counted_and_timed_by_method_and_code() {
    let upstream = FakeUpstream::start().await;
    let gateway = gateway_with_metrics(&upstream).await;
    gateway.post_signed("msg_up_ok", &user_event("user.created", "user_up")).await;
    upstream.reply_with(Reply::Fail(Code::Unavailable, "down"));
    gateway.post_signed("msg_up_down", &user_event("user.updated", "user_up")).await;

    let text = gateway.metrics().await;

    let create = ("method", "userdata.v1.UserService/CreateUser");
    let update = ("method", "userdata.v1.UserService/UpdateUser");
    assert_eq!(sample(&text, "upstream_requests_total", &[create, ("code", "OK")]), 1.0);
    assert_eq!(sample(&text, "upstream_requests_total", &[update, ("code", "UNAVAILABLE")]), 1.0);
    assert_eq!(sample(&text, "upstream_request_duration_seconds_count", &[create]), 1.0);
}

#[tokio::test]
async fn readiness_checks_are_counted_as_health_calls() {
    let upstream = FakeUpstream::start().await;
    let gateway = gateway_with_metrics(&upstream).await;

    assert_eq!(gateway.get("/readyz").await.status, 200);

    let text = gateway.metrics().await;
    let labels = [("method", "grpc.health.v1.Health/Check"), ("code", "OK")];
    assert_eq!(sample(&text, "upstream_requests_total", &labels), 1.0);
}

#[tokio::test]
async fn two_gateways_in_one_process_keep_separate_counts() {
    let upstream = FakeUpstream::start().await;
    let first = gateway_with_metrics(&upstream).await;
    let second = gateway_with_metrics(&upstream).await;

    first.post_signed("msg_sep_1", &user_event("user.created", "user_sep")).await;
    first.post_signed("msg_sep_2", &user_event("user.updated", "user_sep")).await;
    second.post_signed("msg_sep_3", &user_event("user.created", "user_sep2")).await;

    assert_eq!(sample(&first.metrics().await, "webhook_events_total", &[("outcome", "applied")]), 2.0);
    assert_eq!(sample(&second.metrics().await, "webhook_events_total", &[("outcome", "applied")]), 1.0);
}

#[tokio::test]
async fn metrics_are_off_unless_asked_for() {
    let upstream = FakeUpstream::start().await;

    let gateway = Gateway::start(&upstream).await;

    assert_eq!(gateway.metrics_addr, None);
}
