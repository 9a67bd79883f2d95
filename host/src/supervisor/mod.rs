//! Worker supervision: one thread per worker slot, a thin shell around the pure [`machine`].
//!
//! The shell spawns `modelhost-worker` with one end of a socketpair as fd 3, exchanges
//! preambles, sends Attach with the model's descriptors (SCM_RIGHTS), and turns what it reads into
//! machine events; it carries out the machine's actions (spawn, attach, shutdown, kill).

pub mod machine;

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use modelhost_protocol::placement::DeviceId;
use modelhost_protocol::wire::{Attach, Message, ReadyStats};
use modelhost_worker::channel::{Channel, ChannelError};
use serde::{Deserialize, Serialize};

use crate::events::{Event as HostEvent, EventBus};
use crate::pages::{self, ProcessMemory};
use machine::{Action, Event, Machine, Policy, WorkerState};

/// How often the shell wakes to tick the machine when nothing arrives.
const TICK: Duration = Duration::from_millis(100);

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
}

/// What a slot runs.
pub struct WorkerSpec {
    pub id: String,
    pub model: String,
    pub attach: Attach,
    /// The descriptors to pass: the host's open model files (or sealed copies).
    pub files: Vec<OwnedFd>,
    pub policy: Policy,
}

/// The host's handle on one worker slot.
pub struct WorkerHandle {
    pub id: String,
    pub device: DeviceId,
    status: Mutex<WorkerInfo>,
    stop: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl WorkerHandle {
    pub fn info(&self) -> WorkerInfo {
        let mut info = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        info.memory = info
            .pid
            .and_then(|pid| pages::process_memory(Some(pid)).ok());
        info
    }

    /// Whether the worker process is (or will again be) running.
    pub fn alive(&self) -> bool {
        let state = self.status.lock().unwrap_or_else(|e| e.into_inner()).state;
        !matches!(state, WorkerState::Stopped | WorkerState::Failed)
    }

    /// Asks the slot to stop its worker and waits up to `limit` for it.
    pub fn stop(&self, limit: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + limit;
        while self.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            if !self.alive() {
                let _ = thread.join();
            }
        }
    }
}

/// Re-emits a spawned worker's stderr through the host's log, one event per line with the
/// worker's id, so that its last words reach the same place in the same format (JSON lines
/// when configured) instead of raw text among the host's events. It reads until the worker
/// closes stderr, and never stops early: a worker whose stderr is closed under it could die of
/// its own error message.
fn forward_stderr(worker: String, pid: u32, mut stderr: std::process::ChildStderr) {
    /// A line longer than this is logged in pieces.
    const MAX_LINE: usize = 16 << 10;
    let forward = move || {
        let emit = |bytes: &[u8]| {
            let text = String::from_utf8_lossy(bytes);
            let text = text.trim_end();
            if !text.is_empty() {
                let text = text.strip_prefix("modelhost-worker: ").unwrap_or(text);
                tracing::warn!(worker = %worker, pid, "worker stderr: {text}");
            }
        };
        let mut line = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = match stderr.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            for &byte in &chunk[..n] {
                if byte == b'\n' || line.len() >= MAX_LINE {
                    emit(&line);
                    line.clear();
                }
                if byte != b'\n' {
                    line.push(byte);
                }
            }
        }
        emit(&line);
    };
    if let Err(e) = std::thread::Builder::new()
        .name("worker-stderr".into())
        .spawn(forward)
    {
        tracing::warn!(error = %e, "cannot forward a worker's stderr");
    }
}

/// The worker binary: `$MODELHOST_WORKER`, else `modelhost-worker` beside this executable.
pub fn worker_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MODELHOST_WORKER") {
        return PathBuf::from(path);
    }
    std::env::current_exe()
        .map(|exe| exe.with_file_name("modelhost-worker"))
        .unwrap_or_else(|_| PathBuf::from("modelhost-worker"))
}

