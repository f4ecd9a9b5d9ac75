//! Metrics, request ids, logs, load shedding and the call timeout, through
//! the real server.

use std::{
    io::Write,
    net::SocketAddr,
    num::NonZeroUsize,
    sync::{Mutex, Once},
    time::{Duration, Instant},
};

use sqlx::{Connection, PgConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, Request, Status};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_types::StatusExt;
use user_service::config::MetricsListen;
use userdata_proto::v1 as pb;

use crate::helpers::*;

pub fn with_metrics(config: &mut user_service::config::Config) {
    config.metrics_listen = MetricsListen::On("127.0.0.1:0".parse().unwrap());
}

/// `GET /metrics` over a raw HTTP/1.1 connection; the body.
pub async fn scrape(addr: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain"), "{head}");
    body.to_owned()
}

/// The value of the sample `name{labels…}`, whatever the label order.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        if labels.is_empty()
            && let Some(value) = rest.strip_prefix(' ')
        {
            return value.trim().parse().ok();
        }
        let rest = rest.strip_prefix('{')?;
        let (inside, value) = rest.split_once("} ")?;
        let found: Vec<&str> = inside.split(',').collect();
        let all = labels.iter().all(|(k, v)| found.contains(&format!("{k}=\"{v}\"").as_str()));
        (all && found.len() == labels.len()).then(|| value.trim().parse().ok()).flatten()
    })
}

crate::on_both_backends!(metrics_count_calls_by_method_and_code_and_show_the_pool);

