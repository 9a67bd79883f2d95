//! Attention of the query heads that share one KV head over a slot's cached keys and values:
//! causal, limited to the window on sliding-window layers. As in llama.cpp's CPU path without
//! flash attention, the queries are rounded to the cache's type before the dot products and the
//! probabilities before they weight the values. Each cached key and value is converted from f16
//! once for all the heads of its group.

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
    /// Bytes held for a context of `context`, `group` query heads per KV head and heads of
    /// `width`.
    pub fn bytes_for(context: usize, group: usize, width: usize) -> usize {
        4 * (group * context + width + group * width)
    }

    pub fn reserve(&mut self, context: usize, group: usize, width: usize) {
        self.scores.reserve(group * context);
        self.row.reserve(width);
        self.query.reserve(group * width);
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
    match ty {
        KvType::F16 => s.query.extend(q.iter().map(|&v| round_f16(v))),
        KvType::F32 => s.query.extend_from_slice(q),
    }
    s.scores.resize(group * n, 0.0);
    for (j, p) in (first..=pos).enumerate() {
        let k = as_f32(view.key(slot, p, kv_head), &mut s.row);
        for h in 0..group {
            s.scores[h * n + j] = dot_f32(&s.query[h * dk..(h + 1) * dk], k) * scale;
        }
    }
    for h in 0..group {
        softmax(&mut s.scores[h * n..(h + 1) * n]);
        if ty == KvType::F16 {
            for w in &mut s.scores[h * n..(h + 1) * n] {
                *w = round_f16(*w);
            }
        }
    }
    out.fill(0.0);
    for (j, p) in (first..=pos).enumerate() {
        let v = as_f32(view.value(slot, p, kv_head), &mut s.row);
        for h in 0..group {
            axpy(s.scores[h * n + j], v, &mut out[h * dv..(h + 1) * dv]);
        }
    }
}
