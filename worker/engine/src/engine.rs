//! The engine: a model's weights (borrowed from the mapping), its KV cache, compute threads and
//! scratch, and [`Engine::step`], one forward pass over a batch of sequence chunks.

use std::sync::Mutex;

use modelhost_protocol::arch::{ArchParams, RopeScaling};
use modelhost_protocol::layers::RegionTensor;

use crate::arch::{arch, Arch};
use crate::attention::AttnScratch;
use crate::block::{Buffers, Step, TokenAt};
use crate::error::{BuildError, StepError};
use crate::kv::{KvCache, KvLayout, KvType};
use crate::matmul::{matmul, RowBuffers};
use crate::ops::{rms_norm, Rope, RopeTable};
use crate::pool::Pool;
use crate::quant::{PreparedRow, QuantizedActs};
use crate::weights::{ModelFile, TensorSet, Weights};

/// How an engine is sized.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Tokens each sequence slot may hold.
    pub context: u32,
    /// Sequence slots (the plan's `parallel`).
    pub slots: u32,
    /// The most tokens one step may carry, over all slots.
    pub batch: u32,
    /// The most logits rows one step may return.
    pub outputs: u32,
    pub threads: usize,
    pub kv_type: KvType,
    /// Size sliding-window layers for the whole context (llama.cpp's swa_full).
    pub swa_full: bool,
}

/// Which logits a chunk wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    None,
    /// After its last token (generation).
    Last,
    /// After every token (scoring).
    All,
}

/// Tokens for one sequence slot, appended after what the slot holds.
#[derive(Debug, Clone)]
pub struct Chunk<'a> {
    pub slot: u32,
    pub tokens: &'a [u32],
    pub logits: Logits,
}

/// What a step did for one chunk: the rows of [`Engine::logits`] that are its outputs.
pub type ChunkResult = Result<std::ops::Range<usize>, StepError>;

/// Checks the parameters the shapes and loops rely on. The host derived them from a validated
/// file, but they crossed a socket: a bad one must be an error here, not a panic later.
fn check_params(p: &ArchParams) -> Result<(), BuildError> {
    let bad = |what: &str| Err(BuildError::Config(format!("inference parameters: {what}")));
    if p.embedding_length == 0 || p.vocab_size == 0 || p.key_length == 0 || p.value_length == 0 {
        return bad("a zero width or vocabulary");
    }
    if p.head_count == 0 || p.head_count_kv == 0 || !p.head_count.is_multiple_of(p.head_count_kv) {
        return bad("heads that do not share their KV heads evenly");
    }
    if p.rope_dimensions > p.key_length || !p.rope_dimensions.is_multiple_of(2) {
        return bad("rope over more dimensions than a head has, or an odd number");
    }
    if p.swa_layers.len() != p.block_count as usize {
        return bad("a sliding-window flag per block is missing");
    }
    Ok(())
}

/// The engine.
pub struct Engine {
    p: ArchParams,
    arch: Arch,
    weights: Weights,
    files: Vec<ModelFile>,
    kv: KvCache,
    pool: Pool,
    rows: RowBuffers,
    attn: Vec<Mutex<AttnScratch>>,
    buffers: Buffers,
    rope_global: Rope,
    rope_local: Rope,
    tables_global: Vec<RopeTable>,
    tables_local: Vec<RopeTable>,
    out_x: Vec<f32>,
    out_acts: QuantizedActs,
    logits: Vec<f32>,
    options: EngineOptions,
    chunk_limit: u32,
    scratch_bytes: u64,
}

