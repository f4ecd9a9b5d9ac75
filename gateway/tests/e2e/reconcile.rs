//! `gateway reconcile` against a fake of Clerk's Backend API
//! ([`crate::fake_clerk_api`]) and the real user-service, on PostgreSQL and
//! SQLite: backfilling an empty service through rate limits and failures,
//! idempotent reruns, racing webhooks, dry runs and guarded deletions.

use std::{collections::BTreeMap, process::Command, time::Duration};

use futures::StreamExt;
use gateway::{
    config::{UpstreamTls, UserServiceConfig},
    reconcile::{
        DeleteMissing, Display, Options, Progress, Report,
        options::{ClerkApiConfig, ClerkSecretKey, parse_clerk_api_url},
        plan::DeletesRefused,
        reconcile,
        report::{Counts, Verdict},
        retry::RetryPolicy,
    },
};
use userdata_proto::v1::User;

use crate::{
    clerk::{ClerkUser, T0, deleted},
    fake_clerk_api::{FakeClerkApi, Fault, SECRET_KEY, population},
    support::{Db, Harness},
};

crate::on_both_backends!(
    ten_thousand_users_reach_an_empty_service_through_429s_500s_and_a_dropped_connection,
    a_second_run_changes_nothing,
    a_run_racing_a_webhook_storm_ends_in_the_newest_state,
    a_dry_run_reports_the_changes_and_writes_nothing,
    delete_missing_over_its_limit_refuses_and_writes_nothing,
    forced_deletes_remove_users_clerk_no_longer_lists_for_good,
    newer_local_state_and_deleted_users_are_left_alone,
    a_run_interrupted_half_way_is_finished_by_the_next,
    a_dry_run_plans_users_deleted_or_newer_here_that_a_run_leaves_alone,
    several_server_errors_in_a_row_are_retried_with_growing_waits,
    a_clerk_api_that_keeps_failing_ends_the_run_with_one_line_and_no_writes,
);

/// Quick retries: the faults are injected, waiting long proves nothing.
const FAST_RETRY: RetryPolicy = RetryPolicy {
    attempts: 6,
    first_backoff: Duration::from_millis(20),
    max_backoff: Duration::from_millis(200),
};

/// Options for a run from `api` into the harness's user-service.
fn options(api: &FakeClerkApi, harness: &Harness) -> Options {
    let base_url = parse_clerk_api_url(&api.url()).unwrap_or_else(|e| panic!("fake URL: {e}"));
    let key = ClerkSecretKey::parse(SECRET_KEY).unwrap_or_else(|e| panic!("key: {e}"));
    let mut clerk = ClerkApiConfig::new(base_url, key);
    clerk.retry = FAST_RETRY;
    clerk.request_timeout = Duration::from_secs(10);
    let user_service = UserServiceConfig {
        url: harness.user_service_url(),
        replicas: Vec::new(),
        token: None,
        tls: UpstreamTls::default(),
        check_interval: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
        health_timeout: Duration::from_secs(1),
    };
    let mut options = Options::new(clerk, user_service);
    options.concurrency = 32;
    options.write_retry = FAST_RETRY;
    options
}

async fn run(options: &Options) -> Report {
    reconcile(options, &Progress::new(Display::Log))
        .await
        .unwrap_or_else(|e| panic!("reconcile failed: {e:#}"))
}

/// The stored fields of `user`, as comparable tuples.
fn stored_profile(user: &User) -> [Option<&str>; 5] {
    [
        user.email.as_deref(),
        user.first_name.as_deref(),
        user.last_name.as_deref(),
        user.username.as_deref(),
        user.image_url.as_deref(),
    ]
}

/// What user-service must hold for a Clerk user.
fn clerk_profile(user: &ClerkUser) -> [Option<&str>; 5] {
    [
        user.primary_email(),
        user.first_name.as_deref(),
        user.last_name.as_deref(),
        user.username.as_deref(),
        user.image_url.as_deref(),
    ]
}

/// Every stored user's etag (its version), by Clerk id.
async fn etags(harness: &Harness) -> BTreeMap<String, String> {
    harness.every_user().await.into_iter().map(|u| (u.clerk_id, u.etag)).collect()
}

