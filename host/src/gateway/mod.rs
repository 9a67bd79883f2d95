//! The gateway: generation requests, as ids and sampling settings, placed on workers and
//! turned back into text.
//!
//! The HTTP side (`control/openai.rs`) renders the chat template, tokenizes and checks a
//! request, then asks [`Gateway::start`] for a stream of [`Event`]s. A task per request holds a
//! lease on one worker slot ([`router`]), submits the request, detokenizes the tokens as they
//! arrive, matches stop strings ([`stop`]), and forwards text. A worker lost before it sent a
//! token has the request sent again elsewhere; one lost after ends the stream with an error. A
//! client that leaves, or reads too slowly for the bounded buffer, has its request cancelled in
//! the worker, whose slot is freed at its next step.

pub mod render;
pub mod router;
pub mod stop;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use modelhost_protocol::wire::{FinishReason, Sampling, Submit};
use modelhost_text::{ModelText, StreamDecoder};
use tokio::sync::mpsc;

use crate::registry::Registry;
use crate::supervisor::WorkerEvent;
use router::{Admission, QueueLimits, Refusal, Router};
use stop::StopMatcher;

/// Events buffered for one client before it counts as too slow and is dropped.
pub const CLIENT_BUFFER: usize = 1024;
/// How many times a request may lose its worker before any token (it is placed again each time
/// but the last).
const PLACEMENTS: u32 = 3;
/// How many times a request may be handed back by workers being removed (scale-down).
const REQUEUES: u32 = 8;
/// How long a cancelled request's slot waits for the worker's Finished before it is given up.
const CANCEL_GRACE: Duration = Duration::from_secs(10);

/// A generation request, tokenized and checked.
#[derive(Debug, Clone)]
pub struct Generation {
    pub model: String,
    pub prompt: Vec<u32>,
    pub sampling: Sampling,
    pub max_tokens: u32,
    pub stop_tokens: Vec<u32>,
    pub banned_tokens: Vec<u32>,
    pub min_tokens: u32,
    /// Report each token's logprob with this many alternatives.
    pub logprobs: Option<u8>,
    pub stop_strings: Vec<String>,
}

/// One token as the client sees it, with its log-probabilities.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub token: u32,
    /// The token's own text (its bytes where they are not whole UTF-8 on their own).
    pub text: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    pub top: Vec<(String, Vec<u8>, f32)>,
}

/// How a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub cached_tokens: u32,
}

/// What a request's stream carries.
#[derive(Debug, Clone)]
pub enum Event {
    /// A worker took the request (again, after a lost worker).
    Placed { worker: String },
    /// Text the client may see, and the tokens it came from when logprobs were asked for.
    Text {
        text: String,
        tokens: Vec<TokenInfo>,
    },
    Done {
        finish: Finish,
        usage: Usage,
        worker: String,
    },
    /// The request failed after it was admitted.
    Failed { message: String },
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdmitError {
    /// Every slot busy and the queue full: 429.
    Busy(String),
    /// No worker can run it: 503.
    Unavailable(String),
}

/// Counters for /metrics, per model (the router keeps the queue figures).
#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub finished_stop: AtomicU64,
    pub finished_length: AtomicU64,
    pub failed: AtomicU64,
    pub cancelled: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    pub cached_tokens: AtomicU64,
    pub replaced: AtomicU64,
    pub ttft: Histogram,
    pub inter_token: Histogram,
    pub e2e: Histogram,
    pub queue_time: Histogram,
}

/// A Prometheus histogram of seconds, with fixed buckets.
pub struct Histogram {
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    total: AtomicU64,
}

/// Bucket upper bounds in seconds (vLLM's time-to-first-token buckets, which cover the others).
pub const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
];

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: BUCKETS.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| s <= b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket, the sum in seconds, and the count.
    pub fn snapshot(&self) -> (Vec<u64>, f64, u64) {
        let mut running = 0;
        let cumulative = self
            .counts
            .iter()
            .map(|c| {
                running += c.load(Ordering::Relaxed);
                running
            })
            .collect();
        (
            cumulative,
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            self.total.load(Ordering::Relaxed),
        )
    }
}

