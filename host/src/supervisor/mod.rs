//! Worker supervision: one thread per worker slot, a thin shell around the pure [`machine`].
//!
//! The shell spawns `modelhost-worker` with one end of a socketpair as fd 3 (or takes over a
//! worker that joined by itself), exchanges preambles, sends Attach with the model's descriptors
//! (SCM_RIGHTS), and turns what it reads into machine events; it carries out the machine's
//! actions (spawn, attach, shutdown, kill, announce). The protocol's rules are the machine's.

pub mod machine;

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use modelhost_node::channel::{Channel, ChannelError, Sender};
use modelhost_protocol::placement::DeviceId;
use modelhost_protocol::wire::{
    Attach, Finished, GeneratedToken, Hello, Inference, Message, ReadyStats, Submit,
};
use tokio::sync::mpsc::UnboundedSender;

use crate::api::{Event as HostEvent, WorkerInfo, WorkerState};
use crate::config::worker_binary;
use crate::events::EventBus;
use crate::pages;
use machine::{Action, Event, Machine, Origin, Policy};

/// How often the shell wakes to tick the machine when nothing arrives.
const TICK: Duration = Duration::from_millis(100);

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
    /// While the worker is Ready and computes: how to reach it, and who waits for what.
    link: Mutex<Option<Link>>,
    /// Being drained for removal: it takes no new request, finishes those that have begun,
    /// and is then stopped.
    draining: AtomicBool,
    /// Whether the host spawned it (and can stop it for good); a joined worker belongs to its
    /// process manager.
    pub spawned: bool,
}

/// What the gateway hears about one of its requests on a worker.
#[derive(Debug)]
pub enum WorkerEvent {
    Token(GeneratedToken),
    Finished(Finished),
    /// The worker went away (or stopped being Ready) with the request unfinished.
    Lost(String),
    /// The worker is being drained and had not begun answering: the request was cancelled
    /// there and goes back to the model's queue. Not a failure, so it does not count against
    /// the request's placements.
    Requeued(String),
}

/// A ready worker's request side: a sending handle on its connection (the shell thread keeps
/// reading it), and the requests in flight with where their events go.
struct Link {
    sender: Sender,
    slots: u32,
    requests: std::collections::HashMap<u64, InFlight>,
}

/// One request on a worker: where its events go, and whether a token of it has been forwarded
/// (after which it can no longer move to another worker unseen).
struct InFlight {
    events: UnboundedSender<WorkerEvent>,
    answered: bool,
}

