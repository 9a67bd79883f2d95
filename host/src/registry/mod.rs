//! The model registry: every loaded model, its mapping, its state and its load job.
//!
//! A load validates synchronously (open, map, parse: milliseconds) so that bad input is refused
//! in the response; copying, prefaulting and locking then run on a thread of their own, reported
//! on the event stream. The same file loaded twice under two names shares one mapping.

mod load;
mod scale;
mod workers;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub use load::LoadError;
pub use scale::{ScaleError, MAX_WORKERS};
pub use workers::{planned_workers, JoinError};

use crate::api::Event;
use crate::api::{LayerSummary, MlockMode, ModelInfo, ModelState, Residency};
use crate::events::EventBus;
use crate::model_file::{FileIdentity, MappedModel};
use crate::pages;
use modelhost_protocol::gguf::{HyperParams, SplitSummary};
use modelhost_protocol::manifest::ModelManifest;
use modelhost_protocol::placement::Plan;
use modelhost_protocol::wire::FileCheck;
use modelhost_text::ModelText;

use crate::supervisor::WorkerHandle;

/// What is derived from a parse once, so the mapping need not be parsed again to describe it.
#[derive(Debug, Clone)]
struct Summary {
    architecture: Option<String>,
    hyper_params: Option<HyperParams>,
    tensor_count: u64,
    file_bytes: u64,
    split: Option<SplitSummary>,
    layers: Vec<LayerSummary>,
    /// For placement and the workers; `None` when the hyper-parameters are unreadable.
    manifest: Option<Arc<ModelManifest>>,
    /// For each shard, in shard order: which mapped file holds it, and what workers check.
    shards: Vec<(usize, FileCheck)>,
}

struct Entry {
    name: String,
    path: PathBuf,
    mapping: Arc<MappedModel>,
    identity: FileIdentity,
    summary: Summary,
    /// The tokenizer and chat template, or why the vocabulary cannot be used: built on a
    /// thread beside the load.
    text: Arc<TextCell>,
    state: ModelState,
    error: Option<String>,
    warnings: Vec<String>,
    copy: bool,
    prefault: bool,
    mlock: MlockMode,
    locked: bool,
    shares_mapping_with: Option<String>,
    plan: Option<Plan>,
    /// The placement options the model was loaded with, for workers that join later.
    placement: modelhost_protocol::placement::PlanOptions,
    spawn_workers: bool,
    /// The devices the workers were planned for, one per worker, as given (`cpu`, `cuda:0`),
    /// kept in step by scaling.
    devices: Vec<String>,
    /// The index the next spawned worker's id takes.
    next_worker: u32,
    /// Whether CPU workers start while the pages are still being read.
    serve_while_loading: bool,
    /// Whether the plan's workers have been started (during the load, or after it).
    workers_started: bool,
    worker_options: modelhost_protocol::wire::WorkerOptions,
    workers: Vec<Arc<WorkerHandle>>,
    cancel: Arc<AtomicBool>,
    started: Instant,
    loaded_at: u64,
    load_ms: Option<u64>,
}

/// Why an unload was refused.
#[derive(Debug, thiserror::Error)]
pub enum UnloadError {
    #[error("no model named {0:?}")]
    NotFound(String),
    #[error(
        "model {name:?} has {workers} worker(s) attached; stop them first or unload with force"
    )]
    InUse { name: String, workers: u32 },
}

/// A model as the gateway sees it.
pub struct Serving {
    pub text: Arc<ModelText>,
    /// Tokens each sequence slot holds (the plan's context), when the model has a plan.
    pub context: Option<u32>,
    /// Sequence slots per worker.
    pub slots: Option<u32>,
    pub workers: Vec<Arc<WorkerHandle>>,
}

/// Why a model's tokenizer cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("no model named {0:?}")]
    NotFound(String),
    #[error("model {name:?} has no usable vocabulary: {reason}")]
    Unavailable { name: String, reason: String },
}

/// Policy that SIGHUP can change.
#[derive(Debug, Clone)]
pub struct Policy {
    /// When not empty, loads must come from inside these (normalized, absolute) directories.
    pub model_dirs: Vec<PathBuf>,
    /// The limit on a CUDA device query at load time.
    pub device_query_timeout: std::time::Duration,
    /// How long a spawned worker has to say Hello.
    pub worker_start_timeout: std::time::Duration,
    /// How long a worker may be silent after its Hello before it is killed.
    pub worker_heartbeat_timeout: std::time::Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            model_dirs: Vec::new(),
            device_query_timeout: std::time::Duration::from_secs(20),
            worker_start_timeout: std::time::Duration::from_secs(20),
            worker_heartbeat_timeout: std::time::Duration::from_secs(3),
        }
    }
}

