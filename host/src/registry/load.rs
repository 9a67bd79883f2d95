//! Loading: validate and map synchronously, then copy, prefault and lock on a job thread.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use modelhost_protocol::gguf::HyperParams;
use modelhost_protocol::layers::{layer_regions, read_order, PageSize};
use modelhost_protocol::manifest::ModelManifest;
use modelhost_protocol::placement::{plan, Plan, PlanError, PlanOptions};
use modelhost_protocol::progress::ProgressThrottle;
use modelhost_protocol::wire::{checksum64, FileCheck};
use modelhost_text::ModelText;

use super::{info, unix_now, Entry, Registry, Summary, TextCell};
use crate::api::{Event, LayerSummary, LoadRequest, MlockMode, ModelInfo, ModelState, Phase};
use crate::config::normalize;
use crate::model_file::{MappedModel, OpenError};
use crate::pages;
use crate::placement::{device_specs, host_available, PlacementError};

/// Why a load was refused before it started.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid model name {0:?}: use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'")]
    InvalidName(String),
    #[error("model path {0:?} must be absolute")]
    RelativePath(PathBuf),
    #[error("{path} is outside the allowed model directories ({allowed})")]
    NotAllowed { path: PathBuf, allowed: String },
    #[error("a model named {0:?} is already loaded")]
    Duplicate(String),
    #[error(transparent)]
    Placement(#[from] PlacementError),
    #[error("placement: {0}")]
    Plan(#[from] PlanError),
    #[error("placement needs the model's hyper-parameters: {0}")]
    NoManifest(String),
    #[error("spawn_workers needs devices to plan for")]
    WorkersWithoutDevices,
    /// Boxed: an open error carries paths and a parse error, and loads return `LoadError` often.
    #[error(transparent)]
    Open(Box<OpenError>),
}

impl From<OpenError> for LoadError {
    fn from(e: OpenError) -> LoadError {
        LoadError::Open(Box::new(e))
    }
}

const MAX_NAME_LEN: usize = 64;

/// Model names become URL path segments and log fields: keep them plain.
fn validate_name(name: &str) -> Result<(), LoadError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(LoadError::InvalidName(name.to_owned()))
    }
}

/// The default name: the file name without `.gguf` (and without a shard suffix).
fn default_name(path: &Path) -> String {
    let stem = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("model")
        .trim_end_matches(".gguf");
    // "model-00001-of-00003" names the model, not the shard.
    match stem.rsplit_once("-of-") {
        Some((head, count)) if count.len() == 5 && head.len() > 6 => {
            let (prefix, no) = head.split_at(head.len() - 6);
            if no.starts_with('-') && no[1..].bytes().all(|b| b.is_ascii_digit()) {
                return prefix.to_owned();
            }
            stem.to_owned()
        }
        _ => stem.to_owned(),
    }
}

/// The model's tokenizer and chat template. A vocabulary that cannot be used does not stop the
/// load: the model is still mapped and shared, and text requests get the reason.
fn model_text(mapped: &MappedModel, name: &str) -> Result<Arc<ModelText>, String> {
    let started = Instant::now();
    let text = mapped
        .model()
        .map_err(|e| e.to_string())
        .and_then(|m| ModelText::from_gguf(m.metadata()).map_err(|e| e.to_string()));
    match &text {
        Ok(t) => {
            let s = t.summary();
            tracing::info!(
                model = %name,
                vocabulary = %s.vocabulary,
                tokens = s.tokens,
                chat_template = %s.chat_template,
                ms = started.elapsed().as_millis() as u64,
                "tokenizer ready"
            );
        }
        Err(e) => {
            tracing::warn!(model = %name, error = %e, "no tokenizer: text requests will be refused")
        }
    }
    text.map(Arc::new)
}

/// The order to read a model's pages in: as a first forward pass needs them (the manifest's
/// regions, `read_order`), then every file not named by a shard; file order when there is no
/// manifest.
fn read_plan(summary: &Summary, mapped: &MappedModel) -> pages::ReadPlan {
    let Some(manifest) = summary.manifest.as_ref() else {
        return pages::file_order(mapped);
    };
    let lens: Vec<usize> = mapped
        .files()
        .iter()
        .map(|f| f.mapping().map_or(0, |m| m.len()))
        .collect();
    let shard_lens: Vec<u64> = summary
        .shards
        .iter()
        .map(|(file, _)| lens.get(*file).copied().unwrap_or(0) as u64)
        .collect();
    let page = PageSize::new(pages::page_size() as u64).unwrap_or(PageSize::FOUR_KIB);
    let mut plan: pages::ReadPlan = read_order(&manifest.regions, &shard_lens, page)
        .into_iter()
        .filter_map(|e| {
            let (file, _) = summary.shards.get(e.shard as usize)?;
            Some((*file, e.start as usize..e.end as usize))
        })
        .collect();
    for (file, len) in lens.iter().enumerate() {
        if !summary.shards.iter().any(|(f, _)| *f == file) {
            plan.push((file, 0..*len));
        }
    }
    plan
}

