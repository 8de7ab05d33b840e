//! The `rpfs` binary: logging setup, then the command line.

mod cli;

use clap::Parser;

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RPFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = cli::args::Cli::parse();
    if let Err(f) = cli::run(cli) {
        eprintln!("rpfs: error: {}", f.message);
        std::process::exit(f.code);
    }
}
