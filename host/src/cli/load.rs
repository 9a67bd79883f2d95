//! `modelhost load`: load a model and follow its progress to the end.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::{block_on, CliError, ConnectArgs};
use crate::api::{Event, Phase};
use crate::api::{LoadRequest, MlockMode, ModelInfo, ModelState};
use crate::units::format_bytes;

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The GGUF file (for a split model, any shard).
    path: PathBuf,
    /// The name to serve it under (default: the file name without .gguf).
    #[arg(long)]
    name: Option<String>,
    /// Map only; do not read every page now.
    #[arg(long)]
    no_prefault: bool,
    /// Lock the pages in RAM: `on` fails the load if they cannot be locked, `try` warns.
    #[arg(long, value_enum, default_value = "off")]
    mlock: MlockArg,
    /// Copy into a sealed memfd, so changes to the file on disk cannot reach the mapping.
    #[arg(long)]
    copy: bool,
    /// Devices to plan the placement for, comma-separated (cuda:0, cuda:1=24GiB, cpu, cpu:1).
    #[arg(long, value_delimiter = ',')]
    devices: Vec<String>,
    /// Context length per sequence, for the plan (default: the model's).
    #[arg(long)]
    ctx: Option<u32>,
    /// Sequences served in parallel, for the plan.
    #[arg(long)]
    parallel: Option<u32>,
    /// Print the loaded model as JSON instead of a progress bar and summary.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum MlockArg {
    Off,
    On,
    Try,
}

pub fn run(args: LoadArgs) -> Result<(), CliError> {
    // The host resolves nothing relative to its own directory: send an absolute path.
    let path = std::path::absolute(&args.path)?;
    let request = LoadRequest {
        path,
        name: args.name.clone(),
        prefault: !args.no_prefault,
        mlock: match args.mlock {
            MlockArg::Off => MlockMode::Off,
            MlockArg::On => MlockMode::On,
            MlockArg::Try => MlockMode::Try,
        },
        copy: args.copy,
        devices: args.devices.clone(),
        placement: crate::api::PlacementRequest {
            ctx: args.ctx,
            parallel: args.parallel,
            ..Default::default()
        },
        spawn_workers: false,
        serve_while_loading: true,
        worker_options: Default::default(),
    };
    let client = args.connect.client();
    let info = block_on(async {
        // Subscribe before asking, so no progress event can be missed.
        let mut events = client.events().await?;
        let registered: ModelInfo = client.post("/v1/models", &request).await?;
        let name = registered.name.clone();
        let bar = (!args.json && registered.state == ModelState::Loading)
            .then(|| progress_bar(&name, registered.file_bytes));
        let mut state = registered.state;
        let mut failure = registered.error.clone();
        while state == ModelState::Loading {
            let Some(envelope) = events.next().await? else {
                return Err(CliError(format!(
                    "the host closed the event stream while {name} was loading"
                )));
            };
            match envelope.event {
                Event::Progress {
                    model,
                    phase,
                    done_bytes,
                    total_bytes,
                } if model == name => {
                    if let Some(bar) = &bar {
                        bar.set_length(total_bytes);
                        bar.set_position(done_bytes);
                        bar.set_message(phase_name(phase));
                    }
                }
                Event::ModelState {
                    model,
                    state: new,
                    error,
                } if model == name => {
                    state = new;
                    failure = error;
                }
                Event::ModelUnloaded { model } if model == name => {
                    return Err(CliError(format!("{name} was unloaded while loading")));
                }
                _ => {}
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        if state == ModelState::Failed {
            return Err(CliError(format!(
                "{name} failed to load: {}",
                failure.unwrap_or_default()
            )));
        }
        let info: ModelInfo = client.get(&format!("/v1/models/{name}")).await?;
        Ok::<_, CliError>(info)
    })??;

    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    let mode = if info.copy {
        "sealed copy"
    } else {
        "shared mapping"
    };
    println!(
        "loaded {} ({}, {} tensors, {}) in {} ms",
        info.name,
        format_bytes(info.file_bytes),
        info.tensor_count,
        info.architecture
            .as_deref()
            .unwrap_or("unknown architecture"),
        info.load_ms.unwrap_or(0)
    );
    println!(
        "  {mode}: {} resident, {} locked{}",
        format_bytes(info.residency.resident_bytes),
        format_bytes(info.residency.locked_bytes),
        info.shares_mapping_with
            .as_ref()
            .map(|o| format!(", sharing the pages of {o}"))
            .unwrap_or_default()
    );
    for warning in &info.warnings {
        println!("  warning: {warning}");
    }
    if let Some(plan) = &info.plan {
        print!("\n{}", super::plan::render(&info.name, plan));
    }
    Ok(())
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Copy => "copying",
        Phase::Prefault => "prefaulting",
        Phase::Lock => "locking",
    }
}

fn progress_bar(name: &str, total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} {msg:>11} [{bar:32}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(name.to_owned());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}