/// How long a Submit or Cancel may wait on a worker that does not read its socket (a frozen
/// process); the heartbeat timeout kills such a worker soon after.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

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

    /// The sequence slots of a worker that is Ready and computes; None otherwise (starting,
    /// restarting, stopped, or a worker without an engine).
    /// A draining worker has none to offer.
    pub fn compute_slots(&self) -> Option<u32> {
        if self.draining() {
            return None;
        }
        self.link_guard().as_ref().map(|l| l.slots)
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts draining the worker for removal: the router places nothing more on it, and each
    /// request that has not yet had a token is cancelled here and handed back to the gateway
    /// (`Requeued`), which queues it again for another worker. Requests already answering run
    /// to their end; [`WorkerHandle::in_flight`] counts them down. Returns how many were handed
    /// back.
    pub fn drain(&self) -> usize {
        self.draining.store(true, Ordering::Relaxed);
        self.update_status(|s| s.draining = true);
        let mut guard = self.link_guard();
        let Some(link) = guard.as_mut() else {
            return 0;
        };
        let unanswered: Vec<u64> = link
            .requests
            .iter()
            .filter(|(_, r)| !r.answered)
            .map(|(id, _)| *id)
            .collect();
        for request in &unanswered {
            if let Some(r) = link.requests.remove(request) {
                // Under the link's lock no token of it can be forwarded meanwhile; the worker's
                // Finished(cancelled) finds no one waiting and is dropped.
                let _ = link.sender.send(&Message::Cancel { request: *request });
                let _ = r.events.send(WorkerEvent::Requeued(format!(
                    "worker {} is being removed",
                    self.id
                )));
            }
        }
        unanswered.len()
    }

    fn update_status(&self, f: impl FnOnce(&mut WorkerInfo)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Requests in flight on this worker.
    pub fn in_flight(&self) -> usize {
        self.link_guard().as_ref().map_or(0, |l| l.requests.len())
    }

    fn link_guard(&self) -> std::sync::MutexGuard<'_, Option<Link>> {
        self.link.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a request to the worker; its tokens and its end arrive on `events`. Refused when
    /// the worker is not Ready or the send fails (the worker is then as good as gone).
    pub fn submit(
        &self,
        submit: Submit,
        events: UnboundedSender<WorkerEvent>,
    ) -> Result<(), String> {
        let mut guard = self.link_guard();
        let Some(link) = guard.as_mut() else {
            return Err(format!("worker {} is not ready", self.id));
        };
        if self.draining() {
            return Err(format!("worker {} is being removed", self.id));
        }
        let request = submit.request;
        link.requests.insert(
            request,
            InFlight {
                events,
                answered: false,
            },
        );
        if let Err(e) = link.sender.send(&Message::Submit(Box::new(submit))) {
            link.requests.remove(&request);
            let why = format!("sending to worker {}: {e}", self.id);
            break_link(&mut guard, &why);
            return Err(why);
        }
        Ok(())
    }

    /// Asks the worker to stop a request. Its Finished still arrives (or Lost, if the worker
    /// goes first, or the Cancel cannot be sent).
    pub fn cancel(&self, request: u64) {
        let mut guard = self.link_guard();
        if let Some(link) = guard.as_mut() {
            if link.requests.contains_key(&request) {
                if let Err(e) = link.sender.send(&Message::Cancel { request }) {
                    break_link(&mut guard, &format!("sending to worker {}: {e}", self.id));
                }
            }
        }
    }

    /// Forgets a request whose client has gone and whose end no one will read.
    pub fn forget(&self, request: u64) {
        if let Some(link) = self.link_guard().as_mut() {
            link.requests.remove(&request);
        }
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

/// The host's side of a new worker connection: preambles exchanged within `timeout`, then reads
/// that wake the shell every tick.
fn open_channel(stream: UnixStream, timeout: Duration) -> Result<Channel, ChannelError> {
    let channel = Channel::handshake(stream, timeout)?;
    channel.set_read_timeout(Some(TICK))?;
    Ok(channel)
}

/// Why a joining worker's connection was dropped before it could be supervised.
#[derive(Debug, thiserror::Error)]
pub enum GreetError {
    #[error("no handshake: {0}")]
    Handshake(#[source] ChannelError),
    #[error("no Hello: {0}")]
    Hello(#[source] ChannelError),
}

/// Greets a worker that connected to the worker socket by itself: preambles, then its Hello,
/// each within `timeout`. The Hello says which model it wants, so the caller can prepare its
/// attach before [`adopt`] supervises it.
pub fn greet_joining(
    stream: UnixStream,
    timeout: Duration,
) -> Result<(Channel, Hello), GreetError> {
    let mut channel = open_channel(stream, timeout).map_err(GreetError::Handshake)?;
    let deadline = Instant::now() + timeout;
    loop {
        match channel.recv() {
            Ok(Message::Hello(hello)) => return Ok((channel, hello)),
            Ok(other) => {
                return Err(GreetError::Hello(ChannelError::Unexpected {
                    expected: "Hello",
                    got: format!("{other:?}"),
                }))
            }
            Err(ChannelError::Timeout) if Instant::now() < deadline => continue,
            Err(e) => return Err(GreetError::Hello(e)),
        }
    }
}

/// Starts a slot's supervision thread.
pub fn start(spec: WorkerSpec, events: Arc<EventBus>) -> std::io::Result<Arc<WorkerHandle>> {
    supervise(spec, None, events)
}

/// A worker a process manager started, as it introduced itself.
#[derive(Debug, Clone, Copy)]
struct Joined {
    pid: u32,
    /// The device its Hello named.
    device: DeviceId,
}

/// Runs a slot's shell on a thread of its own: for a spawned worker (`joined` is `None`), or for
/// a joined one with its greeted channel.
fn supervise(
    spec: WorkerSpec,
    joined: Option<(Channel, Joined)>,
    events: Arc<EventBus>,
) -> std::io::Result<Arc<WorkerHandle>> {
    let a = &spec.attach.assignment;
    let handle = new_handle(&spec.id, a.device, a.layers.len() as u32, joined.is_none());
    let (channel, external) = match joined {
        Some((channel, joined)) => (Some(channel), Some(joined)),
        None => (None, None),
    };
    let shell = Shell {
        handle: Arc::clone(&handle),
        spec,
        events,
        child: None,
        channel,
        spawned_at: Instant::now(),
        external,
    };
    let thread = std::thread::Builder::new()
        .name(format!("worker-{}", handle.id))
        .spawn(move || shell.run())?;
    *handle.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
    Ok(handle)
}

/// Ends a link after a failed send, which leaves the stream unusable (the worker is dead, or it
/// stopped reading and a frame may have gone out in part). The link closes at once, so the
/// router places nothing more on it and a request waits for the worker's restart, rather than
/// failing on this link again before the supervisor has seen the death. The socket is shut
/// down too, so that the supervisor's reader sees the end and replaces a worker that is alive
/// but no longer reads. The link's requests are lost with it.
fn break_link(slot: &mut Option<Link>, why: &str) {
    if let Some(link) = slot.take() {
        link.sender.shutdown();
        for (_, waiting) in link.requests {
            let _ = waiting.events.send(WorkerEvent::Lost(why.to_owned()));
        }
    }
}

fn new_handle(id: &str, device: DeviceId, layers: u32, spawned: bool) -> Arc<WorkerHandle> {
    Arc::new(WorkerHandle {
        id: id.to_owned(),
        device,
        status: Mutex::new(WorkerInfo {
            id: id.to_owned(),
            device,
            state: WorkerState::Starting,
            pid: None,
            layers,
            layers_ready: 0,
            weights_bytes: 0,
            kv_bytes: 0,
            scratch_bytes: 0,
            restarts: 0,
            error: None,
            ready_ms: None,
            memory: None,
            inference: None,
            draining: false,
        }),
        stop: AtomicBool::new(false),
        thread: Mutex::new(None),
        link: Mutex::new(None),
        draining: AtomicBool::new(false),
        spawned,
    })
}

struct Shell {
    handle: Arc<WorkerHandle>,
    spec: WorkerSpec,
    events: Arc<EventBus>,
    child: Option<Child>,
    channel: Option<Channel>,
    spawned_at: Instant,
    /// For a worker a process manager started. The shell neither spawns nor restarts it;
    /// closing the connection is how it is stopped.
    external: Option<Joined>,
}

/// Supervises a worker that connected by itself (`modelhost-worker --connect`) and said
/// `hello` (see [`greet_joining`]). `pid` is the kernel's word for the peer (SO_PEERCRED), not
/// the Hello's.
pub fn adopt(
    spec: WorkerSpec,
    channel: Channel,
    pid: u32,
    hello: &Hello,
    events: Arc<EventBus>,
) -> std::io::Result<Arc<WorkerHandle>> {
    let joined = Joined {
        pid,
        device: hello.device,
    };
    supervise(spec, Some((channel, joined)), events)
}

impl Shell {
    fn run(mut self) {
        let assignment = &self.spec.attach.assignment;
        let origin = match self.external {
            None => Origin::Spawned,
            Some(_) => Origin::Joined,
        };
        let mut machine = Machine::new(
            self.spec.policy,
            origin,
            assignment.device,
            assignment.layers.clone(),
            Instant::now(),
        );
        let mut actions = machine.start();
        if let Some(Joined { pid, device }) = self.external {
            // Already connected and greeted: its Hello goes through the machine's checks.
            machine.handle(Event::Spawned { pid }, Instant::now());
            actions.extend(machine.handle(Event::Hello { device }, Instant::now()));
        }
        let mut stop_sent = false;
        let mut last_state = None;
        loop {
            while !actions.is_empty() {
                let mut next = Vec::new();
                for action in actions.drain(..) {
                    if let Some(event) = self.perform(action, &machine) {
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
            actions.extend(machine.handle(event, Instant::now()));
            actions.extend(machine.handle(Event::Tick, Instant::now()));
        }
        self.close_link("the worker stopped");
        self.reap();
    }

    fn perform(&mut self, action: Action, machine: &Machine) -> Option<Event> {
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
                if let Some(reason) = machine.attempt_error() {
                    tracing::warn!(worker = %self.spec.id, %reason, "refusing worker");
                }
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
            Action::AnnounceLayer(layer) => {
                self.events.publish(HostEvent::WorkerLayerReady {
                    model: self.spec.model.clone(),
                    worker: self.spec.id.clone(),
                    layer,
                });
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
        match open_channel(host_end, Duration::from_secs(10)) {
            Ok(channel) => {
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
            Message::Hello(hello) => Event::Hello {
                device: hello.device,
            },
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
            Message::LayerReady { layer } => Event::LayerReady(layer),
            Message::Ready(stats) => {
                let ready_ms = self.spawned_at.elapsed().as_millis() as u64;
                match &stats.inference {
                    modelhost_protocol::wire::Inference::Ready {
                        kernels,
                        threads,
                        slots,
                    } => {
                        tracing::info!(worker = %id, ready_ms, %kernels, threads, slots, "worker ready, computing")
                    }
                    modelhost_protocol::wire::Inference::Unavailable { reason } => {
                        tracing::info!(worker = %id, ready_ms, "worker ready; inference: {reason}")
                    }
                }
                if let Inference::Ready { slots, .. } = &stats.inference {
                    self.open_link(*slots);
                }
                self.update(|s| set_stats(s, stats, ready_ms));
                Event::Ready
            }
            Message::Token(token) => {
                let mut guard = self.handle.link_guard();
                if let Some(waiting) = guard
                    .as_mut()
                    .and_then(|l| l.requests.get_mut(&token.request))
                {
                    waiting.answered = true;
                    let _ = waiting.events.send(WorkerEvent::Token(token));
                }
                // Tokens are signs of life as good as a heartbeat.
                Event::Heartbeat
            }
            Message::Finished(finished) => {
                let mut guard = self.handle.link_guard();
                if let Some(waiting) = guard
                    .as_mut()
                    .and_then(|l| l.requests.remove(&finished.request))
                {
                    let _ = waiting.events.send(WorkerEvent::Finished(finished));
                }
                Event::Heartbeat
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

    /// Opens the request side of a worker that just said Ready and computes.
    fn open_link(&self, slots: u32) {
        let Some(channel) = self.channel.as_ref() else {
            return;
        };
        let sender = match channel.sender() {
            Ok(sender) => sender,
            Err(e) => {
                tracing::warn!(worker = %self.spec.id, error = %e, "no request channel to the worker");
                return;
            }
        };
        let _ = sender.set_write_timeout(Some(SEND_TIMEOUT));
        *self.handle.link_guard() = Some(Link {
            sender,
            slots,
            requests: std::collections::HashMap::new(),
        });
    }

    /// Ends the request side when the worker stops being Ready: every request in flight hears
    /// that it was lost, so none waits forever.
    fn close_link(&self, why: &str) {
        let link = self.handle.link_guard().take();
        if let Some(link) = link {
            for (_, waiting) in link.requests {
                let _ = waiting.events.send(WorkerEvent::Lost(why.to_owned()));
            }
        }
    }

    fn update(&self, f: impl FnOnce(&mut WorkerInfo)) {
        f(&mut self.handle.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn publish(&self, machine: &Machine, last: &mut Option<(WorkerState, Option<u32>)>) {
        let connected = self
            .channel
            .is_some()
            .then_some(self.external)
            .flatten()
            .map(|j| j.pid);
        let pid = self.child.as_ref().map(Child::id).or(connected);
        if machine.state != WorkerState::Ready || self.channel.is_none() {
            let why = machine.last_error.clone().unwrap_or_else(|| {
                if machine.state == WorkerState::Ready {
                    format!("worker {} lost its connection", self.spec.id)
                } else {
                    format!("worker {} is {:?}", self.spec.id, machine.state)
                }
            });
            self.close_link(&why);
        }
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
    s.inference = Some(stats.inference);
}

#[cfg(test)]
mod tests {
    use super::*;
    use modelhost_protocol::wire::Sampling;

    fn submit(request: u64) -> Submit {
        Submit {
            request,
            prompt: vec![2, 3],
            sampling: Sampling::default(),
            max_tokens: 1,
            stop_tokens: Vec::new(),
            banned_tokens: Vec::new(),
            min_tokens: 0,
            logprobs: None,
        }
    }

    /// Opens `handle`'s link over `sender`, with `requests` (id, events, answered) in flight.
    fn open_link(
        handle: &WorkerHandle,
        sender: Sender,
        slots: u32,
        requests: Vec<(u64, UnboundedSender<WorkerEvent>, bool)>,
    ) {
        *handle.link_guard() = Some(Link {
            sender,
            slots,
            requests: requests
                .into_iter()
                .map(|(id, events, answered)| (id, InFlight { events, answered }))
                .collect(),
        });
    }

    /// A send that fails on a dead worker's socket closes the link at once: the router sees no
    /// slot on it (so a request placed again waits for the restart instead of failing on the
    /// same socket before the supervisor has seen the death), and the link's other requests
    /// hear that they were lost.
    #[test]
    fn a_failed_send_closes_the_link() {
        let handle = new_handle("w-0", DeviceId::cpu(), 1, true);
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (earlier, mut earlier_events) = tokio::sync::mpsc::unbounded_channel();
        open_link(&handle, Sender::over(ours), 2, vec![(1, earlier, false)]);
        assert_eq!(handle.compute_slots(), Some(2));
        drop(theirs);
        let (events, _) = tokio::sync::mpsc::unbounded_channel();
        let refused = handle.submit(submit(2), events).unwrap_err();
        assert!(refused.contains("sending to worker w-0"), "{refused}");
        assert_eq!(
            handle.compute_slots(),
            None,
            "the dead link takes no more requests"
        );
        assert!(matches!(
            earlier_events.try_recv(),
            Ok(WorkerEvent::Lost(why)) if why == refused
        ));
        let (events, _) = tokio::sync::mpsc::unbounded_channel();
        assert!(handle
            .submit(submit(3), events)
            .unwrap_err()
            .contains("not ready"));
    }

    /// A Cancel that cannot be sent ends the link the same way: the request it was for, and
    /// every other on the link, hear that they were lost (their Finished will never come).
    #[test]
    fn a_failed_cancel_closes_the_link() {
        let handle = new_handle("w-2", DeviceId::cpu(), 1, true);
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (events, mut heard) = tokio::sync::mpsc::unbounded_channel();
        open_link(&handle, Sender::over(ours), 1, vec![(5, events, true)]);
        drop(theirs);
        handle.cancel(5);
        assert_eq!(handle.compute_slots(), None);
        assert!(matches!(heard.try_recv(), Ok(WorkerEvent::Lost(why)) if why.contains("w-2")));
    }

    /// A worker that is alive but no longer reads: the send times out, the link closes, and
    /// the socket is shut down, so the supervisor's reader (here, the peer) sees the end and
    /// the worker is replaced rather than left Ready with no requests.
    #[test]
    fn a_send_that_times_out_ends_the_connection() {
        use std::io::Read;
        let handle = new_handle("w-1", DeviceId::cpu(), 1, true);
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        // The shell's channel keeps its own handle on the socket, as in a running host: closing
        // the link's handle alone would not end the stream.
        let _channel = ours.try_clone().unwrap();
        let sender = Sender::over(ours);
        sender
            .set_write_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        open_link(&handle, sender, 1, Vec::new());
        // Prompts large enough to fill the socket's buffers, which nobody reads.
        let mut refused = None;
        for request in 0..10_000 {
            let (events, _) = tokio::sync::mpsc::unbounded_channel();
            let mut big = submit(request);
            big.prompt = vec![7; 50_000];
            if let Err(e) = handle.submit(big, events) {
                refused = Some(e);
                break;
            }
        }
        let refused = refused.expect("the unread socket fills and the send times out");
        assert!(refused.contains("sending to worker w-1"), "{refused}");
        assert_eq!(handle.compute_slots(), None);
        // The peer reads what was sent, then the end of the stream.
        theirs
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut all = Vec::new();
        theirs
            .read_to_end(&mut all)
            .expect("the stream ends rather than blocking");
        assert!(!all.is_empty());
    }
}