/// Starts a slot's supervision thread.
pub fn start(spec: WorkerSpec, events: Arc<EventBus>) -> std::io::Result<Arc<WorkerHandle>> {
    let handle = start_handle(&spec);
    let shell = Shell {
        handle: Arc::clone(&handle),
        spec,
        events,
        child: None,
        channel: None,
        spawned_at: Instant::now(),
        expected_layers: Vec::new(),
        external: None,
    };
    let thread = std::thread::Builder::new()
        .name(format!("worker-{}", handle.id))
        .spawn(move || shell.run())?;
    *handle.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
    Ok(handle)
}

fn start_handle(spec: &WorkerSpec) -> Arc<WorkerHandle> {
    let a = &spec.attach.assignment;
    Arc::new(WorkerHandle {
        id: spec.id.clone(),
        device: a.device,
        status: Mutex::new(WorkerInfo {
            id: spec.id.clone(),
            device: a.device,
            state: WorkerState::Starting,
            pid: None,
            layers: a.layers.len() as u32,
            layers_ready: 0,
            weights_bytes: 0,
            kv_bytes: 0,
            scratch_bytes: 0,
            restarts: 0,
            error: None,
            ready_ms: None,
            memory: None,
        }),
        stop: AtomicBool::new(false),
        thread: Mutex::new(None),
    })
}

struct Shell {
    handle: Arc<WorkerHandle>,
    spec: WorkerSpec,
    events: Arc<EventBus>,
    child: Option<Child>,
    channel: Option<Channel>,
    spawned_at: Instant,
    /// LayerReady must come in this order.
    expected_layers: Vec<u32>,
    /// For a worker a process manager started: its pid. The shell neither spawns nor restarts
    /// it; closing the connection is how it is stopped.
    external: Option<u32>,
}

/// Supervises a worker that connected by itself (`modelhost-worker --connect`), whose Hello has
/// been read and accepted.
pub fn adopt(
    spec: WorkerSpec,
    channel: Channel,
    pid: u32,
    events: Arc<EventBus>,
) -> std::io::Result<Arc<WorkerHandle>> {
    let handle = start_handle(&spec);
    let _ = channel.set_read_timeout(Some(TICK));
    let mut shell = Shell {
        handle: Arc::clone(&handle),
        spec,
        events,
        child: None,
        channel: Some(channel),
        spawned_at: Instant::now(),
        expected_layers: Vec::new(),
        external: Some(pid),
    };
    shell.expected_layers = shell
        .spec
        .attach
        .assignment
        .layers
        .iter()
        .rev()
        .copied()
        .collect();
    let thread = std::thread::Builder::new()
        .name(format!("worker-{}", handle.id))
        .spawn(move || shell.run())?;
    *handle.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
    Ok(handle)
}

impl Shell {
    fn run(mut self) {
        let mut machine = Machine::new(self.spec.policy, Instant::now());
        let mut actions = match self.external {
            None => machine.start(),
            // Already connected and greeted: straight to attaching.
            Some(pid) => {
                machine.handle(Event::Spawned { pid }, Instant::now());
                machine.handle(Event::Hello, Instant::now())
            }
        };
        let mut stop_sent = false;
        let mut last_state = None;
        loop {
            while !actions.is_empty() {
                let mut next = Vec::new();
                for action in actions.drain(..) {
                    if let Some(event) = self.perform(action) {
                        next.extend(machine.handle(event, Instant::now()));
                    }
                }
                actions = next;
            }
            if self.handle.stop.load(Ordering::Relaxed) && !stop_sent {
                stop_sent = true;
                actions.extend(machine.handle(Event::Unload, Instant::now()));
            }
            self.publish(&machine, &mut last_state);
            if machine.finished() {
                break;
            }
            let event = self.next_event();
            let exited = matches!(event, Event::Exited(_));
            actions.extend(machine.handle(event, Instant::now()));
            // A process manager restarts its own workers: when one goes, its slot ends here,
            // before a tick could schedule a spawn the host must not make.
            if exited && self.external.is_some() {
                machine.state = WorkerState::Stopped;
                self.publish(&machine, &mut last_state);
                break;
            }
            actions.extend(machine.handle(Event::Tick, Instant::now()));
        }
        self.reap();
    }