pub struct Gateway {
    registry: Arc<Registry>,
    pub router: Arc<Router>,
    /// Renders templates from model files behind a memory limit.
    pub renderer: render::Renderer,
    next_request: AtomicU64,
    counters: std::sync::Mutex<std::collections::BTreeMap<String, Arc<Counters>>>,
}

impl Gateway {
    pub fn new(registry: Arc<Registry>, limits: QueueLimits) -> Arc<Gateway> {
        Arc::new(Gateway {
            router: Router::new(Arc::clone(&registry), limits),
            renderer: render::Renderer::default(),
            registry,
            next_request: AtomicU64::new(1),
            counters: Default::default(),
        })
    }

    /// A model's counters (created on first use; kept across unloads, as counters are).
    pub fn counters(&self, model: &str) -> Arc<Counters> {
        let mut all = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(all.entry(model.to_owned()).or_default())
    }

    /// Every model's counters, by name.
    pub fn all_counters(&self) -> Vec<(String, Arc<Counters>)> {
        let all = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        all.iter()
            .map(|(m, c)| (m.clone(), Arc::clone(c)))
            .collect()
    }

    /// Hands queued requests to workers that became ready: at once on a worker's Ready event
    /// (a request waiting on a restarting or new worker must not wait for a tick as well), and
    /// on a 50 ms tick as a backstop. Runs until the runtime ends.
    pub fn spawn_ticker(self: &Arc<Self>) {
        let gateway = Arc::clone(self);
        let mut events = self.registry.events().subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tokio::select! {
                    _ = tick.tick() => gateway.router.dispatch_all(),
                    event = events.recv() => match event {
                        Ok(envelope) => {
                            if let crate::api::Event::WorkerState {
                                model,
                                state: crate::api::WorkerState::Ready,
                                ..
                            } = envelope.event
                            {
                                gateway.router.dispatch(&model);
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            gateway.router.dispatch_all();
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            events = gateway.registry.events().subscribe();
                        }
                    },
                }
            }
        });
    }

    /// A fresh id for a request, unique in this host's life.
    pub fn request_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Admits `generation` (or refuses it at once) and starts it; its events arrive on the
    /// returned channel. Dropping the receiver cancels the request.
    pub fn start(
        self: &Arc<Self>,
        generation: Generation,
        text: Arc<ModelText>,
    ) -> Result<mpsc::Receiver<Event>, AdmitError> {
        let prompt = Arc::new(generation.prompt.clone());
        let counters = self.counters(&generation.model);
        let admission = self
            .router
            .admit(&generation.model, Arc::clone(&prompt))
            .map_err(refusal)?;
        counters.requests.fetch_add(1, Ordering::Relaxed);
        let (out, events) = mpsc::channel(CLIENT_BUFFER);
        let gateway = Arc::clone(self);
        tokio::spawn(async move {
            let run = Run {
                gateway: &gateway,
                counters: &counters,
                generation: &generation,
                text: &text,
                out: &out,
                arrived: Instant::now(),
            };
            run.serve(admission).await;
        });
        Ok(events)
    }
}

fn refusal(r: Refusal) -> AdmitError {
    match r {
        Refusal::NoWorkers(message) => AdmitError::Unavailable(message),
        Refusal::QueueFull { requests, tokens } => AdmitError::Busy(format!(
            "the queue is full ({requests} requests and {tokens} prompt tokens waiting); retry shortly"
        )),
    }
}

/// One request's task.
struct Run<'a> {
    gateway: &'a Arc<Gateway>,
    counters: &'a Counters,
    generation: &'a Generation,
    text: &'a ModelText,
    out: &'a mpsc::Sender<Event>,
    arrived: Instant,
}

/// How one placement on a worker ended.
enum Attempt {
    Done,
    /// The worker went away before any token: place the request again.
    Again(String),
    /// The worker is being removed and handed the request back before any token: queue it
    /// again, without counting a lost placement.
    Requeued(String),
    /// The client is gone; nothing more to send.
    Abandoned,
}

