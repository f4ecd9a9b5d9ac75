//! The open-files limit: the binary raises it at startup, warns when
//! `--max-connections` does not fit and serves what fits, so silent
//! connections cannot use up its file descriptors.

use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::{
    child::ChildGateway,
    hostile::make_room_for_descriptors,
    metrics::sample,
    support::{FakeUpstream, post_signed_with, user_event},
};

/// The open-files limit the child runs with in the tests that lower it:
/// 128 connections fit beside the 64 descriptors kept for the rest.
const LOWERED: u64 = 192;
const FITS: u64 = LOWERED - gateway::descriptors::RESERVED_DESCRIPTORS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_raises_its_soft_open_files_limit_to_the_hard_one() {
    use nix::sys::resource::{Resource, getrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let upstream = FakeUpstream::start().await;

    let mut gateway = ChildGateway::start(&upstream, Some("-Sn 128"), "info").await;

    let limit = gateway.wait_for_message("open-files limit (RLIMIT_NOFILE)").await;
    assert_eq!(limit["raised_from"], 128, "{limit}");
    assert_eq!(limit["soft"], hard, "{limit}");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_beyond_the_open_files_limit_is_warned_about_and_lowered_to_what_fits() {
    let upstream = FakeUpstream::start().await;

    let mut gateway = ChildGateway::start(&upstream, Some(&format!("-n {LOWERED}")), "info").await;

    let warning = gateway.lines.iter().find(|line| line.contains("--max-connections does not fit")).cloned();
    let warning = warning.unwrap_or_else(|| panic!("no warning:\n{}", gateway.lines.join("\n")));
    assert!(warning.contains("\"level\":\"WARN\""), "{warning}");
    assert!(warning.contains("\"serving_at_most\":128"), "{warning}");
    let listening = gateway.wait_for_message("gateway listening").await;
    assert_eq!(listening["max_connections"], FITS, "{listening}");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_beyond_the_open_files_limit_give_way_and_a_signed_delivery_is_answered_at_once() {
    const SILENT: u64 = 3 * LOWERED;
    make_room_for_descriptors(SILENT + 512);
    let upstream = FakeUpstream::start().await;
    let gateway = ChildGateway::start(&upstream, Some(&format!("-n {LOWERED}")), "info").await;
    let mut silent = Vec::new();
    for _ in 0..SILENT {
        silent.push(TcpStream::connect(gateway.addr).await.unwrap());
    }
    // All of them accepted: each beyond what fits pushed out an older one.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let evicted = sample(&gateway.metrics().await, "http_connections_evicted_total", &[]);
        if evicted >= (SILENT - FITS) as f64 {
            break;
        }
        assert!(Instant::now() < deadline, "only {evicted} connections gave way");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = user_event("user.created", "user_out_of_descriptors");

    let started = Instant::now();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let response = post_signed_with(&client, gateway.addr, "msg_out_of_descriptors", body).await;
    let elapsed = started.elapsed();

    assert_eq!(response.status(), 200);
    assert!(elapsed < Duration::from_secs(1), "the delivery took {elapsed:?}");
    assert_eq!(upstream.calls().len(), 1);
    // Figures for RELIABILITY.md (shown with --nocapture).
    eprintln!(
        "{SILENT} silent connections under a limit of {LOWERED} files: delivery answered in {elapsed:?}"
    );
    drop(silent);
    gateway.stop().await;
}
