//! Hostile connections against the real gateway over real sockets: silent
//! and trickling connections, storms of concurrent forgeries, floods of
//! `/readyz`, requests beyond the in-flight limit. In each, a genuine Svix
//! delivery must still get through at once.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use gateway::config::{MetricsListen, RateLimit};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream, tcp::OwnedReadHalf},
    task::JoinSet,
};

use crate::{
    metrics::sample,
    support::{
        FOREIGN_SECRET, FakeUpstream, Gateway, SECRET, config, now, post_signed_with, signed, user_event,
        wait_for_metric,
    },
};

/// Silent connections held open in the starvation test.
const SILENT: usize = 1000;
/// Connections trickling their request head one byte at a time.
const TRICKLING: usize = 200;

/// Makes sure the process may open `needed` file descriptors (each held
/// connection costs two: ours and the gateway's), raising the soft limit up
/// to the hard one. Fails the test, rather than skipping it, when it cannot.
pub fn make_room_for_descriptors(needed: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < needed {
        assert!(hard >= needed, "this test needs {needed} file descriptors; the hard limit is {hard}");
        setrlimit(Resource::RLIMIT_NOFILE, needed, hard).expect("setrlimit");
    }
}

/// The test config with `/metrics` on and the given connection timeouts.
fn hostile_config(upstream: &FakeUpstream, timeout: Duration) -> gateway::Config {
    let mut config = config(upstream.url(), SECRET);
    config.metrics_listen = MetricsListen::On("127.0.0.1:0".parse().unwrap());
    config.connections.header_read_timeout = timeout;
    config.connections.idle_timeout = timeout;
    config
}

/// A TCP connection to `addr` from the loopback address `from`.
async fn connect_from(from: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Reads until the gateway closes the connection (EOF or reset).
async fn closed_by_peer(mut reader: OwnedReadHalf) {
    let mut buf = [0_u8; 512];
    while let Ok(n) = reader.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

// The guard is a std mutex on purpose (timed sync tests take it too); each
// test has its own runtime, so holding it across awaits cannot deadlock.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_webhook_is_answered_at_once_while_a_host_holds_1200_silent_and_trickling_connections() {
    let _flood = crate::support::cpu_heavy();
    make_room_for_descriptors(2 * (SILENT + TRICKLING) as u64 + 512);
    let upstream = FakeUpstream::start().await;
    // Long enough that all 1,200 connections are open at once even on a
    // loaded machine, short enough for a test.
    let timeout = Duration::from_secs(6);
    let mut config = hostile_config(&upstream, timeout);
    // Room for every held connection, so they are closed by the timeouts
    // (the eviction under the per-IP cap has its own test).
    config.connections.max_connections_per_ip = 2 * (SILENT + TRICKLING);
    let gateway = Gateway::start_with(config).await;

    // Readers to see each connection closed; the silent writers are kept so
    // we never half-close them ourselves.
    let (mut readers, mut silent) = (Vec::new(), Vec::new());
    for _ in 0..SILENT {
        let (reader, writer) = TcpStream::connect(gateway.addr).await.unwrap().into_split();
        readers.push(reader);
        silent.push(writer);
    }
    let mut trickling = Vec::new();
    for _ in 0..TRICKLING {
        let (reader, mut writer) = TcpStream::connect(gateway.addr).await.unwrap().into_split();
        writer.write_all(b"POST /webhooks/clerk HTTP/1.1\r\nhost: gateway\r\n").await.unwrap();
        readers.push(reader);
        trickling.push(writer);
    }
    // One more header byte per connection every 100 ms, until the gateway
    // hangs up: a slowloris that never finishes its head.
    let trickle = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(100));
        while !trickling.is_empty() {
            every.tick().await;
            let mut still_open = Vec::new();
            for mut writer in trickling {
                if writer.write_all(b"x").await.is_ok() {
                    still_open.push(writer);
                }
            }
            trickling = still_open;
        }
    });
    let total = (SILENT + TRICKLING) as f64;
    wait_for_metric(&gateway, "http_connections_open", Duration::from_secs(10), |open| open >= total).await;

    let started = Instant::now();
    let answer = gateway.post_signed("msg_under_siege", &user_event("user.created", "user_siege")).await;
    let elapsed = started.elapsed();

    assert_eq!(answer.status, 200, "{:?}", answer.json);
    assert!(elapsed < Duration::from_secs(1), "the genuine delivery took {elapsed:?}");
    assert_eq!(upstream.calls().len(), 1);

    // Every held connection is closed by the gateway once the timeouts run
    // out (the header-read timeout, 6 s here), trickling ones included.
    let mut closing = JoinSet::new();
    for reader in readers {
        closing.spawn(closed_by_peer(reader));
    }
    let all_closed = async { while closing.join_next().await.is_some() {} };
    tokio::time::timeout(timeout + Duration::from_secs(15), all_closed)
        .await
        .expect("held connections are closed after the timeouts");
    // Figures for RELIABILITY.md (shown with --nocapture).
    eprintln!(
        "genuine delivery answered in {elapsed:?}; held connections all closed {:?} after it",
        started.elapsed()
    );
    tokio::time::timeout(Duration::from_secs(5), trickle).await.expect("trickling stops").unwrap();
    wait_for_metric(&gateway, "http_connections_open", Duration::from_secs(5), |open| open == 0.0).await;
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_over_its_connection_cap_pushes_out_only_its_own_idle_connections() {
    let upstream = FakeUpstream::start().await;
    let mut config = hostile_config(&upstream, Duration::from_secs(30));
    config.connections.max_connections_per_ip = 16;
    let gateway = Gateway::start_with(config).await;
    // Another client's idle connection, opened first.
    let mut bystander = connect_from([127, 0, 0, 2], gateway.addr).await;
    wait_for_metric(&gateway, "http_connections_open", Duration::from_secs(5), |open| open >= 1.0).await;

    // 200 silent connections from 127.0.0.1: all but the last 16 are pushed
    // out by the later ones, long before any timeout.
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for _ in 0..200 {
        let (reader, writer) = TcpStream::connect(gateway.addr).await.unwrap().into_split();
        readers.push(reader);
        writers.push(writer);
    }
    let mut closing = JoinSet::new();
    for reader in readers.drain(..184) {
        closing.spawn(closed_by_peer(reader));
    }
    let all_closed = async { while closing.join_next().await.is_some() {} };
    tokio::time::timeout(Duration::from_secs(10), all_closed)
        .await
        .expect("the oldest connections are pushed out");

    // A genuine delivery from the same address still gets in, by pushing
    // out one more of that host's silent connections.
    let answer = gateway.post_signed("msg_same_host", &user_event("user.created", "user_same_host")).await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    let text = gateway.metrics().await;
    assert!(sample(&text, "http_connections_evicted_total", &[]) >= 185.0, "{text}");

    // The other client's connection was never touched: it still serves.
    bystander.write_all(b"GET /healthz HTTP/1.1\r\nhost: gateway\r\n\r\n").await.unwrap();
    let mut buf = [0_u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), bystander.read(&mut buf)).await.unwrap().unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&buf[..n]));
    drop(writers);
}

