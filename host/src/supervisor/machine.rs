//! The supervisor for one worker slot as a pure state machine: `handle(event, now) -> actions`.
//! No processes, sockets or clocks here; the shell feeds it events and carries out its actions.
//!
//! The protocol's rules about a worker's messages live here too, where they are tested without
//! processes: a Hello must name the slot's device, and LayerReady must come once per assigned
//! block, in the assigned order. Breaking either is a violation: the worker is killed and the
//! attempt counts as a failure.

use std::time::{Duration, Instant};

use modelhost_protocol::placement::DeviceId;

pub use crate::api::WorkerState;

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Spawned {
        pid: u32,
    },
    /// The process could not be started at all.
    SpawnFailed(String),
    /// The worker said Hello for this device.
    Hello {
        device: DeviceId,
    },
    Progress,
    /// The worker says this block is in place.
    LayerReady(u32),
    Ready,
    /// The worker reported a failure (it exits next).
    Failed(String),
    /// A protocol violation the shell saw on the wire (bad framing, a message a worker may not
    /// send): the worker is killed and counts as failed.
    Violation(String),
    Exited(String),
    HeartbeatTimeout,
    Heartbeat,
    /// The model is being unloaded.
    Unload,
    /// The host is shutting down.
    Shutdown,
    /// Time passed (the shell calls this at least every 100 ms).
    Tick,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Spawn,
    SendAttach,
    SendShutdown,
    Kill,
    /// Tell the host's subscribers that this block is ready (it came in order).
    AnnounceLayer(u32),
    /// Nothing to do until the machine says so.
    Wait,
}

/// Restart and liveness policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The first failure restarts at once (a crash is usually a one-off, and the pages are
    /// warm); the second waits this long, and each further consecutive failure doubles it.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Consecutive failures (without reaching Ready) after which the slot gives up.
    pub max_failures: u32,
    /// A worker silent this long after its Hello is killed and restarted.
    pub heartbeat_timeout: Duration,
    /// How long a new worker has to say Hello. Longer than the heartbeat timeout: before its
    /// Hello a CUDA worker initialises the driver, which takes seconds on some machines (no
    /// persistence mode, many GPUs), and it sends no heartbeats yet.
    pub hello_timeout: Duration,
    /// How long a stopping worker has before it is killed.
    pub stop_grace: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            max_failures: 5,
            heartbeat_timeout: Duration::from_secs(3),
            hello_timeout: Duration::from_secs(20),
            stop_grace: Duration::from_secs(1),
        }
    }
}

/// Who restarts a slot's worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The host spawned it, and restarts it with backoff.
    Spawned,
    /// A process manager started it and connected it (`modelhost-worker --connect`); the
    /// process manager restarts it, so when it goes the slot stops.
    Joined,
}

/// One worker slot's supervision state.
#[derive(Debug, Clone)]
pub struct Machine {
    pub policy: Policy,
    origin: Origin,
    /// The device the slot is for: a Hello must name it.
    device: DeviceId,
    /// The blocks assigned, in the order their LayerReady must come.
    layers: Vec<u32>,
    pub state: WorkerState,
    /// Restarts so far (for display).
    pub restarts: u32,
    /// Failures since the last Ready.
    pub consecutive_failures: u32,
    pub layers_ready: u32,
    /// Why the latest attempt ended (kept through the restart, for display).
    pub last_error: Option<String>,
    /// What the current attempt reported before exiting.
    attempt_error: Option<String>,
    last_seen: Instant,
    restart_at: Option<Instant>,
    stop_deadline: Option<Instant>,
    alive: bool,
}

impl Machine {
    /// A slot for `device` whose worker must place `layers` in this order.
    pub fn new(
        policy: Policy,
        origin: Origin,
        device: DeviceId,
        layers: Vec<u32>,
        now: Instant,
    ) -> Machine {
        Machine {
            policy,
            origin,
            device,
            layers,
            state: WorkerState::Starting,
            restarts: 0,
            consecutive_failures: 0,
            layers_ready: 0,
            last_error: None,
            attempt_error: None,
            last_seen: now,
            restart_at: None,
            stop_deadline: None,
            alive: false,
        }
    }

