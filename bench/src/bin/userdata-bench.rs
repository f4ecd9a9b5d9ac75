//! `userdata-bench`: measures the webhook path, the gRPC API and the store
//! directly, on PostgreSQL and SQLite, and prints each end-to-end figure
//! beside its store baseline. See BENCHMARKS.md for how to run it.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::Result;
use clap::Parser;
use serde::Serialize;
use user_service::store::{self, ConnectOptions};

use userdata_bench::{
    follow::{self, Propagation, ScaleParams, ScaleReport, Watcher},
    load::{Stats, ms},
    scenarios::{self, Params, Posted},
    seed::{self, Backend},
    services,
};

/// The parts of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Step {
    /// The store called directly (the baseline).
    Store,
    /// The same operations over gRPC.
    Grpc,
    /// Signed webhooks through the gateway.
    Webhooks,
}

/// Benchmark the gateway, user-service and the store.
#[derive(Debug, Parser)]
#[command(name = "userdata-bench", version, about)]
struct Cli {
    /// Backends to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["postgres", "sqlite"])]
    backend: Vec<Backend>,
    /// Operations per gRPC or store step.
    #[arg(long, default_value_t = 20_000)]
    ops: usize,
    /// Webhook events per webhook scenario (the mixed scenario uses events/4 users).
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Concurrent senders / callers.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Existing users seeded before measuring.
    #[arg(long, default_value_t = 10_000)]
    seed_users: usize,
    /// Database pool size of user-service and of the store baseline.
    #[arg(long, default_value_t = 8)]
    pool_size: u32,
    /// PostgreSQL server (a database `userdata_bench` is created on it).
    #[arg(long, env = "DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    database_url: String,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results.json")]
    json: PathBuf,
    /// Steps to run.
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["store", "grpc", "webhooks"])]
    steps: Vec<Step>,
    /// Directory holding the user-service and gateway binaries to measure
    /// (default: beside this executable).
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Attach no change-log follower during the webhook scenarios (then the
    /// change propagation is not measured).
    #[arg(long)]
    no_propagation: bool,
    /// After the webhook scenarios, attach this many WatchChanges followers,
    /// each filtered to one seeded user, and measure memory, delivery and
    /// ingest with and without them (0: skip).
    #[arg(long, default_value_t = 0)]
    followers: usize,
    /// HTTP/2 connections the followers share (default: one per 100).
    #[arg(long)]
    follower_connections: Option<usize>,
    /// `session.created` events per ingest run of the followers step
    /// (default: events / 2).
    #[arg(long)]
    follower_events: Option<usize>,
}

#[derive(Debug, Serialize)]
struct BackendReport {
    backend: Backend,
    seed_users: usize,
    store: Vec<Stats>,
    grpc: Vec<Stats>,
    webhooks: Vec<Stats>,
    /// Gateway answers by outcome, per webhook scenario.
    webhook_outcomes: BTreeMap<String, BTreeMap<String, u64>>,
    webhook_cpu_us_per_event: f64,
    lost_or_wrong_after_webhooks: usize,
    lost_or_wrong_after_mixed: usize,
    /// Change propagation to an unfiltered follower, per webhook scenario
    /// (empty when not measured).
    propagation: Vec<Propagation>,
    /// Why propagation was not measured, if it was not.
    propagation_skipped: Option<String>,
    followers: Option<ScaleReport>,
    peak_rss_mib: BTreeMap<&'static str, f64>,
    /// The service binaries measured.
    bin_dir: PathBuf,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut reports = Vec::new();
    for backend in &cli.backend {
        reports.push(run_backend(&cli, *backend).await?);
    }
    for report in &reports {
        print(report);
    }
    std::fs::write(&cli.json, serde_json::to_vec_pretty(&reports)?)?;
    println!("\nJSON written to {}", cli.json.display());
    Ok(())
}