/// The status code at the start of an HTTP/1.1 answer.
fn status_of(answer: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(answer);
    text.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0)
}

/// One forgery over a raw connection: its head is sent at once, its body only
/// once `gate` opens, so it is in progress (past the rate limit or refused by
/// it) while all the others are. Returns the answer's status.
async fn gated_forgery(
    addr: SocketAddr,
    (head, body): (Vec<u8>, Vec<u8>),
    mut gate: tokio::sync::watch::Receiver<bool>,
    answered_early: Arc<std::sync::atomic::AtomicUsize>,
) -> u16 {
    let (mut reader, mut writer) = TcpStream::connect(addr).await.unwrap().into_split();
    writer.write_all(&head).await.unwrap();
    let mut answer = vec![0_u8; 4096];
    tokio::select! {
        read = reader.read(&mut answer) => {
            answered_early.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return status_of(&answer[..read.unwrap_or(0)]);
        }
        _ = gate.wait_for(|open| *open) => {}
    }
    let _ = writer.write_all(&body).await;
    let read = reader.read(&mut answer).await.unwrap_or(0);
    status_of(&answer[..read])
}

// The guard is held across awaits on purpose, see above.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_forgeries_from_one_address_reach_the_verifier_at_most_burst_times() {
    let _flood = crate::support::cpu_heavy();
    const FORGERIES: usize = 500;
    const BURST: u32 = 20;
    make_room_for_descriptors(2 * FORGERIES as u64 + 512);
    let upstream = FakeUpstream::start().await;
    let mut config = hostile_config(&upstream, Duration::from_secs(30));
    config.rate_limit = RateLimit { per_second: 1, burst: BURST };
    config.connections.max_connections_per_ip = 2 * FORGERIES;
    config.connections.max_in_flight = 2 * FORGERIES;
    config.connections.max_in_flight_per_ip = Some(2 * FORGERIES);
    let gateway = Gateway::start_with(config).await;
    let body = user_event("user.updated", "user_victim");

    let started = Instant::now();
    let (open, gate) = tokio::sync::watch::channel(false);
    let answered_early = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut storm = JoinSet::new();
    for n in 0..FORGERIES {
        let mut head = format!(
            "POST /webhooks/clerk HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n",
            body.len()
        );
        for (name, value) in &signed(FOREIGN_SECRET, &format!("msg_forged_{n}"), now(), &body) {
            head.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
        }
        head.push_str("\r\n");
        let request = (head.into_bytes(), body.clone().into_bytes());
        storm.spawn(gated_forgery(gateway.addr, request, gate.clone(), answered_early.clone()));
    }
    // Every forgery is either refused already or in progress past the limit:
    // only then may their bodies come, so none has failed yet when the last
    // is let in.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let in_flight = sample(&gateway.metrics().await, "http_requests_in_flight", &[]) as usize;
        if answered_early.load(std::sync::atomic::Ordering::SeqCst) + in_flight >= FORGERIES {
            break;
        }
        assert!(Instant::now() < deadline, "the forgeries never all arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    open.send(true).unwrap();
    let statuses = storm.join_all().await;
    let elapsed = started.elapsed();

    // Tokens refill at 1/s while the storm lasts: those are allowed too.
    let allowed = BURST as usize + elapsed.as_secs() as usize + 1;
    let verified = statuses.iter().filter(|&&status| status == 401).count();
    let limited = statuses.iter().filter(|&&status| status == 429).count();
    assert_eq!(verified + limited, FORGERIES, "{statuses:?}");
    assert!(verified <= allowed, "{verified} forgeries reached the verifier (allowed {allowed})");
    let text = gateway.metrics().await;
    let rejected = sample(&text, "webhook_events_total", &[("outcome", "rejected")]);
    assert_eq!(rejected, verified as f64, "{text}");
    upstream.assert_not_called();
    eprintln!("{FORGERIES} concurrent forgeries in {elapsed:?}: {verified} verified, {limited} answered 429");
}

