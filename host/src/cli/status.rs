//! `modelhost status` and `modelhost ps`.

use clap::Args;

use super::{block_on, CliError, ConnectArgs};
use crate::control::types::Status;
use crate::units::format_bytes;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

pub fn status(args: StatusArgs) -> Result<(), CliError> {
    let status: Status = block_on(args.connect.client().get("/v1/status"))??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!(
        "modelhost {} (pid {}), up {} s, on {}",
        status.version,
        status.pid,
        status.uptime_s,
        status.socket.display()
    );
    println!(
        "models: {} ({} ready), {} mapped, {} resident",
        status.models,
        status.models_ready,
        format_bytes(status.mapped_bytes),
        format_bytes(status.resident_bytes)
    );
    println!(
        "host memory: rss {}, pss {}",
        format_bytes(status.host_memory.rss_bytes),
        format_bytes(status.host_memory.pss_bytes)
    );
    Ok(())
}

/// One row of `ps`.
#[derive(Debug, serde::Serialize)]
struct ProcessRow {
    pid: u32,
    role: &'static str,
    rss_bytes: u64,
    pss_bytes: u64,
}

pub fn ps(args: PsArgs) -> Result<(), CliError> {
    let status: Status = block_on(args.connect.client().get("/v1/status"))??;
    // Workers join this table when the host starts spawning them (the workers issue).
    let rows = vec![ProcessRow {
        pid: status.pid,
        role: "host",
        rss_bytes: status.host_memory.rss_bytes,
        pss_bytes: status.host_memory.pss_bytes,
    }];
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{:>8} {:<8} {:>11} {:>11}", "PID", "ROLE", "RSS", "PSS");
    for r in &rows {
        println!(
            "{:>8} {:<8} {:>11} {:>11}",
            r.pid,
            r.role,
            format_bytes(r.rss_bytes),
            format_bytes(r.pss_bytes)
        );
    }
    Ok(())
}