/// A webhook scenario, with the propagation follower attached around it.
async fn webhook_step(
    name: &str,
    tag: &str,
    deliveries: Vec<scenarios::Delivery>,
    addrs: (std::net::SocketAddr, std::net::SocketAddr),
    cli: &Cli,
    ctx: (&str, &str),
    follow: bool,
) -> Result<(Posted, Option<Propagation>)> {
    let (grpc, http) = addrs;
    let (db_url, run) = ctx;
    let watcher = if follow { Watcher::attach(grpc).await? } else { None };
    let posted = scenarios::post_all(name, http, deliveries, cli.concurrency).await;
    let propagation = match watcher {
        Some(watcher) => {
            let in_log = follow::changes_in_log_for(db_url, run, tag).await?;
            Some(watcher.finish(name, in_log, &posted).await)
        }
        None => None,
    };
    Ok((posted, propagation))
}

async fn run_backend(cli: &Cli, backend: Backend) -> Result<BackendReport> {
    let bin_dir = match &cli.bin_dir {
        Some(dir) => dir.clone(),
        None => services::default_bin_dir()?,
    };
    if cli.followers > cli.seed_users {
        anyhow::bail!("--followers ({}) must not exceed --seed-users ({})", cli.followers, cli.seed_users);
    }
    // The service being measured migrates the empty database, so binaries
    // of an earlier release (--bin-dir) run on their own schema.
    let db = seed::create(backend, &cli.database_url).await?;
    eprintln!("[{backend:?}] starting services from {}…", bin_dir.display());
    let (users, gateway, grpc_addr, http_addr) = services::start(&bin_dir, &db.url, cli.pool_size).await?;
    eprintln!("[{backend:?}] seeding {} users…", cli.seed_users);
    seed::fill(backend, &db, cli.seed_users).await?;
    let run = format!("{}", chrono::Utc::now().timestamp_millis());
    let params =
        Params { ops: cli.ops, concurrency: cli.concurrency, seeded: cli.seed_users, run: run.clone() };

    let mut store_stats = Vec::new();
    if cli.steps.contains(&Step::Store) {
        eprintln!("[{backend:?}] store baseline (the services wait idle)…");
        let url_backend = store::Backend::from_url(&db.url).map_err(anyhow::Error::msg)?;
        let options =
            ConnectOptions { max_connections: cli.pool_size, migrate: false, ..ConnectOptions::default() };
        let direct = store::connect(&url_backend, &options).await?;
        store_stats = scenarios::store(direct.clone(), &params).await;
        direct.close().await;
    }
    let mut grpc_stats = Vec::new();
    if cli.steps.contains(&Step::Grpc) {
        eprintln!("[{backend:?}] gRPC…");
        grpc_stats = scenarios::grpc(grpc_addr, &params).await?;
    }

    let mut webhooks = Vec::new();
    let mut webhook_outcomes = BTreeMap::new();
    let mut propagation = Vec::new();
    let mut propagation_skipped = None;
    let (mut cpu_per_event, mut lost_created, mut lost_mixed) = (0.0, 0, 0);
    if cli.steps.contains(&Step::Webhooks) {
        eprintln!("[{backend:?}] webhooks…");
        let addrs = (grpc_addr, http_addr);
        let ctx = (db.url.as_str(), run.as_str());
        let mut follow = !cli.no_propagation;
        if cli.no_propagation {
            propagation_skipped = Some("--no-propagation".to_owned());
        } else if !Watcher::available(grpc_addr).await? {
            propagation_skipped = Some("these binaries have no ChangeService".to_owned());
            follow = false;
        }
        let before = (users.usage(), gateway.usage());
        let (created, p) = webhook_step(
            "webhooks user.created",
            "c",
            scenarios::created_events(&run, cli.events),
            addrs,
            cli,
            ctx,
            follow,
        )
        .await?;
        let after = (users.usage(), gateway.usage());
        let cpu = (after.0.cpu_seconds - before.0.cpu_seconds) + (after.1.cpu_seconds - before.1.cpu_seconds);
        cpu_per_event = cpu * 1e6 / cli.events.max(1) as f64;
        lost_created = scenarios::verify_created(grpc_addr, &run, cli.events).await?;
        propagation.extend(p);

        let mixed_users = cli.events / 4;
        let (mixed, p) = webhook_step(
            "webhooks mixed (create, update x2, delete, dups, shuffled)",
            "m",
            scenarios::mixed_events(&run, mixed_users),
            addrs,
            cli,
            ctx,
            follow,
        )
        .await?;
        lost_mixed = scenarios::verify_deleted(grpc_addr, &run, mixed_users).await?;
        propagation.extend(p);
        let (sessions, p) = webhook_step(
            "webhooks session.created",
            "s",
            scenarios::session_events(&run, "s", cli.events / 2, cli.seed_users),
            addrs,
            cli,
            ctx,
            follow,
        )
        .await?;
        propagation.extend(p);
        for posted in [created, mixed, sessions] {
            webhook_outcomes.insert(posted.stats.name.clone(), posted.outcomes);
            webhooks.push(posted.stats);
        }
    }

    let followers = if cli.followers > 0 {
        eprintln!("[{backend:?}] {} followers…", cli.followers);
        let params = ScaleParams {
            followers: cli.followers,
            connections: cli.follower_connections.unwrap_or_else(|| cli.followers.div_ceil(100)),
            events: cli.follower_events.unwrap_or(cli.events / 2),
            concurrency: cli.concurrency,
        };
        Some(follow::at_scale(&users, grpc_addr, http_addr, &db.url, &run, params).await?)
    } else {
        None
    };

    let peak_rss_mib =
        [(users.name, users.usage().peak_rss_mib), (gateway.name, gateway.usage().peak_rss_mib)]
            .into_iter()
            .collect();
    users.stop().await;
    gateway.stop().await;
    Ok(BackendReport {
        backend,
        seed_users: cli.seed_users,
        store: store_stats,
        grpc: grpc_stats,
        webhooks,
        webhook_outcomes,
        webhook_cpu_us_per_event: cpu_per_event,
        lost_or_wrong_after_webhooks: lost_created,
        lost_or_wrong_after_mixed: lost_mixed,
        propagation,
        propagation_skipped,
        followers,
        peak_rss_mib,
        bin_dir,
    })
}

