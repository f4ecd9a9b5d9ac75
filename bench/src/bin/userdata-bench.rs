//! `userdata-bench`: measures the webhook path, the gRPC API and the store
//! directly, on PostgreSQL and SQLite, and prints each end-to-end figure
//! beside its store baseline. See BENCHMARKS.md for how to run it.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::Result;
use clap::Parser;
use serde::Serialize;
use user_service::store::{self, ConnectOptions};

use userdata_bench::{
    load::{Stats, ms},
    scenarios::{self, Params},
    seed::{self, Backend},
    services,
};

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
}

#[derive(Debug, Serialize)]
struct BackendReport {
    backend: Backend,
    seed_users: usize,
    store: Vec<Stats>,
    grpc: Vec<Stats>,
    webhooks: Vec<Stats>,
    webhook_cpu_us_per_event: f64,
    lost_or_wrong_after_webhooks: usize,
    lost_or_wrong_after_mixed: usize,
    peak_rss_mib: BTreeMap<&'static str, f64>,
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

async fn run_backend(cli: &Cli, backend: Backend) -> Result<BackendReport> {
    eprintln!("[{backend:?}] seeding {} users…", cli.seed_users);
    let db = seed::prepare(backend, &cli.database_url, cli.seed_users).await?;
    let run = format!("{}", chrono::Utc::now().timestamp_millis());
    let params =
        Params { ops: cli.ops, concurrency: cli.concurrency, seeded: cli.seed_users, run: run.clone() };

    eprintln!("[{backend:?}] store baseline…");
    let url_backend = store::Backend::from_url(&db.url).map_err(anyhow::Error::msg)?;
    let options = ConnectOptions { max_connections: cli.pool_size, ..ConnectOptions::default() };
    let direct = store::connect(&url_backend, &options).await?;
    let store_stats = scenarios::store(direct.clone(), &params).await;
    direct.close().await;

    eprintln!("[{backend:?}] starting services…");
    let (users, gateway, grpc_addr, http_addr) = services::start(&db.url, cli.pool_size).await?;
    eprintln!("[{backend:?}] gRPC…");
    let grpc_stats = scenarios::grpc(grpc_addr, &params).await?;

    eprintln!("[{backend:?}] webhooks…");
    let before = (users.usage(), gateway.usage());
    let created = scenarios::post_all(
        "webhooks user.created",
        http_addr,
        scenarios::created_events(&run, cli.events),
        cli.concurrency,
    )
    .await;
    let after = (users.usage(), gateway.usage());
    let cpu = (after.0.cpu_seconds - before.0.cpu_seconds) + (after.1.cpu_seconds - before.1.cpu_seconds);
    let cpu_per_event = cpu * 1e6 / cli.events.max(1) as f64;
    let lost_created = scenarios::verify_created(grpc_addr, &run, cli.events).await?;

    let mixed_users = cli.events / 4;
    let mixed = scenarios::post_all(
        "webhooks mixed (create, update x2, delete, dups, shuffled)",
        http_addr,
        scenarios::mixed_events(&run, mixed_users),
        cli.concurrency,
    )
    .await;
    let lost_mixed = scenarios::verify_deleted(grpc_addr, &run, mixed_users).await?;
    let sessions = scenarios::post_all(
        "webhooks session.created",
        http_addr,
        scenarios::session_events(&run, cli.events / 2, cli.seed_users),
        cli.concurrency,
    )
    .await;

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
        webhooks: vec![created, mixed, sessions],
        webhook_cpu_us_per_event: cpu_per_event,
        lost_or_wrong_after_webhooks: lost_created,
        lost_or_wrong_after_mixed: lost_mixed,
        peak_rss_mib,
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

fn print(report: &BackendReport) {
    println!("\n## {:?} ({} seeded users)\n", report.backend, report.seed_users);
    println!("| step | ops | ops/s | p50 ms | p95 ms | p99 ms | max ms | errors | vs store |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|---:|");
    for s in report.store.iter().chain(&report.grpc).chain(&report.webhooks) {
        let ratio =
            baseline(report, &s.name).map_or_else(String::new, |b| format!("{:.2}×", s.rate / b.rate));
        let errors = if s.errors.is_empty() {
            "0".to_owned()
        } else {
            s.errors.iter().map(|(k, n)| format!("{k}: {n}")).collect::<Vec<_>>().join(", ")
        };
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
            s.name,
            s.ops,
            s.rate,
            ms(s.p50_us),
            ms(s.p95_us),
            ms(s.p99_us),
            ms(s.max_us),
            errors,
            ratio
        );
    }
    println!(
        "\nCPU of gateway + user-service per user.created event: {:.0} µs",
        report.webhook_cpu_us_per_event
    );
    println!(
        "Users lost or wrong after user.created: {}; resurrected or wrong after mixed: {}",
        report.lost_or_wrong_after_webhooks, report.lost_or_wrong_after_mixed
    );
    for (name, mib) in &report.peak_rss_mib {
        println!("Peak RSS {name}: {mib:.1} MiB");
    }
}
