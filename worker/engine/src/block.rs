//! The building blocks the architectures assemble (`arch/*.rs`): norms, the Q/K/V projections
//! with rope, cached attention, the gated feed-forward and the residual adds, over one step's
//! batch of tokens.

use crate::attention::{attend, AttnScratch};
use crate::kv::KvCache;
use crate::matmul::{matmul, RowBuffers};
use crate::ops::{geglu, rms_norm, rms_norm_in_place, swiglu, Rope, RopeTable};
use crate::pool::{Pool, SharedOut};
use crate::quant::{ActFormat, QuantizedActs};
use crate::weights::{Layer, Matrix, ModelFile};
use modelhost_protocol::arch::ArchParams;
use std::sync::Mutex;

/// One token of a step: which slot it belongs to and its position there.
#[derive(Debug, Clone, Copy)]
pub struct TokenAt {
    pub slot: u32,
    pub pos: u32,
}

/// The activations of one step, sized for the largest batch at construction.
pub struct Buffers {
    /// The residual stream, `tokens × embedding`.
    pub x: Vec<f32>,
    /// A normed copy of it.
    pub h: Vec<f32>,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub attn: Vec<f32>,
    /// Output of the attention or feed-forward projection, `tokens × embedding`.
    pub proj: Vec<f32>,
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    pub acts: [QuantizedActs; 3],
}

impl Buffers {
    pub fn new(p: &ArchParams, batch: usize) -> Buffers {
        let e = p.embedding_length as usize;
        let f = p.feed_forward_length as usize;
        let qw = (p.head_count * p.key_length) as usize;
        let kw = (p.head_count_kv * p.key_length) as usize;
        let vw = (p.head_count_kv * p.value_length) as usize;
        let aw = (p.head_count * p.value_length) as usize;
        Buffers {
            x: vec![0.0; batch * e],
            h: vec![0.0; batch * e],
            q: vec![0.0; batch * qw],
            k: vec![0.0; batch * kw],
            v: vec![0.0; batch * vw],
            attn: vec![0.0; batch * aw],
            proj: vec![0.0; batch * e],
            gate: vec![0.0; batch * f],
            up: vec![0.0; batch * f],
            acts: [
                QuantizedActs::new(ActFormat::F32),
                QuantizedActs::new(ActFormat::Q8x32),
                QuantizedActs::new(ActFormat::Q8x256),
            ],
        }
    }

    /// Bytes of the f32 buffers (the quantized activations are counted by the engine).
    pub fn bytes(&self) -> usize {
        4 * (self.x.capacity()
            + self.h.capacity()
            + self.q.capacity()
            + self.k.capacity()
            + self.v.capacity()
            + self.attn.capacity()
            + self.proj.capacity()
            + self.gate.capacity()
            + self.up.capacity())
    }
}

/// What the architectures compute with during one step.
pub struct Step<'a> {
    pub p: &'a ArchParams,
    pub pool: &'a Pool,
    pub files: &'a [ModelFile],
    pub rows: &'a RowBuffers,
    pub attn_scratch: &'a [Mutex<AttnScratch>],
    pub kv: &'a mut KvCache,
    pub b: &'a mut Buffers,
    pub tokens: &'a [TokenAt],
    /// Rope tables per token, for the global and the sliding-window layers.
    pub rope_global: &'a [RopeTable],
    pub rope_local: &'a [RopeTable],
    pub rope: &'a Rope,
}

/// The activation buffer a matrix's dot products take.
fn acts_index(w: &Matrix) -> usize {
    match w.format.activation() {
        ActFormat::F32 => 0,
        ActFormat::Q8x32 => 1,
        ActFormat::Q8x256 => 2,
    }
}

/// Quantizes `n` rows of `input` once for each activation format that `ws` take, the rows
/// shared out over the pool's threads.
fn quantize_for(
    pool: &Pool,
    acts: &mut [QuantizedActs; 3],
    input: &[f32],
    n: usize,
    ws: &[&Matrix],
) {
    let mut done = [false; 3];
    for w in ws {
        let i = acts_index(w);
        if !done[i] {
            acts[i].quantize_on(pool, input, n, w.cols);
            done[i] = true;
        }
    }
}

/// `out = input · Wᵀ`, from activations already quantized by [`quantize_for`].
fn project(s: &Step<'_>, acts: &[QuantizedActs; 3], w: &Matrix, out: &mut [f32]) {
    matmul(s.pool, s.files, w, &acts[acts_index(w)], out, s.rows);
}

