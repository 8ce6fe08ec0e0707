//! The `kinbar` binary: parse the command line, run it, exit with its status.

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = kinbar::cli::Cli::parse();
    let code = kinbar::cli::run(cli).await;
    std::process::exit(code);
}
