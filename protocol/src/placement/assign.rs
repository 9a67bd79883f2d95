//! From a plan to workers: what each worker process places on its device.

use serde::{Deserialize, Serialize};

use super::{DeviceId, Plan};

/// What one worker should do on its device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub device: DeviceId,
    /// Blocks to place, in order.
    pub layers: Vec<u32>,
    /// Whether this worker runs the output stage.
    pub output: bool,
    /// KV cache bytes to allocate.
    pub kv_bytes: u64,
    /// Scratch bytes to reserve.
    pub scratch_bytes: u64,
}

impl Plan {
    /// One assignment per worker the plan needs, in plan order: a worker per GPU that holds
    /// something, and for a CPU-only instance one CPU worker with every block.
    pub fn assignments(&self) -> Vec<Assignment> {
        let mut out = Vec::new();
        for replica in &self.replicas {
            let on_gpus: Vec<_> = replica
                .devices
                .iter()
                .filter(|d| !d.layers.is_empty() || d.output)
                .collect();
            if on_gpus.is_empty() {
                out.push(Assignment {
                    device: replica.name,
                    layers: replica.cpu_layers.clone(),
                    output: replica.cpu_output,
                    kv_bytes: replica.cpu_kv_bytes,
                    scratch_bytes: replica.cpu_scratch_bytes,
                });
            }
            for d in on_gpus {
                out.push(Assignment {
                    device: d.device,
                    layers: d.layers.clone(),
                    output: d.output,
                    kv_bytes: d.kv_bytes,
                    scratch_bytes: d.scratch_bytes,
                });
            }
        }
        out
    }
}