fn summarize(mapped: &MappedModel) -> Result<Summary, OpenError> {
    let model = mapped.model()?;
    // Workers get the files in shard order, the order the manifest's extents number them.
    let shards = model
        .shards()
        .iter()
        .map(|shard| {
            let index = mapped
                .files()
                .iter()
                .position(|f| f.path().display().to_string() == shard.label)
                .unwrap_or(0);
            let header = shard.file.header_bytes();
            let check = FileCheck {
                len: shard.file.file_len(),
                header_len: header.len() as u64,
                header_hash: checksum64(header),
            };
            (index, check)
        })
        .collect();
    let meta = model.metadata();
    let page = PageSize::new(pages::page_size() as u64).unwrap_or(PageSize::FOUR_KIB);
    let manifest = ModelManifest::from_model(&model, page).ok().map(Arc::new);
    Ok(Summary {
        manifest,
        shards,
        architecture: meta.architecture().ok().map(str::to_owned),
        hyper_params: HyperParams::from_gguf(meta).ok(),
        tensor_count: model.tensor_count(),
        file_bytes: model.file_bytes(),
        split: model.split_summary(),
        layers: layer_regions(&model, page)
            .into_iter()
            .map(|r| LayerSummary {
                name: r.group.to_string(),
                tensor_count: r.tensors.len(),
                tensor_bytes: r.tensor_bytes,
                mapped_bytes: r.mapped_bytes(),
            })
            .collect(),
    })
}

struct Job {
    name: String,
    mapping: Arc<MappedModel>,
    /// The order the prefault reads the pages in.
    read_plan: pages::ReadPlan,
    copy: bool,
    prefault: bool,
    mlock: MlockMode,
    cancel: Arc<AtomicBool>,
}

