//! Models as the control API loads and shows them, and the host's status.

use std::path::PathBuf;

use modelhost_node::memory::ProcessMemory;
use modelhost_protocol::gguf::{HyperParams, SplitSummary};
use modelhost_protocol::placement::{GpuLayers, Mode, Plan, PlanOptions};
use modelhost_protocol::GgmlType;
use modelhost_text::TextSummary;
use serde::{Deserialize, Serialize};

use super::WorkerInfo;

/// Where a model is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelState {
    /// Mapped and validated; copying, prefaulting or locking is under way.
    Loading,
    /// Ready to serve.
    Ready,
    /// The load failed after validation (the copy, prefault or mlock); see `error`.
    Failed,
}

/// How `mlock` is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MlockMode {
    /// Do not lock.
    #[default]
    Off,
    /// Lock, and fail the load if the pages cannot be locked.
    On,
    /// Lock if possible; otherwise warn and go on unlocked.
    Try,
}

/// `POST /v1/models`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadRequest {
    /// An absolute path to the GGUF file (for a split model, any shard).
    pub path: PathBuf,
    /// The name to serve it under; by default the file name without `.gguf`.
    #[serde(default)]
    pub name: Option<String>,
    /// Read every page once after mapping, with progress (default true).
    #[serde(default = "default_true")]
    pub prefault: bool,
    #[serde(default)]
    pub mlock: MlockMode,
    /// Copy into a sealed memfd so that changes to the file on disk cannot reach the mapping.
    #[serde(default)]
    pub copy: bool,
    /// Devices to place the model on (cuda:N, cpu, cpu:N, each optionally =SIZE). When given,
    /// the host plans the placement at load time and refuses a model that fits nowhere.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Placement options for the plan.
    #[serde(default)]
    pub placement: PlacementRequest,
    /// Spawn one `modelhost-worker` per device in the plan once the model is ready (needs
    /// `devices`).
    #[serde(default)]
    pub spawn_workers: bool,
    /// Start CPU workers while the pages are still being read (prefault, mlock), so that
    /// requests are served during the load, the workers' page faults reading what each needs
    /// (default true). With false, workers start once the load is complete.
    #[serde(default = "default_true")]
    pub serve_while_loading: bool,
    /// How the workers attach: `mlock` their pages, `verify` (read and checksum every byte),
    /// `registered_upload` (CUDA: copy straight from the registered mapping).
    #[serde(default)]
    pub worker_options: modelhost_protocol::wire::WorkerOptions,
}

fn default_true() -> bool {
    true
}

/// Placement options as a load request or the CLI gives them; unset fields take the defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementRequest {
    /// Context length per sequence (default: the model's).
    #[serde(default)]
    pub ctx: Option<u32>,
    /// Sequences served in parallel (default 1).
    #[serde(default)]
    pub parallel: Option<u32>,
    /// KV cache type: f16 (default), f32, bf16, q8_0 or q4_0.
    #[serde(default)]
    pub kv_type: Option<String>,
    /// Blocks to offload; absent means as many as fit.
    #[serde(default)]
    pub gpu_layers: Option<u32>,
    /// Share of the offloaded blocks per GPU.
    #[serde(default)]
    pub tensor_split: Option<Vec<f64>>,
    /// split (default) or replicate.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Size sliding-window layers for the whole context (llama.cpp's swa_full).
    #[serde(default)]
    pub swa_full: bool,
}

/// A placement option that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementOptionError {
    #[error("unknown KV type {0:?}")]
    UnknownKvType(String),
}

impl PlacementRequest {
    /// The planner's options, or the first option that cannot be used.
    pub fn options(&self) -> Result<PlanOptions, PlacementOptionError> {
        let kv_type = match &self.kv_type {
            None => GgmlType::F16,
            Some(name) => GgmlType::from_name(name)
                .ok_or_else(|| PlacementOptionError::UnknownKvType(name.clone()))?,
        };
        Ok(PlanOptions {
            context_length: self.ctx,
            parallel: self.parallel.unwrap_or(1),
            kv_type,
            gpu_layers: self.gpu_layers.map_or(GpuLayers::Auto, GpuLayers::Count),
            tensor_split: self.tensor_split.clone(),
            mode: self.mode.unwrap_or_default(),
            swa_full: self.swa_full,
            ..PlanOptions::default()
        })
    }
}

/// Residency of one model's pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Residency {
    /// Bytes mapped (all files).
    pub mapped_bytes: u64,
    /// Bytes of those in RAM now, by mincore.
    pub resident_bytes: u64,
    /// Bytes locked with mlock.
    pub locked_bytes: u64,
}

/// One layer region as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerSummary {
    pub name: String,
    pub tensor_count: usize,
    pub tensor_bytes: u64,
    pub mapped_bytes: u64,
}