/// Asserts user-service holds exactly `users`, field by field.
async fn assert_holds_exactly(harness: &Harness, users: &[ClerkUser]) {
    let stored: BTreeMap<String, User> =
        harness.every_user().await.into_iter().map(|u| (u.clerk_id.clone(), u)).collect();
    assert_eq!(stored.len(), users.len(), "user count");
    for user in users {
        let Some(found) = stored.get(&user.id) else {
            panic!("{} is missing", user.id);
        };
        assert_eq!(stored_profile(found), clerk_profile(user), "{}", user.id);
    }
}

async fn ten_thousand_users_reach_an_empty_service_through_429s_500s_and_a_dropped_connection(db: Db) {
    let users = population("2tenK", 10_000, T0 - 20_000_000);
    let api = FakeClerkApi::start(users.clone()).await;
    api.inject(&[Fault::ServerError, Fault::RateLimited { seconds: 1 }, Fault::DropConnection]);
    let harness = Harness::start(db).await;

    let report = run(&options(&api, &harness)).await;

    assert_eq!(report.verdict, Verdict::InSync, "{report}");
    let expected = Counts { listed: 10_000, created: 10_000, ..Counts::default() };
    assert_eq!(report.counts, expected, "{report}");
    assert_holds_exactly(&harness, &users).await;
    assert_eq!(api.faults_left(), 0, "every fault was met");
    let seen = api.seen();
    let pages: Vec<_> = seen.iter().filter(|s| s.path == "/v1/users").collect();
    for page in &pages {
        assert_eq!(page.authorization.as_deref(), Some(format!("Bearer {SECRET_KEY}").as_str()));
        assert_eq!(page.query.get("limit").map(String::as_str), Some("500"), "{page:?}");
        assert_eq!(page.query.get("order_by").map(String::as_str), Some("+created_at"), "{page:?}");
    }
    // 20 pages of 500, the empty page that ends the listing, and 3 faults.
    assert_eq!(pages.len(), 24, "{pages:?}");
    let limited = pages.iter().position(|s| s.status == 429).unwrap_or_else(|| panic!("no 429 seen"));
    let waited = pages[limited + 1].at.duration_since(pages[limited].at);
    assert!(waited >= Duration::from_secs(1), "retried {waited:?} after a 429 with Retry-After: 1");
}

async fn a_second_run_changes_nothing(db: Db) {
    let users = population("2again", 2_000, T0 - 5_000_000);
    let api = FakeClerkApi::start(users.clone()).await;
    let harness = Harness::start(db).await;
    let options = options(&api, &harness);
    let first = run(&options).await;
    assert_eq!(first.counts.created, 2_000, "{first}");
    let before = etags(&harness).await;

    let second = run(&options).await;

    assert_eq!(second.verdict, Verdict::InSync, "{second}");
    let expected = Counts { listed: 2_000, local: 2_000, unchanged: 2_000, ..Counts::default() };
    assert_eq!(second.counts, expected, "{second}");
    assert_eq!(etags(&harness).await, before, "a user's version changed");
}

async fn a_run_racing_a_webhook_storm_ends_in_the_newest_state(db: Db) {
    let old = population("2race", 400, T0);
    let api = FakeClerkApi::start(old.clone()).await;
    let harness = Harness::start(db).await;
    let mut options = options(&api, &harness);
    options.concurrency = 8;
    options.clerk.page_size = 50;
    // In Clerk every user changes (and every tenth is deleted) while the run
    // goes on; each change comes to the gateway as its webhook too.
    let newest: Vec<(ClerkUser, bool)> = old
        .iter()
        .enumerate()
        .map(|(i, user)| {
            let renamed =
                user.clone().named("Newest", &format!("Version{i}")).at(user.updated_at + 3_600_000);
            (renamed, i % 10 == 0)
        })
        .collect();
    let poster = harness.poster();
    let storm =
        futures::stream::iter(newest.iter().enumerate()).for_each_concurrent(16, |(i, (user, gone))| {
            let (api, poster) = (&api, poster.clone());
            async move {
                let delivery = if *gone {
                    api.remove(&user.id);
                    poster
                        .post(deleted(&user.id, user.updated_at), &format!("msg_e2e_race_deleted_{i}"))
                        .await
                } else {
                    api.put(user.clone());
                    poster.post(user.updated(), &format!("msg_e2e_race_updated_{i}")).await
                };
                assert_eq!(delivery.status, 200, "{delivery:?}");
            }
        });

    let (report, ()) = tokio::join!(run(&options), storm);

    assert_eq!(report.counts.failed, 0, "{report}");
    let survivors: Vec<ClerkUser> = newest.iter().filter(|(_, gone)| !gone).map(|(u, _)| u.clone()).collect();
    assert_holds_exactly(&harness, &survivors).await;
    for (user, gone) in &newest {
        if *gone {
            harness.assert_not_found(&user.id, "deleted during the run").await;
        }
    }
}

