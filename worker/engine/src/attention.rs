//! Attention of the query heads that share one KV head over a slot's cached keys and values:
//! causal, limited to the window on sliding-window layers. As in llama.cpp's CPU path without
//! flash attention, the queries are rounded to the cache's type before the dot products and the
//! probabilities before they weight the values. Cached f16 keys and values are widened to f32
//! as the dot products and sums read them (F16C), not copied to f32 first.

use crate::f16::round_row_f16;
use crate::kv::{KvRow, KvType, LayerView};
use crate::ops::softmax;
use crate::quant::{axpy, axpy_f16, dot_f16, dot_f32};

/// Per-thread buffers for attention.
#[derive(Default)]
pub struct AttnScratch {
    scores: Vec<f32>,
    query: Vec<f32>,
}

impl AttnScratch {
    /// Bytes held for a context of `context`, `group` query heads per KV head and heads of
    /// `width`.
    pub fn bytes_for(context: usize, group: usize, width: usize) -> usize {
        4 * (group * context + group * width)
    }

    pub fn reserve(&mut self, context: usize, group: usize, width: usize) {
        self.scores.reserve(group * context);
        self.query.reserve(group * width);
    }
}

/// `out[h] = softmax(scale · q[h]·K) · V` for the query heads `q` (concatenated) of the token
/// at `pos` of `slot` that share KV head `kv_head`.
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
    let dk = view.key_length();
    let group = q.len() / dk;
    let dv = out.len() / group;
    s.query.clear();
    s.query.extend_from_slice(q);
    if ty == KvType::F16 {
        round_row_f16(&mut s.query);
    }
    s.scores.resize(group * n, 0.0);
    for (j, p) in (first..=pos).enumerate() {
        let k = view.key(slot, p, kv_head);
        for h in 0..group {
            let query = &s.query[h * dk..(h + 1) * dk];
            let dot = match k {
                KvRow::F16(k) => dot_f16(query, k),
                KvRow::F32(k) => dot_f32(query, k),
            };
            s.scores[h * n + j] = dot * scale;
        }
    }
    for h in 0..group {
        softmax(&mut s.scores[h * n..(h + 1) * n]);
        if ty == KvType::F16 {
            round_row_f16(&mut s.scores[h * n..(h + 1) * n]);
        }
    }
    out.fill(0.0);
    for (j, p) in (first..=pos).enumerate() {
        let v = view.value(slot, p, kv_head);
        for h in 0..group {
            let (w, out) = (s.scores[h * n + j], &mut out[h * dv..(h + 1) * dv]);
            match v {
                KvRow::F16(v) => axpy_f16(w, v, out),
                KvRow::F32(v) => axpy(w, v, out),
            }
        }
    }
}
