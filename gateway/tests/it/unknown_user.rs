//! `session.*` events for a user user-service does not know, carrying no user
//! object: retried (503) while young, acknowledged as `unknown_user` after
//! `--unknown-user-retry-window`, and counted under that outcome.

use std::time::Duration;

use gateway::config::MetricsListen;
use user_service::testing::{Db, TestServer};

use crate::{
    metrics::events,
    support::{Gateway, SECRET, config, now, url_of},
};

/// A `session.revoked` without `data.user`, as Clerk's catalog shows it, for
/// a user nobody created, stamped `age` ago.
fn revoked_session(age: Duration) -> String {
    let at = (now() - i64::try_from(age.as_secs()).unwrap()) * 1000;
    serde_json::json!({
        "type": "session.revoked",
        "object": "event",
        "timestamp": at,
        "data": {"id": "sess_unknown", "object": "session", "user_id": "user_never_created",
                 "status": "revoked", "created_at": at - 60_000, "updated_at": at, "last_active_at": at}
    })
    .to_string()
}

/// A gateway with metrics in front of a real user-service, with the given
/// retry window.
async fn gateway_with_window(server: &TestServer, window: Duration) -> Gateway {
    let mut config = config(url_of(server.addr), SECRET);
    config.metrics_listen = MetricsListen::On("127.0.0.1:0".parse().unwrap());
    config.unknown_user_retry_window = window;
    Gateway::start_with(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_older_than_the_window_is_acknowledged_as_unknown_user_and_counted() {
    let server = TestServer::start(Db::Sqlite).await;
    let gateway = gateway_with_window(&server, Duration::from_secs(60)).await;

    let answer = gateway.post_signed("msg_old_unknown", &revoked_session(Duration::from_secs(120))).await;

    assert_eq!(answer.status, 200, "{:?}", answer.json);
    assert_eq!(answer.json["outcome"], "unknown_user");
    assert_eq!(events(&gateway.metrics().await, "session.revoked", "unknown_user"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_within_the_window_is_answered_503_so_svix_retries() {
    let server = TestServer::start(Db::Sqlite).await;
    let gateway = gateway_with_window(&server, Duration::from_secs(3600)).await;

    let answer = gateway.post_signed("msg_young_unknown", &revoked_session(Duration::from_secs(120))).await;

    assert_eq!(answer.status, 503, "{:?}", answer.json);
    assert!(answer.header("retry-after").is_some());
    assert_eq!(answer.json["field"], "data.user_id");
    let text = gateway.metrics().await;
    assert_eq!(events(&text, "session.revoked", "retry_asked"), 1.0);
    assert_eq!(events(&text, "session.revoked", "unknown_user"), 0.0);
}

#[test]
fn the_window_defaults_to_one_hour_and_is_set_by_a_flag() {
    use clap::Parser;
    let parse = |args: &[&str]| match gateway::Cli::try_parse_from(args).and_then(gateway::Cli::into_command)
    {
        Ok(gateway::Command::Serve(args)) => args.unknown_user_retry_window,
        other => panic!("expected serve, got {other:?}"),
    };
    assert_eq!(parse(&["gateway", "serve"]), Duration::from_secs(3600));
    assert_eq!(parse(&["gateway", "serve", "--unknown-user-retry-window", "90m"]), Duration::from_secs(5400));
}

/// The `gateway serve` binary, killed when dropped.
struct ServeProcess {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `gateway serve` on 127.0.0.1:0 in front of `server`, with `env`
/// added, and waits for the line saying where it listens.
fn serve_binary(server: &TestServer, env: &[(&str, &str)]) -> ServeProcess {
    use std::io::{BufRead, BufReader};
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--user-service-url"])
        .arg(url_of(server.addr).to_string())
        .env_remove("GATEWAY_UNKNOWN_USER_RETRY_WINDOW")
        .env("CLERK_WEBHOOK_SIGNING_SECRET", SECRET)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start the gateway binary: {e}"));
    let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
    let (found, address) = std::sync::mpsc::channel();
    // Keeps reading after the address line, so the pipe never fills up.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.contains("gateway listening").then(|| listen_field(&line)).flatten() {
                let _ = found.send(addr);
            }
        }
    });
    let addr = address
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("the gateway did not say where it listens: {e}"));
    ServeProcess { child, addr }
}

/// `listen=<addr>` of a human log line.
fn listen_field(line: &str) -> Option<std::net::SocketAddr> {
    line.split_whitespace().find_map(|field| field.strip_prefix("listen=")?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_is_read_from_gateway_unknown_user_retry_window() {
    let server = TestServer::start(Db::Sqlite).await;
    let process =
        tokio::task::block_in_place(|| serve_binary(&server, &[("GATEWAY_UNKNOWN_USER_RETRY_WINDOW", "1m")]));
    let body = revoked_session(Duration::from_secs(120));
    let headers = crate::support::signed(SECRET, "msg_env_window", now(), &body);

    let answer = reqwest::Client::new()
        .post(format!("http://{}/webhooks/clerk", process.addr))
        .headers(headers)
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST: {e}"));

    // Two minutes old: past a one-minute window, within the default hour.
    assert_eq!(answer.status(), 200);
    let bytes = answer.bytes().await.unwrap_or_else(|e| panic!("reading the answer: {e}"));
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    assert_eq!(json["outcome"], "unknown_user", "{json}");
}