/// Seeds user-service through webhooks: `equal` as Clerk has it, `outdated`
/// as Clerk had it before, and `extra`, which Clerk does not list.
async fn seed(harness: &Harness, equal: &[ClerkUser], outdated: &[ClerkUser], extra: &[ClerkUser]) {
    for (i, user) in equal.iter().chain(outdated).chain(extra).enumerate() {
        harness.post(user.created(), &format!("msg_e2e_seed_{i}")).await.assert_outcome("applied", "seed");
    }
}

async fn a_dry_run_reports_the_changes_and_writes_nothing(db: Db) {
    let equal = population("2dryEq", 3, T0);
    let outdated_then = population("2dryOld", 2, T0);
    let outdated_now: Vec<ClerkUser> =
        outdated_then.iter().map(|u| u.clone().named("Now", "Renamed").at(u.updated_at + 1000)).collect();
    let new = population("2dryNew", 4, T0);
    let extra = population("2dryGone", 1, T0);
    let api = FakeClerkApi::start([equal.clone(), outdated_now, new].concat()).await;
    let harness = Harness::start(db).await;
    seed(&harness, &equal, &outdated_then, &extra).await;
    let before = etags(&harness).await;
    let mut options = options(&api, &harness);
    options.dry_run = true;
    options.delete_missing = DeleteMissing::On { max: 10, force: false };

    let report = run(&options).await;

    assert_eq!(report.verdict, Verdict::WouldChange(7), "{report}");
    let expected =
        Counts { listed: 9, local: 6, created: 4, updated: 2, unchanged: 3, deleted: 1, ..Counts::default() };
    assert_eq!(report.counts, expected, "{report}");
    assert!(report.samples.update.items().iter().all(|s| s.ends_with("(first_name, last_name)")), "{report}");
    assert!(report.to_string().contains("would be created: 4"), "{report}");
    assert_eq!(etags(&harness).await, before, "a dry run wrote");
}

async fn delete_missing_over_its_limit_refuses_and_writes_nothing(db: Db) {
    let kept = population("2limKeep", 2, T0);
    let extra = population("2limGone", 4, T0);
    let new = population("2limNew", 3, T0);
    let api = FakeClerkApi::start([kept.clone(), new].concat()).await;
    let harness = Harness::start(db).await;
    seed(&harness, &kept, &[], &extra).await;
    let before = etags(&harness).await;
    let mut options = options(&api, &harness);
    options.delete_missing = DeleteMissing::On { max: 3, force: false };

    let report = run(&options).await;

    assert_eq!(report.verdict, Verdict::DeletesRefused(DeletesRefused { count: 4, max: 3 }), "{report}");
    let reason = report.reason().unwrap_or_default();
    assert!(reason.contains("--max-deletes 3") && !reason.contains('\n'), "{reason}");
    assert_eq!(etags(&harness).await, before, "a refused run wrote");
}

async fn forced_deletes_remove_users_clerk_no_longer_lists_for_good(db: Db) {
    let kept = population("2frcKeep", 2, T0);
    let extra = population("2frcGone", 4, T0);
    let api = FakeClerkApi::start(kept.clone()).await;
    let harness = Harness::start(db).await;
    seed(&harness, &kept, &[], &extra).await;
    let mut options = options(&api, &harness);
    options.delete_missing = DeleteMissing::On { max: 1, force: true };

    let report = run(&options).await;

    assert_eq!(report.verdict, Verdict::InSync, "{report}");
    assert_eq!(report.counts.deleted, 4, "{report}");
    assert_holds_exactly(&harness, &kept).await;
    // A late webhook for a deleted user cannot bring it back.
    let late = extra[0].clone().at(extra[0].updated_at + 60_000);
    harness
        .post(late.updated(), "msg_e2e_late_after_delete")
        .await
        .assert_outcome("user_deleted", "late update");
}

