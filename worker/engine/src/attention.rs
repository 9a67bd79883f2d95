//! Attention of one query head over a slot's cached keys and values: causal, limited to the
//! window on sliding-window layers. As in llama.cpp's CPU path without flash attention, the
//! query is rounded to the cache's type before the dot products and the probabilities before
//! they weight the values.

use crate::f16::{f16_row_to_f32, round_f16};
use crate::kv::{KvRow, KvType, LayerView};
use crate::ops::softmax;
use crate::quant::{axpy, dot_f32};

/// Per-thread buffers for attention.
#[derive(Default)]
pub struct AttnScratch {
    scores: Vec<f32>,
    row: Vec<f32>,
    query: Vec<f32>,
}

impl AttnScratch {
    /// Bytes held for a context of `context` and heads of `width`.
    pub fn bytes_for(context: usize, width: usize) -> usize {
        4 * (context + 2 * width)
    }

    pub fn reserve(&mut self, context: usize, width: usize) {
        self.scores.reserve(context);
        self.row.reserve(width);
        self.query.reserve(width);
    }
}

fn as_f32<'a>(row: KvRow<'a>, buf: &'a mut Vec<f32>) -> &'a [f32] {
    match row {
        KvRow::F32(r) => r,
        KvRow::F16(r) => {
            buf.resize(r.len(), 0.0);
            f16_row_to_f32(r, buf);
            buf
        }
    }
}

/// `out = softmax(scale · q·K) · V` for the query at `pos` of `slot`, over KV head `kv_head`.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    view: &LayerView<'_>,
    ty: KvType,
    slot: u32,
    pos: u32,
    kv_head: usize,
    q: &[f32],
    scale: f32,
    out: &mut [f32],
    s: &mut AttnScratch,
) {
    let first = view.first_visible(pos);
    let n = (pos - first + 1) as usize;
    s.query.clear();
    match ty {
        KvType::F16 => s.query.extend(q.iter().map(|&v| round_f16(v))),
        KvType::F32 => s.query.extend_from_slice(q),
    }
    s.scores.resize(n, 0.0);
    for (j, p) in (first..=pos).enumerate() {
        let k = as_f32(view.key(slot, p, kv_head), &mut s.row);
        s.scores[j] = dot_f32(&s.query, k) * scale;
    }
    softmax(&mut s.scores[..n]);
    out.fill(0.0);
    for (j, p) in (first..=pos).enumerate() {
        let w = match ty {
            KvType::F16 => round_f16(s.scores[j]),
            KvType::F32 => s.scores[j],
        };
        let v = as_f32(view.value(slot, p, kv_head), &mut s.row);
        axpy(w, v, out);
    }
}
