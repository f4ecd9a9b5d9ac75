//! How user-service failures turn into answers Svix acts on.

use std::time::{Duration, Instant};

use tonic::Code;

use crate::support::{
    FakeUpstream, Gateway, Reply, SECRET, UPSTREAM_TIMEOUT, config, dead_address, url_of, user_event,
};

#[tokio::test]
async fn user_service_unavailable_is_503_with_retry_after() {
    let upstream = FakeUpstream::start().await;
    upstream.reply_with(Reply::Fail(Code::Unavailable, "database down"));
    let gateway = Gateway::start(&upstream).await;

    let answer = gateway.post_signed("msg_unavail", &user_event("user.created", "user_u")).await;

    assert_eq!(answer.status, 503);
    assert!(answer.header("retry-after").is_some());
    assert!(answer.header("x-request-id").is_some());
}

#[tokio::test]
async fn upstream_messages_of_transient_failures_are_not_echoed() {
    let upstream = FakeUpstream::start().await;
    upstream.reply_with(Reply::Fail(Code::Unavailable, "pg at 10.1.2.3 refused"));
    let gateway = Gateway::start(&upstream).await;

    let answer = gateway.post_signed("msg_leak", &user_event("user.created", "user_u")).await;

    let error = answer.json["error"].as_str().unwrap_or_default();
    assert!(!error.contains("10.1.2.3"), "{error}");
}

#[tokio::test]
async fn a_stopped_user_service_is_503_within_the_deadline() {
    let gateway = Gateway::start_with(config(url_of(dead_address().await), SECRET)).await;
    let started = Instant::now();

    let answer = gateway.post_signed("msg_dead", &user_event("user.created", "user_dead")).await;

    assert_eq!(answer.status, 503);
    assert!(answer.header("retry-after").is_some());
    assert!(started.elapsed() < UPSTREAM_TIMEOUT + Duration::from_secs(1));
}

#[tokio::test]
async fn a_user_service_that_stops_after_serving_is_503_within_the_deadline() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;
    let first = gateway.post_signed("msg_before_stop", &user_event("user.created", "user_s")).await;
    assert_eq!(first.status, 200);
    upstream.stop().await;
    let started = Instant::now();

    let answer = gateway.post_signed("msg_after_stop", &user_event("user.updated", "user_s")).await;

    assert_eq!(answer.status, 503);
    assert!(started.elapsed() < UPSTREAM_TIMEOUT + Duration::from_secs(1));
}

#[tokio::test]
async fn a_user_service_slower_than_the_deadline_is_503_within_the_deadline() {
    let upstream = FakeUpstream::start().await;
    upstream.reply_with(Reply::SlowApplied(UPSTREAM_TIMEOUT * 4));
    let gateway = Gateway::start(&upstream).await;
    let started = Instant::now();

    let answer = gateway.post_signed("msg_slow", &user_event("user.updated", "user_slow")).await;

    assert_eq!(answer.status, 503);
    assert!(started.elapsed() < UPSTREAM_TIMEOUT + Duration::from_secs(1));
}

#[tokio::test]
async fn a_user_service_that_comes_back_is_used_again() {
    let addr = dead_address().await;
    let gateway = Gateway::start_with(config(url_of(addr), SECRET)).await;
    let first = gateway.post_signed("msg_back", &user_event("user.created", "user_back")).await;
    assert_eq!(first.status, 503);

    let upstream = FakeUpstream::start_on(addr).await;
    let second = gateway.post_signed("msg_back", &user_event("user.created", "user_back")).await;

    assert_eq!(second.status, 200, "{:?}", second.json);
    assert_eq!(upstream.calls().len(), 1);
}

#[tokio::test]
async fn invalid_argument_from_user_service_is_400_with_its_message() {
    let upstream = FakeUpstream::start().await;
    upstream.reply_with(Reply::Fail(Code::InvalidArgument, "image_url must be http(s)"));
    let gateway = Gateway::start(&upstream).await;

    let answer = gateway.post_signed("msg_invalid", &user_event("user.created", "user_bad")).await;

    assert_eq!(answer.status, 400);
    let error = answer.json["error"].as_str().unwrap_or_default();
    assert!(error.contains("image_url must be http(s)"), "{error}");
}

#[tokio::test]
async fn internal_from_user_service_is_500() {
    let upstream = FakeUpstream::start().await;
    upstream.reply_with(Reply::Fail(Code::Internal, "bug"));
    let gateway = Gateway::start(&upstream).await;

    let answer = gateway.post_signed("msg_internal", &user_event("user.updated", "user_i")).await;

    assert_eq!(answer.status, 500);
}

#[tokio::test]
async fn already_exists_from_user_service_is_acknowledged() {
    let upstream = FakeUpstream::start().await;
    upstream.reply_with(Reply::Fail(Code::AlreadyExists, "clerk_id exists"));
    let gateway = Gateway::start(&upstream).await;

    let answer = gateway.post_signed("msg_exists", &user_event("user.created", "user_exists")).await;

    assert_eq!(answer.status, 200);
    assert_eq!(answer.json["outcome"], "already_exists");
}