async fn newer_local_state_and_deleted_users_are_left_alone(db: Db) {
    let in_clerk = population("2keepNew", 2, T0);
    let api = FakeClerkApi::start(in_clerk.clone()).await;
    let harness = Harness::start(db).await;
    // The first is newer here than the copy Clerk's API serves (its webhook
    // came, the API lags); the second was deleted here.
    let newer = seed_newer_and_deleted(&harness, &in_clerk).await;
    let deleted_here = &in_clerk[1];
    let options = options(&api, &harness);

    let report = run(&options).await;

    assert_eq!(report.verdict, Verdict::InSync, "{report}");
    assert_eq!((report.counts.stale, report.counts.tombstoned), (1, 1), "{report}");
    assert_holds_exactly(&harness, &[newer]).await;
    harness.assert_not_found(&deleted_here.id, "after the reconcile").await;
    let again = run(&options).await;
    assert_eq!((again.counts.stale, again.counts.tombstoned, again.counts.failed), (1, 1, 0), "{again}");
}

/// user-service holds `in_clerk[0]` renamed after Clerk's copy and has
/// deleted `in_clerk[1]`; returns the newer copy.
async fn seed_newer_and_deleted(harness: &Harness, in_clerk: &[ClerkUser]) -> ClerkUser {
    let [renamed_here, deleted_here] = [&in_clerk[0], &in_clerk[1]];
    let newer = renamed_here.clone().named("Newer", "Than The Api").at(renamed_here.updated_at + 60_000);
    harness.post(newer.updated(), "msg_e2e_newer_here").await.assert_outcome("applied", "newer");
    harness.post(deleted_here.created(), "msg_e2e_deleted_created").await.assert_outcome("applied", "seed");
    harness
        .post(deleted(&deleted_here.id, deleted_here.updated_at + 1000), "msg_e2e_deleted_here")
        .await
        .assert_outcome("applied", "deleted");
    newer
}

async fn a_dry_run_plans_users_deleted_or_newer_here_that_a_run_leaves_alone(db: Db) {
    let in_clerk = population("2dryKept", 3, T0);
    let api = FakeClerkApi::start(in_clerk.clone()).await;
    let harness = Harness::start(db).await;
    seed_newer_and_deleted(&harness, &in_clerk).await;
    let mut options = options(&api, &harness);
    let first = run(&options).await;
    assert_eq!((first.verdict.clone(), first.counts.created), (Verdict::InSync, 1), "{first}");
    let before = etags(&harness).await;
    options.dry_run = true;

    let dry = run(&options).await;
    options.dry_run = false;
    let wet = run(&options).await;

    // Only user-service can tell these two apart from real changes, and only
    // when written to: the dry run plans them, the run then leaves them alone.
    assert_eq!(dry.verdict, Verdict::WouldChange(2), "{dry}");
    assert_eq!((dry.counts.created, dry.counts.updated, dry.counts.unchanged), (1, 1, 1), "{dry}");
    let reason = dry.reason().unwrap_or_default();
    assert!(reason.contains("deleted here or changed here") && !reason.contains('\n'), "{reason}");
    assert_eq!(wet.verdict, Verdict::InSync, "{wet}");
    let expected = Counts { listed: 3, local: 2, unchanged: 1, stale: 1, tombstoned: 1, ..Counts::default() };
    assert_eq!(wet.counts, expected, "{wet}");
    assert_eq!(etags(&harness).await, before, "a run changed a user it should leave alone");
}

async fn several_server_errors_in_a_row_are_retried_with_growing_waits(db: Db) {
    let users = population("2five500", 12, T0);
    let api = FakeClerkApi::start(users.clone()).await;
    let failures = usize::try_from(FAST_RETRY.attempts - 1).unwrap_or(0);
    api.inject(&vec![Fault::ServerError; failures]);
    let harness = Harness::start(db).await;

    let report = run(&options(&api, &harness)).await;

    assert_eq!((report.verdict.clone(), report.counts.created), (Verdict::InSync, 12), "{report}");
    assert_holds_exactly(&harness, &users).await;
    let pages: Vec<_> = api.seen().into_iter().filter(|s| s.path == "/v1/users").collect();
    let statuses: Vec<u16> = pages.iter().map(|s| s.status).take(failures + 1).collect();
    assert_eq!(statuses, [vec![500; failures], vec![200]].concat());
    for (failed, pair) in (1..).zip(pages.windows(2).take(failures)) {
        let waited = pair[1].at.duration_since(pair[0].at);
        assert!(waited >= FAST_RETRY.backoff(failed), "waited {waited:?} after failure {failed}");
    }
}