impl Step<'_> {
    fn e(&self) -> usize {
        self.p.embedding_length as usize
    }

    /// `h = rms_norm(x) · w`.
    pub fn norm_input(&mut self, w: &[f32]) {
        let e = self.e();
        let n = self.tokens.len();
        let eps = self.p.rms_epsilon;
        let x = &self.b.x;
        self.pool
            .for_rows_mut(&mut self.b.h[..n * e], e, &|tokens, rows| {
                for (t, h) in tokens.zip(rows.chunks_exact_mut(e)) {
                    rms_norm(&x[t * e..(t + 1) * e], w, eps, h);
                }
            });
    }

    /// The attention half of a block: Q, K and V from `h` (with biases, QK-norm and rope),
    /// the keys and values cached, attention per head, and the output projection into `proj`.
    /// `prescale` multiplies the query by the attention scale before the dot products
    /// (Gemma), where the others scale the scores.
    pub fn attention(&mut self, layer: usize, lw: &Layer, prescale: bool) {
        let p = self.p;
        let n = self.tokens.len();
        let (hq, hkv) = (p.head_count as usize, p.head_count_kv as usize);
        let (dk, dv) = (p.key_length as usize, p.value_length as usize);
        let h = std::mem::take(&mut self.b.h);
        let mut acts = std::mem::replace(&mut self.b.acts, empty_acts());
        let (mut q, mut k, mut v) = (
            std::mem::take(&mut self.b.q),
            std::mem::take(&mut self.b.k),
            std::mem::take(&mut self.b.v),
        );
        quantize_for(self.pool, &mut acts, &h, n, &[&lw.wq, &lw.wk, &lw.wv]);
        project(self, &acts, &lw.wq, &mut q);
        project(self, &acts, &lw.wk, &mut k);
        project(self, &acts, &lw.wv, &mut v);
        self.b.h = h;
        let windowed = p.swa_layers.get(layer).copied().unwrap_or(false);
        let tables = if windowed {
            self.rope_local
        } else {
            self.rope_global
        };
        // Biases, QK-norm and rope, token by token on the pool's threads (each token's rows
        // are its own), then the keys and values into the cache.
        let rope = self.rope;
        let (qw, kw) = (hq * dk, hkv * dk);
        assert!(k.len() >= n * kw && v.len() >= n * hkv * dv);
        let shared_k = SharedOut::new(&mut k);
        let shared_v = SharedOut::new(&mut v);
        self.pool
            .for_rows_mut(&mut q[..n * qw], qw, &|tokens, rows| {
                for (t, qt) in tokens.zip(rows.chunks_exact_mut(qw)) {
                    // SAFETY: token t's key and value rows are written by the range holding t
                    // alone, and `k` and `v` hold n rows of kw and hkv·dv.
                    let (kt, vt) = unsafe {
                        (
                            std::slice::from_raw_parts_mut(shared_k.at(t * kw), kw),
                            std::slice::from_raw_parts_mut(shared_v.at(t * hkv * dv), hkv * dv),
                        )
                    };
                    add_bias(qt, lw.bq.as_deref());
                    add_bias(kt, lw.bk.as_deref());
                    add_bias(vt, lw.bv.as_deref());
                    for head in qt.chunks_exact_mut(dk) {
                        if let Some(w) = &lw.q_norm {
                            rms_norm_in_place(head, w, p.rms_epsilon);
                        }
                        rope.apply(head, &tables[t]);
                        if prescale {
                            for x in head.iter_mut() {
                                *x *= p.attention_scale;
                            }
                        }
                    }
                    for head in kt.chunks_exact_mut(dk) {
                        if let Some(w) = &lw.k_norm {
                            rms_norm_in_place(head, w, p.rms_epsilon);
                        }
                        rope.apply(head, &tables[t]);
                    }
                }
            });
        for (t, at) in self.tokens.iter().enumerate() {
            let kt = &k[t * kw..(t + 1) * kw];
            let vt = &v[t * hkv * dv..(t + 1) * hkv * dv];
            self.kv.write(layer, at.slot, at.pos, kt, vt);
        }
        // Every key of the step is cached before any query reads the cache.
        let scale = if prescale { 1.0 } else { p.attention_scale };
        let ty = self.kv.kv_type();
        let view = self.kv.layer(layer);
        let group = hq / hkv;
        let tokens = self.tokens;
        let scratch = self.attn_scratch;
        let out = SharedOut::new(&mut self.b.attn);
        let q_ref = &q;
        // A token's attention costs its visible keys, so a prompt's last tokens cost the most:
        // equal ranges of tokens would leave one thread waiting for the other. The threads
        // claim (token, KV head) items one at a time, the costliest first, so that the last
        // items claimed are the cheapest and the threads finish together.
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_unstable_by_key(|&t| {
            let at = tokens[t as usize];
            std::cmp::Reverse(at.pos + 1 - view.first_visible(at.pos))
        });
        let order = &order;
        // With fewer (token, KV head) items than threads (decoding one sequence on a model
        // with one KV head, as gemma), each item's query heads are split into parts, so that
        // every thread takes some: each head's result is computed alone either way.
        let threads = self.pool.threads();
        let parts = if n * hkv < threads {
            group.min(threads.div_ceil(n * hkv))
        } else {
            1
        };
        let per_part = group.div_ceil(parts);
        let items = n * hkv * parts;
        self.pool.for_chunks(items, 1, &|thread, range| {
            let mut s = scratch[thread].lock().unwrap_or_else(|e| e.into_inner());
            for item in range {
                let (pair, part) = (item / parts, item % parts);
                let (t, kv_head) = (order[pair / hkv] as usize, pair % hkv);
                let at = tokens[t];
                let first_head = t * hq + kv_head * group + part * per_part;
                let last_head = (t * hq + (kv_head + 1) * group).min(first_head + per_part);
                if first_head >= last_head {
                    continue;
                }
                let qh = &q_ref[first_head * dk..last_head * dk];
                // SAFETY: each item is in exactly one range, and the output rows of its query
                // heads are that item's alone.
                let o = unsafe {
                    std::slice::from_raw_parts_mut(
                        out.at(first_head * dv),
                        (last_head - first_head) * dv,
                    )
                };
                attend(&view, ty, at.slot, at.pos, kv_head, qh, scale, o, &mut s);
            }
        });
        self.b.q = q;
        self.b.k = k;
        self.b.v = v;
        let attn = std::mem::take(&mut self.b.attn);
        let mut proj = std::mem::take(&mut self.b.proj);
        quantize_for(self.pool, &mut acts, &attn, n, &[&lw.wo]);
        project(self, &acts, &lw.wo, &mut proj);
        self.b.attn = attn;
        self.b.proj = proj;
        self.b.acts = acts;
    }

    /// The gated feed-forward from `h` into `proj`: `down(act(gate(h)) · up(h))`.
    pub fn feed_forward(&mut self, lw: &Layer, gelu: bool) {
        let n = self.tokens.len();
        let f = self.p.feed_forward_length as usize;
        let h = std::mem::take(&mut self.b.h);
        let mut acts = std::mem::replace(&mut self.b.acts, empty_acts());
        let (mut gate, mut up) = (
            std::mem::take(&mut self.b.gate),
            std::mem::take(&mut self.b.up),
        );
        quantize_for(self.pool, &mut acts, &h, n, &[&lw.gate, &lw.up]);
        project(self, &acts, &lw.gate, &mut gate);
        project(self, &acts, &lw.up, &mut up);
        self.b.h = h;
        let up_ref = &up;
        self.pool
            .for_rows_mut(&mut gate[..n * f], f, &|tokens, gates| {
                for (t, g) in tokens.zip(gates.chunks_exact_mut(f)) {
                    let u = &up_ref[t * f..(t + 1) * f];
                    if gelu {
                        geglu(g, u);
                    } else {
                        swiglu(g, u);
                    }
                }
            });
        let mut proj = std::mem::take(&mut self.b.proj);
        quantize_for(self.pool, &mut acts, &gate, n, &[&lw.down]);
        project(self, &acts, &lw.down, &mut proj);
        self.b.gate = gate;
        self.b.up = up;
        self.b.proj = proj;
        self.b.acts = acts;
    }

    /// `proj = rms_norm(proj) · w` (Gemma's post-attention and post-feed-forward norms).
    pub fn norm_projection(&mut self, w: &[f32]) {
        let e = self.e();
        let n = self.tokens.len();
        let eps = self.p.rms_epsilon;
        self.pool
            .for_rows_mut(&mut self.b.proj[..n * e], e, &|_, rows| {
                for row in rows.chunks_exact_mut(e) {
                    rms_norm_in_place(row, w, eps);
                }
            });
    }

    /// `x += proj`.
    pub fn add_residual(&mut self) {
        let e = self.e();
        let n = self.tokens.len();
        let proj = &self.b.proj;
        self.pool
            .for_rows_mut(&mut self.b.x[..n * e], e, &|tokens, rows| {
                let proj = &proj[tokens.start * e..tokens.end * e];
                for (x, p) in rows.iter_mut().zip(proj) {
                    *x += p;
                }
            });
    }
}

fn empty_acts() -> [QuantizedActs; 3] {
    [
        QuantizedActs::new(ActFormat::F32),
        QuantizedActs::new(ActFormat::Q8x32),
        QuantizedActs::new(ActFormat::Q8x256),
    ]
}

fn add_bias(x: &mut [f32], bias: Option<&[f32]>) {
    if let Some(b) = bias {
        for (v, b) in x.iter_mut().zip(b) {
            *v += b;
        }
    }
}
