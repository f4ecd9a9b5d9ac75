//! The per-client rate limit, through the real gateway (every test client is
//! 127.0.0.1). Only failed requests (4xx) take tokens, so forged requests
//! drain a bucket and verified deliveries never do.

use std::time::Duration;

use gateway::config::RateLimit;

use crate::support::{FakeUpstream, Gateway, SECRET, config, user_event};

/// A gateway allowing `burst` requests at once, refilled at `per_second`.
async fn limited_gateway(
    upstream: &FakeUpstream,
    per_second: u32,
    burst: u32,
    trust_forwarded_for: bool,
) -> Gateway {
    let mut config = config(upstream.url(), SECRET);
    config.rate_limit = RateLimit { per_second, burst };
    config.trusted_proxy_hops = u32::from(trust_forwarded_for);
    Gateway::start_with(config).await
}

/// POSTs an unsigned (so rejected, 400) webhook as the client
/// `forwarded_for` claims to be, if any.
async fn status_as(gateway: &Gateway, forwarded_for: Option<&str>) -> (u16, Option<String>) {
    let mut request = gateway
        .http
        .post(gateway.url("/webhooks/clerk"))
        .header("content-type", "application/json")
        .body(user_event("user.created", "user_forged"));
    if let Some(client) = forwarded_for {
        request = request.header("x-forwarded-for", client);
    }
    let response = request.send().await.unwrap();
    let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    (response.status().as_u16(), retry_after)
}

#[tokio::test]
async fn requests_beyond_the_burst_get_429_with_retry_after() {
    let upstream = FakeUpstream::start().await;
    let gateway = limited_gateway(&upstream, 1, 3, false).await;

    for _ in 0..3 {
        assert_eq!(status_as(&gateway, None).await.0, 400);
    }
    let (status, retry_after) = status_as(&gateway, None).await;

    assert_eq!(status, 429);
    assert_eq!(retry_after.as_deref(), Some("1"));
}

#[tokio::test]
async fn a_rate_limited_webhook_is_429_and_never_reaches_user_service() {
    let upstream = FakeUpstream::start().await;
    let gateway = limited_gateway(&upstream, 1, 1, false).await;
    assert_eq!(status_as(&gateway, None).await.0, 400);

    let answer = gateway.post_signed("msg_second", &user_event("user.updated", "user_rl")).await;

    assert_eq!(answer.status, 429);
    assert!(answer.header("retry-after").is_some());
    assert!(answer.header("x-request-id").is_some());
    upstream.assert_not_called();
}

#[tokio::test]
async fn verified_deliveries_never_take_tokens() {
    let upstream = FakeUpstream::start().await;
    let gateway = limited_gateway(&upstream, 1, 1, false).await;

    for i in 0..10 {
        let answer = gateway.post_signed(&format!("msg_ok{i}"), &user_event("user.created", "user_ok")).await;
        assert_eq!(answer.status, 200, "delivery {i}");
    }

    assert_eq!(upstream.calls().len(), 10);
}

#[tokio::test]
async fn the_limit_recovers_as_the_bucket_refills() {
    let upstream = FakeUpstream::start().await;
    let gateway = limited_gateway(&upstream, 4, 2, false).await;
    for _ in 0..2 {
        assert_eq!(status_as(&gateway, None).await.0, 400);
    }
    assert_eq!(status_as(&gateway, None).await.0, 429);

    // A 429 takes no token, so asking until the answer changes waits for the
    // refill (a quarter second at 4/s) without draining the bucket.
    let refilled = async {
        loop {
            match status_as(&gateway, None).await.0 {
                429 => tokio::task::yield_now().await,
                status => return status,
            }
        }
    };
    let status = tokio::time::timeout(Duration::from_secs(10), refilled).await;

    assert_eq!(status.ok(), Some(400), "the bucket never refilled");
}

#[tokio::test]
async fn forwarded_for_is_ignored_unless_trusted() {
    let upstream = FakeUpstream::start().await;
    let gateway = limited_gateway(&upstream, 1, 1, false).await;
    assert_eq!(status_as(&gateway, Some("198.51.100.1")).await.0, 400);

    let (status, _) = status_as(&gateway, Some("198.51.100.2")).await;

    assert_eq!(status, 429, "a client chose its own bucket through X-Forwarded-For");
}

#[tokio::test]
async fn trusted_forwarded_for_gives_each_client_its_own_bucket() {
    let upstream = FakeUpstream::start().await;
    let gateway = limited_gateway(&upstream, 1, 1, true).await;
    assert_eq!(status_as(&gateway, Some("198.51.100.1")).await.0, 400);
    assert_eq!(status_as(&gateway, Some("198.51.100.1")).await.0, 429);

    let (status, _) = status_as(&gateway, Some("203.0.113.5, 198.51.100.2")).await;

    assert_eq!(status, 400, "the last X-Forwarded-For entry is the client");
}

#[tokio::test]
async fn a_zero_rate_turns_the_limit_off() {
    let upstream = FakeUpstream::start().await;
    let gateway = limited_gateway(&upstream, 0, 0, false).await;

    for _ in 0..50 {
        assert_eq!(status_as(&gateway, None).await.0, 400);
    }
}

#[tokio::test]
async fn with_two_trusted_hops_the_client_is_the_entry_the_outer_proxy_added() {
    let upstream = FakeUpstream::start().await;
    let mut config = config(upstream.url(), SECRET);
    config.rate_limit = RateLimit { per_second: 1, burst: 1 };
    config.trusted_proxy_hops = 2;
    let gateway = Gateway::start_with(config).await;
    // The client forged the first entry; the outer proxy added 198.51.100.1,
    // the inner one 10.0.0.2.
    assert_eq!(status_as(&gateway, Some("203.0.113.7, 198.51.100.1, 10.0.0.2")).await.0, 400);

    let (status, _) = status_as(&gateway, Some("192.0.2.99, 198.51.100.1, 10.0.0.2")).await;

    assert_eq!(status, 429, "a forged first entry chose the bucket");
    let (status, _) = status_as(&gateway, Some("198.51.100.2, 10.0.0.2")).await;
    assert_eq!(status, 400, "another client behind the same proxies has its own bucket");
}
