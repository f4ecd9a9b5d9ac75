//! `svix-storm`: delivers a storm of signed Clerk events to the gateway the
//! way Svix does, optionally starting the services itself and failing them
//! on purpose, then checks user-service's final state and prints one line:
//!
//! `events N, attempts A, delivered D, gave up G, lost L, doubled X, wrong W`
//!
//! Exits non-zero when anything was lost, doubled or wrong. See
//! RELIABILITY.md and scripts/faults/.

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, atomic::AtomicBool},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use gateway::SigningSecrets;
use tokio::sync::Mutex;
use userdata_bench::{
    services,
    storm::{
        Summary, check,
        cluster::{Backend, Cluster, ClusterOptions},
        deliver::{self, DeliveryOptions, Progress, SVIX_DEADLINE},
        faults::{self, Fault, FaultOptions},
        plan::{self, PlanOptions},
    },
};
use userdata_kit::duration::parse as parse_duration;

/// Deliver Clerk events like Svix and check the result in user-service.
#[derive(Debug, Parser)]
#[command(name = "svix-storm", version, about)]
struct Cli {
    /// Webhook URL of a gateway (repeat for several: attempts go
    /// round-robin). Not with --spawn.
    #[arg(long, required_unless_present = "spawn")]
    gateway_url: Vec<String>,
    /// user-service gRPC URL used for the final check. Not with --spawn.
    #[arg(long, required_unless_present = "spawn")]
    user_service_url: Option<String>,

    /// Start user-service and gateway (release binaries next to this one) on
    /// a fresh database, and stop them at the end.
    #[arg(long)]
    spawn: bool,
    /// With --spawn: the database.
    #[arg(long, value_enum, default_value = "sqlite")]
    backend: Backend,
    /// With --spawn --backend postgres: a superuser URL; a fresh database is
    /// created on that server and dropped at the end.
    #[arg(long, env = "DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    database_url: String,
    /// With --spawn: user-service replicas on the one database (PostgreSQL).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// With --spawn --replicas N: one gateway per replica (the storm
    /// round-robins over them) instead of one gateway balancing over all.
    #[arg(long)]
    gateway_per_replica: bool,
    /// With --spawn: the gateways' per-client-IP `--rate-limit` (0: off; the
    /// storm is one client IP).
    #[arg(long, default_value_t = 0)]
    rate_limit: u32,
    /// With --spawn: the gateways' deadline on user-service.
    #[arg(long, default_value = "5s")]
    upstream_timeout: String,
    /// With --spawn: user-service's pool size.
    #[arg(long, default_value_t = 8)]
    pool_size: u32,
    /// With --spawn: where the services' logs go.
    #[arg(long, default_value = "target/svix-storm")]
    log_dir: PathBuf,
    /// With --spawn: keep the PostgreSQL database.
    #[arg(long)]
    keep_database: bool,

    /// With --spawn: what to break while the storm runs.
    #[arg(long, value_enum, default_value = "none")]
    fault: Fault,
    /// First fault after this long.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    fault_after: Duration,
    /// Time between faults.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    fault_every: Duration,
    /// How long a killed process stays down.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    down_for: Duration,
    /// At most this many faults.
    #[arg(long)]
    fault_count: Option<u32>,
    /// No fault starts later than this after the storm began (faults also
    /// stop once every message is delivered).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    fault_for: Duration,
    /// slow-database: how long the row lock is held.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    hold: Duration,

