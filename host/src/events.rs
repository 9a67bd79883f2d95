//! The event stream: model state changes and load progress, broadcast to every `/v1/events`
//! subscriber as NDJSON and kept briefly for late subscribers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::control::types::ModelState;

/// Subscribers that fall this many events behind lose the oldest and are told so.
const CHANNEL_CAPACITY: usize = 4096;

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
        state: crate::supervisor::machine::WorkerState,
        pid: Option<u32>,
        restarts: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
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

/// The broadcast side of the event stream.
pub struct EventBus {
    sender: broadcast::Sender<Envelope>,
    next_seq: AtomicU64,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new()
    }
}

impl EventBus {
    pub fn new() -> EventBus {
        EventBus {
            sender: broadcast::channel(CHANNEL_CAPACITY).0,
            next_seq: AtomicU64::new(1),
        }
    }

    /// Publishes an event to every current subscriber.
    pub fn publish(&self, event: Event) {
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        // No subscribers is fine: nobody is watching.
        let _ = self.sender.send(Envelope {
            seq,
            time_ms,
            event,
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Envelope> {
        self.sender.subscribe()
    }
}

/// Rate-limits progress events: at most one per interval, plus always the last.
pub struct ProgressThrottle {
    interval: Duration,
    last: Option<Instant>,
}

impl ProgressThrottle {
    /// Reports at least every 100 ms of steady work (design.md, hard requirement 4), never more
    /// than 20 times a second.
    pub fn new() -> ProgressThrottle {
        ProgressThrottle {
            interval: Duration::from_millis(50),
            last: None,
        }
    }

    /// Whether to publish now: the first call, the final one (`done == total`), or after the interval.
    pub fn should_report(&mut self, done: u64, total: u64) -> bool {
        let now = Instant::now();
        let due = self
            .last
            .is_none_or(|t| now.duration_since(t) >= self.interval);
        if due || done >= total {
            self.last = Some(now);
            return true;
        }
        false
    }
}

impl Default for ProgressThrottle {
    fn default() -> Self {
        ProgressThrottle::new()
    }
}
