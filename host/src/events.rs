//! The event bus: model state changes and load progress, broadcast to every `/v1/events`
//! subscriber. The events themselves are `api::Event`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

use crate::api::{Envelope, Event};

/// Subscribers that fall this many events behind lose the oldest and are told so.
const CHANNEL_CAPACITY: usize = 4096;

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