#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_readyz_probes_costs_one_health_check_per_cache_period() {
    let _flood = crate::support::cpu_heavy();
    const PROBES: usize = 300;
    make_room_for_descriptors(2 * PROBES as u64 + 512);
    let upstream = FakeUpstream::start().await;
    let mut config = hostile_config(&upstream, Duration::from_secs(10));
    config.readiness_cache = gateway::config::MAX_READINESS_CACHE;
    // Every probe comes from 127.0.0.1: room for all of them at once, so
    // only the health checks are counted here, not the caps.
    config.connections.max_connections_per_ip = 2 * PROBES;
    config.connections.max_in_flight_per_ip = Some(2 * PROBES);
    let gateway = Arc::new(Gateway::start_with(config).await);

    let started = Instant::now();
    let mut flood = JoinSet::new();
    for _ in 0..PROBES {
        let gateway = gateway.clone();
        flood.spawn(async move { gateway.get("/readyz").await.status.as_u16() });
    }
    let statuses = flood.join_all().await;
    let elapsed = started.elapsed();

    assert!(statuses.iter().all(|&status| status == 200), "{statuses:?}");
    let text = gateway.metrics().await;
    let checks = sample(&text, "upstream_requests_total", &[("method", "grpc.health.v1.Health/Check")]);
    let periods = 1 + (elapsed.as_secs_f64() / gateway::config::MAX_READINESS_CACHE.as_secs_f64()) as usize;
    assert!(
        checks >= 1.0 && checks <= periods as f64,
        "{checks} health checks for {PROBES} probes in {elapsed:?}"
    );
    eprintln!("{PROBES} concurrent /readyz probes in {elapsed:?}: {checks} health check(s)");
}

/// Sends a request head announcing a 1 KiB body and only `sent` bytes of it,
/// from a raw connection; returns the connection, left open.
async fn unfinished_post(addr: SocketAddr, sent: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = "POST /webhooks/clerk HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n\
                content-length: 1024\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(sent).await.unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_beyond_the_in_flight_limit_is_answered_503_with_retry_after_before_its_body() {
    let upstream = FakeUpstream::start().await;
    let mut config = hostile_config(&upstream, Duration::from_secs(10));
    config.connections.max_in_flight = 2;
    // Every test client is 127.0.0.1: this test is about the global cap.
    config.connections.max_in_flight_per_ip = Some(2);
    let gateway = Gateway::start_with(config).await;
    // Two requests whose bodies never finish hold both places.
    let _first = unfinished_post(gateway.addr, b"{").await;
    let _second = unfinished_post(gateway.addr, b"{").await;
    wait_for_metric(&gateway, "http_requests_in_flight", Duration::from_secs(5), |n| n >= 2.0).await;

    // A third whose body never comes is answered at once all the same.
    let mut third = unfinished_post(gateway.addr, b"").await;
    let head = read_head(&mut third).await;

    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(head.contains("retry-after: 1\r\n"), "{head}");
    let text = gateway.metrics().await;
    assert_eq!(sample(&text, "http_requests_shed_total", &[("reason", "global")]), 1.0, "{text}");
    upstream.assert_not_called();
}