    fn perform(&mut self, action: Action) -> Option<Event> {
        match action {
            Action::Spawn => Some(match self.spawn() {
                Ok(pid) => Event::Spawned { pid },
                Err(reason) => Event::SpawnFailed(reason),
            }),
            Action::SendAttach => {
                let fds: Vec<_> = self.spec.files.iter().map(|f| f.as_fd()).collect();
                let message = Message::Attach(Box::new(self.spec.attach.clone()));
                let sent = self
                    .channel
                    .as_mut()
                    .map(|c| c.send_with_fds(&message, &fds));
                match sent {
                    Some(Err(e)) => Some(Event::Violation(format!("sending Attach: {e}"))),
                    _ => None,
                }
            }
            Action::SendShutdown => {
                if let Some(c) = self.channel.as_mut() {
                    let _ = c.send(&Message::Shutdown);
                }
                None
            }
            Action::Kill => {
                if let Some(child) = self.child.as_mut() {
                    let _ = child.kill();
                }
                if self.external.is_some() {
                    // Not ours to kill: closing the connection makes it exit.
                    self.channel = None;
                    return Some(Event::Exited("disconnected by the host".into()));
                }
                None
            }
            Action::Wait => None,
        }
    }

    fn spawn(&mut self) -> Result<u32, String> {
        let (host_end, worker_end) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        let worker_fd = worker_end.as_raw_fd();
        let mut command = Command::new(worker_binary());
        command
            .arg("--fd")
            .arg("3")
            .arg("--worker-id")
            .arg(&self.spec.id)
            .arg("--device")
            .arg(self.spec.attach.assignment.device.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: between fork and exec this runs only async-signal-safe calls (dup2, fcntl,
        // prctl) on descriptors that exist in the child.
        unsafe {
            command.pre_exec(move || {
                if worker_fd == 3 {
                    // dup2 onto itself would keep FD_CLOEXEC; clear it instead.
                    if libc::fcntl(3, libc::F_SETFD, 0) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(worker_fd, 3) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                // A backstop for orphans: if this supervising thread dies, so does the worker.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("starting {}: {e}", worker_binary().display()))?;
        drop(worker_end);
        let pid = child.id();
        if let Some(stderr) = child.stderr.take() {
            forward_stderr(self.spec.id.clone(), pid, stderr);
        }
        self.child = Some(child);
        self.spawned_at = Instant::now();
        self.expected_layers = self.spec.attach.assignment.layers.clone();
        self.expected_layers.reverse();
        match Channel::handshake(host_end, Duration::from_secs(10)) {
            Ok(channel) => {
                let _ = channel.set_read_timeout(Some(TICK));
                self.channel = Some(channel);
                tracing::info!(worker = %self.spec.id, pid, "worker spawned");
                Ok(pid)
            }
            Err(e) => {
                let exited = self.exited_by_itself(Duration::from_millis(200));
                self.reap();
                tracing::warn!(worker = %self.spec.id, pid, error = %e, "refusing worker: handshake failed");
                Err(match exited {
                    Some(status) => format!(
                        "worker {pid} exited ({status}) before its handshake completed: {e}"
                    ),
                    None => format!("handshake with worker {pid}: {e}"),
                })
            }
        }
    }

    /// How the child ended, if it exits by itself within `grace`. A worker that dies before its
    /// handshake closes its socket a moment before it can be reaped; the status says more than
    /// the reset connection does (a wrong binary, a bad argument, a crash).
    fn exited_by_itself(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + grace;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => return None,
            }
        }
    }

    /// Kills (if needed) and waits for the child, returning how it ended.
    fn reap(&mut self) -> String {
        self.channel = None;
        let Some(mut child) = self.child.take() else {
            return "not running".into();
        };
        let _ = child.kill();
        match child.wait() {
            Ok(status) => status.to_string(),
            Err(e) => format!("wait: {e}"),
        }
    }

    fn next_event(&mut self) -> Event {
        if self.external.is_some() && self.channel.is_none() {
            return Event::Exited("connection closed".into());
        }
        let Some(channel) = self.channel.as_mut() else {
            // No connection (after a violation, or between spawns): watch the process itself.
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Event::Exited(status.to_string());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
            return Event::Tick;
        };
        match channel.recv() {
            Ok(message) => self.event_for(message),
            Err(ChannelError::Timeout) => Event::Tick,
            Err(ChannelError::Closed) if self.external.is_some() => {
                self.channel = None;
                Event::Exited("connection closed".into())
            }
            Err(ChannelError::Closed) => {
                // Wait for the real exit status rather than killing a worker that is exiting.
                let status = self
                    .child
                    .as_mut()
                    .and_then(|c| c.wait().ok())
                    .map(|s| s.to_string());
                self.child = None;
                self.channel = None;
                Event::Exited(status.unwrap_or_else(|| "exited".into()))
            }
            Err(e) => {
                // The stream cannot be trusted past a violation: drop it; the worker is killed.
                self.channel = None;
                tracing::warn!(worker = %self.spec.id, error = %e, "refusing worker");
                Event::Violation(format!("protocol violation: {e}"))
            }
        }
    }

    fn event_for(&mut self, message: Message) -> Event {
        let id = &self.spec.id;
        match message {
            Message::Hello(hello) => {
                if hello.device != self.spec.attach.assignment.device {
                    let reason = format!(
                        "protocol violation: worker says it drives {}, but this slot is for {}",
                        hello.device, self.spec.attach.assignment.device
                    );
                    tracing::warn!(worker = %id, %reason, "refusing worker");
                    return Event::Violation(reason);
                }
                Event::Hello
            }
            Message::Progress(p) => {
                self.events.publish(HostEvent::WorkerProgress {
                    model: self.spec.model.clone(),
                    worker: id.clone(),
                    done_bytes: p.done_bytes,
                    total_bytes: p.total_bytes,
                    layers_done: p.layers_done,
                    layers_total: p.layers_total,
                });
                Event::Progress
            }
            Message::LayerReady { layer } => {
                if self.expected_layers.pop() != Some(layer) {
                    tracing::warn!(worker = %id, layer, "LayerReady out of order");
                    return Event::Violation(format!(
                        "protocol violation: LayerReady({layer}) out of order"
                    ));
                }
                self.events.publish(HostEvent::WorkerLayerReady {
                    model: self.spec.model.clone(),
                    worker: id.clone(),
                    layer,
                });
                Event::LayerReady(layer)
            }
            Message::Ready(stats) => {
                let ready_ms = self.spawned_at.elapsed().as_millis() as u64;
                self.update(|s| set_stats(s, stats, ready_ms));
                tracing::info!(worker = %id, ready_ms, "worker ready");
                Event::Ready
            }
            Message::Failed { error } => {
                tracing::error!(worker = %id, %error, "worker failed");
                Event::Failed(error)
            }
            Message::Heartbeat { .. } => Event::Heartbeat,
            other => Event::Violation(format!(
                "protocol violation: a worker may not send {other:?}"
            )),
        }
    }

    fn update(&self, f: impl FnOnce(&mut WorkerInfo)) {
        f(&mut self.handle.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn publish(&self, machine: &Machine, last: &mut Option<(WorkerState, Option<u32>)>) {
        let connected = self.channel.is_some().then_some(self.external).flatten();
        let pid = self.child.as_ref().map(Child::id).or(connected);
        self.update(|s| {
            s.state = machine.state;
            s.pid = pid;
            s.restarts = machine.restarts;
            s.error.clone_from(&machine.last_error);
            s.layers_ready = machine.layers_ready;
        });
        if *last != Some((machine.state, pid)) {
            *last = Some((machine.state, pid));
            self.events.publish(HostEvent::WorkerState {
                model: self.spec.model.clone(),
                worker: self.spec.id.clone(),
                device: self.spec.attach.assignment.device.to_string(),
                state: machine.state,
                pid,
                restarts: machine.restarts,
                error: machine.last_error.clone(),
            });
        }
    }
}

fn set_stats(s: &mut WorkerInfo, stats: ReadyStats, ready_ms: u64) {
    s.weights_bytes = stats.weights_bytes;
    s.kv_bytes = stats.kv_bytes;
    s.scratch_bytes = stats.scratch_bytes;
    s.ready_ms = Some(ready_ms);
}
