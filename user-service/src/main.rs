//! The `user-service` binary.

use std::process::ExitCode;

use clap::Parser;
use user_service::{
    app::{App, shutdown_signal},
    config::Config,
    telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    telemetry::init(config.log_format);
    let started = async { App::build(config).await?.run_until(shutdown_signal()).await };
    match started.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One clear line, no backtrace.
            eprintln!("user-service: {err}");
            ExitCode::FAILURE
        }
    }
}
