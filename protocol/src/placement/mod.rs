//! The placement planner: which layers go to which device, exact about bytes and explaining
//! itself. A pure function of the manifest, the devices and the options: no I/O, no clocks.
//!
//! The rules, as Ollama and llama.cpp users expect them:
//! - Blocks are offloaded from the last (output side) backwards; the first blocks stay on the CPU,
//!   where they use the host's shared pages in place.
//! - The output stage (output norm and projection) goes to a GPU only when every block is on a
//!   GPU, on the device holding the last block, as llama.cpp's `-ngl` does; otherwise it runs on
//!   the CPU.
//! - Every GPU keeps `gpu_reserve_bytes` free and pays `gpu_overhead_bytes` for its context.
//! - The KV cache of a layer lives with the layer and grows with context × parallel sequences.
//! - **split** runs one model instance across the GPUs, in contiguous runs of layers, balanced by
//!   budget or by `tensor_split`; **replicate** runs an independent instance per device, each with
//!   its own KV cache, sharing the host's pages for whatever stays on the CPU.

mod assign;
mod cost;
mod fit;

use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::GgmlType;

pub use assign::Assignment;
pub use fit::plan;

/// The kind of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

/// A device name: `cpu`, `cpu:N` (a CPU worker pinned to NUMA node N) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct DeviceId {
    pub kind: DeviceKind,
    pub index: Option<u32>,
}

impl DeviceId {
    pub fn cpu() -> DeviceId {
        DeviceId {
            kind: DeviceKind::Cpu,
            index: None,
        }
    }

    pub fn cuda(index: u32) -> DeviceId {
        DeviceId {
            kind: DeviceKind::Cuda,
            index: Some(index),
        }
    }

    pub fn is_gpu(&self) -> bool {
        self.kind == DeviceKind::Cuda
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
        };
        match self.index {
            Some(i) => write!(f, "{kind}:{i}"),
            None => f.write_str(kind),
        }
    }
}

/// A device name that is not `cpu`, `cpu:N` or `cuda:N`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a device: use cpu, cpu:N or cuda:N")]
pub struct BadDeviceId(pub String);

impl FromStr for DeviceId {
    type Err = BadDeviceId;

    fn from_str(s: &str) -> Result<DeviceId, BadDeviceId> {
        let bad = || BadDeviceId(s.to_owned());
        let (kind, index) = match s.split_once(':') {
            Some((kind, index)) => (kind, Some(index.parse::<u32>().map_err(|_| bad())?)),
            None => (s, None),
        };
        match (kind, index) {
            ("cpu", index) => Ok(DeviceId {
                kind: DeviceKind::Cpu,
                index,
            }),
            ("cuda", Some(index)) => Ok(DeviceId::cuda(index)),
            _ => Err(bad()),
        }
    }
}

impl From<DeviceId> for String {
    fn from(d: DeviceId) -> String {
        d.to_string()
    }
}

impl TryFrom<String> for DeviceId {
    type Error = BadDeviceId;
    fn try_from(s: String) -> Result<DeviceId, BadDeviceId> {
        s.parse()
    }
}

/// A device and its memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSpec {
    pub id: DeviceId,
    /// A human name ("NVIDIA H100 80GB HBM3"), for tables.
    pub name: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// A configured cap on what modelhost may use of this device.
    pub limit_bytes: Option<u64>,
}

/// How one model uses several devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// One model instance across all GPUs.
    #[default]
    Split,
    /// One independent instance per device.
    Replicate,
}

/// How many blocks to offload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuLayers {
    /// As many as fit.
    #[default]
    Auto,
    /// Exactly this many (capped at the block count); refused if they do not fit.
    Count(u32),
}

