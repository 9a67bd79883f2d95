//! Scaling a running model: more workers attached to the pages already in RAM, or fewer, each
//! removed worker drained first.
//!
//! Only a model whose workers the host spawned, each holding the whole model (one replica per
//! worker), can be scaled: adding "a worker" to a model split across GPUs has no one meaning,
//! and a worker that joined by itself belongs to its process manager.

use std::sync::Arc;
use std::time::{Duration, Instant};

use modelhost_protocol::placement::{plan, DeviceId, Mode, PlanError, PlanOptions};

use super::workers::{engine_spec, worker_spec, JoinError};
use super::Registry;
use crate::api::{Event, ModelState, ScaleReport, ScaleRequest};
use crate::placement::{device_specs, host_available, parse_device, PlacementError};
use crate::supervisor::{self, WorkerHandle};

/// The most workers one model may be scaled to.
pub const MAX_WORKERS: u32 = 64;
/// How long a removed worker may take to finish its answers, unless the request says.
const DEFAULT_DRAIN: Duration = Duration::from_secs(120);

/// Why a scale was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    #[error("no model named {0:?}")]
    NotFound(String),
    #[error("model {name:?} is {state}; scale it once it is ready")]
    NotReady { name: String, state: &'static str },
    #[error(
        "model {0:?} was loaded without spawned workers; workers that join by themselves are \
         scaled by their process manager"
    )]
    NotSpawned(String),
    #[error(
        "model {0:?} runs one instance across several devices; only models whose workers each \
         hold the whole model can be scaled"
    )]
    NotWholeReplicas(String),
    #[error("{requested} workers is more than the {MAX_WORKERS} one model may have")]
    TooMany { requested: u32 },
    #[error("placement: {0}")]
    Placement(#[from] PlacementError),
    #[error("the new workers do not fit: {0}")]
    Plan(#[from] PlanError),
    #[error("preparing a worker: {0}")]
    Worker(#[from] JoinError),
    #[error("cannot start a worker thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// What is read of a model, under the lock, to plan the workers to add.
struct Basis {
    manifest: Arc<modelhost_protocol::manifest::ModelManifest>,
    options: PlanOptions,
    mapping: Arc<crate::model_file::MappedModel>,
    device: String,
}

impl Registry {
    /// Runs `req.workers` workers of `name` from now on. New workers are planned for their
    /// device alone (the running ones already hold their memory) and start at once; removed
    /// ones are chosen among the least busy, newest first, and drained on a thread of their own.
    pub fn scale(
        self: &Arc<Self>,
        name: &str,
        req: &ScaleRequest,
    ) -> Result<ScaleReport, ScaleError> {
        if req.workers > MAX_WORKERS {
            return Err(ScaleError::TooMany {
                requested: req.workers,
            });
        }
        // One scale at a time, so two do not both count the same workers.
        let _scaling = self.scaling.lock().unwrap_or_else(|e| e.into_inner());
        let (running, basis) = {
            let models = self.lock();
            let entry = models
                .get(name)
                .ok_or_else(|| ScaleError::NotFound(name.to_owned()))?;
            match entry.state {
                ModelState::Ready => {}
                // Its workers already run while the pages are read: more may join them.
                ModelState::Loading if entry.workers_started => {}
                ModelState::Loading => {
                    return Err(ScaleError::NotReady {
                        name: name.to_owned(),
                        state: "still loading",
                    })
                }
                ModelState::Failed => {
                    return Err(ScaleError::NotReady {
                        name: name.to_owned(),
                        state: "failed",
                    })
                }
            }
            let Some(plan) = entry.plan.as_ref().filter(|_| entry.spawn_workers) else {
                return Err(ScaleError::NotSpawned(name.to_owned()));
            };
            if plan.assignments().len() != plan.replicas.len() {
                return Err(ScaleError::NotWholeReplicas(name.to_owned()));
            }
            let running = running(&entry.workers);
            let device = req
                .device
                .clone()
                .or_else(|| entry.devices.last().cloned())
                .unwrap_or_else(|| "cpu".into());
            let basis = entry.summary.manifest.clone().map(|manifest| Basis {
                manifest,
                options: entry.placement.clone(),
                mapping: Arc::clone(&entry.mapping),
                device,
            });
            (running, basis)
        };
        let before = running.len() as u32;
        let mut report = ScaleReport {
            model: name.to_owned(),
            workers_before: before,
            workers: req.workers,
            added: Vec::new(),
            draining: Vec::new(),
            handed_back: 0,
        };
        if req.workers > before {
            let basis = basis.ok_or_else(|| JoinError::NoManifest(name.to_owned()))?;
            report.added = self.add_workers(name, (req.workers - before) as usize, &basis)?;
        } else if req.workers < before {
            let limit = req
                .drain_timeout_ms
                .map_or(DEFAULT_DRAIN, Duration::from_millis);
            let (draining, handed_back) =
                self.remove_workers(name, &running, (before - req.workers) as usize, limit);
            report.draining = draining;
            report.handed_back = handed_back as u32;
        }
        if report.added.is_empty() && report.draining.is_empty() {
            return Ok(report);
        }
        self.changed();
        tracing::info!(
            model = name,
            before,
            workers = req.workers,
            added = ?report.added,
            draining = ?report.draining,
            handed_back = report.handed_back,
            "scaled"
        );
        self.events.publish(Event::ModelScaled {
            model: name.to_owned(),
            workers: req.workers,
            added: report.added.clone(),
            draining: report.draining.clone(),
        });
        Ok(report)
    }

    fn add_workers(
        &self,
        name: &str,
        count: usize,
        basis: &Basis,
    ) -> Result<Vec<String>, ScaleError> {
        let texts = vec![basis.device.clone(); count];
        let specs = device_specs(&texts, self.policy().device_query_timeout)?;
        let options = PlanOptions {
            mode: Mode::Replicate,
            host_available_bytes: host_available(&specs, &basis.mapping)?,
            ..basis.options.clone()
        };
        let extra = plan(&basis.manifest, &specs, &options)?;
        let assignments = extra.assignments();
        if assignments.len() != count {
            return Err(ScaleError::NotWholeReplicas(name.to_owned()));
        }
        let policy = self.policy();
        let mut models = self.lock();
        let entry = models
            .get_mut(name)
            .ok_or_else(|| ScaleError::NotFound(name.to_owned()))?;
        // Threads are shared out among every worker on the same device, the new ones included.
        let devices: Vec<DeviceId> = running(&entry.workers)
            .iter()
            .map(|w| w.device)
            .chain(assignments.iter().map(|a| a.device))
            .collect();
        let mut added = Vec::new();
        for assignment in assignments {
            let engine = engine_spec(&extra, assignment.device, &devices, &entry.worker_options);
            // Numbered after every worker the model has had, so an id never names two processes.
            let id = format!("{name}-{}", entry.next_worker);
            entry.next_worker += 1;
            let mut options = entry.worker_options.clone();
            // While the host still reads the pages, a new worker leaves that to it, as the
            // first ones did.
            options.lazy_pages |= entry.state == ModelState::Loading;
            let spec = worker_spec(entry, id.clone(), assignment, engine, options, &policy)?;
            let handle =
                supervisor::start(spec, Arc::clone(&self.events)).map_err(ScaleError::Thread)?;
            entry.workers.push(handle);
            entry.devices.push(basis.device.clone());
            added.push(id);
        }
        // The model's plan keeps counting every instance it runs, and the memory they hold.
        if let Some(plan) = entry.plan.as_mut() {
            plan.host.kv_bytes += extra.host.kv_bytes;
            plan.host.scratch_bytes += extra.host.scratch_bytes;
            plan.host.total_bytes += extra.host.kv_bytes + extra.host.scratch_bytes;
            plan.replicas.extend(extra.replicas);
        }
        Ok(added)
    }

    /// Drains `count` of `running`: the least busy first, then the newest. Returns their ids
    /// and how many requests they handed back.
    fn remove_workers(
        self: &Arc<Self>,
        name: &str,
        running: &[Arc<WorkerHandle>],
        count: usize,
        limit: Duration,
    ) -> (Vec<String>, usize) {
        let mut chosen: Vec<Arc<WorkerHandle>> = running.to_vec();
        chosen.sort_by_key(|w| (w.in_flight(), std::cmp::Reverse(index_of(name, &w.id))));
        chosen.truncate(count);
        let mut handed_back = 0;
        let mut ids = Vec::new();
        for worker in chosen {
            handed_back += worker.drain();
            ids.push(worker.id.clone());
            let (registry, model) = (Arc::clone(self), name.to_owned());
            let drain = move || registry.finish_drain(&model, &worker, limit);
            if let Err(e) = std::thread::Builder::new()
                .name("worker-drain".into())
                .spawn(drain)
            {
                tracing::error!(model = name, error = %e, "cannot start a drain thread");
            }
        }
        (ids, handed_back)
    }

    /// Waits for a draining worker's answers to end (or `limit`), stops it, and takes it and
    /// its instance out of the model.
    fn finish_drain(&self, name: &str, worker: &Arc<WorkerHandle>, limit: Duration) {
        let started = Instant::now();
        while worker.in_flight() > 0 && started.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(20));
        }
        let unfinished = worker.in_flight();
        if unfinished > 0 {
            tracing::warn!(model = name, worker = %worker.id, unfinished, "drain time is up; stopping the worker with answers unfinished");
        }
        worker.stop(Duration::from_secs(2));
        {
            let mut models = self.lock();
            if let Some(entry) = models.get_mut(name) {
                entry.workers.retain(|w| !Arc::ptr_eq(w, worker));
                let device = worker.device;
                if let Some(at) = entry
                    .devices
                    .iter()
                    .rposition(|d| parse_device(d).is_ok_and(|(id, _)| id == device))
                {
                    entry.devices.remove(at);
                }
                if let Some(plan) = entry.plan.as_mut() {
                    if let Some(at) = plan.replicas.iter().rposition(|r| r.name == device) {
                        let replica = plan.replicas.remove(at);
                        let freed = replica.cpu_kv_bytes + replica.cpu_scratch_bytes;
                        plan.host.kv_bytes =
                            plan.host.kv_bytes.saturating_sub(replica.cpu_kv_bytes);
                        plan.host.scratch_bytes = plan
                            .host
                            .scratch_bytes
                            .saturating_sub(replica.cpu_scratch_bytes);
                        plan.host.total_bytes = plan.host.total_bytes.saturating_sub(freed);
                    }
                }
            }
        }
        self.changed();
        tracing::info!(model = name, worker = %worker.id, drain_ms = started.elapsed().as_millis() as u64, "worker drained and stopped");
    }
}

/// The workers that count: spawned, alive, not being removed.
fn running(workers: &[Arc<WorkerHandle>]) -> Vec<Arc<WorkerHandle>> {
    workers
        .iter()
        .filter(|w| w.spawned && w.alive() && !w.draining())
        .cloned()
        .collect()
}

/// `gemma-3` → 3, for the model `gemma`.
fn index_of(model: &str, id: &str) -> Option<u32> {
    id.strip_prefix(model)?.strip_prefix('-')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_indexes_belong_to_their_model() {
        assert_eq!(index_of("gemma", "gemma-3"), Some(3));
        assert_eq!(index_of("gemma", "gemma-x"), None);
        assert_eq!(index_of("gemma", "gemma2-3"), None);
        assert_eq!(index_of("gemma-2", "gemma-2-0"), Some(0));
        assert_eq!(index_of("gemma", "other-1"), None);
    }
}
