//! The `modelhost` command line: one file per command (or per family of small commands).

mod events;
mod generate;
mod inspect;
mod load;
mod models;
pub(crate) mod plan;
mod scale;
mod serve;
mod status;
mod synth;
mod text;
mod up;

use std::future::Future;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::default_socket_path;

/// Share one copy of a GGUF model between many inference workers.
#[derive(Debug, Parser)]
#[command(name = "modelhost", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the host daemon: map models once and serve the control socket.
    Serve(serve::ServeArgs),
    /// Start N workers sharing one model: starts a host if none runs, loads, attaches, reports.
    Up(up::UpArgs),
    /// Load a model into the running host, with a progress bar.
    Load(load::LoadArgs),
    /// Unload a model from the running host.
    Unload(models::UnloadArgs),
    /// Run more or fewer workers of a loaded model; removed ones finish their answers first.
    Scale(scale::ScaleArgs),
    /// List the host's models.
    Ls(models::LsArgs),
    /// List the host's processes and their memory.
    Ps(status::PsArgs),
    /// Show the host's status; exits non-zero when the host is unreachable.
    Status(status::StatusArgs),
    /// Follow the host's event stream.
    Events(events::EventsArgs),
    /// Show which layers would go to which device, without loading anything.
    Plan(plan::PlanArgs),
    /// Print what a GGUF model holds: architecture, hyper-parameters, tensors, layers, split.
    Inspect(inspect::InspectArgs),
    /// Write a llama-shaped GGUF model with random weights, for tests, benchmarks and demos.
    Synth(synth::SynthArgs),
    /// Turn text into the model's token ids, with its own vocabulary (offline, on the file).
    Tokenize(text::TokenizeArgs),
    /// Turn token ids into text (offline, on the file).
    Detokenize(text::DetokenizeArgs),
    /// Render a conversation with the model's chat template (offline, on the file).
    ChatTemplate(text::ChatTemplateArgs),
    /// Answer one prompt, streamed (uses the running host, or starts one as `up` does).
    Run(generate::RunArgs),
    /// Chat interactively: history kept, Ctrl-C stops an answer, Ctrl-D quits.
    Chat(generate::ChatArgs),
    /// The host's chat-template renderer (started by the host, behind a memory limit).
    #[command(hide = true)]
    RenderTemplates,
}

/// How a client command reaches the host.
#[derive(Debug, Args)]
pub(crate) struct ConnectArgs {
    /// The control socket (default: $MODELHOST_SOCKET, /run/modelhost/control.sock as root,
    /// else $XDG_RUNTIME_DIR/modelhost/control.sock).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
}

impl ConnectArgs {
    pub(crate) fn socket_path(&self) -> Option<PathBuf> {
        self.socket.clone()
    }

    pub(crate) fn client(&self) -> crate::client::Client {
        crate::client::Client::new(&self.socket.clone().unwrap_or_else(default_socket_path))
    }
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

/// Runs a client command's future on a small runtime of its own.
pub(crate) fn block_on<F: Future>(future: F) -> Result<F::Output, CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(future))
}

impl Cli {
    pub fn run(self) -> Result<(), CliError> {
        match self.command {
            Command::Serve(args) => serve::run(args),
            Command::Up(args) => up::run(args),
            Command::Load(args) => load::run(args),
            Command::Unload(args) => models::unload(args),
            Command::Scale(args) => scale::run(args),
            Command::Ls(args) => models::ls(args),
            Command::Ps(args) => status::ps(args),
            Command::Status(args) => status::status(args),
            Command::Events(args) => events::run(args),
            Command::Plan(args) => plan::run(args),
            Command::Inspect(args) => inspect::run(args),
            Command::Synth(args) => synth::run(args),
            Command::Tokenize(args) => text::tokenize(args),
            Command::Detokenize(args) => text::detokenize(args),
            Command::ChatTemplate(args) => text::chat_template(args),
            Command::Run(args) => generate::run(args),
            Command::Chat(args) => generate::chat(args),
            Command::RenderTemplates => Ok(crate::gateway::render::helper_main()?),
        }
    }
}
