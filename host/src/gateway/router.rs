//! Which worker runs a request, and who waits.
//!
//! A request goes to a ready worker of its model with a free sequence slot. Among those, the
//! one that most recently held the longest prefix of the prompt wins (its slot may still hold
//! the prefix's KV, which the worker then reuses), then the least busy. With no free slot the
//! request waits in its model's queue, first come first served, up to a cap in requests and in
//! prompt tokens; past the cap it is refused with 429, as load is shed, not failed.
//!
//! A lease is one slot on one worker. Dropping it frees the slot and hands it to the first
//! waiter. Workers that become ready are noticed by a tick that the gateway runs.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::registry::Registry;
use crate::supervisor::WorkerHandle;

/// The limits of one model's queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_requests: usize,
    pub max_prompt_tokens: usize,
}

/// Why a request cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No worker of the model computes, and none is on its way.
    NoWorkers(String),
    /// The queue is full.
    QueueFull { requests: usize, tokens: usize },
}

/// Sequences remembered per worker for prefix affinity: about what its slots may still hold.
const HISTORY_PER_SLOT: usize = 2;

#[derive(Default)]
struct ModelQueue {
    waiters: VecDeque<Waiter>,
    queued_tokens: usize,
    /// Leases held, per worker id.
    leased: HashMap<String, u32>,
    /// Recent sequences (prompt and output) per worker id, newest last.
    history: HashMap<String, VecDeque<Arc<Vec<u32>>>>,
    /// Admission refusals, for /metrics.
    rejected: u64,
}

struct Waiter {
    prompt: Arc<Vec<u32>>,
    reply: oneshot::Sender<Lease>,
}

pub struct Router {
    registry: Arc<Registry>,
    limits: QueueLimits,
    models: Mutex<HashMap<String, ModelQueue>>,
}

/// A request that has a place: a lease now, or a place in the queue.
pub enum Admission {
    Now(Lease),
    Queued {
        model: String,
        waiting: oneshot::Receiver<Lease>,
    },
}

impl Admission {
    /// The lease, when it comes. Dropping the future leaves the queue.
    pub async fn lease(self) -> Result<Lease, Refusal> {
        match self {
            Admission::Now(lease) => Ok(lease),
            // The sender is dropped with a lease sent, or when nothing can run the request.
            Admission::Queued { model, waiting } => waiting.await.map_err(|_| {
                Refusal::NoWorkers(format!(
                    "model {model:?} has no worker left to run the request (unloaded, failed to \
                         load, or its workers gave up)"
                ))
            }),
        }
    }
}

/// One slot of one worker, held for a request.
pub struct Lease {
    router: Arc<Router>,
    model: String,
    pub worker: Arc<WorkerHandle>,
    /// Tokens the chosen worker recently held in common with the prompt (a hint; the worker
    /// reports what it really reused).
    pub affinity: usize,
    released: bool,
}

/// Queue figures for /metrics and the model's info.
#[derive(Debug, Clone, Default)]
pub struct QueueStats {
    pub waiting: usize,
    pub running: u32,
    pub rejected: u64,
}