impl Run<'_> {
    /// Sends an event; false when the client has gone or fell too far behind.
    fn emit(&self, event: Event) -> bool {
        self.out.try_send(event).is_ok()
    }

    async fn serve(self, mut admission: Admission) {
        let counters = self.counters;
        // Placements lost to a dying worker are capped. A request handed back by a draining
        // worker is queued again without counting as lost, but that too is bounded.
        let (mut lost, mut handed_back) = (0, 0);
        let mut first = true;
        loop {
            let lease = tokio::select! {
                lease = admission.lease() => lease,
                () = self.out.closed() => {
                    counters.cancelled.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            let lease = match lease {
                Ok(lease) => lease,
                Err(r) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    let message = match refusal(r) {
                        AdmitError::Busy(m) | AdmitError::Unavailable(m) => m,
                    };
                    self.emit(Event::Failed { message });
                    return;
                }
            };
            if std::mem::take(&mut first) {
                counters.queue_time.observe(self.arrived.elapsed());
            }
            let why = match self.attempt(lease).await {
                Attempt::Done | Attempt::Abandoned => return,
                Attempt::Again(why) => {
                    lost += 1;
                    counters.replaced.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(model = %self.generation.model, reason = %why, "worker lost before the first token; placing the request again");
                    why
                }
                Attempt::Requeued(why) => {
                    handed_back += 1;
                    tracing::info!(model = %self.generation.model, reason = %why, "request handed back before its first token; queued again");
                    why
                }
            };
            if lost >= PLACEMENTS || handed_back >= REQUEUES {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                self.emit(Event::Failed {
                    message: if lost >= PLACEMENTS {
                        format!("the request lost its worker {PLACEMENTS} times; last: {why}")
                    } else {
                        format!("the request was handed back by {REQUEUES} workers being removed")
                    },
                });
                return;
            }
            let prompt = Arc::new(self.generation.prompt.clone());
            admission = match self.gateway.router.admit(&self.generation.model, prompt) {
                Ok(a) => a,
                Err(r) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    let message = match refusal(r) {
                        AdmitError::Busy(m) | AdmitError::Unavailable(m) => m,
                    };
                    self.emit(Event::Failed {
                        message: format!("{why}; and then: {message}"),
                    });
                    return;
                }
            };
        }
    }

    async fn attempt(&self, lease: router::Lease) -> Attempt {
        let g = self.generation;
        let counters = self.counters;
        let request = self.gateway.request_id();
        let worker = Arc::clone(&lease.worker);
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let submit = Submit {
            request,
            prompt: g.prompt.clone(),
            sampling: g.sampling.clone(),
            max_tokens: g.max_tokens,
            stop_tokens: g.stop_tokens.clone(),
            banned_tokens: g.banned_tokens.clone(),
            min_tokens: g.min_tokens,
            logprobs: g.logprobs,
        };
        if let Err(e) = worker.submit(submit, events_tx) {
            return Attempt::Again(e);
        }
        if !self.emit(Event::Placed {
            worker: worker.id.clone(),
        }) {
            worker.cancel(request);
        }
        let tokenizer = self.text.tokenizer();
        let mut decoder = StreamDecoder::new(tokenizer, false, false);
        let mut stops = StopMatcher::new(g.stop_strings.clone());
        let mut generated: Vec<u32> = Vec::new();
        let mut stopped_by_string = false;
        let mut cancelled: Option<Instant> = None;
        let mut last_token: Option<Instant> = None;
        loop {
            let grace = cancelled.map(|at| CANCEL_GRACE.saturating_sub(at.elapsed()));
            let event = tokio::select! {
                event = events.recv() => event,
                () = self.out.closed(), if cancelled.is_none() => {
                    worker.cancel(request);
                    cancelled = Some(Instant::now());
                    counters.cancelled.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                () = tokio::time::sleep(grace.unwrap_or(CANCEL_GRACE)), if grace.is_some() => {
                    // The worker never confirmed; its supervisor will notice if it is stuck.
                    worker.forget(request);
                    return Attempt::Abandoned;
                }
            };
            let event =
                event.unwrap_or_else(|| WorkerEvent::Lost("the worker's link closed".into()));
            match event {
                WorkerEvent::Token(t) => {
                    let now = Instant::now();
                    match last_token {
                        None => counters.ttft.observe(now - self.arrived),
                        Some(at) => counters.inter_token.observe(now - at),
                    }
                    last_token = Some(now);
                    generated.push(t.token);
                    if stopped_by_string || cancelled.is_some() {
                        continue;
                    }
                    let piece = decoder.push(t.token).unwrap_or_default();
                    let released = stops.push(&piece);
                    let tokens = match (g.logprobs, t.logprob) {
                        (Some(_), Some(logprob)) => vec![self.token_info(t.token, logprob, &t.top)],
                        _ => Vec::new(),
                    };
                    if released.stopped {
                        stopped_by_string = true;
                        worker.cancel(request);
                    }
                    if (!released.text.is_empty() || !tokens.is_empty())
                        && !self.emit(Event::Text {
                            text: released.text,
                            tokens,
                        })
                    {
                        // Gone, or too slow: its buffer is full. Either way, stop computing.
                        worker.cancel(request);
                        cancelled = Some(Instant::now());
                        counters.cancelled.fetch_add(1, Ordering::Relaxed);
                    }
                }
                WorkerEvent::Finished(f) => {
                    let usage = Usage {
                        prompt_tokens: f.prompt_tokens,
                        completion_tokens: f.completion_tokens,
                        cached_tokens: f.cached_tokens,
                    };
                    let mut sequence = g.prompt.clone();
                    sequence.extend_from_slice(&generated);
                    let finish = match f.reason {
                        FinishReason::Stop => Some(Finish::Stop),
                        FinishReason::Length => Some(Finish::Length),
                        FinishReason::Cancelled if stopped_by_string => Some(Finish::Stop),
                        FinishReason::Cancelled => None,
                        FinishReason::Error(e) => {
                            counters.failed.fetch_add(1, Ordering::Relaxed);
                            self.emit(Event::Failed {
                                message: format!("worker {}: {e}", worker.id),
                            });
                            return Attempt::Done;
                        }
                    };
                    self.gateway.router.remember(&g.model, &worker, sequence);
                    counters
                        .prompt_tokens
                        .fetch_add(u64::from(usage.prompt_tokens), Ordering::Relaxed);
                    counters
                        .generation_tokens
                        .fetch_add(u64::from(usage.completion_tokens), Ordering::Relaxed);
                    counters
                        .cached_tokens
                        .fetch_add(u64::from(usage.cached_tokens), Ordering::Relaxed);
                    let Some(finish) = finish else {
                        return Attempt::Abandoned;
                    };
                    match finish {
                        Finish::Stop => counters.finished_stop.fetch_add(1, Ordering::Relaxed),
                        Finish::Length => counters.finished_length.fetch_add(1, Ordering::Relaxed),
                    };
                    counters.e2e.observe(self.arrived.elapsed());
                    if !stopped_by_string {
                        let mut rest = decoder.finish();
                        rest = stops.push(&rest).text;
                        rest.push_str(&stops.finish());
                        if !rest.is_empty() {
                            self.emit(Event::Text {
                                text: rest,
                                tokens: Vec::new(),
                            });
                        }
                    }
                    self.emit(Event::Done {
                        finish,
                        usage,
                        worker: worker.id.clone(),
                    });
                    return Attempt::Done;
                }
                WorkerEvent::Requeued(why) => {
                    if cancelled.is_some() {
                        return Attempt::Abandoned;
                    }
                    return Attempt::Requeued(format!("worker {}: {why}", worker.id));
                }
                WorkerEvent::Lost(why) => {
                    if cancelled.is_some() {
                        return Attempt::Abandoned;
                    }
                    if generated.is_empty() {
                        return Attempt::Again(format!("worker {}: {why}", worker.id));
                    }
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    self.emit(Event::Failed {
                        message: format!(
                            "worker {} went away after {} tokens: {why}",
                            worker.id,
                            generated.len()
                        ),
                    });
                    return Attempt::Done;
                }
            }
        }
    }

    fn token_info(
        &self,
        token: u32,
        logprob: f32,
        top: &[modelhost_protocol::wire::TokenLogprob],
    ) -> TokenInfo {
        let piece = |id: u32| {
            let bytes = self
                .text
                .tokenizer()
                .piece(id, true)
                .map(<[u8]>::to_vec)
                .unwrap_or_default();
            (String::from_utf8_lossy(&bytes).into_owned(), bytes)
        };
        let (text, bytes) = piece(token);
        TokenInfo {
            token,
            text,
            bytes,
            logprob,
            top: top
                .iter()
                .map(|t| {
                    let (text, bytes) = piece(t.token);
                    (text, bytes, t.logprob)
                })
                .collect(),
        }
    }
}
