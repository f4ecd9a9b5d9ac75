//! `gateway reconcile`: brings user-service to the state of Clerk's Backend
//! API, for an existing Clerk application adopting this service and after
//! webhooks were lost.
//!
//! A run: list user-service's users ([`local`]), page through Clerk's users
//! ([`clerk_api`]), decide per user ([`plan`]), then, unless it is a dry run
//! or the deletions are over the limit, write with the webhooks' own gRPC
//! calls and rules ([`write`](mod@write)), showing [`progress`] and ending with a
//! [`report`]. Everything it writes is idempotent and ordered by Clerk's
//! `updated_at`, so it is safe to run while webhooks arrive, and to
//! interrupt and run again.

pub mod clerk_api;
pub mod local;
pub mod options;
pub mod plan;
pub mod progress;
pub mod report;
pub mod retry;
pub mod write;

use std::{process::ExitCode, time::Instant};

use anyhow::Context;
use userdata_proto::v1::user_service_client::UserServiceClient;

use self::{clerk_api::ClerkApi, plan::Planner, write::Writer};
pub use self::{
    options::{DeleteMissing, Options, ReconcileArgs},
    progress::{Display, Progress},
    report::Report,
};
use crate::upstream::Upstream;

/// Runs `gateway reconcile`: prints the report on stdout and, when not in
/// sync, one line saying why on stderr (exit 1). Errors that stop the run
/// (configuration, Clerk or user-service unreachable) are returned (exit 2).
pub async fn run(args: ReconcileArgs) -> anyhow::Result<ExitCode> {
    let options = Options::from_args(args)?;
    let report = reconcile(&options, &Progress::new(Display::detect())).await?;
    println!("{report}");
    if let Some(reason) = report.reason() {
        eprintln!("gateway reconcile: {reason}");
    }
    Ok(report.exit_code())
}

/// One run with `options`; see the module documentation.
pub async fn reconcile(options: &Options, progress: &Progress) -> anyhow::Result<Report> {
    let started = Instant::now();
    let upstream = Upstream::new(&options.user_service, None)
        .map_err(|reason| anyhow::anyhow!("cannot set up the connection to user-service: {reason}"))?;
    let watcher = upstream.watcher.map(|watcher| tokio::spawn(watcher.run()));
    let result = reconcile_with(options, progress, upstream.channel).await;
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    result.map(|mut report| {
        report.elapsed = started.elapsed();
        report
    })
}

async fn reconcile_with(
    options: &Options,
    progress: &Progress,
    channel: crate::upstream::UpstreamChannel,
) -> anyhow::Result<Report> {
    let deleting = matches!(options.delete_missing, DeleteMissing::On { .. });
    tracing::info!(
        clerk_api = %options.clerk.base_url,
        dry_run = options.dry_run,
        delete_missing = deleting,
        "reconcile starting"
    );
    let timeout = options.user_service.timeout;

    // The local side first: see `local` for why.
    progress.begin("user-service users", None);
    let client = UserServiceClient::new(channel.clone());
    let local = local::snapshot(&client, timeout, options.write_retry, progress).await?;
    progress.finish();

    let clerk =
        ClerkApi::new(&options.clerk).context("cannot set up the HTTP client for Clerk's Backend API")?;
    let total = match clerk.count_users().await {
        Ok(total) => Some(total),
        Err(error @ clerk_api::ClerkApiError::Unauthorized { .. }) => return Err(error.into()),
        Err(error) => {
            tracing::warn!(%error, "cannot count Clerk's users; progress is shown without a total");
            None
        }
    };
    progress.begin("Clerk users", total);
    let mut planner = Planner::new(local);
    let mut pages = clerk.users();
    while let Some(page) = pages.next().await? {
        progress.advance(page.len() as u64);
        planner.add(page);
    }
    progress.finish();
    let plan = planner.finish();

    let refused = plan.check_deletes(options.delete_missing).err();
    if options.dry_run || refused.is_some() {
        return Ok(Report::unwritten(&plan, deleting, options.dry_run, refused));
    }

    let deletes: &[String] = if deleting { &plan.missing } else { &[] };
    let mut report = Report::writing(&plan, deleting);
    progress.begin("writes", Some((plan.writes.len() + deletes.len()) as u64));
    let writer = Writer::new(channel, timeout, options.write_retry);
    writer
        .run(&plan.writes, deletes, options.concurrency, progress, |clerk_id, written| {
            report.record(clerk_id, written);
        })
        .await;
    progress.finish();
    Ok(report)
}
