//! Starting and stopping the server.

use std::time::Duration;

use crate::support::{FakeUpstream, Gateway, Reply, user_event};

#[tokio::test]
async fn the_gateway_binds_port_zero_and_stops_on_its_shutdown_signal() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;
    assert_ne!(gateway.addr.port(), 0);

    gateway.stop().await;
}

#[tokio::test]
async fn an_in_flight_webhook_finishes_after_shutdown_begins() {
    let upstream = FakeUpstream::start().await;
    upstream.reply_with(Reply::SlowApplied(Duration::from_millis(400)));
    let mut gateway = Gateway::start(&upstream).await;
    let body = user_event("user.created", "user_inflight");
    let request = {
        let headers =
            crate::support::signed(crate::support::SECRET, "msg_inflight", crate::support::now(), &body);
        let http = gateway.http.clone();
        let url = gateway.url("/webhooks/clerk");
        tokio::spawn(async move { http.post(url).headers(headers).body(body).send().await })
    };
    // Shut down only once the request is at the (slow) upstream.
    upstream.wait_for_calls(1).await;

    gateway.begin_shutdown();
    let response = request.await.unwrap().unwrap();

    assert_eq!(response.status(), 200);
    gateway.stop().await;
}