async fn a_clerk_api_that_keeps_failing_ends_the_run_with_one_line_and_no_writes(db: Db) {
    let api = FakeClerkApi::start(population("2all500", 5, T0)).await;
    let attempts = usize::try_from(FAST_RETRY.attempts).unwrap_or(0);
    api.inject(&vec![Fault::ServerError; attempts]);
    let harness = Harness::start(db).await;

    let error = reconcile(&options(&api, &harness), &Progress::new(Display::Log)).await.err();

    // `main` prints an error as one `gateway: error: …` line and exits 2.
    let message = error.map(|e| format!("{e:#}")).unwrap_or_else(|| panic!("the run succeeded"));
    assert!(!message.contains('\n'), "{message}");
    assert!(
        message.contains("GET /v1/users")
            && message.contains(&format!("giving up after {attempts} attempts")),
        "{message}"
    );
    assert_eq!(api.faults_left(), 0);
    assert!(harness.every_user().await.is_empty(), "a failed listing wrote");
}

async fn a_run_interrupted_half_way_is_finished_by_the_next(db: Db) {
    let users = population("2stop", 1_500, T0);
    let api = FakeClerkApi::start(users.clone()).await;
    let harness = Harness::start(db).await;
    let mut options = options(&api, &harness);
    options.concurrency = 4;
    let interrupted = {
        let options = options.clone();
        tokio::spawn(async move { run(&options).await })
    };
    // Stop it (as Ctrl-C would) once some, but not all, users are written.
    loop {
        let written = harness.every_user().await.len();
        assert!(written < users.len(), "the run finished before it could be interrupted");
        if written >= 100 {
            interrupted.abort();
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(interrupted.await.is_err_and(|e| e.is_cancelled()), "the run was not interrupted");
    let partial = harness.every_user().await.len() as u64;

    options.concurrency = 32;
    let report = run(&options).await;

    assert_eq!(report.verdict, Verdict::InSync, "{report}");
    // Writes in flight at the abort may have landed after `partial` was read.
    assert!(report.counts.unchanged >= partial, "{report}");
    assert_eq!(report.counts.created + report.counts.unchanged + report.counts.stale, 1_500, "{report}");
    assert_holds_exactly(&harness, &users).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_that_ignores_the_cursor_is_paged_by_offset() {
    paged_by_offset(FakeClerkApi::ignore_cursor).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_that_refuses_the_cursor_is_paged_by_offset() {
    paged_by_offset(FakeClerkApi::refuse_cursor).await;
}

async fn paged_by_offset(quirk: fn(&FakeClerkApi)) {
    let users = population("2offset", 25, T0);
    let api = FakeClerkApi::start(users.clone()).await;
    quirk(&api);
    let harness = Harness::start(Db::Sqlite).await;
    let mut options = options(&api, &harness);
    options.clerk.page_size = 10;

    let report = run(&options).await;

    assert_eq!((report.counts.listed, report.counts.created), (25, 25), "{report}");
    assert_holds_exactly(&harness, &users).await;
    assert!(api.seen().iter().any(|s| s.query.contains_key("offset")), "never paged by offset");
}

/// Runs `gateway reconcile` with `args`, `CLERK_SECRET_KEY` set to `key` (or
/// unset), and returns (exit code, stdout, stderr).
async fn run_binary(args: Vec<String>, key: Option<&'static str>) -> (Option<i32>, String, String) {
    let env = key.map(|key| ("CLERK_SECRET_KEY", key.to_owned())).into_iter().collect();
    run_binary_with_env(args, env).await
}

/// Runs `gateway reconcile` with `args` and only `env` of the variables it
/// reads (the rest removed), stdout and stderr piped (so not a terminal);
/// returns (exit code, stdout, stderr).
async fn run_binary_with_env(
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
) -> (Option<i32>, String, String) {
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
        command.arg("reconcile").args(args);
        for variable in
            ["CLERK_SECRET_KEY", "CLERK_API_URL", "USER_SERVICE_TOKEN", "USER_SERVICE_URL", "RUST_LOG"]
        {
            command.env_remove(variable);
        }
        command.envs(env);
        let output = command.output().unwrap_or_else(|e| panic!("cannot run the gateway binary: {e}"));
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .unwrap_or_else(|e| panic!("binary task: {e}"))
}

fn cli_args(api: &FakeClerkApi, harness: &Harness, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--clerk-api-url".to_owned(),
        api.url(),
        "--user-service-url".to_owned(),
        harness.user_service_url().to_string(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_exits_0_in_sync_and_1_with_a_reason_while_not() {
    let users = population("2cli", 30, T0);
    let api = FakeClerkApi::start(users.clone()).await;
    let harness = Harness::start(Db::Sqlite).await;

    let (dry_code, dry_out, dry_err) =
        run_binary(cli_args(&api, &harness, &["--dry-run"]), Some(SECRET_KEY)).await;
    let (code, out, err) = run_binary(cli_args(&api, &harness, &[]), Some(SECRET_KEY)).await;
    let (again_code, again_out, _) =
        run_binary(cli_args(&api, &harness, &["--dry-run"]), Some(SECRET_KEY)).await;

    assert_eq!(dry_code, Some(1), "dry run with changes pending:\n{dry_out}\n{dry_err}");
    let last = dry_err.lines().last().unwrap_or_default();
    assert!(last.starts_with("gateway reconcile: dry run: 30 writes"), "{dry_err}");
    assert!(dry_out.contains("would be created: 30"), "{dry_out}");
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("created: 30") && out.contains("in sync"), "{out}");
    assert_holds_exactly(&harness, &users).await;
    assert_eq!(again_code, Some(0), "{again_out}");
    assert!(again_out.contains("unchanged: 30"), "{again_out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_needs_clerk_secret_key_and_never_prints_it() {
    let api = FakeClerkApi::start(population("2key", 3, T0)).await;
    let harness = Harness::start(Db::Sqlite).await;

    let (missing_code, _, missing_err) = run_binary(cli_args(&api, &harness, &[]), None).await;
    let (wrong_code, _, wrong_err) =
        run_binary(cli_args(&api, &harness, &[]), Some("sk_test_wrongKeyMustNotBePrinted")).await;

    assert_eq!(missing_code, Some(2), "{missing_err}");
    assert_eq!(missing_err.lines().count(), 1, "{missing_err}");
    assert!(missing_err.contains("CLERK_SECRET_KEY"), "{missing_err}");
    assert_eq!(wrong_code, Some(2), "{wrong_err}");
    let last = wrong_err.lines().last().unwrap_or_default();
    assert!(last.contains("401") && last.contains("CLERK_SECRET_KEY"), "{wrong_err}");
    assert!(!wrong_err.contains("wrongKeyMustNotBePrinted"), "{wrong_err}");
    assert!(harness.every_user().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_terminal_progress_is_plain_log_lines_and_a_summary_ends_the_run() {
    let users = population("2log", 30, T0);
    let api = FakeClerkApi::start(users.clone()).await;
    // A 429 asking for 6 s makes the Clerk phase outlast the 5 s between two
    // progress lines, so the page after it must log one.
    api.inject(&[Fault::RateLimited { seconds: 6 }]);
    let harness = Harness::start(Db::Sqlite).await;
    let args = cli_args(&api, &harness, &["--page-size", "10"]);

    let (code, out, err) = run_binary_with_env(args, vec![("CLERK_SECRET_KEY", SECRET_KEY.to_owned())]).await;

    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(!err.contains('\u{1b}') && !out.contains('\u{1b}'), "escape codes without a terminal:\n{err}");
    let logged = |what: &str, phase: &str| err.lines().any(|l| l.contains(what) && l.contains(phase));
    assert!(logged("reconcile progress", "Clerk users"), "no progress line while paging:\n{err}");
    for phase in ["user-service users", "Clerk users", "writes"] {
        assert!(logged("reconcile done", phase), "no line ending the {phase} phase:\n{err}");
    }
    assert!(out.contains("Clerk users: 30, user-service users before the run: 0"), "{out}");
    assert!(out.contains("  created: 30") && out.contains("  failed: 0"), "{out}");
    assert!(out.lines().last().is_some_and(|l| l.starts_with("in sync (")), "{out}");
    assert_holds_exactly(&harness, &users).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_service_url_is_read_from_the_environment() {
    let users = population("2env", 5, T0);
    let api = FakeClerkApi::start(users.clone()).await;
    let harness = Harness::start(Db::Sqlite).await;
    let env = vec![
        ("CLERK_SECRET_KEY", SECRET_KEY.to_owned()),
        ("USER_SERVICE_URL", harness.user_service_url().to_string()),
    ];

    let (code, out, err) = run_binary_with_env(vec!["--clerk-api-url".to_owned(), api.url()], env).await;

    assert_eq!(code, Some(0), "{out}\n{err}");
    assert_holds_exactly(&harness, &users).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_refuses_deletions_over_the_limit_with_one_line_and_writes_nothing() {
    let kept = population("2cliKeep", 2, T0);
    let extra = population("2cliGone", 4, T0);
    let new = population("2cliNew", 3, T0);
    let api = FakeClerkApi::start([kept.clone(), new.clone()].concat()).await;
    let harness = Harness::start(Db::Sqlite).await;
    seed(&harness, &kept, &[], &extra).await;
    let before = etags(&harness).await;
    let args = cli_args(&api, &harness, &["--delete-missing", "--max-deletes", "3"]);

    let (code, out, err) = run_binary(args, Some(SECRET_KEY)).await;

    assert_eq!(code, Some(1), "{out}\n{err}");
    let reasons: Vec<&str> = err.lines().filter(|l| l.starts_with("gateway reconcile:")).collect();
    let [reason] = reasons.as_slice() else {
        panic!("expected one reason line:\n{err}");
    };
    assert!(
        reason.contains("refusing to delete 4 local users") && reason.contains("--max-deletes 3"),
        "{reason}"
    );
    assert!(out.contains("refused: 4 deletions exceed --max-deletes 3; nothing written"), "{out}");
    assert_eq!(etags(&harness).await, before, "a refused run wrote");
    for user in &new {
        harness.assert_not_found(&user.id, "after a refused run").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_sends_the_user_service_token_and_needs_read_and_write() {
    use std::io::Write as _;
    const WRITE_ONLY: &str = "gateway-e2e-write-only-token-0123456789";
    const READ_WRITE: &str = "reconcile-e2e-read-write-token-0123456789";
    let users = population("2tok", 4, T0);
    let api = FakeClerkApi::start(users).await;
    let mut tokens = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("tokens file: {e}"));
    writeln!(tokens, "gateway write {WRITE_ONLY}\nreconcile read,write {READ_WRITE}")
        .unwrap_or_else(|e| panic!("tokens file: {e}"));
    let path = tokens.path().to_owned();
    let server = user_service::testing::TestServer::start_with(Db::Sqlite, move |config| {
        config.auth_tokens = Some(path)
    })
    .await;
    let env = |token: Option<&str>| {
        let mut env = vec![("CLERK_SECRET_KEY", SECRET_KEY.to_owned()), ("USER_SERVICE_URL", server.url())];
        env.extend(token.map(|token| ("USER_SERVICE_TOKEN", token.to_owned())));
        env
    };
    let args = || vec!["--clerk-api-url".to_owned(), api.url()];

    let (no_token, _, no_token_err) = run_binary_with_env(args(), env(None)).await;
    let (write_only, _, write_only_err) = run_binary_with_env(args(), env(Some(WRITE_ONLY))).await;
    let (first, first_out, first_err) = run_binary_with_env(args(), env(Some(READ_WRITE))).await;
    let (second, second_out, _) = run_binary_with_env(args(), env(Some(READ_WRITE))).await;

    let last_line = |err: &str| err.lines().last().unwrap_or_default().to_owned();
    assert_eq!(no_token, Some(2), "{no_token_err}");
    assert!(last_line(&no_token_err).starts_with("gateway: error:"), "{no_token_err}");
    assert!(last_line(&no_token_err).contains("UNAUTHENTICATED"), "{no_token_err}");
    assert_eq!(write_only, Some(2), "{write_only_err}");
    let refused = last_line(&write_only_err);
    assert!(
        refused.contains("PERMISSION_DENIED") && refused.contains("`read` and `write` scopes"),
        "{refused}"
    );
    assert_eq!(first, Some(0), "{first_out}\n{first_err}");
    assert!(first_out.contains("  created: 4"), "{first_out}");
    for token in [WRITE_ONLY, READ_WRITE] {
        assert!(
            ![&write_only_err, &first_err, &first_out].iter().any(|s| s.contains(token)),
            "token printed"
        );
    }
    // The second run reads back, with the token, what the first wrote.
    assert_eq!(second, Some(0), "{second_out}");
    assert!(
        second_out.contains("users before the run: 4") && second_out.contains("unchanged: 4"),
        "{second_out}"
    );
}
