//! The supervisor for one worker slot as a pure state machine: `handle(event, now) -> actions`.
//! No processes, sockets or clocks here; the shell feeds it events and carries out its actions.

use std::time::{Duration, Instant};

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

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Spawned {
        pid: u32,
    },
    /// The process could not be started at all.
    SpawnFailed(String),
    Hello,
    Progress,
    LayerReady(u32),
    Ready,
    /// The worker reported a failure (it exits next).
    Failed(String),
    /// A protocol violation: the worker is killed and counts as failed.
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

/// One worker slot's supervision state.
#[derive(Debug, Clone)]
pub struct Machine {
    pub policy: Policy,
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
    pub fn new(policy: Policy, now: Instant) -> Machine {
        Machine {
            policy,
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

    /// The first action: spawn.
    pub fn start(&mut self) -> Vec<Action> {
        vec![Action::Spawn]
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
            Event::Hello => {
                self.last_seen = now;
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
            Event::LayerReady(_) => {
                self.last_seen = now;
                self.layers_ready += 1;
                vec![]
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
            Event::Violation(reason) => {
                self.attempt_error = Some(reason);
                vec![Action::Kill]
            }
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

    fn ready_machine(t0: Instant) -> Machine {
        let mut m = Machine::new(Policy::default(), t0);
        assert_eq!(m.start(), vec![Action::Spawn]);
        assert_eq!(m.handle(Event::Spawned { pid: 1 }, t0), vec![]);
        assert_eq!(m.handle(Event::Hello, at(t0, 5)), vec![Action::SendAttach]);
        assert_eq!(m.state, WorkerState::Attaching);
        m.handle(Event::LayerReady(0), at(t0, 10));
        m.handle(Event::LayerReady(1), at(t0, 11));
        m.handle(Event::Ready, at(t0, 12));
        assert_eq!((m.state, m.layers_ready), (WorkerState::Ready, 2));
        m
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
        m.handle(Event::Hello, now);
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
        let mut m = Machine::new(Policy::default(), t0);
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
        let mut m = Machine::new(Policy::default(), t0);
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