/// All loaded models.
pub struct Registry {
    models: Mutex<BTreeMap<String, Entry>>,
    /// Bumped on every change of a model's presence or state, so cached views know they are stale.
    generation: std::sync::atomic::AtomicU64,
    events: Arc<EventBus>,
    policy: RwLock<Policy>,
    /// Held by a scale, so that two do not count the same workers.
    scaling: Mutex<()>,
}

impl Registry {
    pub fn new(events: Arc<EventBus>, policy: Policy) -> Arc<Registry> {
        Arc::new(Registry {
            models: Mutex::new(BTreeMap::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
            events,
            policy: RwLock::new(policy),
            scaling: Mutex::new(()),
        })
    }

    pub fn events(&self) -> &Arc<EventBus> {
        &self.events
    }

    pub fn set_policy(&self, policy: Policy) {
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = policy;
    }

    fn policy(&self) -> Policy {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes whenever a model is registered, finishes loading, or is unloaded.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    pub(crate) fn changed(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.models.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every model, by name.
    pub fn list(&self) -> Vec<ModelInfo> {
        // Snapshot under the lock; mincore and /proc reads happen after it is released, so a
        // slow residency scan never stalls loads or other requests.
        let snapshots: Vec<Snapshot> = self.lock().values().map(snapshot).collect();
        snapshots.into_iter().map(Snapshot::finish).collect()
    }

    /// One model.
    pub fn get(&self, name: &str) -> Option<ModelInfo> {
        let snapshot = self.lock().get(name).map(snapshot);
        snapshot.map(Snapshot::finish)
    }

    /// A model's tokenizer and chat template.
    pub fn text(&self, name: &str) -> Result<Arc<ModelText>, TextError> {
        let models = self.lock();
        let e = models
            .get(name)
            .ok_or_else(|| TextError::NotFound(name.to_owned()))?;
        let cell = Arc::clone(&e.text);
        drop(models);
        cell.wait().map_err(|reason| TextError::Unavailable {
            name: name.to_owned(),
            reason,
        })
    }

    /// What the gateway needs to serve a model: its text side, each slot's context, and its
    /// workers (the router asks each whether it is ready and computes).
    pub fn serving(&self, name: &str) -> Result<Serving, TextError> {
        let models = self.lock();
        let e = models
            .get(name)
            .ok_or_else(|| TextError::NotFound(name.to_owned()))?;
        let cell = Arc::clone(&e.text);
        let (context, slots, workers) = (
            e.plan.as_ref().map(|p| p.context_length),
            e.plan.as_ref().map(|p| p.parallel),
            e.workers.clone(),
        );
        drop(models);
        let text = cell.wait().map_err(|reason| TextError::Unavailable {
            name: name.to_owned(),
            reason,
        })?;
        Ok(Serving {
            text,
            context,
            slots,
            workers,
        })
    }

    /// A model's worker slots, for the router.
    pub fn workers_of(&self, name: &str) -> Vec<Arc<WorkerHandle>> {
        self.lock()
            .get(name)
            .map(|e| e.workers.clone())
            .unwrap_or_default()
    }

    /// Whether the model is still loading and will spawn workers when its pages are ready: a
    /// request for it waits rather than being refused.
    pub fn workers_coming(&self, name: &str) -> bool {
        self.lock()
            .get(name)
            .is_some_and(|e| e.state == ModelState::Loading && e.spawn_workers && e.plan.is_some())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }

    /// Unloads a model. Its pages are released when the last user of its mapping lets go.
    pub fn unload(&self, name: &str, force: bool) -> Result<(), UnloadError> {
        let mut models = self.lock();
        let entry = models
            .get(name)
            .ok_or_else(|| UnloadError::NotFound(name.to_owned()))?;
        let live = entry.workers.iter().filter(|w| w.alive()).count() as u32;
        if live > 0 && !force {
            return Err(UnloadError::InUse {
                name: name.to_owned(),
                workers: live,
            });
        }
        let removed = models.remove(name);
        drop(models);
        self.changed();
        if let Some(entry) = removed {
            // Stops a load job still copying or prefaulting this model.
            entry.cancel.store(true, Ordering::Relaxed);
            for worker in &entry.workers {
                worker.stop(std::time::Duration::from_secs(2));
            }
        }
        tracing::info!(model = name, "unloaded");
        self.events.publish(Event::ModelUnloaded {
            model: name.to_owned(),
        });
        Ok(())
    }

    /// Unloads everything (shutdown).
    pub fn unload_all(&self) {
        let names: Vec<String> = self.lock().keys().cloned().collect();
        for name in names {
            let _ = self.unload(&name, true);
        }
    }

    /// Totals over all models: (count, ready, mapped bytes, resident bytes). A mapping that two
    /// names share counts once.
    pub fn totals(&self) -> (usize, usize, u64, u64) {
        let (count, ready, mappings) = {
            let models = self.lock();
            let ready = models
                .values()
                .filter(|e| e.state == ModelState::Ready)
                .count();
            let mappings: Vec<(Arc<MappedModel>, bool)> = models
                .values()
                .filter(|e| e.shares_mapping_with.is_none())
                .map(|e| (Arc::clone(&e.mapping), e.locked))
                .collect();
            (models.len(), ready, mappings)
        };
        let (mapped, resident) = mappings
            .iter()
            .map(|(m, locked)| residency(m, *locked))
            .fold((0, 0), |(m, r), x| {
                (m + x.mapped_bytes, r + x.resident_bytes)
            });
        (count, ready, mapped, resident)
    }
}

/// A model's description taken under the registry lock, finished (residency, worker memory)
/// after it is released.
struct Snapshot {
    info: ModelInfo,
    text: Arc<TextCell>,
    mapping: Arc<MappedModel>,
    locked: bool,
    workers: Vec<Arc<WorkerHandle>>,
}

impl Snapshot {
    fn finish(mut self) -> ModelInfo {
        // A status never waits for the tokenizer (tens of milliseconds into a load).
        self.text.describe(&mut self.info);
        self.info.residency = residency(&self.mapping, self.locked);
        self.info.workers = self.workers.iter().map(|w| w.info()).collect();
        self.info.serving_while_loading = self.info.state == ModelState::Loading
            && self.info.workers.iter().any(|w| w.computes());
        self.info
    }
}

fn residency(mapping: &MappedModel, locked: bool) -> Residency {
    let mut r = Residency::default();
    for f in mapping.files() {
        if let Some(map) = f.mapping() {
            r.mapped_bytes += map.len() as u64;
            r.resident_bytes += pages::resident_bytes(map).unwrap_or(0);
        }
    }
    if locked {
        r.locked_bytes = r.mapped_bytes;
    }
    r
}

fn snapshot(e: &Entry) -> Snapshot {
    Snapshot {
        info: info(e),
        text: Arc::clone(&e.text),
        mapping: Arc::clone(&e.mapping),
        locked: e.locked,
        workers: e.workers.clone(),
    }
}

/// A model's cheap fields; residency and worker memory are filled in by [`Snapshot::finish`].
fn info(e: &Entry) -> ModelInfo {
    ModelInfo {
        name: e.name.clone(),
        path: e.path.clone(),
        files: e.mapping.paths().map(PathBuf::from).collect(),
        state: e.state,
        serving_while_loading: false,
        error: e.error.clone(),
        warnings: e.warnings.clone(),
        architecture: e.summary.architecture.clone(),
        hyper_params: e.summary.hyper_params.clone(),
        tensor_count: e.summary.tensor_count,
        file_bytes: e.summary.file_bytes,
        split: e.summary.split.clone(),
        copy: e.copy,
        prefault: e.prefault,
        mlock: e.mlock,
        shares_mapping_with: e.shares_mapping_with.clone(),
        residency: Residency::default(),
        workers: Vec::new(),
        loaded_at: e.loaded_at,
        load_ms: e.load_ms,
        layers: e.summary.layers.clone(),
        plan: e.plan.clone(),
        text: None,
        text_error: None,
    }
}

/// A model's tokenizer and chat template, built once on a thread of its own: the load spawns
/// its workers while the vocabulary is parsed (65 ms for gemma's 262,144 tokens), and a request
/// that needs the text before then waits for it.
pub(crate) struct TextCell(std::sync::OnceLock<Result<Arc<ModelText>, String>>);

impl TextCell {
    /// A cell that `build` fills on a new thread (or at once, if no thread can start).
    fn building(
        name: String,
        build: impl FnOnce() -> Result<Arc<ModelText>, String> + Send + 'static,
    ) -> Arc<TextCell> {
        let cell = Arc::new(TextCell(std::sync::OnceLock::new()));
        let filled = Arc::clone(&cell);
        let slot = Arc::new(Mutex::new(Some(build)));
        let from_thread = Arc::clone(&slot);
        let spawned = std::thread::Builder::new()
            .name(format!("text-{name}"))
            .spawn(move || {
                let build = from_thread.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(build) = build {
                    // A panic here would leave every waiter blocked: it becomes the error.
                    let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(build))
                        .unwrap_or_else(|_| Err("the tokenizer's build panicked".to_owned()));
                    let _ = filled.0.set(built);
                }
            });
        if spawned.is_err() {
            let build = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(build) = build {
                let _ = cell.0.set(build());
            }
        }
        cell
    }

    /// The tokenizer, or why there is none, once built.
    fn wait(&self) -> Result<Arc<ModelText>, String> {
        self.0.wait().clone()
    }

    /// Sets `info`'s tokenizer summary, or why there is none, once built; while it is being
    /// built, neither (nothing waits for it).
    fn describe(&self, info: &mut ModelInfo) {
        match self.0.get() {
            Some(Ok(t)) => info.text = Some(t.summary()),
            Some(Err(e)) => info.text_error = Some(e.clone()),
            None => {}
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
