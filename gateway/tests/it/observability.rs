//! Request ids and logs, captured from the real gateway and a real
//! user-service running in this test's thread.
//!
//! One subscriber is installed for the whole test binary, once, and writes
//! only into the buffer of a thread whose test asked for capture (every other
//! line is dropped). Each test uses the single-threaded test runtime, so the
//! gateway's and user-service's tasks log on its thread. (A subscriber per
//! test through `tracing::subscriber::set_default` loses events when tests
//! run in parallel: each one coming or going makes tracing recompute its
//! global level filter, and those recomputations race.)

use std::{
    cell::RefCell,
    io,
    sync::{Arc, Mutex, Once},
};

use gateway::config::UserServiceToken;
use tracing_subscriber::fmt::MakeWriter;
use user_service::testing::{Db, TestServer};

use crate::support::{
    FOREIGN_SECRET, FakeUpstream, Gateway, Reply, SECRET, config, now, signed, url_of, user_event,
};

/// Log output collected in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

thread_local! {
    /// Where this thread's log lines go, while its test captures them.
    static SINK: RefCell<Option<Captured>> = const { RefCell::new(None) };
}

/// Writes into the current thread's [`SINK`], or nowhere.
struct ThreadSink;

/// One log line's writer from [`ThreadSink`].
struct SinkWriter(Option<Captured>);

impl io::Write for SinkWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if let Some(captured) = &self.0 {
            captured.0.lock().unwrap().extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for ThreadSink {
    type Writer = SinkWriter;

    fn make_writer(&'a self) -> Self::Writer {
        SinkWriter(SINK.with(|sink| sink.borrow().clone()))
    }
}

/// Stops capturing on this thread when dropped.
struct CaptureGuard;

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        SINK.with(|sink| sink.borrow_mut().take());
    }
}

/// Captures this thread's logs at INFO and above, human format, until the
/// guard is dropped.
fn capture_info_logs() -> (Captured, CaptureGuard) {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(ThreadSink)
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in this binary");
    });
    let captured = Captured::default();
    SINK.with(|sink| *sink.borrow_mut() = Some(captured.clone()));
    (captured, CaptureGuard)
}

/// POSTs a signed `body` as message `msg_id` with `x-request-id: id`.
async fn post_with_id(
    gateway: &Gateway,
    secret: &str,
    msg_id: &str,
    body: &str,
    id: &str,
) -> reqwest::Response {
    gateway
        .http
        .post(gateway.url("/webhooks/clerk"))
        .headers(signed(secret, msg_id, now(), body))
        .header("x-request-id", id)
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_request_id_sent_to_the_gateway_reaches_user_service() {
    let (logs, _guard) = capture_info_logs();
    let server = TestServer::start(Db::Sqlite).await;
    let gateway = Gateway::start_with(config(url_of(server.addr), SECRET)).await;

    let response =
        post_with_id(&gateway, SECRET, "msg_rid", &user_event("user.created", "user_rid"), "it-request-7f3a")
            .await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers().get("x-request-id").and_then(|v| v.to_str().ok()), Some("it-request-7f3a"));
    let text = logs.text();
    let served = text.lines().find(|line| line.contains("user_service") && line.contains("call finished"));
    let served = served.unwrap_or_else(|| panic!("no user-service call was logged:\n{text}"));
    assert!(served.contains("request_id=it-request-7f3a"), "{served}");
}

#[tokio::test]
async fn every_gateway_log_line_of_a_request_carries_its_request_id() {
    let (logs, _guard) = capture_info_logs();
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;
    let body = user_event("user.created", "user_logged");

    post_with_id(&gateway, SECRET, "msg_logged_1", &body, "rid-applied").await;
    post_with_id(&gateway, FOREIGN_SECRET, "msg_logged_2", &body, "rid-forged").await;
    upstream.reply_with(Reply::Fail(tonic::Code::Unavailable, "down"));
    post_with_id(&gateway, SECRET, "msg_logged_3", &body, "rid-failed").await;

    let text = logs.text();
    let request_lines: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("gateway::"))
        .filter(|line| !line.contains("gateway listening") && !line.contains("no user-service token"))
        .collect();
    assert!(request_lines.len() >= 3, "expected a line per request:\n{text}");
    for line in request_lines {
        let tagged = ["rid-applied", "rid-forged", "rid-failed"]
            .iter()
            .any(|id| line.contains(&format!("request_id={id}")));
        assert!(tagged, "a request's log line lacks its request id: {line}");
    }
}

#[tokio::test]
async fn logs_at_info_and_above_hold_no_personal_data_and_no_secret() {
    const TOKEN: &str = "gateway-log-token-0123456789";
    let (logs, _guard) = capture_info_logs();
    let tokens = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tokens.path(), format!("gateway write {TOKEN}\n")).unwrap();
    let path = tokens.path().to_owned();
    let server = TestServer::start_with(Db::Sqlite, move |config| config.auth_tokens = Some(path)).await;
    let mut config = config(url_of(server.addr), SECRET);
    config.user_service_token = Some(UserServiceToken::parse(TOKEN, "test").unwrap());
    let gateway = Gateway::start_with(config).await;
    let session = serde_json::json!({
        "type": "session.created",
        "object": "event",
        "timestamp": 1_750_000_200_000_i64,
        "data": {
            "id": "sess_logged",
            "user_id": "user_private",
            "created_at": 1_750_000_200_000_i64,
            "updated_at": 1_750_000_200_000_i64,
            "latest_activity": {"browser_name": "Firefox", "ip_address": "203.0.113.77"}
        }
    })
    .to_string();

    let created = gateway.post_signed("msg_private_1", &user_event("user.created", "user_private")).await;
    let login = gateway.post_signed("msg_private_2", &session).await;
    let forged =
        gateway.post(signed(FOREIGN_SECRET, "msg_private_3", now(), &session), session.clone()).await;

    assert_eq!((created.status.as_u16(), login.status.as_u16(), forged.status.as_u16()), (200, 200, 401));
    let text = logs.text();
    assert!(text.contains("webhook processed"), "nothing was logged:\n{text}");
    for private in ["grace@example.test", "Grace", "Hopper", "203.0.113.77", TOKEN, SECRET, "whsec_"] {
        assert!(!text.contains(private), "`{private}` was logged:\n{text}");
    }
}
