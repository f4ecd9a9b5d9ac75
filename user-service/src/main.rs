//! The `user-service` binary.

use std::process::ExitCode;

use clap::Parser;
use user_service::{app::App, config::Config};
use userdata_kit::{logging, shutdown};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    logging::init(config.log_format);
    let started = async { App::build(config).await?.run_until(shutdown::signal()).await };
    match started.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One clear line, no backtrace.
            eprintln!("user-service: {err}");
            ExitCode::FAILURE
        }
    }
}
