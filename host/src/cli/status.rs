//! `modelhost status` and `modelhost ps`.

use clap::Args;
use modelhost_protocol::wire::Inference;

use super::{block_on, CliError, ConnectArgs};
use crate::api::{ModelInfo, ModelState, Status};
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
    pid: Option<u32>,
    role: String,
    model: String,
    device: String,
    state: String,
    layers: String,
    weights_bytes: u64,
    kv_bytes: u64,
    rss_bytes: u64,
    pss_bytes: u64,
    restarts: u32,
    /// `avx2 x2` (kernels and threads) for a worker that computes, `no` for one that cannot
    /// (`modelhost status` and the API say why), empty for the host.
    compute: String,
}

/// A worker's COMPUTE column.
fn compute(inference: Option<&Inference>) -> String {
    match inference {
        Some(Inference::Ready {
            kernels, threads, ..
        }) => format!("{kernels} x{threads}"),
        Some(Inference::Unavailable { .. }) => "no".into(),
        None => "-".into(),
    }
}

pub fn ps(args: PsArgs) -> Result<(), CliError> {
    let client = args.connect.client();
    let status: Status = block_on(client.get("/v1/status"))??;
    let list: crate::api::ModelList<crate::api::ListedModel> = block_on(client.get("/v1/models"))??;
    let models: Vec<ModelInfo> = list.data.into_iter().map(|m| m.info).collect();
    let mut rows = vec![ProcessRow {
        pid: Some(status.pid),
        role: "host".into(),
        model: String::new(),
        device: String::new(),
        state: "serving".into(),
        layers: String::new(),
        weights_bytes: status.mapped_bytes,
        kv_bytes: 0,
        rss_bytes: status.host_memory.rss_bytes,
        pss_bytes: status.host_memory.pss_bytes,
        restarts: 0,
        compute: String::new(),
    }];
    for m in &models {
        for w in &m.workers {
            let memory = w.memory.unwrap_or_default();
            rows.push(ProcessRow {
                pid: w.pid,
                role: w.id.clone(),
                model: m.name.clone(),
                device: w.device.to_string(),
                state: format!("{:?}", w.state).to_lowercase(),
                layers: format!("{}/{}", w.layers_ready, w.layers),
                weights_bytes: w.weights_bytes,
                kv_bytes: w.kv_bytes,
                rss_bytes: memory.rss_bytes,
                pss_bytes: memory.pss_bytes,
                restarts: w.restarts,
                compute: compute(w.inference.as_ref()),
            });
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:>8} {:<26} {:<8} {:<10} {:>7} {:>11} {:>10} {:>11} {:>11} {:>8} {:<8}",
        "PID",
        "PROCESS",
        "DEVICE",
        "STATE",
        "BLOCKS",
        "WEIGHTS",
        "KV",
        "RSS",
        "PSS",
        "RESTARTS",
        "COMPUTE"
    );
    for r in &rows {
        println!(
            "{:>8} {:<26} {:<8} {:<10} {:>7} {:>11} {:>10} {:>11} {:>11} {:>8} {:<8}",
            r.pid.map_or("-".into(), |p| p.to_string()),
            r.role,
            r.device,
            r.state,
            r.layers,
            format_bytes(r.weights_bytes),
            format_bytes(r.kv_bytes),
            format_bytes(r.rss_bytes),
            format_bytes(r.pss_bytes),
            r.restarts,
            r.compute
        );
    }
    print_residency(&models);
    Ok(())
}

/// Each model's pages: how much of it is in RAM, so that an idle model whose pages the kernel
/// evicted shows before its next request pays for them.
fn print_residency(models: &[ModelInfo]) {
    if models.is_empty() {
        return;
    }
    println!();
    println!(
        "{:<28} {:<22} {:>11} {:>11} {:>6} {:>11}",
        "MODEL", "STATE", "MAPPED", "RESIDENT", "", "LOCKED"
    );
    for m in models {
        let r = &m.residency;
        let share = match r.mapped_bytes {
            0 => "-".to_owned(),
            mapped => format!("{:.0}%", r.resident_bytes as f64 * 100.0 / mapped as f64),
        };
        println!(
            "{:<28} {:<22} {:>11} {:>11} {:>6} {:>11}",
            m.name,
            model_activity(m),
            format_bytes(r.mapped_bytes),
            format_bytes(r.resident_bytes),
            share,
            format_bytes(r.locked_bytes),
        );
    }
    for m in models {
        let r = &m.residency;
        let missing = r.mapped_bytes.saturating_sub(r.resident_bytes);
        // A few pages' difference is the tail of the last page or the kernel's own choices.
        if m.state == ModelState::Ready && r.locked_bytes == 0 && missing > r.mapped_bytes / 100 {
            println!(
                "note: {} of {}'s pages are not in RAM (evicted, or never read); its next request \
                 reads them from disk. `mlock: try` in its load keeps them.",
                format_bytes(missing),
                m.name
            );
        }
    }
}

/// A model's state as an operator reads it: `serving while loading` when its workers already
/// compute while its pages are still being read.
pub(crate) fn model_activity(m: &ModelInfo) -> &'static str {
    match m.state {
        ModelState::Loading if m.serving_while_loading => "serving while loading",
        ModelState::Loading => "loading",
        ModelState::Ready => "ready",
        ModelState::Failed => "failed",
    }
}
