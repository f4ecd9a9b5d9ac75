//! `gateway` binary: parse the command line, set up logging, run.

use std::process::ExitCode;

use clap::Parser;
use gateway::Cli;

/// mimalloc rather than the system allocator: under webhook load glibc's
/// malloc and free were a fifth of this process's CPU (BENCHMARKS.md, issue
/// #16).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    userdata_kit::logging::init(cli.log_format);
    let command = cli.into_command().unwrap_or_else(|error| error.exit());
    match gateway::run(command).await {
        Ok(code) => code,
        Err(error) => {
            // One line on stderr, independent of RUST_LOG, so a startup
            // failure is always visible. `{:#}` joins the context chain.
            eprintln!("gateway: error: {error:#}");
            ExitCode::from(2)
        }
    }
}