impl Registry {
    fn check_allowed(&self, path: &Path) -> Result<(), LoadError> {
        let dirs = self.policy().model_dirs;
        if dirs.is_empty() || dirs.iter().any(|d| path.starts_with(d)) {
            return Ok(());
        }
        Err(LoadError::NotAllowed {
            path: path.to_owned(),
            allowed: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// Validates, maps and registers a model, and starts its copy/prefault/lock job. Returns the
    /// model as registered: `loading` while the job runs, else `ready`.
    pub fn load(self: &Arc<Self>, req: LoadRequest) -> Result<ModelInfo, LoadError> {
        let started = Instant::now();
        let name = req.name.clone().unwrap_or_else(|| default_name(&req.path));
        validate_name(&name)?;
        if req.spawn_workers && req.devices.is_empty() {
            return Err(LoadError::WorkersWithoutDevices);
        }
        if !req.path.is_absolute() {
            return Err(LoadError::RelativePath(req.path));
        }
        // Validated once, here, whether or not devices are given: the options are kept for
        // workers that join later, and a bad one must be refused, not replaced by a default.
        let placement = req.placement.options().map_err(PlacementError::from)?;
        // Check the allow-list before touching the filesystem, so refusals reveal nothing about
        // what exists outside it; check again after resolving symlinks.
        let lexical = normalize(&req.path);
        self.check_allowed(&lexical)?;
        if self.contains(&name) {
            return Err(LoadError::Duplicate(name));
        }
        let canonical = std::fs::canonicalize(&lexical).map_err(|source| OpenError::Io {
            path: lexical.clone(),
            source,
        })?;
        self.check_allowed(&canonical)?;

        let fresh = Arc::new(MappedModel::open(&canonical)?);
        let summary = summarize(&fresh)?;
        let read_plan = read_plan(&summary, &fresh);
        if req.prefault && !req.copy {
            // The disk starts on the weights now, in the order a first forward pass reads them,
            // while the vocabulary is parsed and the workers start; the prefault then finds the
            // pages read or in flight.
            pages::read_ahead_in_background(Arc::clone(&fresh), read_plan.clone());
        }
        let plan = self.plan_for(&req, &placement, &summary, &fresh)?;
        let identity = fresh.files()[0].identity();
        // One tokenizer per file: a second name for the same file shares the first's.
        let known = self
            .lock()
            .values()
            .find(|e| e.identity == identity)
            .map(|e| e.text.clone());
        // Built on a thread of its own, so the workers below start while the vocabulary is
        // parsed; the response to this request waits for it at the end.
        let text = known.unwrap_or_else(|| {
            let (mapped, model) = (Arc::clone(&fresh), name.clone());
            TextCell::building(name.clone(), move || model_text(&mapped, &model))
        });
        let cancel = Arc::new(AtomicBool::new(false));
        let needs_job = req.copy || req.prefault || req.mlock != MlockMode::Off;

        let mut models = self.lock();
        if models.contains_key(&name) {
            return Err(LoadError::Duplicate(name));
        }
        // The same file in the same mode shares one mapping, so its pages are mapped once.
        let shared = models
            .values()
            .find(|e| e.identity == identity && e.copy == req.copy && e.state != ModelState::Failed)
            .map(|e| (e.name.clone(), Arc::clone(&e.mapping)));
        let (mapping, shares_mapping_with) = match shared {
            Some((other, mapping)) => (mapping, Some(other)),
            None => (fresh, None),
        };
        let state = if needs_job {
            ModelState::Loading
        } else {
            ModelState::Ready
        };
        let entry = Entry {
            name: name.clone(),
            path: canonical,
            mapping: Arc::clone(&mapping),
            identity,
            summary,
            text,
            state,
            error: None,
            warnings: Vec::new(),
            copy: req.copy,
            prefault: req.prefault,
            mlock: req.mlock,
            locked: false,
            shares_mapping_with,
            plan,
            placement,
            spawn_workers: req.spawn_workers,
            devices: req.devices.clone(),
            next_worker: 0,
            serve_while_loading: req.serve_while_loading,
            workers_started: false,
            worker_options: req.worker_options.clone(),
            workers: Vec::new(),
            cancel: Arc::clone(&cancel),
            started,
            loaded_at: unix_now(),
            load_ms: (!needs_job).then(|| started.elapsed().as_millis() as u64),
        };
        let mut registered = info(&entry);
        let text_cell = Arc::clone(&entry.text);
        models.insert(name.clone(), entry);
        drop(models);
        self.changed();

        tracing::info!(model = %name, path = %registered.path.display(), bytes = registered.file_bytes, ?state, "model registered");
        self.events.publish(Event::ModelState {
            model: name.clone(),
            state,
            error: None,
        });
        if !needs_job {
            self.spawn_workers(&name, false);
        }
        if needs_job {
            let job = Job {
                name: name.clone(),
                mapping,
                read_plan,
                copy: req.copy,
                prefault: req.prefault,
                mlock: req.mlock,
                cancel,
            };
            let registry = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name(format!("load-{name}"))
                .spawn(move || registry.run_job(job));
            if let Err(e) = spawned {
                self.finish(
                    &name,
                    None,
                    Err(format!("cannot start the load thread: {e}")),
                    false,
                    Vec::new(),
                );
            }
        }
        // The reply does not wait for the tokenizer, as it does not wait for the pages: a
        // request that needs it waits instead (`Registry::text`).
        text_cell.describe(&mut registered);
        Ok(registered)
    }

    /// Plans the placement when the request names devices, with the same planner as
    /// `modelhost plan`.
    fn plan_for(
        &self,
        req: &LoadRequest,
        options: &PlanOptions,
        summary: &Summary,
        mapped: &MappedModel,
    ) -> Result<Option<Plan>, LoadError> {
        if req.devices.is_empty() {
            return Ok(None);
        }
        let manifest = summary.manifest.as_ref().ok_or_else(|| {
            LoadError::NoManifest(
                summary
                    .architecture
                    .clone()
                    .unwrap_or_else(|| "no general.architecture".into()),
            )
        })?;
        let devices = device_specs(&req.devices, self.policy().device_query_timeout)?;
        let options = PlanOptions {
            host_available_bytes: host_available(&devices, mapped)?,
            ..options.clone()
        };
        Ok(Some(plan(manifest, &devices, &options)?))
    }

    fn progress(
        &self,
        name: &str,
        phase: Phase,
        done: u64,
        total: u64,
        throttle: &mut ProgressThrottle,
    ) {
        if throttle.due(Instant::now(), done >= total) {
            self.events.publish(Event::Progress {
                model: name.to_owned(),
                phase,
                done_bytes: done,
                total_bytes: total,
            });
        }
    }

    fn run_job(self: Arc<Self>, job: Job) {
        let name = job.name.as_str();
        let cancelled = || job.cancel.load(Ordering::Relaxed);
        let total = job.mapping.total_bytes();
        let mut mapping = Arc::clone(&job.mapping);
        let mut warnings = Vec::new();

        if job.copy && !mapping.files().iter().all(|f| f.is_copy()) {
            let mut throttle = ProgressThrottle::new();
            let copied = mapping.copy_sealed(&mut |done| {
                self.progress(name, Phase::Copy, done, total, &mut throttle);
                !cancelled()
            });
            // Validate the copy itself: it, not the file on disk, is what will be served.
            let copied = copied.and_then(|c| summarize(&c).map(|_| c));
            match copied {
                Ok(c) => mapping = Arc::new(c),
                Err(e) => return self.finish(name, None, Err(e.to_string()), false, warnings),
            }
        }

        // The pages the workers will map exist now (the file, or its sealed copy): workers can
        // start while the host reads them, and serve requests meanwhile.
        if !self.publish_mapping(name, &mapping) {
            return; // unloaded meanwhile
        }
        self.spawn_workers(name, true);

        if job.prefault {
            let mut throttle = ProgressThrottle::new();
            // A sealed copy is read already; its pages come in file order.
            let plan = if job.copy {
                pages::file_order(&mapping)
            } else {
                job.read_plan.clone()
            };
            let result = pages::prefault(&mapping, &plan, &mut |done| {
                self.progress(name, Phase::Prefault, done, total, &mut throttle);
                !cancelled()
            });
            match result {
                Ok(true) => {}
                Ok(false) => return, // unloaded while prefaulting
                Err(e) => {
                    return self.finish(
                        name,
                        Some(mapping),
                        Err(format!("prefault: {e}")),
                        false,
                        warnings,
                    )
                }
            }
            if total == 0 {
                self.progress(name, Phase::Prefault, 0, 0, &mut throttle);
            }
        }

        let mut locked = false;
        if job.mlock != MlockMode::Off {
            let mut throttle = ProgressThrottle::new();
            let result = mapping
                .files()
                .iter()
                .filter_map(|f| f.mapping())
                .try_for_each(pages::lock);
            match (result, job.mlock) {
                (Ok(()), _) => {
                    locked = true;
                    self.progress(name, Phase::Lock, total, total, &mut throttle);
                }
                (Err(e), MlockMode::Try) => {
                    tracing::warn!(model = name, error = %e, "mlock failed; serving unlocked");
                    warnings.push(format!("not locked: {e}"));
                }
                (Err(e), _) => {
                    return self.finish(name, Some(mapping), Err(e.to_string()), false, warnings)
                }
            }
        }
        if cancelled() {
            return;
        }
        self.finish(name, Some(mapping), Ok(()), locked, warnings);
    }

    /// Makes `mapping` (a sealed copy, after the copy phase) the one new workers are given;
    /// false when the model was unloaded meanwhile.
    fn publish_mapping(&self, name: &str, mapping: &Arc<MappedModel>) -> bool {
        let mut models = self.lock();
        match models.get_mut(name) {
            Some(entry) if !entry.cancel.load(Ordering::Relaxed) => {
                entry.mapping = Arc::clone(mapping);
                true
            }
            _ => false,
        }
    }

    /// Records the end of a load job, unless the model was unloaded (or replaced) meanwhile.
    fn finish(
        &self,
        name: &str,
        mapping: Option<Arc<MappedModel>>,
        outcome: Result<(), String>,
        locked: bool,
        warnings: Vec<String>,
    ) {
        let mut models = self.lock();
        let Some(entry) = models.get_mut(name) else {
            return;
        };
        if entry.cancel.load(Ordering::Relaxed) {
            return;
        }
        if let Some(mapping) = mapping {
            entry.mapping = mapping;
        }
        entry.locked = locked;
        entry.warnings = warnings;
        entry.load_ms = Some(entry.started.elapsed().as_millis() as u64);
        let (state, error) = match outcome {
            Ok(()) => (ModelState::Ready, None),
            Err(e) => (ModelState::Failed, Some(e)),
        };
        entry.state = state;
        entry.error = error.clone();
        // Workers started during a load that then failed serve pages that may be unreadable.
        let stopping = if state == ModelState::Failed {
            std::mem::take(&mut entry.workers)
        } else {
            Vec::new()
        };
        drop(models);
        self.changed();
        for worker in stopping {
            worker.stop(std::time::Duration::from_secs(2));
        }
        if state == ModelState::Ready {
            self.spawn_workers(name, false);
        }
        match &error {
            None => tracing::info!(model = name, "model ready"),
            Some(e) => tracing::error!(model = name, error = %e, "model failed to load"),
        }
        self.events.publish(Event::ModelState {
            model: name.to_owned(),
            state,
            error,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain() {
        for ok in ["gemma", "gemma-3-270m_q4.k", "a"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "../etc", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_names_drop_extension_and_shard_suffix() {
        assert_eq!(
            default_name(Path::new("/m/gemma-3-270m-q4_k_m.gguf")),
            "gemma-3-270m-q4_k_m"
        );
        assert_eq!(default_name(Path::new("/m/big-00002-of-00003.gguf")), "big");
        assert_eq!(default_name(Path::new("/m/odd-of-x.gguf")), "odd-of-x");
    }
}
