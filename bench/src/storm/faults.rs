//! Faults injected while a storm runs, and the slow-database scenario.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use sqlx::{Connection, PgConnection};
use tokio::sync::Mutex;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::storm::{
    check,
    cluster::Cluster,
    deliver::{self, DeliveryOptions, Progress, Report},
    plan::{self, Kind, PlanOptions},
};

/// What goes wrong during a storm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// Nothing.
    None,
    /// SIGKILL user-service replica 0 every `--fault-every`, restart it after
    /// `--down-for` on the same port.
    KillUserService,
    /// SIGKILL gateway 0 every `--fault-every`, restart it after `--down-for`.
    KillGateway,
    /// Restart the local PostgreSQL cluster with `pg_ctlcluster` every
    /// `--fault-every` (with `--down-for` above 0: stop, wait, start).
    RestartPostgres,
    /// SIGKILL user-service replica 1 once and leave it down (its gateway
    /// keeps answering 503); needs `--replicas 2`.
    KillReplica,
    /// Not a storm: hold a row lock on a user longer than the gateway's
    /// deadline while its update is delivered (PostgreSQL only).
    SlowDatabase,
}

/// When faults happen.
#[derive(Debug, Clone, Copy)]
pub struct FaultOptions {
    /// Which fault.
    pub fault: Fault,
    /// First fault this long after the storm starts.
    pub after: Duration,
    /// Time between faults.
    pub every: Duration,
    /// How long a killed process stays down.
    pub down_for: Duration,
    /// At most this many faults (`None`: no limit).
    pub count: Option<u32>,
    /// Faults stop this long after the storm starts, or earlier when every
    /// message is delivered (or given up).
    pub until: Duration,
}

/// Replicas a fault leaves down on purpose.
pub fn kept_down(fault: Fault) -> Vec<usize> {
    if fault == Fault::KillReplica { vec![1] } else { Vec::new() }
}

/// Injects `options.fault` while messages are still open, for at most
/// `options.until` and `options.count` faults; returns one line per fault.
pub async fn inject(
    cluster: Arc<Mutex<Cluster>>,
    options: FaultOptions,
    progress: Arc<Progress>,
    started: Instant,
) -> Result<Vec<String>> {
    let mut log = Vec::new();
    if options.fault == Fault::None {
        return Ok(log);
    }
    tokio::time::sleep(options.after).await;
    let mut done = 0u32;
    while progress.open.load(Ordering::SeqCst) > 0
        && started.elapsed() < options.until
        && options.count.is_none_or(|c| done < c)
    {
        let t = started.elapsed().as_secs_f64();
        match options.fault {
            Fault::None | Fault::SlowDatabase => return Ok(log),
            Fault::KillUserService | Fault::KillGateway => {
                let which = options.fault == Fault::KillUserService;
                let name = {
                    let mut c = cluster.lock().await;
                    let proc = if which { &mut c.users[0] } else { &mut c.gateways[0] };
                    proc.kill().await;
                    proc.name.clone()
                };
                tokio::time::sleep(options.down_for).await;
                let mut c = cluster.lock().await;
                let proc = if which { &mut c.users[0] } else { &mut c.gateways[0] };
                proc.start()?;
                log.push(format!("{t:.1}s: SIGKILL {name}, restarted after {:?}", options.down_for));
            }
            Fault::KillReplica => {
                let mut c = cluster.lock().await;
                if c.users.len() < 2 {
                    bail!("--fault kill-replica needs --replicas 2");
                }
                let cpu = c.users[1].cpu_seconds();
                c.users[1].kill().await;
                log.push(format!(
                    "{t:.1}s: SIGKILL user-service-1 (it had used {cpu:.2} CPU s, user-service-0 {:.2}), left down",
                    c.users[0].cpu_seconds()
                ));
                return Ok(log);
            }
            Fault::RestartPostgres => {
                let begun = Instant::now();
                let outcome = restart_postgres(options.down_for).await;
                log.push(format!(
                    "{t:.1}s: PostgreSQL {} took {:.1}s: {}",
                    if options.down_for.is_zero() {
                        "restart".to_owned()
                    } else {
                        format!("stop, {:?} down, start", options.down_for)
                    },
                    begun.elapsed().as_secs_f64(),
                    match &outcome {
                        Ok(()) => "ok".to_owned(),
                        Err(e) => format!("failed: {e:#}"),
                    }
                ));
                outcome?;
            }
        }
        done += 1;
        tokio::time::sleep(options.every).await;
    }
    Ok(log)
}

/// `pg_ctlcluster --skip-systemctl-redirect <version> main restart` for the
/// only cluster in /etc/postgresql; with a non-zero `down_for`, `stop`, a
/// pause, then `start` (a longer outage).
pub async fn restart_postgres(down_for: Duration) -> Result<()> {
    let version = std::fs::read_dir("/etc/postgresql")
        .context("/etc/postgresql (restart-postgres needs a local Debian PostgreSQL)")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .context("no cluster in /etc/postgresql")?;
    let run = |action: &'static str| {
        let version = version.clone();
        async move {
            let status = tokio::process::Command::new("pg_ctlcluster")
                .args(["--skip-systemctl-redirect", &version, "main", action])
                .status()
                .await
                .context("run pg_ctlcluster")?;
            if !status.success() {
                bail!("pg_ctlcluster {action} exited with {status}");
            }
            anyhow::Ok(())
        }
    };
    if down_for.is_zero() {
        return run("restart").await;
    }
    run("stop").await?;
    tokio::time::sleep(down_for).await;
    run("start").await
}