impl Router {
    pub fn new(registry: Arc<Registry>, limits: QueueLimits) -> Arc<Router> {
        Arc::new(Router {
            registry,
            limits,
            models: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ModelQueue>> {
        self.models.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Places `prompt` on a worker of `model` at once, or in the queue, or refuses it.
    pub fn admit(
        self: &Arc<Self>,
        model: &str,
        prompt: Arc<Vec<u32>>,
    ) -> Result<Admission, Refusal> {
        let waiting = {
            let workers = self.registry.workers_of(model);
            let coming = self.registry.workers_coming(model);
            let mut models = self.lock();
            let queue = models.entry(model.to_owned()).or_default();
            if queue.waiters.is_empty() {
                if let Some((worker, affinity)) = pick(&workers, queue, &prompt) {
                    return Ok(Admission::Now(self.lease(queue, model, worker, affinity)));
                }
            }
            // Nothing can take it now. Wait only if something will: a worker that is starting
            // or restarting, or the workers of a model still loading.
            if !coming && !workers.iter().any(|w| serves(w)) {
                queue.rejected += 1;
                return Err(Refusal::NoWorkers(if workers.is_empty() {
                    format!(
                        "model {model:?} has no workers (load it with workers, scale it up, or start some)"
                    )
                } else {
                    format!(
                        "every worker of model {model:?} has stopped, failed or is being removed"
                    )
                }));
            }
            if queue.waiters.len() >= self.limits.max_requests
                || queue.queued_tokens + prompt.len() > self.limits.max_prompt_tokens
            {
                queue.rejected += 1;
                return Err(Refusal::QueueFull {
                    requests: queue.waiters.len(),
                    tokens: queue.queued_tokens,
                });
            }
            let (reply, waiting) = oneshot::channel();
            queue.queued_tokens += prompt.len();
            queue.waiters.push_back(Waiter { prompt, reply });
            waiting
        };
        // A slot freed between the check and the push would wait for the next tick; dispatch
        // now instead.
        self.dispatch(model);
        Ok(Admission::Queued {
            model: model.to_owned(),
            waiting,
        })
    }

    fn lease(
        self: &Arc<Self>,
        queue: &mut ModelQueue,
        model: &str,
        worker: Arc<WorkerHandle>,
        affinity: usize,
    ) -> Lease {
        *queue.leased.entry(worker.id.clone()).or_insert(0) += 1;
        Lease {
            router: Arc::clone(self),
            model: model.to_owned(),
            worker,
            affinity,
            released: false,
        }
    }

    /// Hands free slots to waiters, first come first served. Runs when a lease is dropped,
    /// when a request joins the queue, and on the gateway's tick (workers becoming ready).
    pub fn dispatch(self: &Arc<Self>, model: &str) {
        let workers = self.registry.workers_of(model);
        let loaded = self.registry.contains(model);
        let coming = self.registry.workers_coming(model);
        let mut models = self.lock();
        let Some(queue) = models.get_mut(model) else {
            return;
        };
        if !loaded || (!coming && !workers.iter().any(|w| serves(w))) {
            // Unloaded, failed, or its workers gave up: nothing will take the waiters, who
            // hear so when their senders drop.
            queue.waiters.clear();
            queue.queued_tokens = 0;
            return;
        }
        while let Some(front) = queue.waiters.front() {
            if front.reply.is_closed() {
                let gone = queue.waiters.pop_front().expect("front exists");
                queue.queued_tokens -= gone.prompt.len();
                continue;
            }
            let Some((worker, affinity)) = pick(&workers, queue, &front.prompt) else {
                break;
            };
            let waiter = queue.waiters.pop_front().expect("front exists");
            queue.queued_tokens -= waiter.prompt.len();
            let lease = self.lease(queue, model, worker, affinity);
            if let Err(mut unwanted) = waiter.reply.send(lease) {
                // The waiter left as we chose: give the slot back without re-entering.
                unwanted.released = true;
                release(queue, &unwanted.worker.id);
            }
        }
    }

    /// Dispatches every model with waiters (the gateway's tick).
    pub fn dispatch_all(self: &Arc<Self>) {
        let waiting: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, q)| !q.waiters.is_empty())
            .map(|(m, _)| m.clone())
            .collect();
        for model in waiting {
            self.dispatch(&model);
        }
    }

    /// Remembers what a worker's slot now holds, for the next request's affinity.
    pub fn remember(&self, model: &str, worker: &WorkerHandle, sequence: Vec<u32>) {
        let slots = worker.compute_slots().unwrap_or(1) as usize;
        let mut models = self.lock();
        let queue = models.entry(model.to_owned()).or_default();
        let history = queue.history.entry(worker.id.clone()).or_default();
        history.push_back(Arc::new(sequence));
        while history.len() > slots * HISTORY_PER_SLOT {
            history.pop_front();
        }
    }

    pub fn stats(&self, model: &str) -> QueueStats {
        self.lock()
            .get(model)
            .map(|q| QueueStats {
                waiting: q.waiters.len(),
                running: q.leased.values().sum(),
                rejected: q.rejected,
            })
            .unwrap_or_default()
    }

    /// Leases held on one worker.
    pub fn leased_on(&self, model: &str, worker: &str) -> u32 {
        self.lock()
            .get(model)
            .and_then(|q| q.leased.get(worker).copied())
            .unwrap_or(0)
    }
}

fn release(queue: &mut ModelQueue, worker: &str) {
    if let Some(n) = queue.leased.get_mut(worker) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            queue.leased.remove(worker);
        }
    }
}

/// The best worker with a free slot: the longest remembered prefix, then the fewest leases,
/// then the lowest id (so that equal choices are stable).
fn pick(
    workers: &[Arc<WorkerHandle>],
    queue: &ModelQueue,
    prompt: &[u32],
) -> Option<(Arc<WorkerHandle>, usize)> {
    workers
        .iter()
        .filter_map(|w| {
            let slots = w.compute_slots()?;
            let leased = queue.leased.get(&w.id).copied().unwrap_or(0);
            (leased < slots).then(|| {
                let affinity = queue.history.get(&w.id).map_or(0, |h| {
                    h.iter()
                        .map(|seq| common_prefix(seq, prompt))
                        .max()
                        .unwrap_or(0)
                });
                (w, affinity, leased)
            })
        })
        .max_by(|a, b| a.1.cmp(&b.1).then(b.2.cmp(&a.2)).then(b.0.id.cmp(&a.0.id)))
        .map(|(w, affinity, _)| (Arc::clone(w), affinity))
}

/// Whether a worker is running, or will be again, and is not being removed: something a
/// request may wait for.
fn serves(worker: &WorkerHandle) -> bool {
    worker.alive() && !worker.draining()
}

pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        {
            let mut models = self.router.lock();
            if let Some(queue) = models.get_mut(&self.model) {
                release(queue, &self.worker.id);
            }
        }
        self.router.dispatch(&self.model);
    }
}
