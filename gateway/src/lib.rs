//! Clerk webhook gateway.
//!
//! Receives Clerk webhooks (signed by Svix) on `POST /webhooks/clerk`,
//! verifies them against the raw body, and applies `user.created`,
//! `user.updated` and `user.deleted` (UserService) and `session.created`,
//! `session.ended`, `session.removed`, `session.revoked` (UserDataService
//! activity) to user-service over gRPC. Every other event type is
//! acknowledged and ignored. See `STATUS_CODES.md` for what each
//! answer means to Svix.
//!
//! Production settings: HTTPS on the webhook endpoint ([`tls`]), a refusal to
//! serve plain HTTP on a public address without `--insecure`, timeouts and
//! caps on connections ([`server`], [`connections`], [`limits`]), a global
//! in-flight limit ([`shed`]), a per-client rate limit ([`rate_limit`]), a
//! bearer token, TLS and client-side balancing
//! towards user-service ([`upstream`]), and Prometheus metrics on their own
//! listener ([`metrics`], `METRICS.md`).
//!
//! `gateway reconcile` ([`reconcile`]) brings user-service to the state of
//! Clerk's Backend API, for an existing Clerk application and after lost
//! webhooks.
//!
//! Entry points: [`app::App`] (build, bind, run), [`config::Config`],
//! [`sign::sign_headers`] (sign like Svix, for tests and `gateway send`).

pub mod app;
pub mod clerk;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod reconcile;
pub mod request_id;
pub mod send;
pub mod svix;
pub mod telemetry;
pub mod upstream;

use std::process::ExitCode;

pub use app::{App, shutdown_signal};
pub use config::{Cli, Command, Config, SigningSecret, SigningSecrets};

/// Runs a parsed subcommand to completion.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => {
            let config = Config::from_args(args)?;
            let app = App::build(config).await?;
            app.run_until(shutdown_signal()).await?;
            tracing::info!("gateway stopped");
            Ok(ExitCode::SUCCESS)
        }
        Command::Send(args) => send::run(args).await,
        Command::Reconcile(args) => reconcile::run(args).await,
    }
}
