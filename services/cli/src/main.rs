//! `keel`: parse the arguments, set up logging, run, report.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = keel_cli::cli::Cli::parse();
    keel_cli::init_tracing();
    keel_cli::run(cli).unwrap_or_else(|e| keel_cli::report(&e))
}