async fn metrics_count_calls_by_method_and_code_and_show_the_pool(db: Db) {
    let server = TestServer::start_with(db, with_metrics).await;
    let mut users = server.users().await;
    create(&mut users, "user_m").await;
    get_by_clerk_id(&mut users, "user_m").await.unwrap();
    get_by_clerk_id(&mut users, "user_m").await.unwrap();
    assert_eq!(get_by_clerk_id(&mut users, "user_nobody").await.unwrap_err().code(), Code::NotFound);

    let text = scrape(server.metrics_addr.expect("metrics on")).await;
    let get = "userdata.v1.UserService/GetUser";
    let count = |method: &str, code: &str| {
        sample(&text, "grpc_server_requests_total", &[("method", method), ("code", code)])
    };
    assert_eq!(count(get, "OK"), Some(2.0), "{text}");
    assert_eq!(count(get, "NOT_FOUND"), Some(1.0), "{text}");
    assert_eq!(count("userdata.v1.UserService/CreateUser", "OK"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "grpc_server_request_duration_seconds_count", &[("method", get)]), Some(3.0));
    let in_bucket =
        sample(&text, "grpc_server_request_duration_seconds_bucket", &[("method", get), ("le", "+Inf")]);
    assert_eq!(in_bucket, Some(3.0), "{text}");
    let idle = sample(&text, "db_pool_connections", &[("state", "idle")]).expect("idle gauge");
    let in_use = sample(&text, "db_pool_connections", &[("state", "in_use")]).expect("in_use gauge");
    assert!(idle + in_use >= 1.0, "the pool has connections: {text}");
    assert!(text.contains("# TYPE grpc_server_request_duration_seconds histogram"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_rejected_before_the_handler_are_counted_with_their_code() {
    let mut tokens = tempfile::NamedTempFile::new().unwrap();
    writeln!(tokens, "reader read reader-token-0123456789abcdef").unwrap();
    let path = tokens.path().to_owned();
    let server = TestServer::start_with(Db::Sqlite, move |config| {
        with_metrics(config);
        config.auth_tokens = Some(path);
    })
    .await;
    let err = get_by_clerk_id(&mut server.users().await, "user_a").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let bogus =
        HealthClient::new(server.channel().await).check(HealthCheckRequest { service: "x".into() }).await;
    assert_eq!(bogus.unwrap_err().code(), Code::NotFound);

    let text = scrape(server.metrics_addr.unwrap()).await;
    let get = [("method", "userdata.v1.UserService/GetUser"), ("code", "UNAUTHENTICATED")];
    assert_eq!(sample(&text, "grpc_server_requests_total", &get), Some(1.0), "{text}");
    let health = [("method", "grpc.health.v1.Health/Check"), ("code", "NOT_FOUND")];
    assert_eq!(sample(&text, "grpc_server_requests_total", &health), Some(1.0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_not_served_when_turned_off() {
    let server = TestServer::start(Db::Sqlite).await;
    assert_eq!(server.metrics_addr, None);
}

/// Log lines of every server in this test process, as text.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends INFO and above of the whole process into [`LOGS`] (once).
fn capture_logs() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .try_init();
    });
}

fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

fn with_request_id<T>(message: T, id: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("x-request-id", id.parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_id_sent_in_metadata_comes_back_in_the_response_headers_and_the_logs() {
    capture_logs();
    let server = TestServer::start(Db::Sqlite).await;
    let mut users = server.users().await;
    let id = format!("it-{}", uuid::Uuid::now_v7().simple());
    let request = pb::CreateUserRequest { user: Some(new_user("user_rid")), ..Default::default() };
    let response = users.create_user(with_request_id(request, &id)).await.unwrap();
    assert_eq!(response.metadata().get("x-request-id").unwrap(), id.as_str());

    let line = logs().lines().find(|line| line.contains(&id)).map(str::to_owned);
    let line = line.expect("a log line with the request id");
    assert!(line.contains("call finished") && line.contains("CreateUser"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_response_carries_the_request_id_too() {
    let server = TestServer::start(Db::Sqlite).await;
    let mut users = server.users().await;
    let request = pb::GetUserRequest { clerk_id: "user_nobody".into(), ..Default::default() };
    let err = users.get_user(with_request_id(request, "req-404")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.metadata().get("x-request-id").unwrap(), "req-404");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_a_request_id_gets_a_new_one() {
    let server = TestServer::start(Db::Sqlite).await;
    let mut users = server.users().await;
    let response = users
        .create_user(pb::CreateUserRequest { user: Some(new_user("user_new_id")), ..Default::default() })
        .await
        .unwrap();
    let id = response.metadata().get("x-request-id").expect("a request id").to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emails_names_and_tokens_stay_out_of_the_logs() {
    capture_logs();
    let token = "logged-token-0123456789abcdef";
    let mut tokens = tempfile::NamedTempFile::new().unwrap();
    writeln!(tokens, "writer read,write {token}").unwrap();
    let path = tokens.path().to_owned();
    let server = TestServer::start_with(Db::Sqlite, move |config| config.auth_tokens = Some(path)).await;
    let id = format!("it-{}", uuid::Uuid::now_v7().simple());
    let user = pb::User {
        clerk_id: "user_private".into(),
        email: Some("private.person@example.org".into()),
        first_name: Some("Privatefirstname".into()),
        last_name: Some("Privatelastname".into()),
        ..Default::default()
    };
    let mut request = with_request_id(pb::CreateUserRequest { user: Some(user), ..Default::default() }, &id);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    server.users().await.create_user(request).await.unwrap();
    let mut wrong = with_request_id(pb::GetUserRequest::default(), &id);
    wrong.metadata_mut().insert("authorization", "Bearer wrong-token-0123456789abcdef".parse().unwrap());
    assert_eq!(server.users().await.get_user(wrong).await.unwrap_err().code(), Code::Unauthenticated);

    let logs = logs();
    let ours: Vec<&str> = logs.lines().filter(|line| line.contains(&id)).collect();
    assert!(ours.len() >= 2, "{logs}");
    let named = |line: &&str| line.contains("client=\"writer\"") || line.contains("client=writer");
    assert!(ours.iter().any(named), "{ours:#?}");
    for secret in ["private.person", "Privatefirstname", "Privatelastname", token, "wrong-token"] {
        assert!(!logs.contains(secret), "{secret} was logged: {ours:#?}");
    }
}

/// A transaction on the test database that holds a user's row lock, so
/// that writes to that user wait.
struct RowLock {
    conn: PgConnection,
}

impl RowLock {
    async fn hold(url: &str, clerk_id: &str) -> Self {
        let mut conn = PgConnection::connect(url).await.unwrap();
        sqlx::query("begin").execute(&mut conn).await.unwrap();
        sqlx::query("select 1 from users where clerk_id = $1 for update")
            .bind(clerk_id)
            .execute(&mut conn)
            .await
            .unwrap();
        Self { conn }
    }

    /// Waits until some other session waits for a lock in this test's
    /// database (other tests' databases have waiters of their own).
    async fn wait_for_a_waiter(&mut self) {
        for _ in 0..100 {
            let (waiting,): (i64,) = sqlx::query_as(
                "select count(*) from pg_stat_activity \
                 where datname = current_database() and wait_event_type = 'Lock'",
            )
            .fetch_one(&mut self.conn)
            .await
            .unwrap();
            if waiting > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no call ever waited for the row lock");
    }

    async fn release(mut self) {
        sqlx::query("rollback").execute(&mut self.conn).await.unwrap();
    }
}

fn rename(user: &pb::User, first_name: &str) -> pb::UpdateUserRequest {
    pb::UpdateUserRequest {
        user: Some(pb::User {
            id: user.id.clone(),
            first_name: Some(first_name.into()),
            ..Default::default()
        }),
        update_mask: Some(mask(&["first_name"])),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_concurrency_limit_are_shed_at_once_and_the_server_keeps_serving() {
    let server = TestServer::start_with(Db::Postgres, |config| {
        config.max_concurrent_requests = NonZeroUsize::new(1).unwrap();
    })
    .await;
    let mut users = server.users().await;
    let user = create(&mut users, "user_busy").await;
    let mut lock = RowLock::hold(&server.database.url, "user_busy").await;

    // One call takes the only slot and waits for the row lock...
    let mut blocked_client = users.clone();
    let blocked_request = rename(&user, "Blocked");
    let blocked = tokio::spawn(async move { blocked_client.update_user(blocked_request).await });
    lock.wait_for_a_waiter().await;

    // ...so a burst of others is turned away at once, not queued.
    let burst: Vec<_> = (0..5)
        .map(|i| {
            let mut client = users.clone();
            let request = rename(&user, &format!("Burst{i}"));
            tokio::spawn(async move {
                let started = Instant::now();
                let outcome = tokio::time::timeout(Duration::from_secs(5), client.update_user(request)).await;
                (outcome.expect("a shed call must not hang").map(|_| ()), started.elapsed())
            })
        })
        .collect();
    for call in burst {
        let (outcome, elapsed) = call.await.unwrap();
        let status: Status = outcome.expect_err("the server is full");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(status.get_details_error_info().unwrap().reason, "OVERLOADED");
        assert!(elapsed < Duration::from_secs(2), "shed after {elapsed:?}");
    }
    // Health checks are not shed.
    HealthClient::new(server.channel().await).check(HealthCheckRequest::default()).await.unwrap();

    lock.release().await;
    let finished = blocked.await.unwrap().unwrap().into_inner().user.unwrap();
    assert_eq!(finished.first_name.as_deref(), Some("Blocked"));
    let after = users.update_user(rename(&user, "After")).await.unwrap().into_inner().user.unwrap();
    assert_eq!(after.first_name.as_deref(), Some("After"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_longer_than_the_request_timeout_fails_with_deadline_exceeded() {
    let server =
        TestServer::start_with(Db::Postgres, |config| config.request_timeout = Duration::from_millis(300))
            .await;
    let mut users = server.users().await;
    let user = create(&mut users, "user_slow").await;
    let lock = RowLock::hold(&server.database.url, "user_slow").await;

    let started = Instant::now();
    let outcome =
        tokio::time::timeout(Duration::from_secs(5), users.update_user(rename(&user, "Slow"))).await;
    let status = outcome.expect("the server must answer").unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(status.get_details_error_info().unwrap().reason, "REQUEST_TIMEOUT");
    assert!(started.elapsed() < Duration::from_secs(3), "answered after {:?}", started.elapsed());

    lock.release().await;
    let after = users.update_user(rename(&user, "After")).await.unwrap().into_inner().user.unwrap();
    assert_eq!(after.first_name.as_deref(), Some("After"));
}

/// An `ApplyEvents` call carrying one Clerk update of `clerk_id`.
fn batch_update(clerk_id: &str, first_name: &str) -> pb::ApplyEventsRequest {
    let update = clerk_update(clerk_id, first_name, "L", &format!("msg_{first_name}"), 2_000);
    pb::ApplyEventsRequest {
        writes: vec![pb::EventWrite {
            request_id: String::new(),
            write: Some(pb::event_write::Write::UpdateUser(update)),
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_events_call_holds_its_slot_until_its_stream_ends() {
    use pb::event_service_client::EventServiceClient;
    let server = TestServer::start_with(Db::Postgres, |config| {
        config.max_concurrent_requests = NonZeroUsize::new(1).unwrap();
    })
    .await;
    let mut users = server.users().await;
    users.create_user(clerk_create("user_batch_busy", "Ann", "msg_busy", 1_000)).await.unwrap();
    let mut lock = RowLock::hold(&server.database.url, "user_batch_busy").await;

    // The handler answers at once; the write waits for the row lock in the
    // stream, and the call keeps the only slot meanwhile.
    let mut events = EventServiceClient::new(server.channel().await);
    let mut stream = events.apply_events(batch_update("user_batch_busy", "Held")).await.unwrap().into_inner();
    lock.wait_for_a_waiter().await;
    let shed = get_by_clerk_id(&mut users, "user_batch_busy").await.unwrap_err();
    assert_eq!(shed.code(), Code::Unavailable, "{shed:?}");
    assert_eq!(shed.get_details_error_info().unwrap().reason, "OVERLOADED");

    lock.release().await;
    while stream.message().await.unwrap().is_some() {}
    let after = get_by_clerk_id(&mut users, "user_batch_busy").await.unwrap();
    assert_eq!(after.first_name.as_deref(), Some("Held"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_events_stream_longer_than_the_request_timeout_ends_with_deadline_exceeded() {
    use pb::event_service_client::EventServiceClient;
    let server =
        TestServer::start_with(Db::Postgres, |config| config.request_timeout = Duration::from_millis(300))
            .await;
    let mut users = server.users().await;
    users.create_user(clerk_create("user_batch_slow", "Ann", "msg_slow", 1_000)).await.unwrap();
    let lock = RowLock::hold(&server.database.url, "user_batch_slow").await;

    let started = Instant::now();
    let mut events = EventServiceClient::new(server.channel().await);
    let mut stream = events.apply_events(batch_update("user_batch_slow", "Slow")).await.unwrap().into_inner();
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.message()).await;
    let status = ended.expect("the server must end the stream").unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(status.get_details_error_info().unwrap().reason, "REQUEST_TIMEOUT");
    assert!(started.elapsed() < Duration::from_secs(3), "ended after {:?}", started.elapsed());

    lock.release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_waiting_for_a_database_connection_are_shown() {
    let server = TestServer::start_with(Db::Postgres, |config| {
        with_metrics(config);
        config.max_connections = 1;
        config.acquire_timeout = Duration::from_secs(10);
        // Nothing in the background may wait for the one connection too:
        // the health check's ping and the change feed's poll would.
        config.health_check_interval = Duration::from_secs(3600);
        config.change_poll_interval = Duration::from_secs(3600);
    })
    .await;
    let mut users = server.users().await;
    let user = create(&mut users, "user_pool").await;
    let mut lock = RowLock::hold(&server.database.url, "user_pool").await;
    // The only connection waits on the row lock inside an update...
    let mut blocked_client = users.clone();
    let blocked_request = rename(&user, "Blocked");
    let blocked = tokio::spawn(async move { blocked_client.update_user(blocked_request).await });
    lock.wait_for_a_waiter().await;
    // ...so a read has to wait for the connection.
    let mut reader = users.clone();
    let read = tokio::spawn(async move { get_by_clerk_id(&mut reader, "user_pool").await });

    let mut waiting = None;
    for _ in 0..50 {
        let text = scrape(server.metrics_addr.expect("metrics on")).await;
        waiting = sample(&text, "db_pool_connections", &[("state", "waiting")]);
        if waiting >= Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(waiting, Some(1.0));

    lock.release().await;
    assert!(blocked.await.unwrap().is_ok());
    assert!(read.await.unwrap().is_ok());
    let text = scrape(server.metrics_addr.expect("metrics on")).await;
    assert_eq!(sample(&text, "db_pool_connections", &[("state", "waiting")]), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_change_followers_connected_and_their_lag() {
    use userdata_proto::v1::change_service_client::ChangeServiceClient;
    let server = TestServer::start_with(Db::Sqlite, with_metrics).await;
    let addr = server.metrics_addr.expect("metrics on");
    let followers = |text: &str| sample(text, "change_stream_followers", &[]);
    let mut changes = ChangeServiceClient::new(server.channel().await);
    let first = changes.watch_changes(pb::WatchChangesRequest::default()).await.unwrap().into_inner();
    let second = changes.watch_changes(pb::WatchChangesRequest::default()).await.unwrap().into_inner();
    let text = scrape(addr).await;
    assert_eq!(followers(&text), Some(2.0), "{text}");
    assert_eq!(sample(&text, "change_stream_max_lag_seconds", &[]), Some(0.0), "nobody is behind: {text}");

    drop((first, second));
    let deadline = Instant::now() + Duration::from_secs(10);
    while followers(&scrape(addr).await) != Some(0.0) {
        assert!(Instant::now() < deadline, "the followers gauge went back to 0");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
