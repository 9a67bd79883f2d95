//! The event stream's vocabulary: what `/v1/events` carries as NDJSON.

use serde::{Deserialize, Serialize};

use super::{ModelState, WorkerState};

/// What a load is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Copying the file into a sealed memfd (`copy` mode).
    Copy,
    /// Reading every page once (`prefault`).
    Prefault,
    /// Locking the pages in RAM (`mlock`).
    Lock,
}

/// Something that happened in the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A model changed state.
    ModelState {
        model: String,
        state: ModelState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A load made progress. `done_bytes` never decreases within a phase and ends at `total_bytes`.
    Progress {
        model: String,
        phase: Phase,
        done_bytes: u64,
        total_bytes: u64,
    },
    /// A model was unloaded and its mapping released.
    ModelUnloaded { model: String },
    /// A worker changed state (or was restarted under a new pid).
    WorkerState {
        model: String,
        worker: String,
        device: String,
        state: WorkerState,
        pid: Option<u32>,
        restarts: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A model's worker count changed on request (`modelhost scale`): workers added, and
    /// workers draining before they stop.
    ModelScaled {
        model: String,
        workers: u32,
        added: Vec<String>,
        draining: Vec<String>,
    },
    /// A worker has this block in place (in layer order), so an engine can begin its warm-up.
    WorkerLayerReady {
        model: String,
        worker: String,
        layer: u32,
    },
    /// A worker's attach made progress.
    WorkerProgress {
        model: String,
        worker: String,
        done_bytes: u64,
        total_bytes: u64,
        layers_done: u32,
        layers_total: u32,
    },
    /// This subscriber fell behind and missed `missed` events.
    Lagged { missed: u64 },
}

/// An event with its sequence number and wall-clock time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    #[serde(flatten)]
    pub event: Event,
}