/// A model as `GET /v1/models/{name}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub path: PathBuf,
    pub files: Vec<PathBuf>,
    pub state: ModelState,
    /// Still loading (its pages being read), and a worker already computes: requests are
    /// served meanwhile.
    #[serde(default)]
    pub serving_while_loading: bool,
    /// Why the load failed, or a warning (an mlock fallback).
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub warnings: Vec<String>,
    pub architecture: Option<String>,
    pub hyper_params: Option<HyperParams>,
    pub tensor_count: u64,
    pub file_bytes: u64,
    pub split: Option<SplitSummary>,
    pub copy: bool,
    pub prefault: bool,
    pub mlock: MlockMode,
    /// Another loaded model whose mapping this one shares (same file, same mode).
    #[serde(default)]
    pub shares_mapping_with: Option<String>,
    pub residency: Residency,
    /// The model's workers: device, state, pid, layers, bytes, memory, restarts.
    pub workers: Vec<WorkerInfo>,
    /// Seconds since the Unix epoch when the load started, and how long it took.
    pub loaded_at: u64,
    pub load_ms: Option<u64>,
    pub layers: Vec<LayerSummary>,
    /// The placement planned at load time, when devices were given.
    #[serde(default)]
    pub plan: Option<Plan>,
    /// The model's tokenizer and chat template. It is built beside the load: for the first
    /// tens of milliseconds neither this nor `text_error` is set.
    #[serde(default)]
    pub text: Option<TextSummary>,
    /// Why the model's vocabulary cannot be used (the model still loads and shares).
    #[serde(default)]
    pub text_error: Option<String>,
}

/// `GET /v1/models`, on both listeners: OpenAI's list envelope. On the control socket each
/// entry also carries the model's whole [`ModelInfo`]; on the TCP listener only OpenAI's
/// fields and what a client of the generation API needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList<T> {
    pub object: String,
    pub data: Vec<T>,
}

/// A model in the list on the control socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListedModel {
    /// OpenAI's: the name to put in a request's `model`.
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    #[serde(flatten)]
    pub info: ModelInfo,
}

impl ListedModel {
    pub fn new(info: ModelInfo) -> ListedModel {
        ListedModel {
            id: info.name.clone(),
            object: "model".into(),
            created: info.loaded_at,
            owned_by: "modelhost".into(),
            info,
        }
    }
}

/// `POST /v1/tokenize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizeRequest {
    pub model: String,
    pub content: String,
    /// Add the BOS/EOS tokens the vocabulary asks for.
    #[serde(default)]
    pub add_special: bool,
    /// Parse control tokens written in the text; off by default, so that request text cannot
    /// inject them.
    #[serde(default)]
    pub parse_special: bool,
    /// Also return each token's text.
    #[serde(default)]
    pub with_pieces: bool,
}

/// `POST /v1/detokenize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetokenizeRequest {
    pub model: String,
    pub tokens: Vec<u32>,
    /// Render control tokens as their text.
    #[serde(default)]
    pub special: bool,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_s: u64,
    pub socket: PathBuf,
    pub models: usize,
    pub models_ready: usize,
    pub mapped_bytes: u64,
    pub resident_bytes: u64,
    pub host_memory: ProcessMemory,
}

/// An error body in OpenAI's envelope, for every route: a message for people, a stable
/// machine-readable code, OpenAI's error type, and the request field at fault if one is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub param: Option<String>,
    pub code: String,
}

#[cfg(test)]
mod tests {
    use super::LoadRequest;

    /// Found by the control_body fuzzer: a 107-digit number in tensor_split. Without correctly
    /// rounded float parsing it decoded one ULP off, and did not survive a round trip.
    #[test]
    fn fuzz_regression_long_numbers_round_trip_exactly() {
        let number = "666000000000000000000000000000000000000000000000000000000000000000000000000000000000000006148914691236517194";
        let body = format!(
            r#"{{"path": "/srv/model/m.gguf", "name": "m", "placement": {{"tensor_split": [3, {number}], "mode": "split"}}}}"#
        );
        let request: LoadRequest = serde_json::from_str(&body).unwrap();
        let encoded = serde_json::to_vec(&request).unwrap();
        let again: LoadRequest = serde_json::from_slice(&encoded).unwrap();
        assert_eq!(serde_json::to_vec(&again).unwrap(), encoded);
        assert!(request.placement.options().is_ok());
    }
}

/// `POST /v1/models/{name}/scale`: run this many workers of a model whose workers the host
/// spawned, each holding the whole model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    /// How many workers to run from now on (0 parks the model: loaded, shared, not computing).
    pub workers: u32,
    /// The device of each new worker (default: that of the model's last worker).
    #[serde(default)]
    pub device: Option<String>,
    /// How long a removed worker may take to finish the requests it is answering before it is
    /// stopped anyway (default 120 s).
    #[serde(default)]
    pub drain_timeout_ms: Option<u64>,
}

/// What a scale did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleReport {
    pub model: String,
    /// Workers running (and not being removed) before, and the number asked for.
    pub workers_before: u32,
    pub workers: u32,
    /// Workers started, which attach to the pages already in RAM.
    pub added: Vec<String>,
    /// Workers being drained: they take no new request and stop once their answers end.
    pub draining: Vec<String>,
    /// Requests that had no token yet on a drained worker, queued again for the others.
    pub handed_back: u32,
}
