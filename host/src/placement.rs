//! The host's side of placement: device specs from text, plan options from a request, and the
//! host memory a model may use. The planner itself is `modelhost_protocol::placement`.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use modelhost_node::cpu::{self, CpuError};
use modelhost_protocol::placement::{DeviceId, DeviceKind, DeviceSpec};

use crate::api::PlacementOptionError;
use crate::config::worker_binary;
use crate::model_file::MappedModel;
use crate::pages;
use crate::units::parse_size;

/// Why a device list or placement options could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("device {text:?}: {message}")]
    BadDevice { text: String, message: String },
    #[error(transparent)]
    Cpu(#[from] CpuError),
    /// A device query in a worker process failed or timed out; the text names the device.
    #[error("{0}")]
    DeviceQuery(String),
    #[error(transparent)]
    BadOption(#[from] PlacementOptionError),
}

/// The tag a stated size leaves in a device's name.
const STATED: &str = "(stated)";

/// Parses a device list, in order: `cuda:0=24GiB` (a stated size) or `cuda:0` (asked of the
/// device). The CUDA devices without a stated size are asked about together, in one
/// `modelhost-worker --inventory` process killed after `timeout`, so eight GPUs cost one driver
/// initialisation.
///
/// Neither the daemon nor the CLI loads the CUDA driver: the daemon holds no context and no
/// driver threads, a driver that hangs (a lost GPU) costs one load its answer rather than the
/// daemon a thread, and the host does not link cudarc at all.
pub fn device_specs(
    texts: &[String],
    timeout: Duration,
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
    let mut asked = if unsized_gpus.is_empty() {
        Vec::new()
    } else {
        let list = unsized_gpus
            .iter()
            .map(DeviceId::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let specs = query_in_worker(&["--inventory", &list], &list, timeout)?;
        let answered: Vec<DeviceId> = specs.iter().map(|s| s.id).collect();
        if answered != unsized_gpus {
            return Err(PlacementError::DeviceQuery(format!(
                "{list}: the device query answered for {answered:?} instead"
            )));
        }
        specs
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
            None => match id.kind {
                DeviceKind::Cuda => asked.next().ok_or_else(|| {
                    PlacementError::DeviceQuery(format!("{id}: the device query left it out"))
                }),
                DeviceKind::Cpu => Ok(cpu::inventory(id)?),
            },
        })
        .collect()
}

/// `cuda:0=24GiB` → (cuda:0, Some(24 GiB)); `cuda:0` → (cuda:0, None).
pub(crate) fn parse_device(text: &str) -> Result<(DeviceId, Option<u64>), PlacementError> {
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

/// Every CUDA device on this machine (none without a driver), asked of a worker process.
pub fn cuda_devices(timeout: Duration) -> Result<Vec<DeviceSpec>, PlacementError> {
    query_in_worker(&["--cuda-devices"], "cuda", timeout)
}

/// Runs `modelhost-worker ARGS` and reads the JSON `DeviceSpec`s it prints. `what` names the
/// devices asked about in errors.
fn query_in_worker(
    args: &[&str],
    what: &str,
    timeout: Duration,
) -> Result<Vec<DeviceSpec>, PlacementError> {
    let failed = |message: String| PlacementError::DeviceQuery(format!("{what}: {message}"));
    let binary = worker_binary();
    let mut child = Command::new(&binary)
        .args(args)
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
            format!("{what}: the device query failed ({status})")
        } else {
            message.to_owned()
        }));
    }
    serde_json::from_str(stdout.trim())
        .map_err(|e| failed(format!("unreadable answer from the device query: {e}")))
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
    let host = cpu::inventory(DeviceId::cpu())?;
    let resident: u64 = mapped
        .files()
        .iter()
        .filter_map(|f| f.mapping())
        .map(|m| pages::resident_bytes(m).unwrap_or(0))
        .sum();
    Ok(host.free_bytes + resident)
}
