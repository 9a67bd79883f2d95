//! The host's side of placement: device specs from text, plan options from a request, and the
//! host memory a model may use. The planner itself is `modelhost_protocol::placement`.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use modelhost_protocol::placement::{
    DeviceId, DeviceKind, DeviceSpec, GpuLayers, Mode, PlanOptions,
};
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
    /// A device query in a worker process failed or timed out; the text names the device.
    #[error("{0}")]
    DeviceQuery(String),
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

/// Where a CUDA device's free memory is asked for.
#[derive(Debug, Clone, Copy)]
pub enum DeviceQuery {
    /// In this process: for the CLI, which exits after one plan.
    InProcess,
    /// In a `modelhost-worker --inventory` child, killed after `timeout`: for the daemon. The
    /// daemon never loads the CUDA driver, so it holds no context and no driver threads, and a
    /// driver that hangs (a lost GPU) costs one load its answer rather than the daemon a thread.
    Worker { timeout: Duration },
}

/// Parses a device list, in order: `cuda:0=24GiB` (a stated size) or `cuda:0` (asked of the
/// device). The CUDA devices without a stated size are asked about together: with
/// `DeviceQuery::Worker`, in one child process, so eight GPUs cost one driver initialisation.
pub fn device_specs(
    texts: &[String],
    query: DeviceQuery,
) -> Result<Vec<DeviceSpec>, PlacementError> {
    let parsed = texts
        .iter()
        .map(|text| parse_device(text))
        .collect::<Result<Vec<_>, _>>()?;
    let unsized_gpus: Vec<DeviceId> = parsed
        .iter()
        .filter(|(id, size)| size.is_none() && id.kind == DeviceKind::Cuda)
        .map(|(id, _)| *id)
        .collect();
    let mut asked = match query {
        DeviceQuery::Worker { timeout } if !unsized_gpus.is_empty() => {
            query_in_worker(&unsized_gpus, timeout)?
        }
        _ => Vec::new(),
    }
    .into_iter();
    parsed
        .into_iter()
        .map(|(id, size)| match size {
            Some(bytes) => Ok(DeviceSpec {
                id,
                name: format!("{id} {STATED}"),
                total_bytes: bytes,
                free_bytes: bytes,
                limit_bytes: None,
            }),
            None => match (id.kind, query) {
                (DeviceKind::Cuda, DeviceQuery::Worker { .. }) => asked.next().ok_or_else(|| {
                    PlacementError::DeviceQuery(format!("{id}: the device query left it out"))
                }),
                _ => Ok(devices::inventory(id)?),
            },
        })
        .collect()
}

/// `cuda:0=24GiB` → (cuda:0, Some(24 GiB)); `cuda:0` → (cuda:0, None).
fn parse_device(text: &str) -> Result<(DeviceId, Option<u64>), PlacementError> {
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
    Ok((id, size))
}

/// Runs `modelhost-worker --inventory IDS` and reads the JSON `DeviceSpec`s it prints, one per
/// id, in order.
fn query_in_worker(ids: &[DeviceId], timeout: Duration) -> Result<Vec<DeviceSpec>, PlacementError> {
    let list = ids
        .iter()
        .map(DeviceId::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let failed = |message: String| PlacementError::DeviceQuery(format!("{list}: {message}"));
    let binary = crate::supervisor::worker_binary();
    let mut child = Command::new(&binary)
        .arg("--inventory")
        .arg(&list)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("starting {}: {e}", binary.display())))?;
    // The answer is a few hundred bytes, far below a pipe's buffer: the child never blocks on
    // output, so waiting for its exit before reading cannot deadlock.
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!(
                    "the CUDA driver did not answer within {} ms (device_query_timeout_ms); the \
                     GPU may be hung or lost, see nvidia-smi",
                    timeout.as_millis()
                )));
            }
            Err(e) => return Err(failed(format!("waiting for the device query: {e}"))),
        }
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    if let Some(mut pipe) = child.stdout.take() {
        let _ = pipe.read_to_string(&mut stdout);
    }
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    if !status.success() {
        // The worker's own message already names the device: pass it on as it is.
        let message = stderr.trim().trim_start_matches("modelhost-worker: ");
        return Err(PlacementError::DeviceQuery(if message.is_empty() {
            format!("{list}: the device query failed ({status})")
        } else {
            message.to_owned()
        }));
    }
    let specs: Vec<DeviceSpec> = serde_json::from_str(stdout.trim())
        .map_err(|e| failed(format!("unreadable answer from the device query: {e}")))?;
    let answered: Vec<DeviceId> = specs.iter().map(|s| s.id).collect();
    if answered != ids {
        return Err(failed(format!(
            "the device query answered for {answered:?} instead"
        )));
    }
    Ok(specs)
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