    /// Users.
    #[arg(long, default_value_t = 500)]
    users: usize,
    /// `user.updated` events per user (each a new first name).
    #[arg(long, default_value_t = 4)]
    updates_per_user: u32,
    /// `session.created` events per user (at most 50).
    #[arg(long, default_value_t = 2)]
    sessions_per_user: u32,
    /// Fraction of users deleted at the end.
    #[arg(long, default_value_t = 0.1)]
    delete_fraction: f64,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Svix's retry schedule (0, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h) is
    /// divided by this.
    #[arg(long, default_value_t = 1000.0)]
    time_scale: f64,
    /// An attempt without a 2xx within this failed (Svix: 15 s).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    deadline: Duration,
    /// Probability that a delivered message is sent once more.
    #[arg(long, default_value_t = 0.0)]
    duplicates: f64,
    /// Probability that a message's first attempt is sent several times at
    /// once: to every gateway, or twice to a single one (which balances the
    /// copies over its replicas).
    #[arg(long, default_value_t = 0.0)]
    race: f64,
    /// Seed of the shuffle, duplicates and races.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print at most this many discrepancies.
    #[arg(long, default_value_t = 20)]
    show: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("svix-storm: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn secret(spawn: bool) -> Result<(String, SigningSecrets)> {
    let text = match std::env::var(gateway::config::SIGNING_SECRET_ENV) {
        Ok(text) => text,
        Err(_) if spawn => services::SECRET.to_owned(),
        Err(_) => bail!("set {} to the gateway's signing secret", gateway::config::SIGNING_SECRET_ENV),
    };
    let secrets =
        SigningSecrets::parse(&text).map_err(|e| anyhow::anyhow!("{e}")).context("signing secret")?;
    Ok((text, secrets))
}

async fn run(cli: Cli) -> Result<bool> {
    if cli.fault != Fault::None && !cli.spawn {
        bail!("--fault needs --spawn (the storm must own the processes it breaks)");
    }
    if cli.deadline > SVIX_DEADLINE {
        eprintln!("note: --deadline {:?} is longer than Svix's 15 s", cli.deadline);
    }
    let (secret_text, secrets) = secret(cli.spawn)?;
    let delivery = |urls: Vec<String>| DeliveryOptions {
        urls,
        secret: secrets.first().clone(),
        concurrency: cli.concurrency,
        time_scale: cli.time_scale,
        deadline: cli.deadline,
        duplicates: cli.duplicates,
        race: cli.race,
        seed: cli.seed,
    };
    if !cli.spawn {
        let url = cli.user_service_url.clone().unwrap_or_default();
        return storm(&cli, delivery(cli.gateway_url.clone()), &url, None).await;
    }

    let options = ClusterOptions {
        backend: cli.backend,
        admin_url: cli.database_url.clone(),
        replicas: cli.replicas,
        gateway_per_replica: cli.gateway_per_replica,
        rate_limit: cli.rate_limit,
        secret: secret_text,
        upstream_timeout: cli.upstream_timeout.clone(),
        pool_size: cli.pool_size,
        log_dir: cli.log_dir.clone(),
        keep_database: cli.keep_database,
    };
    let cluster = Cluster::start(&options).await?;
    eprintln!(
        "started {} user-service + {} gateway on {:?} (logs in {})",
        cluster.users.len(),
        cluster.gateways.len(),
        cli.backend,
        cluster.log_dir().display()
    );
    let urls = cluster.webhook_urls();
    let user_service = cluster.user_service_url(0);
    if cli.fault == Fault::SlowDatabase {
        let result = faults::slow_database(&cluster, delivery(urls), cli.hold).await;
        cluster.stop().await;
        let result = result?;
        let summary = Summary::new(&result.report, &result.verdict);
        let (status, latency) = result.first_attempt;
        let in_time = status == Some(503) && latency < SVIX_DEADLINE;
        for line in &result.lines {
            eprintln!("{line}");
        }
        eprintln!(
            "first attempt of the locked update: {} after {:.2}s ({}); lock released after {:.1}s",
            status.map_or("no answer".to_owned(), |s| s.to_string()),
            latency.as_secs_f64(),
            if in_time { "503 within Svix's 15 s, as required" } else { "NOT a 503 within 15 s" },
            result.released_at
        );
        let recovered = match result.first_after_release {
            Some((at, status)) => {
                let ok = status.is_some_and(|s| (200..300).contains(&s));
                eprintln!(
                    "first attempt after the release (at {at:.1}s): {} — {}",
                    status.map_or("no answer".to_owned(), |s| s.to_string()),
                    if ok {
                        "applied, as required"
                    } else {
                        "NOT applied although the row is free: user-service still blocks this user"
                    }
                );
                ok
            }
            // The attempt waiting on the lock when it was released went
            // through; the final-state check below says whether it applied.
            None => {
                eprintln!(
                    "no attempt was sent after the release: the one in flight at the release delivered it"
                );
                summary.is_clean() && summary.gave_up == 0
            }
        };
        report_problems(&result.verdict, cli.show);
        println!("{summary}");
        return Ok(summary.is_clean() && in_time && recovered && summary.gave_up == 0);
    }
    let cluster = Arc::new(Mutex::new(cluster));
    let outcome = storm(&cli, delivery(urls), &user_service, Some(cluster.clone())).await;
    if let Ok(cluster) = Arc::try_unwrap(cluster) {
        cluster.into_inner().stop().await;
    }
    outcome
}

fn report_problems(verdict: &check::Verdict, show: usize) {
    for problem in verdict.problems.iter().take(show) {
        eprintln!("  {problem}");
    }
    if verdict.problems.len() > show {
        eprintln!("  … and {} more", verdict.problems.len() - show);
    }
}

async fn storm(
    cli: &Cli,
    delivery: DeliveryOptions,
    user_service: &str,
    cluster: Option<Arc<Mutex<Cluster>>>,
) -> Result<bool> {
    let plan = plan::build(&PlanOptions {
        users: cli.users,
        updates_per_user: cli.updates_per_user,
        sessions_per_user: cli.sessions_per_user,
        delete_fraction: cli.delete_fraction,
        seed: cli.seed,
        run: format!("{}s{}", chrono::Utc::now().timestamp_millis(), cli.seed),
    });
    let kinds = check::kinds(&plan);
    eprintln!(
        "storm: {} events ({}) to {} gateway(s), concurrency {}, time scale {}",
        plan.messages.len(),
        kinds.iter().map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", "),
        delivery.urls.len(),
        delivery.concurrency,
        delivery.time_scale
    );
    let started = Instant::now();
    let progress = Arc::new(Progress::default());
    // Set before the injector starts, so it never sees an empty storm.
    progress.first_pass_left.store(plan.messages.len(), std::sync::atomic::Ordering::SeqCst);
    progress.open.store(plan.messages.len(), std::sync::atomic::Ordering::SeqCst);
    let stop_health = Arc::new(AtomicBool::new(false));
    let health = tokio::spawn(faults::watch_health(user_service.to_owned(), stop_health.clone(), started));
    let injector = cluster.clone().map(|cluster| {
        let options = FaultOptions {
            fault: cli.fault,
            after: cli.fault_after,
            every: cli.fault_every,
            down_for: cli.down_for,
            count: cli.fault_count,
            until: cli.fault_for,
        };
        tokio::spawn(faults::inject(cluster, options, progress.clone(), started))
    });
    let report = deliver::deliver(&plan.messages, delivery, progress.clone()).await;
    let fault_log = match injector {
        Some(task) => task.await.context("fault task")??,
        None => Vec::new(),
    };
    if let Some(cluster) = &cluster {
        // Everything back up (except a replica killed for good), so the check
        // reads a serving user-service.
        let mut c = cluster.lock().await;
        c.start_missing(&faults::kept_down(cli.fault))?;
        c.wait_serving(0, Duration::from_secs(60)).await?;
        c.wait_ready(0, Duration::from_secs(60)).await?;
    }
    let verdict = check::check(&plan, &report, user_service, 16).await?;
    stop_health.store(true, std::sync::atomic::Ordering::SeqCst);
    let health = health.await.unwrap_or_default();

    let summary = Summary::new(&report, &verdict);
    eprintln!("delivery took {:.1}s; answers: {}", report.elapsed.as_secs_f64(), report.answers_line());
    if report.duplicates() > 0 {
        eprintln!("duplicates sent after delivery: {}", report.duplicates());
    }
    for line in &fault_log {
        eprintln!("fault: {line}");
    }
    if let Some(cluster) = &cluster {
        let c = cluster.lock().await;
        let starts: Vec<String> =
            c.users.iter().chain(&c.gateways).map(|p| format!("{} {}", p.name, p.starts)).collect();
        eprintln!("process starts: {}", starts.join(", "));
        let cpu: Vec<String> =
            c.users.iter().map(|p| format!("{} {:.2} s", p.name, p.cpu_seconds())).collect();
        eprintln!("user-service CPU (running processes, since their last start): {}", cpu.join(", "));
    }
    eprintln!("user-service-0 health: {}", health.join(" → "));
    report_problems(&verdict, cli.show);
    println!("{summary}");
    Ok(summary.is_clean())
}