/// Polls user-service's `grpc.health.v1` status every 100 ms until `stop`,
/// and returns its changes (`1.2s NOT_SERVING`, `unreachable`, …).
pub async fn watch_health(url: String, stop: Arc<AtomicBool>, started: Instant) -> Vec<String> {
    let mut changes = Vec::new();
    let Ok(endpoint) = Channel::from_shared(url) else { return changes };
    let channel = endpoint.timeout(Duration::from_millis(500)).connect_lazy();
    let mut client = HealthClient::new(channel);
    let mut last = String::new();
    while !stop.load(Ordering::SeqCst) {
        let now = match client.check(HealthCheckRequest { service: String::new() }).await {
            Ok(reply) => reply.get_ref().status().as_str_name().to_owned(),
            Err(status) => format!("unreachable ({:?})", status.code()),
        };
        if now != last {
            changes.push(format!("{:.1}s {now}", started.elapsed().as_secs_f64()));
            last = now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    changes
}

/// What the slow-database scenario measured.
#[derive(Debug)]
pub struct SlowDatabase {
    /// Both deliveries (`user.created`, then the locked `user.updated`).
    pub report: Report,
    /// The verdict of the usual check.
    pub verdict: check::Verdict,
    /// Status and latency of the first attempt of the update.
    pub first_attempt: (Option<u16>, Duration),
    /// When the lock was released, seconds after the update was first sent.
    pub released_at: f64,
    /// The first attempt sent after the release: `(at, status)`. It must be
    /// a 2xx (the row is free again).
    pub first_after_release: Option<(f64, Option<u16>)>,
    /// Human-readable lines about each attempt.
    pub lines: Vec<String>,
}

/// Creates a user through the gateway, then holds `select … for update` on
/// its row for `hold` in another connection while its `user.updated` is
/// delivered: the gateway must answer 503 within its deadline, and the retry
/// after the release must apply the update once.
pub async fn slow_database(
    cluster: &Cluster,
    mut delivery: DeliveryOptions,
    hold: Duration,
) -> Result<SlowDatabase> {
    if !cluster.database.url.starts_with("postgres") {
        bail!("--fault slow-database needs --backend postgres (row locks)");
    }
    delivery.duplicates = 0.0;
    let run = format!("slow{}", chrono::Utc::now().timestamp_millis());
    let plan = plan::build(&PlanOptions {
        users: 1,
        updates_per_user: 1,
        sessions_per_user: 0,
        delete_fraction: 0.0,
        seed: delivery.seed,
        run,
    });
    let create: Vec<_> = plan.messages.iter().filter(|m| m.kind == Kind::Created).cloned().collect();
    let update: Vec<_> = plan.messages.iter().filter(|m| m.kind == Kind::Updated(2)).cloned().collect();
    let created = deliver::deliver(&create, delivery.clone(), Arc::default()).await;
    if created.delivered() != 1 {
        bail!("the user.created was not delivered: {}", created.answers_line());
    }

    let mut locker = PgConnection::connect(&cluster.database.url).await?;
    sqlx::query("begin").execute(&mut locker).await?;
    sqlx::query("select id from users where clerk_id = $1 for update")
        .bind(&plan.users[0].clerk_id)
        .fetch_one(&mut locker)
        .await
        .context("lock the user's row")?;
    let progress = Arc::new(Progress::default());
    let sending = {
        let (delivery, progress) = (delivery.clone(), progress.clone());
        tokio::spawn(async move { deliver::deliver(&update, delivery, progress).await })
    };
    // The delivery's attempt times count from its start, a moment after this.
    let sent = Instant::now();
    tokio::time::sleep(hold).await;
    sqlx::query("rollback").execute(&mut locker).await?;
    let released_at = sent.elapsed().as_secs_f64();
    let updated = sending.await.context("delivery task")?;

    let record = updated.records.first().cloned().unwrap_or_default();
    let first = record.attempts.first().map_or((None, Duration::ZERO), |a| (a.status, a.latency));
    let first_after_release = record.attempts.iter().find(|a| a.at > released_at).map(|a| (a.at, a.status));
    let lines = record
        .attempts
        .iter()
        .enumerate()
        .map(|(i, a)| {
            format!(
                "attempt {} at {:.2}s: {} after {:.2}s",
                i + 1,
                a.at,
                a.status.map_or("no answer".to_owned(), |s| match &a.outcome {
                    Some(o) => format!("{s} {o}"),
                    None => s.to_string(),
                }),
                a.latency.as_secs_f64()
            )
        })
        .collect();
    // One report in plan order, for the usual check.
    let mut report = Report { elapsed: created.elapsed + updated.elapsed, ..Report::default() };
    for message in &plan.messages {
        let source = if message.kind == Kind::Created { &created } else { &updated };
        report.records.extend(source.records.first().cloned());
    }
    for (k, n) in created.answers.iter().chain(&updated.answers) {
        *report.answers.entry(k.clone()).or_default() += n;
    }
    let verdict = check::check(&plan, &report, &cluster.user_service_url(0), 1).await?;
    Ok(SlowDatabase { report, verdict, first_attempt: first, released_at, first_after_release, lines })
}
