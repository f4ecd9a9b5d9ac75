//! Client-side balancing over two real user-service replicas sharing one
//! PostgreSQL database: calls spread over both, a stopped replica is skipped,
//! and the gateway stays ready while any replica serves.

use std::{net::SocketAddr, time::Duration};

use gateway::Config;
use user_service::{
    config::MetricsListen,
    testing::{Db, TestDatabase, TestServer},
};

use crate::support::{Gateway, SECRET, config, url_of, user_event};

/// Where a replica serves its own metrics (port picked by the OS).
fn local_metrics() -> MetricsListen {
    MetricsListen::On(SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// Two user-service replicas on one fresh PostgreSQL database.
async fn two_replicas() -> (TestServer, TestServer) {
    let first = TestServer::start_with(Db::Postgres, |config| config.metrics_listen = local_metrics()).await;
    // A handle on the first replica's database: `try_start` takes a
    // `TestDatabase`, and `with_url` points one at an existing database (the
    // SQLite file this one comes with is never used).
    let shared = TestDatabase::create(Db::Sqlite).await.with_url(first.database.url.clone());
    let second = TestServer::try_start(shared, SocketAddr::from(([127, 0, 0, 1], 0)), |config| {
        config.metrics_listen = local_metrics();
    })
    .await
    .unwrap_or_else(|err| panic!("start the second replica: {err}"));
    (first, second)
}

/// A gateway balancing over `replicas`, checking them every 500 ms.
fn balancing_config(replicas: &[&TestServer]) -> Config {
    let mut config = config(url_of(replicas[0].addr), SECRET);
    config.set_user_service_urls(replicas.iter().map(|replica| url_of(replica.addr)));
    config.replica_check_interval = Duration::from_millis(500);
    config
}

/// How many write calls (`ApplyEvents`, or `CreateUser` with batching off)
/// a replica answered OK, from its `/metrics`. The tests deliver one event at
/// a time, so each call carries one create.
async fn creates_served(replica: &TestServer) -> u64 {
    let addr = replica.metrics_addr.expect("replica metrics are on");
    let text = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    ["userdata.v1.EventService/ApplyEvents", "userdata.v1.UserService/CreateUser"]
        .iter()
        .map(|method| format!(r#"grpc_server_requests_total{{method="{method}",code="OK"}}"#))
        .filter_map(|series| {
            text.lines().find_map(|line| line.strip_prefix(series.as_str()))?.trim().parse::<u64>().ok()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_spread_over_both_replicas() {
    let (first, second) = two_replicas().await;
    let gateway = Gateway::start_with(balancing_config(&[&first, &second])).await;

    for n in 0..16 {
        let answer = gateway
            .post_signed(&format!("msg_spread_{n}"), &user_event("user.created", &format!("user_spread_{n}")))
            .await;
        assert_eq!(answer.status, 200, "delivery {n}: {:?}", answer.json);
        assert_eq!(answer.json["outcome"], "applied");
    }

    let (a, b) = (creates_served(&first).await, creates_served(&second).await);
    assert_eq!(a + b, 16);
    assert!(a > 0 && b > 0, "one replica got every call: {a} and {b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_is_skipped_and_events_still_apply() {
    let (first, second) = two_replicas().await;
    let gateway = Gateway::start_with(balancing_config(&[&first, &second])).await;
    for n in 0..4 {
        let answer = gateway
            .post_signed(&format!("msg_warm_{n}"), &user_event("user.created", &format!("user_warm_{n}")))
            .await;
        assert_eq!(answer.status, 200, "{:?}", answer.json);
    }

    let _database = second.stop().await;

    for n in 0..12 {
        let answer = gateway
            .post_signed(&format!("msg_after_{n}"), &user_event("user.created", &format!("user_after_{n}")))
            .await;
        assert_eq!(answer.status, 200, "delivery {n} after the stop: {:?}", answer.json);
        assert_eq!(answer.json["outcome"], "applied");
    }
    // Whatever the warm-up did, every delivery after the stop went to the
    // replica still running.
    assert!(creates_served(&first).await >= 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_is_ready_while_any_replica_serves() {
    let (first, second) = two_replicas().await;
    let gateway = Gateway::start_with(balancing_config(&[&first, &second])).await;
    let ready = gateway.get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json["replicas_serving"], 2);

    let _database = second.stop().await;
    let ready = gateway.get("/readyz").await;
    assert_eq!(ready.status, 200, "{:?}", ready.json);
    assert_eq!(ready.json["replicas_serving"], 1);

    let _database = first.stop().await;
    let ready = gateway.get("/readyz").await;
    assert_eq!(ready.status, 503, "{:?}", ready.json);
}