/// The store step an end-to-end step is compared with.
fn baseline<'a>(report: &'a BackendReport, name: &str) -> Option<&'a Stats> {
    let store_name = match name {
        "grpc GetUser" => "store get user",
        "grpc ListUsers (50)" => "store list users (50)",
        "grpc GetPreferences" => "store get preferences",
        "grpc UpdatePreferences" => "store update preferences",
        "grpc CheckFeatureFlagForUsers (20)" => "store check flag (20 users)",
        "grpc RecordLogin" => "store record login",
        "webhooks user.created" => "store create user (event)",
        "webhooks session.created" => "store record login",
        _ => return None,
    };
    report.store.iter().find(|s| s.name == store_name)
}

fn errors(s: &Stats) -> String {
    if s.errors.is_empty() {
        "0".to_owned()
    } else {
        s.errors.iter().map(|(k, n)| format!("{k}: {n}")).collect::<Vec<_>>().join(", ")
    }
}

fn row(s: &Stats, ratio: &str) {
    println!(
        "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
        s.name,
        s.ops,
        s.rate,
        ms(s.p50_us),
        ms(s.p95_us),
        ms(s.p99_us),
        ms(s.max_us),
        errors(s),
        ratio
    );
}

fn print(report: &BackendReport) {
    println!("\n## {:?} ({} seeded users)\n", report.backend, report.seed_users);
    println!("Service binaries: {}\n", report.bin_dir.display());
    println!("| step | ops | ops/s | p50 ms | p95 ms | p99 ms | max ms | errors | vs store |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|---:|");
    for s in report.store.iter().chain(&report.grpc).chain(&report.webhooks) {
        let ratio =
            baseline(report, &s.name).map_or_else(String::new, |b| format!("{:.2}×", s.rate / b.rate));
        row(s, &ratio);
    }
    if !report.webhooks.is_empty() {
        println!(
            "\nCPU of gateway + user-service per user.created event: {:.0} µs",
            report.webhook_cpu_us_per_event
        );
        println!(
            "Users lost or wrong after user.created: {}; resurrected or wrong after mixed: {}",
            report.lost_or_wrong_after_webhooks, report.lost_or_wrong_after_mixed
        );
        for (name, outcomes) in &report.webhook_outcomes {
            let list = outcomes.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ");
            println!("Outcomes of {name}: {list}");
        }
    }
    print_propagation(report);
    if let Some(f) = &report.followers {
        print_followers(f);
    }
    for (name, mib) in &report.peak_rss_mib {
        println!("Peak RSS {name}: {mib:.1} MiB");
    }
}