    /// The first action: spawn (a joined worker is already running).
    pub fn start(&mut self) -> Vec<Action> {
        match self.origin {
            Origin::Spawned => vec![Action::Spawn],
            Origin::Joined => vec![],
        }
    }

    /// What the current attempt was refused or failed for, before its exit is seen.
    pub fn attempt_error(&self) -> Option<&str> {
        self.attempt_error.as_deref()
    }

    fn violation(&mut self, reason: String) -> Vec<Action> {
        self.attempt_error = Some(reason);
        vec![Action::Kill]
    }

    fn backoff(&self) -> Duration {
        if self.consecutive_failures <= 1 {
            return Duration::ZERO;
        }
        let exponent = self.consecutive_failures.saturating_sub(2).min(16);
        (self.policy.backoff_base * 2u32.pow(exponent)).min(self.policy.backoff_max)
    }

    fn stopping(&self) -> bool {
        matches!(self.state, WorkerState::Stopping | WorkerState::Stopped)
    }

    /// Whether the slot has ended for good.
    pub fn finished(&self) -> bool {
        matches!(self.state, WorkerState::Stopped | WorkerState::Failed)
    }

    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        match event {
            Event::Spawned { .. } => {
                self.alive = true;
                self.attempt_error = None;
                self.last_seen = now;
                self.layers_ready = 0;
                if !self.stopping() {
                    self.state = WorkerState::Starting;
                }
                vec![]
            }
            Event::SpawnFailed(reason) => self.failure(reason, now),
            Event::Hello { device } => {
                self.last_seen = now;
                if device != self.device {
                    return self.violation(format!(
                        "protocol violation: worker says it drives {device}, but this slot is for {}",
                        self.device
                    ));
                }
                if self.state == WorkerState::Starting {
                    self.state = WorkerState::Attaching;
                    return vec![Action::SendAttach];
                }
                vec![]
            }
            Event::Progress | Event::Heartbeat => {
                self.last_seen = now;
                vec![]
            }
            Event::LayerReady(layer) => {
                self.last_seen = now;
                let expected = self.layers.get(self.layers_ready as usize).copied();
                if expected != Some(layer) {
                    return self.violation(format!(
                        "protocol violation: LayerReady({layer}) out of order (expected {})",
                        expected.map_or("no more".into(), |l| format!("LayerReady({l})"))
                    ));
                }
                self.layers_ready += 1;
                vec![Action::AnnounceLayer(layer)]
            }
            Event::Ready => {
                self.last_seen = now;
                if self.state == WorkerState::Attaching {
                    self.state = WorkerState::Ready;
                    self.consecutive_failures = 0;
                    self.last_error = None;
                }
                vec![]
            }
            Event::Failed(reason) => {
                self.attempt_error = Some(reason);
                vec![]
            }
            Event::Violation(reason) => self.violation(reason),
            Event::HeartbeatTimeout => {
                // Before its Hello the worker has not even described its device: for CUDA that
                // is the driver's initialisation, the usual place for a lost GPU to hang.
                self.attempt_error = Some(if self.state == WorkerState::Starting {
                    format!(
                        "no Hello within {:?} of starting: the worker hung before it could \
                         describe its device (for cuda:N, a hung driver or GPU; see nvidia-smi)",
                        self.policy.hello_timeout
                    )
                } else {
                    format!("no heartbeat for {:?}", self.policy.heartbeat_timeout)
                });
                vec![Action::Kill]
            }
            Event::Exited(status) => {
                self.alive = false;
                if self.stopping() {
                    self.state = WorkerState::Stopped;
                    return vec![];
                }
                let reason = self
                    .attempt_error
                    .take()
                    .map_or(status.clone(), |e| format!("{e} ({status})"));
                if self.origin == Origin::Joined {
                    // Its process manager restarts it; the host must not, and the slot ends.
                    self.last_error = Some(reason);
                    self.state = WorkerState::Stopped;
                    return vec![];
                }
                self.failure(reason, now)
            }
            Event::Unload | Event::Shutdown => {
                if self.finished() {
                    return vec![];
                }
                if !self.alive {
                    self.state = WorkerState::Stopped;
                    return vec![];
                }
                self.state = WorkerState::Stopping;
                self.stop_deadline = Some(now + self.policy.stop_grace);
                vec![Action::SendShutdown]
            }
            Event::Tick => self.tick(now),
        }
    }

    fn failure(&mut self, reason: String, now: Instant) -> Vec<Action> {
        self.alive = false;
        self.consecutive_failures += 1;
        self.last_error = Some(reason);
        if self.consecutive_failures > self.policy.max_failures {
            self.state = WorkerState::Failed;
            return vec![];
        }
        self.state = WorkerState::Restarting;
        self.restart_at = Some(now + self.backoff());
        vec![Action::Wait]
    }

    fn tick(&mut self, now: Instant) -> Vec<Action> {
        match self.state {
            WorkerState::Restarting if self.restart_at.is_some_and(|t| now >= t) => {
                self.restart_at = None;
                self.restarts += 1;
                self.state = WorkerState::Starting;
                vec![Action::Spawn]
            }
            WorkerState::Starting
                if self.alive && now.duration_since(self.last_seen) > self.policy.hello_timeout =>
            {
                self.handle(Event::HeartbeatTimeout, now)
            }
            WorkerState::Attaching | WorkerState::Ready
                if self.alive
                    && now.duration_since(self.last_seen) > self.policy.heartbeat_timeout =>
            {
                self.handle(Event::HeartbeatTimeout, now)
            }
            WorkerState::Stopping if self.alive && self.stop_deadline.is_some_and(|t| now >= t) => {
                self.stop_deadline = None;
                vec![Action::Kill]
            }
            _ => vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    const GPU: DeviceId = DeviceId {
        kind: modelhost_protocol::placement::DeviceKind::Cuda,
        index: Some(1),
    };

    fn hello() -> Event {
        Event::Hello { device: GPU }
    }

    /// A slot on cuda:1 for blocks 4 and 5.
    fn machine(t0: Instant) -> Machine {
        Machine::new(Policy::default(), Origin::Spawned, GPU, vec![4, 5], t0)
    }

    fn ready_machine(t0: Instant) -> Machine {
        let mut m = machine(t0);
        assert_eq!(m.start(), vec![Action::Spawn]);
        assert_eq!(m.handle(Event::Spawned { pid: 1 }, t0), vec![]);
        assert_eq!(m.handle(hello(), at(t0, 5)), vec![Action::SendAttach]);
        assert_eq!(m.state, WorkerState::Attaching);
        assert_eq!(
            m.handle(Event::LayerReady(4), at(t0, 10)),
            vec![Action::AnnounceLayer(4)]
        );
        assert_eq!(
            m.handle(Event::LayerReady(5), at(t0, 11)),
            vec![Action::AnnounceLayer(5)]
        );
        m.handle(Event::Ready, at(t0, 12));
        assert_eq!((m.state, m.layers_ready), (WorkerState::Ready, 2));
        m
    }

    /// Brings a fresh slot to Attaching, then feeds `layers` as LayerReady; returns the actions
    /// of the last one.
    fn attach_with_layers(layers: &[u32]) -> (Machine, Vec<Action>) {
        let t0 = Instant::now();
        let mut m = machine(t0);
        m.handle(Event::Spawned { pid: 1 }, t0);
        m.handle(hello(), t0);
        let mut last = Vec::new();
        for &layer in layers {
            last = m.handle(Event::LayerReady(layer), t0);
        }
        (m, last)
    }

    #[test]
    fn layer_ready_out_of_order_is_a_violation() {
        // Skipping a block, repeating one, and one too many are all refused.
        for layers in [&[5][..], &[4, 4], &[4, 5, 6], &[7]] {
            let (mut m, last) = attach_with_layers(layers);
            assert_eq!(last, vec![Action::Kill], "{layers:?}");
            let error = m.attempt_error().unwrap().to_owned();
            assert!(error.contains("out of order"), "{error}");
            m.handle(Event::Exited("killed".into()), Instant::now());
            assert_eq!(m.state, WorkerState::Restarting);
            assert_eq!(m.consecutive_failures, 1, "a violation counts as a failure");
        }
        let (m, last) = attach_with_layers(&[4, 5]);
        assert_eq!(last, vec![Action::AnnounceLayer(5)]);
        assert_eq!(m.attempt_error(), None);
    }

    #[test]
    fn a_restarted_worker_reports_its_layers_from_the_start_again() {
        let t0 = Instant::now();
        let mut m = ready_machine(t0);
        m.handle(Event::Exited("killed".into()), t0);
        assert_eq!(m.handle(Event::Tick, t0), vec![Action::Spawn]);
        m.handle(Event::Spawned { pid: 2 }, t0);
        m.handle(hello(), t0);
        assert_eq!(
            m.handle(Event::LayerReady(4), t0),
            vec![Action::AnnounceLayer(4)]
        );
    }

    #[test]
    fn a_hello_for_another_device_is_a_violation() {
        let t0 = Instant::now();
        let mut m = machine(t0);
        m.handle(Event::Spawned { pid: 1 }, t0);
        let actions = m.handle(
            Event::Hello {
                device: DeviceId::cuda(0),
            },
            t0,
        );
        assert_eq!(actions, vec![Action::Kill], "no Attach for a lying worker");
        assert_eq!(m.state, WorkerState::Starting);
        m.handle(Event::Exited("killed".into()), t0);
        let error = m.last_error.as_deref().unwrap();
        assert!(
            error.starts_with(
                "protocol violation: worker says it drives cuda:0, but this slot is for cuda:1"
            ),
            "{error}"
        );
    }

    #[test]
    fn a_joined_worker_that_goes_is_stopped_not_restarted() {
        let t0 = Instant::now();
        let mut m = Machine::new(Policy::default(), Origin::Joined, GPU, vec![4], t0);
        assert_eq!(m.start(), vec![], "a joined worker is already running");
        m.handle(Event::Spawned { pid: 9 }, t0);
        assert_eq!(m.handle(hello(), t0), vec![Action::SendAttach]);
        m.handle(Event::Ready, t0);
        assert_eq!(
            m.handle(Event::Exited("connection closed".into()), t0),
            vec![]
        );
        assert_eq!(m.state, WorkerState::Stopped);
        assert_eq!(m.last_error.as_deref(), Some("connection closed"));
        assert_eq!(m.handle(Event::Tick, at(t0, 10_000)), vec![]);
    }

    #[test]
    fn a_worker_comes_up_through_hello_attach_ready() {
        ready_machine(Instant::now());
    }

    #[test]
    fn a_crash_restarts_with_exponential_backoff_then_gives_up() {
        let t0 = Instant::now();
        let mut m = ready_machine(t0);
        let mut now = at(t0, 100);
        let mut waits = Vec::new();
        for _ in 0..5 {
            assert_eq!(
                m.handle(Event::Exited("killed by signal 9".into()), now),
                vec![Action::Wait]
            );
            assert_eq!(m.state, WorkerState::Restarting);
            let start = now;
            while m.handle(Event::Tick, now) != vec![Action::Spawn] {
                now += Duration::from_millis(10);
            }
            waits.push(now.duration_since(start).as_millis() as u64);
            m.handle(Event::Spawned { pid: 2 }, now);
        }
        assert_eq!(waits, vec![0, 100, 200, 400, 800]);
        assert_eq!(m.restarts, 5);
        m.handle(Event::Exited("killed".into()), now);
        assert_eq!(
            m.state,
            WorkerState::Failed,
            "the sixth failure in a row gives up"
        );
        assert!(m.finished());
    }

    #[test]
    fn reaching_ready_resets_the_failure_count() {
        let t0 = Instant::now();
        let mut m = ready_machine(t0);
        m.handle(Event::Exited("x".into()), at(t0, 100));
        let mut now = at(t0, 100);
        while m.handle(Event::Tick, now).is_empty() {
            now += Duration::from_millis(10);
        }
        m.handle(Event::Spawned { pid: 3 }, now);
        m.handle(hello(), now);
        m.handle(Event::Ready, now);
        assert_eq!(m.consecutive_failures, 0);
        assert_eq!(m.handle(Event::Exited("x".into()), now), vec![Action::Wait]);
        assert_eq!(
            m.backoff(),
            Duration::ZERO,
            "after a Ready, a crash restarts at once again"
        );
    }

    #[test]
    fn a_silent_worker_is_killed_and_its_exit_restarts_it() {
        let t0 = Instant::now();
        let mut m = ready_machine(t0);
        assert_eq!(m.handle(Event::Heartbeat, at(t0, 1000)), vec![]);
        assert_eq!(m.handle(Event::Tick, at(t0, 3900)), vec![]);
        assert_eq!(m.handle(Event::Tick, at(t0, 4100)), vec![Action::Kill]);
        assert_eq!(
            m.handle(Event::Exited("killed".into()), at(t0, 4110)),
            vec![Action::Wait]
        );
        assert!(m.last_error.as_deref().unwrap().contains("no heartbeat"));
    }

    #[test]
    fn a_worker_silent_before_its_hello_is_named_as_such() {
        let t0 = Instant::now();
        let mut m = machine(t0);
        m.start();
        m.handle(Event::Spawned { pid: 7 }, t0);
        // A slow driver initialisation is not a silent worker...
        assert_eq!(m.handle(Event::Tick, at(t0, 19_900)), vec![]);
        // ...but one that outlasts the Hello timeout is.
        assert_eq!(m.handle(Event::Tick, at(t0, 20_100)), vec![Action::Kill]);
        m.handle(Event::Exited("killed".into()), at(t0, 20_110));
        let error = m.last_error.as_deref().unwrap();
        assert!(
            error.starts_with("no Hello within 20s of starting"),
            "{error}"
        );
    }

    #[test]
    fn failures_and_violations_are_remembered_with_the_exit() {
        let t0 = Instant::now();
        let mut m = machine(t0);
        m.handle(Event::Spawned { pid: 1 }, t0);
        assert_eq!(
            m.handle(Event::Violation("bad magic".into()), t0),
            vec![Action::Kill]
        );
        m.handle(Event::Exited("killed".into()), t0);
        assert_eq!(m.last_error.as_deref(), Some("bad magic (killed)"));
        assert_eq!(
            m.handle(Event::SpawnFailed("no binary".into()), t0),
            vec![Action::Wait]
        );
        assert_eq!(m.consecutive_failures, 2);
    }

    #[test]
    fn unload_stops_gracefully_then_kills_after_the_grace() {
        let t0 = Instant::now();
        let mut m = ready_machine(t0);
        assert_eq!(
            m.handle(Event::Unload, at(t0, 100)),
            vec![Action::SendShutdown]
        );
        assert_eq!(m.state, WorkerState::Stopping);
        assert_eq!(m.handle(Event::Tick, at(t0, 500)), vec![]);
        assert_eq!(m.handle(Event::Tick, at(t0, 1200)), vec![Action::Kill]);
        assert_eq!(
            m.handle(Event::Exited("killed".into()), at(t0, 1210)),
            vec![]
        );
        assert_eq!(m.state, WorkerState::Stopped);
        assert!(m.finished());
        assert_eq!(m.handle(Event::Shutdown, at(t0, 1300)), vec![]);
    }

    #[test]
    fn shutdown_during_backoff_stops_without_spawning() {
        let t0 = Instant::now();
        let mut m = ready_machine(t0);
        m.handle(Event::Exited("x".into()), t0);
        assert_eq!(m.handle(Event::Shutdown, t0), vec![]);
        assert_eq!(m.state, WorkerState::Stopped);
        assert_eq!(m.handle(Event::Tick, at(t0, 10_000)), vec![]);
    }
}
