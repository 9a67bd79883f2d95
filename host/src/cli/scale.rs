//! `modelhost scale`: more or fewer workers for a running model, and the time each change took.

use std::time::{Duration, Instant};

use clap::Args;

use super::{block_on, CliError, ConnectArgs};
use crate::api::{ModelInfo, ScaleReport, ScaleRequest, WorkerState};

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// The model's name.
    name: String,
    /// How many workers to run from now on.
    #[arg(long)]
    workers: u32,
    /// The device of each new worker (default: that of the model's last worker).
    #[arg(long)]
    device: Option<String>,
    /// Seconds a removed worker may take to finish its answers before it is stopped anyway.
    #[arg(long, default_value_t = 120)]
    drain_timeout: u64,
    /// Return once the host has the change, without waiting for the workers.
    #[arg(long)]
    no_wait: bool,
    /// Print the host's report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// How long the command waits for new workers to compute and removed ones to stop.
const WAIT: Duration = Duration::from_secs(300);

pub fn run(args: ScaleArgs) -> Result<(), CliError> {
    let client = args.connect.client();
    let started = Instant::now();
    let request = ScaleRequest {
        workers: args.workers,
        device: args.device.clone(),
        drain_timeout_ms: Some(args.drain_timeout.saturating_mul(1000)),
    };
    let path = format!("/v1/models/{}/scale", args.name);
    let report: ScaleReport = block_on(client.post(&path, &request))??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if report.added.is_empty() && report.draining.is_empty() {
        println!("{} already runs {} workers", report.model, report.workers);
    } else {
        println!(
            "{}: {} → {} workers{}{}{}",
            report.model,
            report.workers_before,
            report.workers,
            list(", adding ", &report.added),
            list(", draining ", &report.draining),
            match report.handed_back {
                0 => String::new(),
                n => format!(" ({n} requests with no token yet handed back to the queue)"),
            }
        );
    }
    if args.no_wait {
        return Ok(());
    }
    let mut pending_added = report.added.clone();
    let mut pending_drained = report.draining.clone();
    let model_path = format!("/v1/models/{}", args.name);
    while !pending_added.is_empty() || !pending_drained.is_empty() {
        if started.elapsed() > WAIT {
            return Err(CliError(format!(
                "still waiting after {} s for {}",
                WAIT.as_secs(),
                [pending_added, pending_drained].concat().join(", ")
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
        let info: ModelInfo = block_on(client.get(&model_path))??;
        let elapsed = started.elapsed().as_millis();
        for w in &info.workers {
            if w.state == WorkerState::Failed && pending_added.contains(&w.id) {
                return Err(CliError(format!(
                    "worker {} failed: {}",
                    w.id,
                    w.error.as_deref().unwrap_or("no reason given")
                )));
            }
        }
        pending_added.retain(|id| {
            let Some(w) = info
                .workers
                .iter()
                .find(|w| &w.id == id && w.state == WorkerState::Ready)
            else {
                return true;
            };
            if !args.json {
                match &w.inference {
                    Some(modelhost_protocol::wire::Inference::Ready { .. }) => {
                        println!("  {id} computing after {elapsed} ms")
                    }
                    Some(modelhost_protocol::wire::Inference::Unavailable { reason }) => {
                        println!("  {id} ready after {elapsed} ms, not computing: {reason}")
                    }
                    None => println!("  {id} ready after {elapsed} ms"),
                }
            }
            false
        });
        pending_drained.retain(|id| {
            let gone = !info.workers.iter().any(|w| &w.id == id);
            if gone && !args.json {
                println!("  {id} drained and stopped after {elapsed} ms");
            }
            !gone
        });
    }
    Ok(())
}

fn list(prefix: &str, ids: &[String]) -> String {
    if ids.is_empty() {
        String::new()
    } else {
        format!("{prefix}{}", ids.join(", "))
    }
}
