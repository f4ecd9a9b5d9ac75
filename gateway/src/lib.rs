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
//! Entry points: [`app::App`] (build, bind, run), [`config::Config`],
//! [`sign::sign_headers`] (sign like Svix, for tests and `gateway send`).

pub mod app;
pub mod apply;
pub mod clerk;
pub mod config;
pub mod error;
pub mod request_id;
pub mod routes;
pub mod send;
pub mod sign;
pub mod state;
pub mod telemetry;
pub mod verify;

use std::process::ExitCode;

pub use app::{App, shutdown_signal};
pub use config::{Cli, Command, Config, SigningSecret, SigningSecrets};

/// Runs a parsed subcommand to completion.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => {
            let config = Config::from_args(args)?;
            let upstream = config.user_service_url.clone();
            let secrets = config.signing_secrets.len();
            let app = App::build(config).await?;
            tracing::info!(
                listen = %app.local_addr(),
                user_service = %upstream,
                signing_secrets = secrets,
                "gateway listening"
            );
            app.run_until(shutdown_signal()).await?;
            tracing::info!("gateway stopped");
            Ok(ExitCode::SUCCESS)
        }
        Command::Send(args) => send::run(args).await,
    }
}
