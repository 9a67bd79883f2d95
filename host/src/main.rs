use std::process::ExitCode;

use clap::Parser;
use modelhost_host::cli::Cli;

fn main() -> ExitCode {
    match Cli::parse().run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("modelhost: {}", e.0);
            ExitCode::FAILURE
        }
    }
}
