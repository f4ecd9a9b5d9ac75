//! The `user-service` binary.

use std::process::ExitCode;

use clap::Parser;
use user_service::{app::App, config::Config};
use userdata_kit::{logging, shutdown};

/// mimalloc rather than the system allocator: under webhook load glibc's
/// malloc and free were a fifth of this process's CPU (BENCHMARKS.md, issue
/// #16).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
