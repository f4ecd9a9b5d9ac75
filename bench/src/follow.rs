//! Followers of the change log (`userdata.v1.ChangeService/WatchChanges`):
//!
//! - **propagation**: one unfiltered follower, attached from now while a
//!   webhook scenario runs, times each change from its `time` (taken by
//!   user-service just before the write) to its arrival here, and checks that
//!   it received every change the log holds for the scenario's events, once
//!   and in order;
//! - **followers at scale**: many followers, each filtered to its own user as
//!   a browser follows, spread over several HTTP/2 connections, while
//!   `session.created` webhooks for those users run; it measures
//!   user-service's memory per follower, the delay of each change to its
//!   follower and what the followers cost webhook ingest.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use serde::Serialize;
use sqlx::{Connection, PgConnection, SqliteConnection};
use tokio::{sync::Semaphore, task::JoinHandle};
use tonic::{Code, transport::Channel};
use user_service::domain::change::Cursor;
use userdata_proto::v1::{
    self as pb, change_service_client::ChangeServiceClient, watch_changes_response::Event,
};

use crate::{
    load::Stats,
    scenarios::{self, Posted},
    services::{self, Service},
};

/// How long delivery may stall (nothing new arrives while changes are still
/// missing) before the count is taken as final.
const STALL: Duration = Duration::from_secs(20);

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| Histogram::new(3).expect("histogram"))
}

/// Microseconds from a change's `time` to now (0 when the clocks disagree).
fn age_us(time: Option<&prost_types::Timestamp>) -> u64 {
    let Some(t) = time else { return 0 };
    let Some(at) = DateTime::<Utc>::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)) else {
        return 0;
    };
    (Utc::now() - at).num_microseconds().map_or(0, |us| u64::try_from(us).unwrap_or(0))
}

/// Change rows in the log written for events whose svix-id starts with
/// `prefix` (what a follower of them must receive).
pub async fn changes_in_log(database_url: &str, prefix: &str) -> Result<u64> {
    let count: i64 = if database_url.starts_with("postgres") {
        let mut conn = PgConnection::connect(database_url).await?;
        sqlx::query_scalar(
            "select count(*) from changes where substr(actor_event_id, 1, length($1::text)) = $1::text",
        )
        .bind(prefix)
        .fetch_one(&mut conn)
        .await?
    } else {
        let mut conn = SqliteConnection::connect(database_url).await?;
        sqlx::query_scalar("select count(*) from changes where substr(actor_event_id, 1, length(?1)) = ?1")
            .bind(prefix)
            .fetch_one(&mut conn)
            .await?
    };
    Ok(u64::try_from(count).unwrap_or(0))
}

/// What the propagation follower saw during one webhook scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Propagation {
    /// The webhook scenario.
    pub scenario: String,
    /// Changes received.
    pub received: u64,
    /// Changes the log holds for the scenario's events.
    pub in_log: u64,
    /// Distinct events (svix-ids) among the changes received.
    pub events_received: u64,
    /// Deliveries the gateway answered `applied`.
    pub events_applied: u64,
    /// Changes received at or before a cursor already received.
    pub repeated_or_out_of_order: u64,
    /// Write to arrival, microseconds.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Slowest.
    pub max_us: u64,
    /// Why the stream ended early, if it did.
    pub error: Option<String>,
}

impl Propagation {
    /// Every change in the log arrived, once and in order, and every applied
    /// event had its changes delivered.
    pub fn complete(&self) -> bool {
        self.error.is_none()
            && self.received == self.in_log
            && self.repeated_or_out_of_order == 0
            && self.events_received == self.events_applied
    }
}

#[derive(Default)]
struct WatchState {
    hist: Option<Histogram<u64>>,
    received: u64,
    last: Option<Cursor>,
    repeated_or_out_of_order: u64,
    events: HashSet<String>,
    error: Option<String>,
}

/// One unfiltered follower, attached from now.
pub struct Watcher {
    state: Arc<Mutex<WatchState>>,
    task: JoinHandle<()>,
}