/// Reads an HTTP/1.1 answer's head, lower-cased; fails after 5 s or if the
/// connection closes first.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buf = [0_u8; 1024];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed without an answer");
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer).to_ascii_lowercase()
}

/// An HTTP/2 (h2c, prior knowledge) connection to `addr` from 127.0.0.1.
async fn h2_connect(addr: SocketAddr) -> h2::client::SendRequest<bytes::Bytes> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(connection);
    client
}

/// Opens a webhook POST stream whose headers are sent and whose body never
/// is; returns the answer to come and the body's (open) sending half.
async fn h2_unfinished_post(
    client: &h2::client::SendRequest<bytes::Bytes>,
    addr: SocketAddr,
) -> (h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>) {
    let request = http::Request::post(format!("http://{addr}/webhooks/clerk"))
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let mut client = client.clone().ready().await.unwrap();
    client.send_request(request, false).unwrap()
}

/// The gateway with the given in-flight caps and `/metrics` on.
async fn gateway_with_in_flight_caps(upstream: &FakeUpstream, total: usize, per_ip: usize) -> Gateway {
    let mut config = hostile_config(upstream, Duration::from_secs(10));
    config.connections.max_in_flight = total;
    config.connections.max_in_flight_per_ip = Some(per_ip);
    Gateway::start_with(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_requests_from_one_address_beyond_its_in_flight_cap_are_shed_503_before_their_body() {
    let upstream = FakeUpstream::start().await;
    let gateway = gateway_with_in_flight_caps(&upstream, 100, 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(unfinished_post(gateway.addr, b"{").await);
    }
    wait_for_metric(&gateway, "http_requests_in_flight", Duration::from_secs(5), |n| n >= 3.0).await;

    let mut fourth = unfinished_post(gateway.addr, b"").await;
    let head = read_head(&mut fourth).await;

    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(head.contains("retry-after: 1\r\n"), "{head}");
    let text = gateway.metrics().await;
    assert_eq!(sample(&text, "http_requests_shed_total", &[("reason", "per_ip")]), 1.0, "{text}");
    upstream.assert_not_called();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_from_one_address_beyond_its_in_flight_cap_are_shed_503_before_their_body() {
    let upstream = FakeUpstream::start().await;
    let gateway = gateway_with_in_flight_caps(&upstream, 100, 3).await;
    let client = h2_connect(gateway.addr).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(h2_unfinished_post(&client, gateway.addr).await);
    }
    wait_for_metric(&gateway, "http_requests_in_flight", Duration::from_secs(5), |n| n >= 3.0).await;

    let (answer, _body) = h2_unfinished_post(&client, gateway.addr).await;
    let answer = tokio::time::timeout(Duration::from_secs(5), answer).await.unwrap().unwrap();

    assert_eq!(answer.status(), 503);
    assert_eq!(answer.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let text = gateway.metrics().await;
    assert_eq!(sample(&text, "http_requests_shed_total", &[("reason", "per_ip")]), 1.0, "{text}");
    upstream.assert_not_called();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_holding_slow_bodies_leaves_room_for_a_signed_delivery_from_another_address() {
    let upstream = FakeUpstream::start().await;
    // Without the per-address cap, the host's 8 slow requests would take
    // every place and the delivery would get 503.
    let gateway = gateway_with_in_flight_caps(&upstream, 8, 4).await;
    let client = h2_connect(gateway.addr).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(h2_unfinished_post(&client, gateway.addr).await);
    }
    let mut slow = Vec::new();
    for _ in 0..4 {
        slow.push(unfinished_post(gateway.addr, b"{").await);
    }
    wait_for_metric(&gateway, "http_requests_in_flight", Duration::from_secs(5), |n| n >= 4.0).await;
    wait_for_metric(&gateway, "http_requests_shed_total", Duration::from_secs(5), |n| n >= 4.0).await;
    let other = reqwest::Client::builder().local_address(IpAddr::from([127, 0, 0, 2])).build().unwrap();
    let body = user_event("user.created", "user_other_address");

    let started = Instant::now();
    let response = post_signed_with(&other, gateway.addr, "msg_other_address", body).await;
    let elapsed = started.elapsed();

    assert_eq!(response.status(), 200);
    assert!(elapsed < Duration::from_secs(1), "the delivery took {elapsed:?}");
    assert_eq!(upstream.calls().len(), 1);
    // Figures for RELIABILITY.md (shown with --nocapture).
    eprintln!("with one address at its in-flight share, another's delivery answered in {elapsed:?}");
}

// The guard is held across awaits on purpose, see above.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_default_caps_a_host_holding_1000_silent_and_200_slow_requests_still_gets_its_own_delivery_in()
 {
    let _flood = crate::support::cpu_heavy();
    const SLOW: usize = 200;
    make_room_for_descriptors(2 * (SILENT + SLOW) as u64 + 512);
    let upstream = FakeUpstream::start().await;
    // Every connection and in-flight cap at its default.
    let mut config = config(upstream.url(), SECRET);
    config.metrics_listen = MetricsListen::On("127.0.0.1:0".parse().unwrap());
    let gateway = Gateway::start_with(config).await;
    let mut silent = Vec::new();
    for _ in 0..SILENT {
        silent.push(TcpStream::connect(gateway.addr).await.unwrap());
    }
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        slow.push(unfinished_post(gateway.addr, b"{").await);
    }
    wait_for_metric(&gateway, "http_requests_in_flight", Duration::from_secs(10), |n| n >= SLOW as f64).await;

    let started = Instant::now();
    let answer =
        gateway.post_signed("msg_same_host_slow", &user_event("user.created", "user_slow_host")).await;
    let elapsed = started.elapsed();

    assert_eq!(answer.status, 200, "{:?}", answer.json);
    assert!(elapsed < Duration::from_secs(1), "the delivery took {elapsed:?}");
    assert_eq!(sample(&gateway.metrics().await, "http_requests_shed_total", &[]), 0.0);
    eprintln!(
        "with {SILENT} silent and {SLOW} slow requests from one address: delivery answered in {elapsed:?}"
    );
    drop((silent, slow));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_is_served_and_closed_once_idle() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start_with(hostile_config(&upstream, Duration::from_secs(1))).await;
    let client = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();

    let response = client.get(gateway.url("/healthz")).send().await.unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    // The client keeps the connection; the gateway closes it when idle.
    wait_for_metric(&gateway, "http_connections_open", Duration::from_secs(10), |open| open == 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_silent_or_trickling_connections() {
    let upstream = FakeUpstream::start().await;
    // Timeouts far longer than the shutdown is allowed to take.
    let gateway = Gateway::start_with(hostile_config(&upstream, Duration::from_secs(60))).await;
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(TcpStream::connect(gateway.addr).await.unwrap());
    }
    let mut partial = TcpStream::connect(gateway.addr).await.unwrap();
    partial.write_all(b"POST /webhooks/clerk HTTP/1.1\r\nhost: gate").await.unwrap();
    held.push(partial);
    wait_for_metric(&gateway, "http_connections_open", Duration::from_secs(5), |open| open >= 11.0).await;

    let stopped = tokio::time::timeout(Duration::from_secs(5), gateway.stop()).await;

    assert!(stopped.is_ok(), "shutdown waited for connections that never sent a request");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_progress_longer_than_a_second_still_finishes_after_shutdown_begins() {
    let upstream = FakeUpstream::start().await;
    // Longer than the 1 s an idle connection gets to close at shutdown.
    upstream.reply_with(crate::support::Reply::SlowApplied(Duration::from_millis(1300)));
    let mut gateway = Gateway::start_with(hostile_config(&upstream, Duration::from_secs(10))).await;
    let body = user_event("user.created", "user_slow_at_shutdown");
    let headers = signed(SECRET, "msg_slow_at_shutdown", now(), &body);
    let (http, url) = (gateway.http.clone(), gateway.url("/webhooks/clerk"));
    let request = tokio::spawn(async move { http.post(url).headers(headers).body(body).send().await });
    wait_for_metric(&gateway, "http_requests_in_flight", Duration::from_secs(5), |n| n >= 1.0).await;

    gateway.begin_shutdown();
    let response = request.await.unwrap().unwrap();

    assert_eq!(response.status(), 200);
    gateway.stop().await;
}
