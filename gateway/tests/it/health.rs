//! `/healthz` and `/readyz`.

use tonic_health::ServingStatus;

use crate::support::{FakeUpstream, Gateway, SECRET, config, dead_address, url_of};

#[tokio::test]
async fn healthz_is_200_even_when_user_service_is_down() {
    let gateway = Gateway::start_with(config(url_of(dead_address().await), SECRET)).await;

    let answer = gateway.get("/healthz").await;

    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn readyz_is_200_when_user_service_is_serving() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;

    let answer = gateway.get("/readyz").await;

    assert_eq!(answer.status, 200);
    assert_eq!(answer.json["status"], "ready");
}

#[tokio::test]
async fn readyz_is_503_when_user_service_is_not_serving() {
    let upstream = FakeUpstream::start().await;
    upstream.set_health(ServingStatus::NotServing).await;
    let gateway = Gateway::start(&upstream).await;

    let answer = gateway.get("/readyz").await;

    assert_eq!(answer.status, 503);
    assert_eq!(answer.json["status"], "not_ready");
}

#[tokio::test]
async fn readyz_is_503_when_user_service_is_unreachable() {
    let gateway = Gateway::start_with(config(url_of(dead_address().await), SECRET)).await;

    let answer = gateway.get("/readyz").await;

    assert_eq!(answer.status, 503);
}

#[tokio::test]
async fn probes_carry_a_request_id() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;

    let answer = gateway.get("/healthz").await;

    assert!(answer.header("x-request-id").is_some());
}
