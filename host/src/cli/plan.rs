//! `modelhost plan`: where the layers would go, without loading anything.

use std::path::PathBuf;

use clap::Args;
use modelhost_node::cpu;
use modelhost_protocol::layers::PageSize;
use modelhost_protocol::manifest::ModelManifest;
use modelhost_protocol::placement::{plan, DeviceId, DeviceSpec, Mode, Plan};

use super::CliError;
use crate::api::PlacementRequest;
use crate::config::DEFAULT_DEVICE_QUERY_TIMEOUT;
use crate::model_file::MappedModel;
use crate::pages;
use crate::placement::{cuda_devices, device_specs, host_available};
use crate::units::{format_bytes, parse_size};

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The GGUF file (for a split model, any shard).
    model: PathBuf,
    /// Devices, comma-separated: cuda:N, cpu or cpu:N (a NUMA node), each optionally with the
    /// memory to plan for (cuda:0=24GiB). Without a size, the device is asked. Default: every
    /// CUDA device, or the CPU when there is none.
    #[arg(long, value_delimiter = ',')]
    devices: Vec<String>,
    /// Context length per sequence (default: the model's).
    #[arg(long)]
    ctx: Option<u32>,
    /// Sequences served in parallel.
    #[arg(long, default_value_t = 1)]
    parallel: u32,
    /// KV cache type: f16, f32, bf16, q8_0 or q4_0.
    #[arg(long, default_value = "f16")]
    kv_type: String,
    /// Blocks to offload: a number, or auto.
    #[arg(long, default_value = "auto")]
    gpu_layers: String,
    /// Share of the offloaded blocks per GPU, such as 3,1.
    #[arg(long, value_delimiter = ',')]
    tensor_split: Vec<f64>,
    /// split: one instance across the GPUs; replicate: one instance per device.
    #[arg(long, value_enum, default_value = "split")]
    mode: ModeArg,
    /// Memory each GPU keeps free.
    #[arg(long, default_value = "512MiB", value_parser = parse_size)]
    reserve: u64,
    /// Fixed cost of a backend on each GPU.
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    overhead: u64,
    /// Size sliding-window layers for the whole context (llama.cpp's swa_full, which
    /// llama-cpp-python turns on).
    #[arg(long)]
    swa_full: bool,
    /// Tokens per batch (sizes the scratch buffers).
    #[arg(long, default_value_t = 512)]
    batch: u32,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ModeArg {
    Split,
    Replicate,
}

impl PlanArgs {
    fn request(&self) -> Result<PlacementRequest, CliError> {
        let gpu_layers = match self.gpu_layers.as_str() {
            "auto" => None,
            n => Some(
                n.parse()
                    .map_err(|_| CliError(format!("--gpu-layers {n:?}: a number or auto")))?,
            ),
        };
        Ok(PlacementRequest {
            ctx: self.ctx,
            parallel: Some(self.parallel),
            kv_type: Some(self.kv_type.clone()),
            gpu_layers,
            tensor_split: (!self.tensor_split.is_empty()).then(|| self.tensor_split.clone()),
            mode: Some(match self.mode {
                ModeArg::Split => Mode::Split,
                ModeArg::Replicate => Mode::Replicate,
            }),
            swa_full: self.swa_full,
        })
    }
}

pub fn run(args: PlanArgs) -> Result<(), CliError> {
    let mapped = MappedModel::open(&args.model)?;
    let model = mapped.model()?;
    let page = PageSize::new(pages::page_size() as u64).unwrap_or(PageSize::FOUR_KIB);
    let manifest = ModelManifest::from_model(&model, page)?;
    let devices: Vec<DeviceSpec> = if args.devices.is_empty() {
        let gpus = cuda_devices(DEFAULT_DEVICE_QUERY_TIMEOUT)?;
        if gpus.is_empty() {
            vec![cpu::inventory(DeviceId::cpu())?]
        } else {
            gpus
        }
    } else {
        device_specs(&args.devices, DEFAULT_DEVICE_QUERY_TIMEOUT)?
    };
    let mut options = args.request()?.options()?;
    options.gpu_reserve_bytes = args.reserve;
    options.gpu_overhead_bytes = args.overhead;
    options.batch = args.batch;
    options.host_available_bytes = host_available(&devices, &mapped)?;
    let plan = plan(&manifest, &devices, &options)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        let name = args
            .model
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("model");
        print!("{}", render(name, &plan));
    }
    Ok(())
}

fn blocks(layers: &[u32]) -> String {
    match (layers.first(), layers.last()) {
        (Some(a), Some(b)) => format!("{a}-{b} ({})", layers.len()),
        _ => "-".into(),
    }
}

/// The plan as a person reads it.
pub fn render(name: &str, plan: &Plan) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mode = match plan.mode {
        Mode::Split => "split",
        Mode::Replicate => "replicate",
    };
    let _ = writeln!(
        out,
        "plan for {name}: {mode}, {} blocks, context {} × {} sequence(s), KV {}\n",
        plan.block_count, plan.context_length, plan.parallel, plan.kv_type
    );
    let _ = writeln!(
        out,
        "  {:<9} {:<9} {:<13} {:<6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "instance",
        "device",
        "blocks",
        "output",
        "weights",
        "KV",
        "scratch",
        "overhead",
        "total",
        "budget"
    );
    for r in &plan.replicas {
        for d in &r.devices {
            let _ = writeln!(
                out,
                "  {:<9} {:<9} {:<13} {:<6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
                r.name.to_string(),
                d.device.to_string(),
                blocks(&d.layers),
                if d.output { "yes" } else { "" },
                format_bytes(d.weight_bytes),
                format_bytes(d.kv_bytes),
                format_bytes(d.scratch_bytes),
                format_bytes(d.overhead_bytes),
                format_bytes(d.total_bytes),
                format_bytes(d.budget_bytes)
            );
        }
        if r.cpu_layers.is_empty() && !r.cpu_output {
            continue;
        }
        let _ = writeln!(
            out,
            "  {:<9} {:<9} {:<13} {:<6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            r.name.to_string(),
            "cpu",
            blocks(&r.cpu_layers),
            if r.cpu_output { "yes" } else { "" },
            "shared",
            format_bytes(r.cpu_kv_bytes),
            format_bytes(r.cpu_scratch_bytes),
            "",
            format_bytes(r.cpu_kv_bytes + r.cpu_scratch_bytes),
            ""
        );
    }
    let h = &plan.host;
    let _ = writeln!(
        out,
        "\nhost memory: {} of weights (mapped once, shared), {} KV, {} scratch: {} of {} available",
        format_bytes(h.weight_bytes),
        format_bytes(h.kv_bytes),
        format_bytes(h.scratch_bytes),
        format_bytes(h.total_bytes),
        format_bytes(h.available_bytes)
    );
    let _ = writeln!(out, "\nwhy:");
    for reason in &plan.reasons {
        let _ = writeln!(out, "  - {reason}");
    }
    if !plan.warnings.is_empty() {
        let _ = writeln!(out, "\nwarnings:");
        for warning in &plan.warnings {
            let _ = writeln!(out, "  - {warning}");
        }
    }
    out
}
