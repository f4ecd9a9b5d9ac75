//! The `gateway` binary: `send` and startup failures.

use std::{process::Command, time::Duration};

use crate::support::{Call, FakeUpstream, Gateway, SECRET, user_event};

const BINARY: &str = env!("CARGO_BIN_EXE_gateway");

/// Runs the binary off the async runtime and returns (exit code, stdout, stderr).
async fn run_binary(args: Vec<String>, secret: Option<&'static str>) -> (Option<i32>, String, String) {
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(BINARY);
        command.args(args).env_remove("CLERK_WEBHOOK_SIGNING_SECRET");
        if let Some(secret) = secret {
            command.env("CLERK_WEBHOOK_SIGNING_SECRET", secret);
        }
        let output = command.output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn send_signs_a_file_like_svix_and_the_gateway_applies_it() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), user_event("user.created", "user_cli")).unwrap();

    let (code, stdout, stderr) = run_binary(
        vec![
            "send".into(),
            "--url".into(),
            gateway.url("/webhooks/clerk"),
            "--file".into(),
            file.path().display().to_string(),
            "--msg-id".into(),
            "msg_from_cli".into(),
        ],
        Some(SECRET),
    )
    .await;

    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.starts_with("200"), "{stdout}");
    let Call::Create(call) = upstream.single_call() else {
        panic!("expected CreateUser");
    };
    assert_eq!(call.message.event_context.unwrap().idempotency_key, "msg_from_cli");
}

#[tokio::test]
async fn send_library_function_reports_the_gateway_answer() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;
    let secrets = gateway::SigningSecrets::parse(SECRET).unwrap();

    let delivered = gateway::send::send(
        &gateway.url("/webhooks/clerk"),
        secrets.first(),
        "msg_lib",
        crate::support::now(),
        user_event("user.updated", "user_lib").into_bytes(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();

    assert_eq!(delivered.status, 200);
    assert!(delivered.body.contains("applied"), "{}", delivered.body);
}

#[tokio::test]
async fn serve_without_a_secret_fails_with_one_line_naming_the_variable() {
    let (code, _, stderr) =
        run_binary(vec!["serve".into(), "--listen".into(), "127.0.0.1:0".into()], None).await;

    assert_eq!(code, Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("CLERK_WEBHOOK_SIGNING_SECRET"), "{stderr}");
}

#[tokio::test]
async fn a_bare_gateway_serves_and_a_malformed_secret_fails_without_printing_it() {
    // No subcommand: serving is the default, so the secret is checked.
    let (code, _, stderr) = run_binary(vec![], Some("whsec_c2VjcmV0LXZhbHVl-NOT-BASE64")).await;

    assert_eq!(code, Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("CLERK_WEBHOOK_SIGNING_SECRET"), "{stderr}");
    assert!(!stderr.contains("c2VjcmV0"), "{stderr}");
}

/// `gateway reconcile <args>` as clap parses it (the environment included).
fn reconcile_args(args: &[&str]) -> Result<gateway::reconcile::ReconcileArgs, clap::Error> {
    use clap::Parser;
    let argv = ["gateway", "reconcile"].iter().chain(args);
    match gateway::Cli::try_parse_from(argv)?.into_command()? {
        gateway::Command::Reconcile(args) => Ok(args),
        other => panic!("expected reconcile, got {other:?}"),
    }
}

#[test]
fn reconcile_by_default_reads_clerks_own_api_and_deletes_nothing() {
    let args = reconcile_args(&[]).unwrap_or_else(|e| panic!("bare reconcile: {e}"));

    assert_eq!(args.clerk_api_url, "https://api.clerk.com");
    assert!(!args.delete_missing, "--delete-missing must be off by default");
    assert!(!args.force);
    assert!(!args.dry_run);
    assert_eq!(args.max_deletes, 10);
    assert_eq!(args.page_size, 500);
}

#[test]
fn reconcile_refuses_force_without_delete_missing() {
    let refused = reconcile_args(&["--force"]).map(|_| ()).unwrap_err();
    let accepted = reconcile_args(&["--delete-missing", "--force"]);

    assert_eq!(refused.kind(), clap::error::ErrorKind::MissingRequiredArgument, "{refused}");
    assert!(refused.to_string().contains("--delete-missing"), "{refused}");
    assert!(accepted.is_ok_and(|args| args.delete_missing && args.force));
}
