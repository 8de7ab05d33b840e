//! The `rpfs` binary: logging setup, then the command line.

// Product code states why it cannot fail where it insists it cannot (see STYLE).
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod cli;

use clap::Parser;

fn main() {
    use std::io::IsTerminal;
    // fuser warns when it unmounts a mount that was already unmounted from outside: noise.
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("RPFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    if let Ok(quiet) = "fuser::mnt=error".parse() {
        filter = filter.add_directive(quiet);
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = cli::args::Cli::parse();
    if let Err(f) = cli::run(cli) {
        eprintln!("rpfs: error: {}", f.message);
        std::process::exit(f.code);
    }
}
