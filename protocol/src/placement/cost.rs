//! What things cost in bytes: the KV cache per layer, scratch (compute) buffers, device budgets.

use crate::manifest::ModelManifest;
use crate::GgmlType;

use super::{DeviceSpec, PlanOptions};

/// Sliding-window pattern of architectures that do not store one: every `n`th layer attends to
/// the whole context and the others to the window (as llama.cpp configures them).
fn known_swa_pattern(architecture: &str) -> Option<u32> {
    match architecture {
        "gemma2" => Some(2),
        "gemma3" => Some(6),
        "cohere2" | "llama4" => Some(4),
        _ => None,
    }
}

/// Per-layer KV cache sizes for a model under some options.
pub(crate) struct KvCosts {
    per_layer: Vec<u64>,
    /// Layers sized to the sliding window.
    pub swa_layers: u32,
    pub full_cells: u64,
    pub swa_cells: u64,
    pub pattern_unknown: bool,
}

impl KvCosts {
    pub fn new(manifest: &ModelManifest, options: &PlanOptions, context: u32) -> KvCosts {
        let h = &manifest.hyper_params;
        let sequences = u64::from(options.parallel.max(1));
        let full_cells = u64::from(context) * sequences;
        let pattern = known_swa_pattern(&h.architecture);
        let window = h.sliding_window.filter(|w| *w > 0);
        // llama.cpp keeps window × sequences + one batch of cells for windowed layers, padded
        // to 256, and never more than the full context.
        // With `swa_full` (llama.cpp's C API default, used by llama-cpp-python), windowed layers
        // keep the whole context too.
        let window = window.filter(|_| !options.swa_full);
        let swa_cells = window.map_or(full_cells, |w| {
            (u64::from(w) * sequences + u64::from(options.batch))
                .next_multiple_of(256)
                .min(full_cells)
        });
        let mut swa_layers = 0;
        let per_layer = (0..h.block_count)
            .map(|layer| {
                let windowed = match (window, pattern) {
                    (Some(_), Some(n)) => (layer + 1) % n != 0,
                    _ => false,
                };
                swa_layers += u32::from(windowed);
                let cells = if windowed { swa_cells } else { full_cells };
                let heads = u64::from(h.head_count_kv.get(layer));
                let k = kv_bytes(options.kv_type, cells * heads * u64::from(h.key_length));
                let v = kv_bytes(options.kv_type, cells * heads * u64::from(h.value_length));
                k + v
            })
            .collect();
        KvCosts {
            per_layer,
            swa_layers,
            full_cells,
            swa_cells,
            pattern_unknown: window.is_some() && pattern.is_none(),
        }
    }

    pub fn layer(&self, layer: u32) -> u64 {
        self.per_layer.get(layer as usize).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.per_layer.iter().sum()
    }
}

/// Bytes for `elements` values of the KV type, rounded up to whole blocks.
fn kv_bytes(ty: GgmlType, elements: u64) -> u64 {
    let block = u64::from(ty.block_size());
    elements.div_ceil(block) * u64::from(ty.type_size())
}

/// Compute threads the scratch estimate assumes per worker: each holds a row of attention
/// scores over the context and a prepared weight row (small next to the batch's activations).
const ASSUMED_THREADS: u64 = 4;

/// Scratch the engine (`modelhost-engine`) allocates to run blocks, as it sizes it: f32
/// activations for one batch of tokens (the residual stream, its normed copy, Q, K, V, the
/// attention output, a projection, and the feed-forward's gate and up), the batch quantized to
/// 8 bits for each activation format (and both again in panels), per-thread attention and weight-row buffers, and rope
/// tables. `worker/tests` holds the engine's real allocation to this within 10%.
pub(crate) fn block_scratch(manifest: &ModelManifest, options: &PlanOptions, context: u64) -> u64 {
    let h = &manifest.hyper_params;
    let batch = u64::from(options.batch);
    let e = u64::from(h.embedding_length);
    let f = h
        .feed_forward_length
        .as_ref()
        .map_or(0, |f| u64::from(f.max()));
    let (hq, hkv) = (
        u64::from(h.head_count.max()),
        u64::from(h.head_count_kv.max()),
    );
    let (dk, dv) = (u64::from(h.key_length), u64::from(h.value_length));
    let activations = 4 * batch * (3 * e + hq * dk + hkv * dk + hkv * dv + hq * dv + 2 * f);
    let widest = e.max(f).max(hq * dv);
    // Both 8-bit formats (per 32 and per 256 values), each with factors and sums per 16.
    let quantized =
        batch * (widest + widest / 8 + widest / 8) + batch * (widest + widest / 64 + widest / 8);
    // For a batch of more than four, both formats again in panels for the prompt kernels:
    // the per-256 one in panels of 16 rows (AVX-512 VNNI) with its sums per 16 and per 32 in
    // i16 pairs, the per-32 one in panels of 8 (AVX2), plain and plus 128, with its sums per
    // 16 in pairs and its factors.
    let panel = if batch > 4 {
        batch.div_ceil(16) * 16 * (widest + widest / 8 + widest / 16 + widest / 64)
            + batch.div_ceil(8) * 8 * (2 * widest + widest / 8 + widest / 8)
    } else {
        0
    };
    let per_thread = ASSUMED_THREADS
        * (4 * (context + 2 * dk.max(dv)) + widest * 4 + widest + widest / 4 + widest / 4);
    let rope = 2 * batch * (dk / 2) * 8;
    activations + quantized + panel + per_thread + rope
}

/// Scratch for the output stage: f32 logits for one output per sequence (the engine returns
/// logits only where a step asks for them), and the normed hidden states behind them.
pub(crate) fn output_scratch(manifest: &ModelManifest, options: &PlanOptions) -> u64 {
    let outputs = u64::from(options.parallel.max(1));
    let e = u64::from(manifest.hyper_params.embedding_length);
    4 * outputs * (manifest.vocab_size + e) + outputs * (e + e / 8 + e / 8)
}

/// What a GPU may hold in all: the smaller of free memory and its configured limit, less the
/// reserve (headroom that stays free). A plan's `budget_bytes`.
pub(crate) fn gpu_room(device: &DeviceSpec, options: &PlanOptions) -> u64 {
    device
        .limit_bytes
        .map_or(device.free_bytes, |l| l.min(device.free_bytes))
        .saturating_sub(options.gpu_reserve_bytes)
}

/// What a GPU may hold of weights, KV cache and scratch: its room less the backend's fixed
/// overhead.
pub(crate) fn gpu_budget(device: &DeviceSpec, options: &PlanOptions) -> u64 {
    gpu_room(device, options).saturating_sub(options.gpu_overhead_bytes)
}
