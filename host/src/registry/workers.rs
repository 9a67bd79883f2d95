//! A model's workers: spawning one per assignment of its plan once its pages are ready, and
//! preparing the attach for workers that join by themselves.

use std::sync::Arc;

use modelhost_node::cpu;
use modelhost_protocol::placement::{
    plan, Assignment, DeviceId, DeviceKind, Mode, Plan, PlanError, PlanOptions,
};
use modelhost_protocol::wire::{Attach, EngineSpec, Hello, WorkerOptions};

use super::{Entry, Registry};
use crate::api::ModelState;
use crate::supervisor::{self, WorkerHandle, WorkerSpec};

/// Why a worker that connected by itself cannot serve the model it asked for.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the Hello names no model")]
    NoModel,
    #[error("no model named {0:?}")]
    UnknownModel(String),
    #[error("model {0:?} is not ready")]
    NotReady(String),
    #[error("a worker named {worker:?} is already attached to {model:?}")]
    DuplicateWorker { worker: String, model: String },
    #[error("model {0:?} has no manifest to plan from (its hyper-parameters are unreadable)")]
    NoManifest(String),
    #[error("the worker reports no inventory for its device {0}")]
    NoInventory(modelhost_protocol::placement::DeviceId),
    #[error("placement: {0}")]
    Plan(#[from] PlanError),
    #[error("the plan for the worker's device assigns it nothing")]
    NothingAssigned,
    #[error("duplicating the model's descriptors: {0}")]
    Descriptors(#[source] std::io::Error),
}

/// How many workers a model with this plan runs when the host spawns them.
pub fn planned_workers(plan: &Plan) -> usize {
    plan.assignments().len()
}

impl Registry {
    /// Starts the model's workers, one per assignment in its plan, once its pages are ready;
    /// or, with `during_load`, while the host is still reading them, when every worker is a
    /// CPU worker (which computes from the pages in place, so its first request's faults read
    /// what it needs) and the model asks for it. Runs the plan's workers once.
    pub(super) fn spawn_workers(&self, name: &str, during_load: bool) {
        let policy = self.policy();
        let mut models = self.lock();
        let Some(entry) = models.get_mut(name) else {
            return;
        };
        let (Some(plan), true, false) = (&entry.plan, entry.spawn_workers, entry.workers_started)
        else {
            return;
        };
        let assignments = plan.assignments();
        if during_load
            && !(entry.serve_while_loading && assignments.iter().all(|a| !a.device.is_gpu()))
        {
            return;
        }
        entry.workers_started = true;
        let mut options = entry.worker_options.clone();
        // The host's own prefault (or mlock) is reading the pages; a worker that read them too
        // would only be Ready once they were all in.
        options.lazy_pages |= during_load;
        let devices: Vec<DeviceId> = assignments.iter().map(|a| a.device).collect();
        let engines: Vec<EngineSpec> = assignments
            .iter()
            .map(|a| engine_spec(plan, a.device, &devices, &entry.worker_options))
            .collect();
        for (i, (assignment, engine)) in assignments.into_iter().zip(engines).enumerate() {
            let id = format!("{name}-{i}");
            let spec = match worker_spec(entry, id, assignment, engine, options.clone(), &policy) {
                Ok(spec) => spec,
                Err(e) => {
                    tracing::error!(model = name, error = %e, "cannot prepare a worker");
                    continue;
                }
            };
            entry.next_worker = entry.next_worker.max(i as u32 + 1);
            match supervisor::start(spec, Arc::clone(&self.events)) {
                Ok(handle) => entry.workers.push(handle),
                Err(e) => tracing::error!(model = name, error = %e, "cannot start a worker thread"),
            }
        }
    }

    /// Prepares the attach for a worker that connected by itself and said Hello: plans its one
    /// device (from the inventory it reports) with the model's placement options.
    pub fn external_spec(&self, hello: &Hello) -> Result<WorkerSpec, JoinError> {
        let model = hello.model.as_deref().ok_or(JoinError::NoModel)?;
        let models = self.lock();
        let entry = models
            .get(model)
            .ok_or_else(|| JoinError::UnknownModel(model.to_owned()))?;
        if entry.state != ModelState::Ready {
            return Err(JoinError::NotReady(model.to_owned()));
        }
        if entry
            .workers
            .iter()
            .any(|w| w.id == hello.worker_id && w.alive())
        {
            return Err(JoinError::DuplicateWorker {
                worker: hello.worker_id.clone(),
                model: model.to_owned(),
            });
        }
        let manifest = entry
            .summary
            .manifest
            .as_ref()
            .ok_or_else(|| JoinError::NoManifest(model.to_owned()))?;
        let device = hello
            .inventory
            .iter()
            .find(|d| d.id == hello.device)
            .cloned()
            .ok_or(JoinError::NoInventory(hello.device))?;
        let options = PlanOptions {
            mode: Mode::Replicate,
            ..entry.placement.clone()
        };
        let planned = plan(manifest, &[device], &options)?;
        let assignment = planned
            .assignments()
            .into_iter()
            .next()
            .ok_or(JoinError::NothingAssigned)?;
        let engine = engine_spec(
            &planned,
            assignment.device,
            &[assignment.device],
            &entry.worker_options,
        );
        worker_spec(
            entry,
            hello.worker_id.clone(),
            assignment,
            engine,
            entry.worker_options.clone(),
            &self.policy(),
        )
    }

    /// Tracks a worker that joined by itself.
    pub fn add_worker(&self, model: &str, handle: Arc<WorkerHandle>) {
        if let Some(entry) = self.lock().get_mut(model) {
            entry.workers.retain(|w| w.alive());
            entry.workers.push(handle);
        }
    }
}

/// How a worker on `device` sizes its engine: the plan's context, slots, batch and KV type, and
/// its compute threads: those configured, else the CPUs of its NUMA node (or of the machine)
/// shared out among the workers of `devices` on the same node, at least 1, so that four workers
/// on two cores do not fight over them.
pub fn engine_spec(
    plan: &Plan,
    device: DeviceId,
    devices: &[DeviceId],
    options: &WorkerOptions,
) -> EngineSpec {
    let threads = options.threads.filter(|t| *t > 0).unwrap_or_else(|| {
        let cpus = match (device.kind, device.index) {
            (DeviceKind::Cpu, Some(node)) => cpu::node_cpus(device, node).map_or(1, |c| c.len()),
            _ => cpu::usable_cpus(),
        };
        let sharing = devices.iter().filter(|d| **d == device).count().max(1);
        (cpus / sharing).max(1) as u32
    });
    EngineSpec {
        context: plan.context_length,
        slots: plan.parallel,
        batch: plan.batch,
        kv_type: modelhost_protocol::GgmlType::from_name(&plan.kv_type)
            .unwrap_or(modelhost_protocol::GgmlType::F16),
        swa_full: plan.swa_full,
        threads,
    }
}

/// The attach for one worker of `entry`, with its own duplicates of the model's descriptors.
pub(super) fn worker_spec(
    entry: &Entry,
    id: String,
    assignment: Assignment,
    engine: EngineSpec,
    options: WorkerOptions,
    policy: &super::Policy,
) -> Result<WorkerSpec, JoinError> {
    let manifest = entry
        .summary
        .manifest
        .as_ref()
        .ok_or_else(|| JoinError::NoManifest(entry.name.clone()))?;
    let fds = entry
        .summary
        .shards
        .iter()
        .map(|(file, _)| entry.mapping.files()[*file].fd().try_clone_to_owned())
        .collect::<Result<Vec<_>, _>>()
        .map_err(JoinError::Descriptors)?;
    Ok(WorkerSpec {
        id,
        model: entry.name.clone(),
        attach: Attach {
            model: entry.name.clone(),
            manifest: (**manifest).clone(),
            files: entry
                .summary
                .shards
                .iter()
                .map(|(_, c)| c.clone())
                .collect(),
            assignment,
            options,
            // Several heartbeats fit in a timeout, so one late beat is not a death.
            heartbeat_ms: (policy.worker_heartbeat_timeout.as_millis() / 6).clamp(50, 500) as u32,
            engine,
        },
        files: fds,
        policy: supervisor::machine::Policy {
            heartbeat_timeout: policy.worker_heartbeat_timeout,
            hello_timeout: policy.worker_start_timeout,
            ..Default::default()
        },
    })
}
