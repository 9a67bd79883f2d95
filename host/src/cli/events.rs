//! `modelhost events`: follow the host's event stream.

use clap::Args;

use super::{block_on, CliError, ConnectArgs};
use crate::api::Event;
use crate::units::format_bytes;

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Print each event as a JSON line, as the host sends it.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

pub fn run(args: EventsArgs) -> Result<(), CliError> {
    let client = args.connect.client();
    block_on(async {
        let mut events = client.events().await?;
        while let Some(envelope) = events.next().await? {
            if args.json {
                println!("{}", serde_json::to_string(&envelope)?);
                continue;
            }
            let line = match &envelope.event {
                Event::ModelState {
                    model,
                    state,
                    error,
                } => format!(
                    "{model}: {}{}",
                    serde_json::to_value(state)?.as_str().unwrap_or("?"),
                    error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
                ),
                Event::Progress {
                    model,
                    phase,
                    done_bytes,
                    total_bytes,
                } => format!(
                    "{model}: {} {} / {}",
                    serde_json::to_value(phase)?.as_str().unwrap_or("?"),
                    format_bytes(*done_bytes),
                    format_bytes(*total_bytes)
                ),
                Event::ModelUnloaded { model } => format!("{model}: unloaded"),
                Event::WorkerState {
                    model,
                    worker,
                    device,
                    state,
                    pid,
                    restarts,
                    error,
                } => format!(
                    "{model}: worker {worker} on {device}: {}{}{}{}",
                    serde_json::to_value(state)?.as_str().unwrap_or("?"),
                    pid.map(|p| format!(", pid {p}")).unwrap_or_default(),
                    if *restarts > 0 {
                        format!(", {restarts} restarts")
                    } else {
                        String::new()
                    },
                    error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
                ),
                Event::WorkerLayerReady {
                    model,
                    worker,
                    layer,
                } => format!("{model}: worker {worker}: block {layer} ready"),
                Event::ModelScaled {
                    model,
                    workers,
                    added,
                    draining,
                } => format!(
                    "{model}: scaled to {workers} workers (added: {}; draining: {})",
                    if added.is_empty() {
                        "none".into()
                    } else {
                        added.join(", ")
                    },
                    if draining.is_empty() {
                        "none".into()
                    } else {
                        draining.join(", ")
                    }
                ),
                Event::WorkerProgress {
                    model,
                    worker,
                    done_bytes,
                    total_bytes,
                    layers_done,
                    layers_total,
                } => format!(
                    "{model}: worker {worker}: {} / {}, {layers_done}/{layers_total} blocks",
                    format_bytes(*done_bytes),
                    format_bytes(*total_bytes)
                ),
                Event::Lagged { missed } => format!("(missed {missed} events)"),
            };
            println!("#{} {line}", envelope.seq);
        }
        Ok::<_, CliError>(())
    })?
}