impl Watcher {
    /// Attaches; `Ok(None)` when the service has no `ChangeService` (a
    /// release before the change log).
    pub async fn attach(grpc: SocketAddr) -> Result<Option<Self>> {
        let channel = Channel::from_shared(format!("http://{grpc}"))?.connect().await?;
        let mut client = ChangeServiceClient::new(channel);
        let mut stream = match client.watch_changes(pb::WatchChangesRequest::default()).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == Code::Unimplemented => return Ok(None),
            Err(status) => bail!("WatchChanges: {status}"),
        };
        let state = Arc::new(Mutex::new(WatchState { hist: Some(histogram()), ..WatchState::default() }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let message = stream.message().await;
                let Ok(mut s) = shared.lock() else { return };
                match message {
                    Ok(Some(pb::WatchChangesResponse { event: Some(Event::Change(change)) })) => {
                        let age = age_us(change.time.as_ref());
                        if let Some(h) = s.hist.as_mut() {
                            let _ = h.record(age.max(1));
                        }
                        s.received += 1;
                        match change.cursor.parse::<Cursor>() {
                            Ok(cursor) if s.last.is_none_or(|last| cursor > last) => s.last = Some(cursor),
                            _ => s.repeated_or_out_of_order += 1,
                        }
                        if let Some(actor) = change.actor
                            && !actor.event_id.is_empty()
                        {
                            s.events.insert(actor.event_id);
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        s.error = Some("the stream ended".into());
                        return;
                    }
                    Err(status) => {
                        s.error = Some(format!("{:?}: {}", status.code(), status.message()));
                        return;
                    }
                }
            }
        });
        Ok(Some(Self { state, task }))
    }

    /// Attaches and detaches at once: whether the service has a
    /// `ChangeService`.
    pub async fn available(grpc: SocketAddr) -> Result<bool> {
        Ok(Self::attach(grpc).await?.is_some())
    }

    fn received(&self) -> u64 {
        self.state.lock().map_or(0, |s| s.received)
    }

    /// Waits until the follower has received `in_log` changes (or delivery
    /// stalls), then detaches and reports.
    pub async fn finish(self, scenario: &str, in_log: u64, posted: &Posted) -> Propagation {
        wait_for(in_log, || self.received()).await;
        self.task.abort();
        let s = self.state.lock().map(|mut s| std::mem::take(&mut *s)).unwrap_or_default();
        let hist = s.hist.unwrap_or_else(histogram);
        Propagation {
            scenario: scenario.to_owned(),
            received: s.received,
            in_log,
            events_received: s.events.len() as u64,
            events_applied: posted.applied(),
            repeated_or_out_of_order: s.repeated_or_out_of_order,
            p50_us: hist.value_at_quantile(0.50),
            p99_us: hist.value_at_quantile(0.99),
            max_us: hist.max(),
            error: s.error,
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until `count()` reaches `target`, or stops growing for [`STALL`].
async fn wait_for(target: u64, count: impl Fn() -> u64) {
    let mut last = count();
    let mut since = Instant::now();
    while last < target && since.elapsed() < STALL {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = count();
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
}

/// Settings of the followers-at-scale step.
#[derive(Debug, Clone, Copy)]
pub struct ScaleParams {
    /// Followers, one per seeded user `0..followers`.
    pub followers: usize,
    /// HTTP/2 connections they share.
    pub connections: usize,
    /// `session.created` events per ingest run.
    pub events: usize,
    /// Concurrent webhook senders.
    pub concurrency: usize,
}

/// What the followers-at-scale step measured.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    /// Followers attached.
    pub followers: usize,
    /// HTTP/2 connections they shared.
    pub connections: usize,
    /// This process's soft limit on open files (inherited by the services).
    pub fd_limit: Option<u64>,
    /// Seconds to attach them all.
    pub attach_seconds: f64,
    /// Attempts refused (by code) before a follower got in.
    pub attach_refusals: BTreeMap<String, u64>,
    /// user-service RSS before attaching, KiB.
    pub rss_before_kib: f64,
    /// user-service RSS with every follower attached, KiB.
    pub rss_attached_kib: f64,
    /// user-service RSS after the ingest with followers, KiB.
    pub rss_after_ingest_kib: f64,
    /// (attached − before) / followers, KiB.
    pub kib_per_follower: f64,
    /// (after ingest − before) / followers, KiB.
    pub kib_per_follower_after_ingest: f64,
    /// Ingest before the followers attach.
    pub ingest_before: Stats,
    /// Ingest with every follower attached.
    pub ingest_with: Stats,
    /// Ingest after they detached.
    pub ingest_after: Stats,
    /// Changes the log holds for the ingest with followers (each for a
    /// followed user).
    pub in_log: u64,
    /// Changes the followers received.
    pub received: u64,
    /// Changes a follower received for another user.
    pub wrong_user: u64,
    /// Changes a follower received at or before a cursor it already had.
    pub repeated_or_out_of_order: u64,
    /// Followers whose stream failed, by reason.
    pub stream_errors: BTreeMap<String, u64>,
    /// Write to arrival at the change's own follower, microseconds.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Slowest.
    pub max_us: u64,
}

#[derive(Default)]
struct ScaleState {
    received: AtomicU64,
    wrong_user: AtomicU64,
    repeated_or_out_of_order: AtomicU64,
    hist: Mutex<Option<Histogram<u64>>>,
    stream_errors: Mutex<BTreeMap<String, u64>>,
}

impl ScaleState {
    fn count_error(&self, reason: String) {
        if let Ok(mut errors) = self.stream_errors.lock() {
            *errors.entry(reason).or_default() += 1;
        }
    }
}

/// Attaches one follower for `clerk_id`, retrying while the server sheds
/// load, and returns its stream with the refusals it met.
async fn attach_one(
    channel: Channel,
    clerk_id: String,
) -> Result<(tonic::Streaming<pb::WatchChangesResponse>, Vec<Code>)> {
    let mut client = ChangeServiceClient::new(channel);
    let mut refusals = Vec::new();
    loop {
        let request = pb::WatchChangesRequest { clerk_id: clerk_id.clone(), ..Default::default() };
        match client.watch_changes(request).await {
            Ok(response) => return Ok((response.into_inner(), refusals)),
            Err(status) if refusals.len() < 100 && matches!(status.code(), Code::Unavailable) => {
                refusals.push(status.code());
                tokio::time::sleep(Duration::from_millis(20 * (1 + refusals.len() as u64).min(10))).await;
            }
            Err(status) => bail!("WatchChanges for a follower: {:?}: {}", status.code(), status.message()),
        }
    }
}

/// The followers-at-scale step: ingest without followers, attach them, ingest
/// with them (timing each change to its follower), detach, ingest again.
pub async fn at_scale(
    users: &Service,
    grpc: SocketAddr,
    http: SocketAddr,
    database_url: &str,
    run: &str,
    p: ScaleParams,
) -> Result<ScaleReport> {
    let fd_limit = services::fd_limit();
    if let Some(limit) = fd_limit
        && (p.connections as u64) * 2 + 1000 > limit
    {
        bail!(
            "{} follower connections need about {} open files here and in user-service; the limit is \
             {limit} (raise it with `ulimit -n`)",
            p.connections,
            p.connections + 500
        );
    }
    let ingest = |tag: &'static str, name: &'static str| {
        let deliveries = scenarios::session_events(run, tag, p.events, p.followers);
        async move { scenarios::post_all(name, http, deliveries, p.concurrency).await }
    };
    eprintln!("  ingest without followers…");
    let before = ingest("fa", "webhooks session.created, no followers (before)").await;

    eprintln!("  attaching {} followers on {} connections…", p.followers, p.connections);
    let rss_before_kib = users.usage().rss_kib;
    let channels = scenarios::channels(grpc, p.connections.max(1)).await?;
    let state = Arc::new(ScaleState { hist: Mutex::new(Some(histogram())), ..ScaleState::default() });
    // Attach a bounded number at a time: the server sheds calls beyond its
    // limit of calls in progress (a stream counts until its headers).
    let gate = Arc::new(Semaphore::new(32));
    let (attached_tx, mut attached_rx) = tokio::sync::mpsc::unbounded_channel();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(p.followers);
    for n in 0..p.followers {
        let (channel, gate, state, attached) =
            (channels[n % channels.len()].clone(), gate.clone(), state.clone(), attached_tx.clone());
        let clerk_id = crate::seed::seed_clerk_id(n);
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let attach = attach_one(channel, clerk_id.clone()).await;
            drop(permit);
            let mut stream = match attach {
                Ok((stream, refusals)) => {
                    let _ = attached.send(Ok(refusals));
                    stream
                }
                Err(err) => {
                    let _ = attached.send(Err(err.to_string()));
                    return;
                }
            };
            drop(attached);
            let mut last: Option<Cursor> = None;
            loop {
                match stream.message().await {
                    Ok(Some(pb::WatchChangesResponse { event: Some(Event::Change(change)) })) => {
                        let age = age_us(change.time.as_ref());
                        state.received.fetch_add(1, Ordering::Relaxed);
                        if change.clerk_id != clerk_id {
                            state.wrong_user.fetch_add(1, Ordering::Relaxed);
                        }
                        match change.cursor.parse::<Cursor>() {
                            Ok(cursor) if last.is_none_or(|l| cursor > l) => last = Some(cursor),
                            _ => {
                                state.repeated_or_out_of_order.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        if let Ok(mut hist) = state.hist.lock()
                            && let Some(h) = hist.as_mut()
                        {
                            let _ = h.record(age.max(1));
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return state.count_error("stream ended".into()),
                    Err(status) => return state.count_error(format!("{:?}", status.code())),
                }
            }
        }));
    }
    drop(attached_tx);
    let mut attach_refusals = BTreeMap::<String, u64>::new();
    let mut attach_errors = BTreeMap::<String, u64>::new();
    while let Some(result) = attached_rx.recv().await {
        match result {
            Ok(refusals) => {
                for code in refusals {
                    *attach_refusals.entry(format!("{code:?}")).or_default() += 1;
                }
            }
            Err(reason) => *attach_errors.entry(reason).or_default() += 1,
        }
    }
    let attach_seconds = started.elapsed().as_secs_f64();
    if !attach_errors.is_empty() {
        for task in &tasks {
            task.abort();
        }
        bail!("followers could not attach: {attach_errors:?}");
    }
    let rss_attached_kib = users.usage().rss_kib;

    eprintln!("  ingest with followers…");
    let with = ingest("fb", "webhooks session.created, with followers").await;
    let in_log = changes_in_log(database_url, &format!("msg_{run}_fb")).await?;
    wait_for(in_log, || state.received.load(Ordering::Relaxed)).await;
    let rss_after_ingest_kib = users.usage().rss_kib;
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }
    drop(channels);

    eprintln!("  ingest after the followers detached…");
    let after = ingest("fc", "webhooks session.created, no followers (after)").await;

    let hist = state.hist.lock().ok().and_then(|mut h| h.take()).unwrap_or_else(histogram);
    let per = |kib: f64| (kib - rss_before_kib) / p.followers.max(1) as f64;
    Ok(ScaleReport {
        followers: p.followers,
        connections: p.connections,
        fd_limit,
        attach_seconds,
        attach_refusals,
        rss_before_kib,
        rss_attached_kib,
        rss_after_ingest_kib,
        kib_per_follower: per(rss_attached_kib),
        kib_per_follower_after_ingest: per(rss_after_ingest_kib),
        ingest_before: before.stats,
        ingest_with: with.stats,
        ingest_after: after.stats,
        in_log,
        received: state.received.load(Ordering::Relaxed),
        wrong_user: state.wrong_user.load(Ordering::Relaxed),
        repeated_or_out_of_order: state.repeated_or_out_of_order.load(Ordering::Relaxed),
        stream_errors: state.stream_errors.lock().map(|e| e.clone()).unwrap_or_default(),
        p50_us: hist.value_at_quantile(0.50),
        p99_us: hist.value_at_quantile(0.99),
        max_us: hist.max(),
    })
}

/// Context for errors from [`changes_in_log`].
pub async fn changes_in_log_for(database_url: &str, run: &str, tag: &str) -> Result<u64> {
    changes_in_log(database_url, &format!("msg_{run}_{tag}"))
        .await
        .with_context(|| format!("count the log's changes for events msg_{run}_{tag}*"))
}