fn print_propagation(report: &BackendReport) {
    if let Some(why) = &report.propagation_skipped {
        println!("\nChange propagation not measured: {why}.");
    }
    if report.propagation.is_empty() {
        return;
    }
    println!("\n### Change propagation (write → unfiltered WatchChanges follower)\n");
    println!(
        "| scenario | changes received | changes in log | events with changes | events applied | \
         repeated or out of order | p50 ms | p99 ms | max ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for p in &report.propagation {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            p.scenario,
            p.received,
            p.in_log,
            p.events_received,
            p.events_applied,
            p.repeated_or_out_of_order,
            ms(p.p50_us),
            ms(p.p99_us),
            ms(p.max_us)
        );
    }
    for p in &report.propagation {
        if p.complete() {
            println!(
                "{}: the follower received every change in the log once, in order, and the changes of \
                 all {} applied events.",
                p.scenario, p.events_applied
            );
        } else {
            println!(
                "{}: INCOMPLETE: received {} of {} changes ({} repeated or out of order), changes of {} \
                 of {} applied events{}.",
                p.scenario,
                p.received,
                p.in_log,
                p.repeated_or_out_of_order,
                p.events_received,
                p.events_applied,
                p.error.as_ref().map(|e| format!("; stream error: {e}")).unwrap_or_default()
            );
        }
    }
}

fn print_followers(f: &ScaleReport) {
    println!(
        "\n### {} WatchChanges followers, each filtered to its own user, on {} HTTP/2 connections\n",
        f.followers, f.connections
    );
    println!("| step | ops | ops/s | p50 ms | p95 ms | p99 ms | max ms | errors | vs no followers |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|---:|");
    let without = (f.ingest_before.rate + f.ingest_after.rate) / 2.0;
    row(&f.ingest_before, "");
    row(&f.ingest_with, &format!("{:.2}×", f.ingest_with.rate / without.max(1e-9)));
    row(&f.ingest_after, "");
    println!(
        "\nuser-service RSS: {:.1} MiB before, {:.1} MiB with the followers attached ({:.1} KiB per \
         follower), {:.1} MiB after the ingest with them ({:.1} KiB per follower).",
        f.rss_before_kib / 1024.0,
        f.rss_attached_kib / 1024.0,
        f.kib_per_follower,
        f.rss_after_ingest_kib / 1024.0,
        f.kib_per_follower_after_ingest
    );
    let refusals = f.attach_refusals.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ");
    println!(
        "Attached in {:.1} s{}; open-file limit {}.",
        f.attach_seconds,
        if refusals.is_empty() { String::new() } else { format!(" (refused first: {refusals})") },
        f.fd_limit.map_or_else(|| "unlimited".to_owned(), |l| l.to_string())
    );
    println!(
        "Delivery to the change's own follower: p50 {} ms, p99 {} ms, max {} ms; {} of {} changes \
         received, {} for another user, {} repeated or out of order{}.",
        ms(f.p50_us),
        ms(f.p99_us),
        ms(f.max_us),
        f.received,
        f.in_log,
        f.wrong_user,
        f.repeated_or_out_of_order,
        if f.stream_errors.is_empty() {
            String::new()
        } else {
            format!("; streams failed: {:?}", f.stream_errors)
        }
    );
}
