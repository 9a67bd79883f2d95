//! Workers as the control API shows them.

use modelhost_node::memory::ProcessMemory;
use modelhost_protocol::placement::DeviceId;
use serde::{Deserialize, Serialize};

/// Where a worker slot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Spawned; waiting for its Hello.
    Starting,
    /// Attach sent; placing its layers.
    Attaching,
    Ready,
    /// Exited unexpectedly; waiting out the backoff before the next spawn.
    Restarting,
    /// Told to stop; waiting for it to exit.
    Stopping,
    /// Stopped on request.
    Stopped,
    /// Gave up after too many failures in a row.
    Failed,
}

impl WorkerInfo {
    /// Ready, with an engine: it can take generation requests.
    pub fn computes(&self) -> bool {
        self.state == WorkerState::Ready
            && matches!(
                self.inference,
                Some(modelhost_protocol::wire::Inference::Ready { .. })
            )
    }
}

/// A worker as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub id: String,
    pub device: DeviceId,
    pub state: WorkerState,
    pub pid: Option<u32>,
    /// Blocks assigned, and how many are ready.
    pub layers: u32,
    pub layers_ready: u32,
    pub weights_bytes: u64,
    pub kv_bytes: u64,
    pub scratch_bytes: u64,
    pub restarts: u32,
    pub error: Option<String>,
    /// From spawn to Ready, for the latest start.
    pub ready_ms: Option<u64>,
    /// RSS and PSS of the worker process, from /proc.
    pub memory: Option<ProcessMemory>,
    /// Whether it computes (its kernels, threads and sequence slots) or why not, from its
    /// latest Ready.
    #[serde(default)]
    pub inference: Option<modelhost_protocol::wire::Inference>,
    /// Being removed by a scale-down: it takes no new request and stops once those it is
    /// answering have finished.
    #[serde(default)]
    pub draining: bool,
}
