//! The host↔worker messages. A worker says Hello; the host answers Attach (with the model's file
//! descriptors alongside); the worker reports Progress, LayerReady in layer order, then Ready or
//! Failed, and Heartbeats until it is told to Shutdown or Detach.

use serde::{Deserialize, Serialize};

use crate::manifest::ModelManifest;
pub use crate::placement::Assignment;
use crate::placement::{DeviceId, DeviceSpec};

/// Every message, in both directions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Worker → host, first: who the worker is and what its device has.
    Hello(Hello),
    /// Host → worker: what to attach and what to do with it. One descriptor per model file
    /// travels with this message (SCM_RIGHTS).
    Attach(Box<Attach>),
    /// Worker → host: at least every 100 ms during long work.
    Progress(Progress),
    /// Worker → host: this block is on the device (or resident, for the CPU), in layer order.
    LayerReady { layer: u32 },
    /// Worker → host: every assigned layer and the KV cache are in place.
    Ready(ReadyStats),
    /// Worker → host: the attach failed; the worker exits after sending this.
    Failed { error: String },
    /// Either way: I am alive.
    Heartbeat { seq: u64 },
    /// Host → worker: release everything and exit.
    Shutdown,
    /// Host → worker: the model is being unloaded; release it and exit.
    Detach,
}

/// What a worker reports about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// A name for logs: the worker's slot in the host, or what a process manager called it.
    pub worker_id: String,
    pub pid: u32,
    /// The device this worker drives.
    pub device: DeviceId,
    /// Its inventory of that device.
    pub inventory: Vec<DeviceSpec>,
    /// For a worker started by a process manager: the model it wants to serve.
    pub model: Option<String>,
}

/// One model file as the host validated it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCheck {
    /// The file's size; the worker's mapping must have exactly this many bytes.
    pub len: u64,
    /// How many leading bytes (header, metadata, descriptors) `header_hash` covers.
    pub header_len: u64,
    /// `checksum64` of those bytes.
    pub header_hash: u64,
}

/// Options for how a worker attaches.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerOptions {
    /// Lock the assigned pages in RAM (CPU).
    pub mlock: bool,
    /// Read every assigned byte and checksum it, rather than only faulting pages in.
    pub verify: bool,
    /// CUDA: register the shared mapping with the driver and copy from it without staging.
    pub registered_upload: bool,
    /// Compute threads of a CPU worker's engine; by default the cores of its NUMA node (or of
    /// the machine) shared out among the CPU workers placed there, at least 1.
    pub threads: Option<u32>,
}

/// How a worker sizes its inference engine: what the plan sized its KV cache and scratch for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineSpec {
    /// Tokens each sequence slot holds.
    pub context: u32,
    /// Sequence slots (the plan's `parallel`).
    pub slots: u32,
    /// The most tokens one step carries.
    pub batch: u32,
    /// The KV cache's type.
    pub kv_type: crate::GgmlType,
    /// Sliding-window layers sized for the whole context.
    pub swa_full: bool,
    /// Compute threads.
    pub threads: u32,
}

/// The attach instructions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attach {
    pub model: String,
    pub manifest: ModelManifest,
    /// One per descriptor sent, in shard order.
    pub files: Vec<FileCheck>,
    pub assignment: Assignment,
    pub options: WorkerOptions,
    /// How often the worker must send a Heartbeat.
    pub heartbeat_ms: u32,
    /// How to size the inference engine.
    pub engine: EngineSpec,
}

/// What a worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerPhase {
    /// Mapping and checking the files.
    Attach,
    /// Placing the assigned layers on the device.
    Upload,
    /// Allocating the KV cache and scratch.
    Kv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub phase: WorkerPhase,
    pub done_bytes: u64,
    pub total_bytes: u64,
    pub layers_done: u32,
    pub layers_total: u32,
}

/// What a ready worker holds.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ReadyStats {
    /// Weight bytes on the device (for the CPU: used in place from the shared pages).
    pub weights_bytes: u64,
    pub kv_bytes: u64,
    /// Scratch the worker holds: for a CPU worker, what its engine allocated.
    pub scratch_bytes: u64,
    /// From receiving Attach to Ready.
    pub elapsed_ms: u64,
    /// Whether the worker can compute, and with what.
    pub inference: Inference,
}

/// A worker's inference engine, as its Ready reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Inference {
    /// It computes: with these kernels (`avx2`, `scalar`) and threads, in these many slots.
    Ready {
        kernels: String,
        threads: u32,
        slots: u32,
    },
    /// It attaches and shares but cannot compute, for this reason (an architecture or tensor
    /// type the engine does not run, a device without an engine yet).
    Unavailable { reason: String },
}

impl Default for Inference {
    fn default() -> Self {
        Inference::Unavailable {
            reason: "no engine".into(),
        }
    }
}

/// A stable 64-bit checksum both sides compute the same way across builds: FNV-1a over
/// little-endian 8-byte words, then the tail bytes. Word-wise it runs several times faster than
/// byte-wise FNV (gemma's 6.5 MB header in under a millisecond); it detects a different or
/// damaged file, and is not meant to resist a forger.
pub fn checksum64(bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        hash = (hash ^ u64::from_le_bytes(w)).wrapping_mul(PRIME);
    }
    for &b in words.remainder() {
        hash = (hash ^ u64::from(b)).wrapping_mul(PRIME);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::checksum64;

    #[test]
    fn the_checksum_sees_every_byte_and_is_stable() {
        let bytes: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let base = checksum64(&bytes);
        for i in [0, 7, 8, 500, 999] {
            let mut changed = bytes.clone();
            changed[i] ^= 1;
            assert_ne!(checksum64(&changed), base, "byte {i}");
        }
        assert_ne!(checksum64(&bytes[..999]), base);
        // Pinned values: host and worker builds must agree across versions, so a change to the
        // algorithm (word order, tail handling, constants) fails here. The empty input is
        // FNV-1a's offset basis; a tail-only input is byte-wise FNV-1a ("a" is its published
        // test vector).
        assert_eq!(checksum64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(checksum64(b"a"), 0xaf63_dc4c_8601_ec8c);
        // One 8-byte word then one tail byte, computed by hand from the definition above.
        assert_eq!(checksum64(b"modelhost"), 0x716f_d03a_0275_c4c4);
    }
}
