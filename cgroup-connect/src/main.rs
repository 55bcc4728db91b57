//! The `blocker` binary: parses arguments, runs one subcommand, maps errors to exit codes.
use std::process::ExitCode;

use cgroup_connect::cli::{self, Cli};
use clap::Parser as _;

fn main() -> ExitCode {
    cgroup_connect::logging::init();
    let cli = Cli::parse();
    match cli::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::from(cli::exit_code(&err))
        }
    }
}
