//! `ticket-ingest [serve | migrate | partition | check-config | reprocess | console]`:
//! see `--help` and `cli.rs`. This file only maps the outcome to an exit code.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match cli::Cli::parse().run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(cli::Failure::Config(error)) => {
            eprintln!("ticket-ingest: configuration error: {error}");
            ExitCode::from(2)
        }
        Err(cli::Failure::Run(error)) => {
            eprintln!("ticket-ingest: {error:#}");
            ExitCode::FAILURE
        }
    }
}