/// Everything the planner may be told besides the model and the devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanOptions {
    /// Context length per sequence; `None` uses the model's trained context length.
    pub context_length: Option<u32>,
    /// Sequences served in parallel, each with its own context.
    pub parallel: u32,
    /// Type of the KV cache entries: f16 (default), f32, bf16, q8_0 or q4_0.
    pub kv_type: GgmlType,
    pub gpu_layers: GpuLayers,
    /// Relative share of the offloaded blocks per GPU, in device order (split mode).
    pub tensor_split: Option<Vec<f64>>,
    pub mode: Mode,
    /// Memory each GPU keeps free.
    pub gpu_reserve_bytes: u64,
    /// Fixed cost of a backend on each GPU (context, libraries).
    pub gpu_overhead_bytes: u64,
    /// Tokens per batch, which sizes the scratch buffers.
    pub batch: u32,
    /// Size sliding-window layers for the whole context too (llama.cpp's `swa_full`, the default
    /// of its C API and so of llama-cpp-python; llama-server keeps only the window).
    pub swa_full: bool,
    /// Host memory available to the model (MemAvailable, plus the model's pages already resident).
    pub host_available_bytes: u64,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            context_length: None,
            parallel: 1,
            kv_type: GgmlType::F16,
            gpu_layers: GpuLayers::Auto,
            tensor_split: None,
            mode: Mode::Split,
            gpu_reserve_bytes: 512 << 20,
            gpu_overhead_bytes: 256 << 20,
            batch: 512,
            swa_full: false,
            host_available_bytes: u64::MAX,
        }
    }
}

/// What one device holds in a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceUse {
    pub device: DeviceId,
    /// Blocks placed here, in order.
    pub layers: Vec<u32>,
    /// Whether the output stage runs here.
    pub output: bool,
    pub weight_bytes: u64,
    pub kv_bytes: u64,
    pub scratch_bytes: u64,
    pub overhead_bytes: u64,
    /// weight + kv + scratch + overhead.
    pub total_bytes: u64,
    /// What the device may hold after the reserve: free memory (or its limit, if smaller) less
    /// the reserve. `total_bytes` never exceeds it.
    pub budget_bytes: u64,
}

/// One model instance: its GPUs and what stays on the CPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// The device this instance is named after (in split mode, the first GPU or the CPU).
    pub name: DeviceId,
    /// GPUs with their layers; empty for a CPU-only instance.
    pub devices: Vec<DeviceUse>,
    /// Blocks that run on the CPU, from the host's shared pages.
    pub cpu_layers: Vec<u32>,
    /// Whether the output stage runs on the CPU.
    pub cpu_output: bool,
    /// KV cache and scratch this instance needs in host memory.
    pub cpu_kv_bytes: u64,
    pub cpu_scratch_bytes: u64,
}

/// Host memory the plan needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostUse {
    /// The model's files, mapped once and shared by every instance.
    pub weight_bytes: u64,
    pub kv_bytes: u64,
    pub scratch_bytes: u64,
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// A placement, with the reasons behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub mode: Mode,
    pub context_length: u32,
    pub parallel: u32,
    /// Tokens per batch, which sized the scratch.
    #[serde(default)]
    pub batch: u32,
    /// Whether sliding-window layers were sized for the whole context.
    #[serde(default)]
    pub swa_full: bool,
    pub kv_type: String,
    pub block_count: u32,
    pub replicas: Vec<Replica>,
    pub host: HostUse,
    /// Why each choice that is not obvious was made.
    pub reasons: Vec<String>,
    pub warnings: Vec<String>,
}

impl Plan {
    /// Blocks on GPUs, summed over the replicas.
    pub fn gpu_layer_count(&self) -> usize {
        self.replicas
            .iter()
            .flat_map(|r| &r.devices)
            .map(|d| d.layers.len())
            .sum()
    }
}

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("no devices to plan for")]
    NoDevices,
    #[error("parallel must be at least 1")]
    ZeroParallel,
    #[error("the KV cache type {0} is not supported; use f16, f32, bf16, q8_0 or q4_0")]
    UnsupportedKvType(String),
    #[error("tensor split has {given} entries for {gpus} GPUs")]
    TensorSplitLength { given: usize, gpus: usize },
    #[error("tensor split entries must be non-negative and sum to more than 0")]
    TensorSplitInvalid,
    #[error("--gpu-layers {requested} does not fit: {device} needs {needed} bytes but may hold {budget}")]
    OverrideDoesNotFit {
        requested: u32,
        device: DeviceId,
        needed: u64,
        budget: u64,
    },
    #[error("the model does not fit: it needs {needed} bytes of host memory ({weights} of weights, {kv} of KV cache, {scratch} of scratch) but {available} are available, {short} bytes short; offload more to GPUs, shorten the context or use fewer parallel sequences")]
    DoesNotFit {
        needed: u64,
        weights: u64,
        kv: u64,
        scratch: u64,
        available: u64,
        short: u64,
    },
}
