//! `modelhost serve`: run the daemon.

use std::path::PathBuf;

use clap::Args;

use super::CliError;
use crate::config::{LogFormat, Overrides};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML config file (see deploy/ for an example with every option).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The control socket to listen on (overrides the config file).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Serve the generation API (OpenAI's) on this TCP address too, e.g. 127.0.0.1:8080
    /// (overrides the config file's `http_listen`).
    #[arg(long)]
    http_listen: Option<std::net::SocketAddr>,
    /// Log format on stderr (overrides the config file).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    log_level: tracing::Level,
}

pub fn run(args: ServeArgs) -> Result<(), CliError> {
    let overrides = Overrides {
        socket: args.socket,
        log_format: args.log_format,
        http_listen: args.http_listen,
    };
    crate::daemon::run(args.config, overrides, args.log_level)?;
    Ok(())
}
