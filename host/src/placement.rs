//! The host's side of placement: device specs from text, plan options from a request, and the
//! host memory a model may use. The planner itself is `modelhost_protocol::placement`.

use modelhost_protocol::placement::{DeviceId, DeviceSpec, GpuLayers, Mode, PlanOptions};
use modelhost_protocol::GgmlType;
use modelhost_worker::devices::{self, DeviceError};
use serde::{Deserialize, Serialize};

use crate::model_file::MappedModel;
use crate::pages;
use crate::units::parse_size;

/// Why a device list or placement options could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("device {text:?}: {message}")]
    BadDevice { text: String, message: String },
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("{0}")]
    BadOption(String),
}

/// Placement options as a load request or the CLI gives them; unset fields take the defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementRequest {
    /// Context length per sequence (default: the model's).
    #[serde(default)]
    pub ctx: Option<u32>,
    /// Sequences served in parallel (default 1).
    #[serde(default)]
    pub parallel: Option<u32>,
    /// KV cache type: f16 (default), f32, bf16, q8_0 or q4_0.
    #[serde(default)]
    pub kv_type: Option<String>,
    /// Blocks to offload; absent means as many as fit.
    #[serde(default)]
    pub gpu_layers: Option<u32>,
    /// Share of the offloaded blocks per GPU.
    #[serde(default)]
    pub tensor_split: Option<Vec<f64>>,
    /// split (default) or replicate.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Size sliding-window layers for the whole context (llama.cpp's swa_full).
    #[serde(default)]
    pub swa_full: bool,
}

impl PlacementRequest {
    pub fn options(&self) -> Result<PlanOptions, PlacementError> {
        let kv_type = match &self.kv_type {
            None => GgmlType::F16,
            Some(name) => GgmlType::from_name(name)
                .ok_or_else(|| PlacementError::BadOption(format!("unknown KV type {name:?}")))?,
        };
        Ok(PlanOptions {
            context_length: self.ctx,
            parallel: self.parallel.unwrap_or(1),
            kv_type,
            gpu_layers: self.gpu_layers.map_or(GpuLayers::Auto, GpuLayers::Count),
            tensor_split: self.tensor_split.clone(),
            mode: self.mode.unwrap_or_default(),
            swa_full: self.swa_full,
            ..PlanOptions::default()
        })
    }
}

/// The tag a stated size leaves in a device's name.
const STATED: &str = "(stated)";

/// Parses `cuda:0=24GiB` (a stated size) or `cuda:0` (asked of the device).
pub fn device_spec(text: &str) -> Result<DeviceSpec, PlacementError> {
    let bad = |message: String| PlacementError::BadDevice {
        text: text.to_owned(),
        message,
    };
    let (id, size) = match text.split_once('=') {
        Some((id, size)) => (id, Some(parse_size(size).map_err(bad)?)),
        None => (text, None),
    };
    let id: DeviceId = id
        .trim()
        .parse()
        .map_err(|e: modelhost_protocol::placement::BadDeviceId| bad(e.to_string()))?;
    match size {
        Some(bytes) => Ok(DeviceSpec {
            id,
            name: format!("{id} {STATED}"),
            total_bytes: bytes,
            free_bytes: bytes,
            limit_bytes: None,
        }),
        None => Ok(devices::inventory(id)?),
    }
}

/// Host memory for a model: a stated CPU size when one is given (cpu=64GiB); else MemAvailable
/// plus the model's pages already in RAM (counted as in use, yet not needed a second time).
pub fn host_available(devices: &[DeviceSpec], mapped: &MappedModel) -> Result<u64, PlacementError> {
    if let Some(cpu) = devices
        .iter()
        .find(|d| !d.id.is_gpu() && d.name.ends_with(STATED))
    {
        return Ok(cpu.free_bytes);
    }
    let host = devices::inventory(DeviceId::cpu())?;
    let resident: u64 = mapped
        .files()
        .iter()
        .filter_map(|f| f.mapping())
        .map(|m| pages::resident_bytes(m).unwrap_or(0))
        .sum();
    Ok(host.free_bytes + resident)
}
