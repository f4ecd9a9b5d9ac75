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
//! The folders follow a webhook through the gateway:
//!
//! - [`http`]: the accept loop, connection caps, rate limit, shedding, the
//!   routes and handlers, and the one place errors become answers
//!   ([`http::error`]);
//! - [`svix`]: the signature check (and signing, for tests and `gateway send`);
//! - [`clerk`]: the event model and its parsing;
//! - [`upstream`]: the user-service channel (TLS, token, balancing over
//!   replicas), the requests built from Clerk objects, and the client;
//! - [`error`]: the two failure stages, [`error::RequestError`] and
//!   [`error::UpstreamError`];
//! - [`config`]: command line, defaults, secrets and the validated
//!   [`config::Config`];
//! - [`reconcile`]: `gateway reconcile`, which brings user-service to the
//!   state of Clerk's Backend API, for an existing Clerk application and after
//!   lost webhooks;
//! - [`descriptors`]: the open-files limit, raised at startup and checked
//!   against `--max-connections`;
//! - [`metrics`]: the Prometheus registry, served on its own listener
//!   (`METRICS.md`).
//!
//! Entry points: [`app::App`] (build, bind, run), [`config::Config`],
//! [`svix::sign_headers`] (sign like Svix, for tests and `gateway send`).

pub mod app;
pub mod clerk;
pub mod config;
pub mod descriptors;
pub mod error;
pub mod http;
pub mod metrics;
pub mod reconcile;
pub mod request_id;
pub mod send;
pub mod svix;
pub mod upstream;

use std::process::ExitCode;

pub use app::App;
pub use config::{Cli, Command, Config, SigningSecret, SigningSecrets};

/// Runs a parsed subcommand to completion.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => {
            let mut config = Config::from_args(args)?;
            // Process-wide, so here rather than in `App::build`, which
            // library users and tests call in processes of their own.
            let limit = descriptors::raise_to_hard_limit();
            config.connections.max_connections =
                descriptors::fit_connections(limit, config.connections.max_connections);
            let app = App::build(config).await?;
            app.run_until(userdata_kit::shutdown::signal()).await?;
            tracing::info!("gateway stopped");
            Ok(ExitCode::SUCCESS)
        }
        Command::Send(args) => send::run(args).await,
        Command::Reconcile(args) => reconcile::run(args).await,
    }
}
