//! The `rpfs` binary: logging setup, then the command line.

mod cli;

use clap::Parser;

fn main() {
    use std::io::IsTerminal;
    // fuser warns when it unmounts a mount that was already unmounted from outside: noise.
    let filter = tracing_subscriber::EnvFilter::try_from_env("RPFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"))
        .add_directive("fuser::mnt=error".parse().expect("a valid directive"));
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
