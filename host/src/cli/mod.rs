//! The `modelhost` command line: one file per command.

mod inspect;
mod synth;

use clap::{Parser, Subcommand};

/// Share one copy of a GGUF model between many inference workers.
#[derive(Debug, Parser)]
#[command(name = "modelhost", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print what a GGUF model holds: architecture, hyper-parameters, tensors, layers, split.
    Inspect(inspect::InspectArgs),
    /// Write a llama-shaped GGUF model with random weights, for tests, benchmarks and demos.
    Synth(synth::SynthArgs),
}

/// A command failed; the message is for the person at the terminal.
#[derive(Debug)]
pub struct CliError(pub String);

impl<E: std::error::Error> From<E> for CliError {
    fn from(e: E) -> Self {
        // Include the whole source chain: "file: field at byte N: reason".
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            let text = s.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = s.source();
        }
        CliError(message)
    }
}

impl Cli {
    pub fn run(self) -> Result<(), CliError> {
        match self.command {
            Command::Inspect(args) => inspect::run(args),
            Command::Synth(args) => synth::run(args),
        }
    }
}
