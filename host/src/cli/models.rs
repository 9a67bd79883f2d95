//! `modelhost ls` and `modelhost unload`.

use clap::Args;

use super::{block_on, CliError, ConnectArgs};
use crate::api::ModelInfo;
use crate::units::format_bytes;

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct UnloadArgs {
    /// The model's name.
    name: String,
    /// Unload even while workers are attached.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

pub fn ls(args: LsArgs) -> Result<(), CliError> {
    let client = args.connect.client();
    let list: crate::api::ModelList<crate::api::ListedModel> = block_on(client.get("/v1/models"))??;
    let models: Vec<ModelInfo> = list.data.into_iter().map(|m| m.info).collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&models)?);
        return Ok(());
    }
    println!(
        "{:<28} {:<22} {:>11} {:>11} {:>11} {:<7} {:>7}  PATH",
        "NAME", "STATE", "SIZE", "RESIDENT", "LOCKED", "MODE", "WORKERS"
    );
    for m in &models {
        println!(
            "{:<28} {:<22} {:>11} {:>11} {:>11} {:<7} {:>7}  {}",
            m.name,
            super::status::model_activity(m),
            format_bytes(m.file_bytes),
            format_bytes(m.residency.resident_bytes),
            format_bytes(m.residency.locked_bytes),
            if m.copy { "copy" } else { "mmap" },
            m.workers.len(),
            m.path.display()
        );
        if let Some(error) = &m.error {
            println!("    error: {error}");
        }
    }
    Ok(())
}

pub fn unload(args: UnloadArgs) -> Result<(), CliError> {
    let client = args.connect.client();
    let path = format!(
        "/v1/models/{}{}",
        args.name,
        if args.force { "?force=true" } else { "" }
    );
    let _: serde_json::Value = block_on(client.delete(&path))??;
    println!("unloaded {}", args.name);
    Ok(())
}
