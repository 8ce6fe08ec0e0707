//! The `kinbar` binary: parse the command line, run it, exit with its status.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    kinbar::cli::run(kinbar::cli::Cli::parse()).await
}