impl Engine {
    /// Builds an engine over `tensors` in the mapped `files`, with the KV cache in `kv_buffer`
    /// (zeroed words, as the worker allocated them at attach; `None` allocates one).
    pub fn new(
        p: &ArchParams,
        tensors: &[RegionTensor],
        files: Vec<ModelFile>,
        options: EngineOptions,
        kv_buffer: Option<Vec<u64>>,
    ) -> Result<Engine, BuildError> {
        if options.slots == 0 || options.batch == 0 || options.context == 0 {
            return Err(BuildError::Config(
                "context, slots and batch must each be at least 1".into(),
            ));
        }
        check_params(p)?;
        let arch = arch(p.architecture);
        let weights = Weights::load(p, &arch.shape, &TensorSet::new(tensors, &files))?;
        let layout = KvLayout::new(
            p,
            options.context,
            options.slots,
            options.batch,
            options.swa_full,
        );
        let chunk_limit = layout.chunk_limit().min(options.batch);
        let kv = match kv_buffer {
            Some(buffer) => KvCache::new(layout, options.kv_type, buffer)?,
            None => KvCache::allocate(layout, options.kv_type)?,
        };
        let threads = options.threads.max(1);
        let pool = Pool::new(threads).map_err(|e| BuildError::Threads(e.to_string()))?;
        let batch = options.batch as usize;
        let outputs = options.outputs.max(1) as usize;
        let e = p.embedding_length as usize;
        let widest = [
            p.embedding_length,
            p.feed_forward_length,
            p.head_count * p.value_length,
        ]
        .into_iter()
        .max()
        .unwrap_or(0) as usize;
        let mut buffers = Buffers::new(p, batch);
        // The quantized activations for every format the model's matrices take, reserved now
        // so that what is reported is what is held.
        let mut formats = vec![weights.output.format.activation()];
        for l in &weights.layers {
            for m in [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down] {
                formats.push(m.format.activation());
            }
        }
        let mut acts_bytes = 0;
        for a in buffers.acts.iter_mut() {
            if formats.contains(&a.format) {
                acts_bytes += a.reserve(batch, widest);
            }
        }
        let mut out_acts = QuantizedActs::new(weights.output.format.activation());
        acts_bytes += out_acts.reserve(outputs, e);
        let context = options.context as usize;
        let head = p.key_length.max(p.value_length) as usize;
        let group = (p.head_count / p.head_count_kv.max(1)) as usize;
        let attn: Vec<Mutex<AttnScratch>> = (0..threads)
            .map(|_| {
                let mut s = AttnScratch::default();
                s.reserve(context, group, head);
                Mutex::new(s)
            })
            .collect();
        let rows = RowBuffers::new(threads, widest);
        let pairs = (p.rope_dimensions / 2) as usize;
        let table = || RopeTable {
            cos: Vec::with_capacity(pairs),
            sin: Vec::with_capacity(pairs),
        };
        let freq_scale = match p.rope_scaling {
            RopeScaling::None => 1.0,
            RopeScaling::Linear { factor } => 1.0 / factor,
        };
        let rope_global = Rope {
            dims: p.rope_dimensions as usize,
            base: p.rope_base,
            freq_scale,
            neox: p.architecture.rope_neox(),
            factors: weights.rope_freqs.clone(),
        };
        let rope_local = Rope {
            base: p.rope_base_swa,
            freq_scale: 1.0,
            ..rope_global.clone()
        };
        let logits = vec![0f32; outputs * p.vocab_size as usize];
        let out_x = vec![0f32; outputs * e];
        let scratch_bytes = (buffers.bytes()
            + acts_bytes
            + 4 * (logits.len() + out_x.len())
            + threads * AttnScratch::bytes_for(context, group, head)
            + threads * PreparedRow::bytes_for(widest)
            + 2 * batch * pairs * 8) as u64;
        Ok(Engine {
            p: p.clone(),
            arch,
            weights,
            files,
            kv,
            pool,
            rows,
            attn,
            buffers,
            rope_global,
            rope_local,
            tables_global: (0..batch).map(|_| table()).collect(),
            tables_local: (0..batch).map(|_| table()).collect(),
            out_x,
            out_acts,
            logits,
            options,
            chunk_limit,
            scratch_bytes,
        })
    }

    pub fn params(&self) -> &ArchParams {
        &self.p
    }

    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Bytes of scratch the engine allocated: activations, quantized activations, logits,
    /// attention and per-thread buffers.
    pub fn scratch_bytes(&self) -> u64 {
        self.scratch_bytes
    }

    /// Bytes of the KV cache.
    pub fn kv_bytes(&self) -> u64 {
        self.kv.bytes()
    }

    /// Bytes of weight matrices read per decode step.
    pub fn weight_bytes_per_step(&self) -> u64 {
        self.weights.bytes_per_token()
    }

    /// The most tokens one slot may add in a step.
    pub fn chunk_limit(&self) -> u32 {
        self.chunk_limit
    }

    /// Tokens slot `slot` holds.
    pub fn slot_len(&self, slot: u32) -> Result<u32, StepError> {
        self.kv.check_slot(slot)?;
        Ok(self.kv.len(slot))
    }

    /// Forgets a sequence.
    pub fn clear(&mut self, slot: u32) -> Result<(), StepError> {
        self.kv.clear(slot)
    }

    /// Keeps a prefix of a sequence; returns the length kept (see `KvCache::truncate`).
    pub fn keep_prefix(&mut self, slot: u32, keep: u32) -> Result<u32, StepError> {
        self.kv.truncate(slot, keep)
    }

