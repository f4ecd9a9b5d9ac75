//! Hostile connections against the real gateway over real sockets: silent
//! and trickling connections, storms of concurrent forgeries, floods of
//! `/readyz`, requests beyond the in-flight limit. In each, a genuine Svix
//! delivery must still get through at once.

use std::{
    net::SocketAddr,
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
    support::{FOREIGN_SECRET, FakeUpstream, Gateway, SECRET, config, now, signed, user_event},
};

/// Silent connections held open in the starvation test.
const SILENT: usize = 1000;
/// Connections trickling their request head one byte at a time.
const TRICKLING: usize = 200;

/// Makes sure the process may open `needed` file descriptors (each held
/// connection costs two: ours and the gateway's), raising the soft limit up
/// to the hard one. Fails the test, rather than skipping it, when it cannot.
fn make_room_for_descriptors(needed: u64) {
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

/// Polls `/metrics` until `metric` (no labels) satisfies `done`; fails after
/// `within`.
async fn wait_for_metric(
    gateway: &Gateway,
    metric: &str,
    within: Duration,
    done: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let value = sample(&gateway.metrics().await, metric, &[]);
        if done(value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{metric} stayed at {value} for {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_webhook_is_answered_at_once_while_a_host_holds_1200_silent_and_trickling_connections() {
    make_room_for_descriptors(2 * (SILENT + TRICKLING) as u64 + 512);
    let upstream = FakeUpstream::start().await;
    let timeout = Duration::from_secs(2);
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
    // out (the header-read timeout, 2 s here), trickling ones included.
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