    /// The logits of the last step: one row of `vocab_size` per output.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    pub fn vocab_size(&self) -> usize {
        self.p.vocab_size as usize
    }

    fn check(&self, chunk: &Chunk<'_>, seen: &[u32]) -> Result<(), StepError> {
        self.kv.check_slot(chunk.slot)?;
        if seen.contains(&chunk.slot) {
            return Err(StepError::DuplicateSlot { slot: chunk.slot });
        }
        if let Some(&token) = chunk.tokens.iter().find(|&&t| t >= self.p.vocab_size) {
            return Err(StepError::TokenOutOfRange {
                token,
                vocab: self.p.vocab_size,
            });
        }
        let n = chunk.tokens.len() as u32;
        if n > self.chunk_limit {
            return Err(StepError::ChunkTooLarge {
                slot: chunk.slot,
                tokens: n,
                limit: self.chunk_limit,
            });
        }
        let len = self.kv.len(chunk.slot);
        if u64::from(len) + u64::from(n) > u64::from(self.options.context) {
            return Err(StepError::ContextFull {
                slot: chunk.slot,
                len,
                adding: n,
                context: self.options.context,
            });
        }
        Ok(())
    }

    /// One forward pass over `chunks`. A chunk that cannot run (a token outside the
    /// vocabulary, a full slot, too many tokens) gets its error, and the others run; chunks
    /// beyond the batch or the outputs the engine was sized for are refused the same way.
    pub fn step(&mut self, chunks: &[Chunk<'_>]) -> Vec<ChunkResult> {
        let mut results: Vec<ChunkResult> = Vec::with_capacity(chunks.len());
        let mut accepted: Vec<usize> = Vec::new();
        let mut slots = Vec::new();
        let (mut tokens, mut outputs) = (0u32, 0u32);
        for (i, chunk) in chunks.iter().enumerate() {
            let outs = match chunk.logits {
                Logits::None => 0,
                Logits::Last => u32::from(!chunk.tokens.is_empty()),
                Logits::All => chunk.tokens.len() as u32,
            };
            let n = chunk.tokens.len() as u32;
            let verdict = self.check(chunk, &slots).and_then(|()| {
                if tokens + n > self.options.batch {
                    Err(StepError::BatchTooLarge {
                        tokens: tokens + n,
                        batch: self.options.batch,
                    })
                } else if outputs + outs > self.options.outputs.max(1) {
                    Err(StepError::TooManyOutputs {
                        outputs: outputs + outs,
                        limit: self.options.outputs.max(1),
                    })
                } else {
                    Ok(())
                }
            });
            match verdict {
                Ok(()) => {
                    results.push(Ok(outputs as usize..(outputs + outs) as usize));
                    slots.push(chunk.slot);
                    accepted.push(i);
                    tokens += n;
                    outputs += outs;
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if tokens > 0 {
            self.forward(chunks, &accepted);
        }
        results
    }

    fn forward(&mut self, chunks: &[Chunk<'_>], accepted: &[usize]) {
        let e = self.p.embedding_length as usize;
        let mut at = Vec::new();
        let mut out_rows = Vec::new();
        for &i in accepted {
            let c = &chunks[i];
            let len = self.kv.len(c.slot);
            for (j, _) in c.tokens.iter().enumerate() {
                let wants = match c.logits {
                    Logits::None => false,
                    Logits::Last => j + 1 == c.tokens.len(),
                    Logits::All => true,
                };
                if wants {
                    out_rows.push(at.len());
                }
                at.push(TokenAt {
                    slot: c.slot,
                    pos: len + j as u32,
                });
            }
        }
        // Embeddings.
        let embd = &self.weights.token_embd;
        let bytes = embd.bytes(&self.files);
        let rb = embd.row_bytes();
        let mut t = 0;
        for &i in accepted {
            for &token in chunks[i].tokens {
                let row = &bytes[token as usize * rb..(token as usize + 1) * rb];
                let x = &mut self.buffers.x[t * e..(t + 1) * e];
                embd.format.dequantize_row(row, x);
                if let Some(scale) = self.p.embedding_scale {
                    for v in x.iter_mut() {
                        *v *= scale;
                    }
                }
                t += 1;
            }
        }
        for (k, a) in at.iter().enumerate() {
            self.rope_global.table(a.pos, &mut self.tables_global[k]);
            self.rope_local.table(a.pos, &mut self.tables_local[k]);
        }
        let block = self.arch.block;
        {
            let mut step = Step {
                p: &self.p,
                pool: &self.pool,
                files: &self.files,
                rows: &self.rows,
                attn_scratch: &self.attn,
                kv: &mut self.kv,
                b: &mut self.buffers,
                tokens: &at,
                rope_global: &self.tables_global,
                rope_local: &self.tables_local,
                rope: &self.rope_global,
            };
            for (l, layer) in self.weights.layers.iter().enumerate() {
                block(&mut step, l, layer);
            }
        }
        for &i in accepted {
            let c = &chunks[i];
            let len = self.kv.len(c.slot);
            self.kv.set_len(c.slot, len + c.tokens.len() as u32);
        }
        // The output stage, for the rows that want logits.
        if out_rows.is_empty() {
            return;
        }
        for (o, &t) in out_rows.iter().enumerate() {
            rms_norm(
                &self.buffers.x[t * e..(t + 1) * e],
                &self.weights.output_norm,
                self.p.rms_epsilon,
                &mut self.out_x[o * e..(o + 1) * e],
            );
        }
        let n = out_rows.len();
        self.out_acts.quantize(&self.out_x, n, e);
        matmul(
            &self.pool,
            &self.files,
            &self.weights.output,
            &self.out_acts,
            &mut self.logits,
            &self.rows,
        );
        if let Some(cap) = self.p.final_logit_softcap {
            for v in &mut self.logits[..n * self.p.vocab_size as usize] {
                *v = (*v / cap).tanh() * cap;
            }
        }
    }
}
