//! `modelhost-worker --bench MODEL`: the engine's speed on a model file, with no host. It times
//! prompt processing (one chunk of the batch), decoding one sequence token by token, and
//! decoding several sequences in one step each, and prints tokens per second with the weight
//! bytes read per decode step.

use std::path::Path;
use std::time::Instant;

use modelhost_engine::{Chunk, Engine, EngineOptions, KvType, Logits};
use serde::Serialize;

use crate::standalone::{open_model, OpenError};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub threads: usize,
    pub prompt: u32,
    pub decode: u32,
    pub sequences: u32,
    /// Times each phase is run; the median is reported (more rounds, steadier figures on a
    /// noisy machine, and a long steady run to profile).
    pub rounds: u32,
}

/// The figures.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub threads: usize,
    pub kernels: &'static str,
    pub weight_bytes_per_step: u64,
    pub scratch_bytes: u64,
    pub kv_bytes: u64,
    pub prompt_tokens: u32,
    pub prompt_tok_s: f64,
    pub decode_tokens: u32,
    pub decode_tok_s: f64,
    pub sequences: u32,
    pub batched_tok_s: f64,
    /// Anonymous memory of this process after the run (smaps_rollup `Anonymous`): its own
    /// private pages. The weights are file pages of the mapping and never count here.
    pub anonymous_bytes: u64,
    /// The machine's read bandwidth with this many threads: summing a 1 GiB heap buffer, and
    /// summing the model's own mapping (the pages a decode step reads), best of 3, in GB/s.
    pub heap_read_gbs: f64,
    pub mapping_read_gbs: f64,
}

/// Bytes per second of summing `bytes` as u64 words split over `threads` threads, best of 3.
fn read_bandwidth(bytes: &[u8], threads: usize) -> f64 {
    let words = bytes.len() / 8;
    let mut best = f64::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        std::thread::scope(|scope| {
            for t in 0..threads.max(1) {
                let part =
                    &bytes[words * t / threads.max(1) * 8..words * (t + 1) / threads.max(1) * 8];
                scope.spawn(move || {
                    let sum = part
                        .chunks_exact(8)
                        .map(|w| {
                            u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]])
                        })
                        .fold(0u64, u64::wrapping_add);
                    std::hint::black_box(sum);
                });
            }
        });
        best = best.min(started.elapsed().as_secs_f64());
    }
    bytes.len() as f64 / best / 1e9
}

/// The median of some timings (the upper one of an even count).
fn median(mut seconds: Vec<f64>) -> f64 {
    seconds.sort_by(f64::total_cmp);
    seconds[seconds.len() / 2]
}

/// Deterministic token ids that are not special: a simple LCG over the vocabulary's middle.
fn tokens(n: u32, vocab: u32, seed: u32) -> Vec<u32> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            1000 + state % (vocab.saturating_sub(2000).max(1))
        })
        .collect()
}

fn decode(engine: &mut Engine, slots: &[u32], steps: u32) {
    let vocab = engine.vocab_size();
    for _ in 0..steps {
        let next: Vec<u32> = (0..slots.len())
            .map(|i| modelhost_engine::sample::argmax(&engine.logits()[i * vocab..(i + 1) * vocab]))
            .collect();
        let chunks: Vec<Chunk<'_>> = slots
            .iter()
            .zip(&next)
            .map(|(&slot, t)| Chunk {
                slot,
                tokens: std::slice::from_ref(t),
                logits: Logits::Last,
            })
            .collect();
        engine.step(&chunks);
    }
}

/// Runs the benchmark on `path`.
pub fn run(path: &Path, o: &BenchOptions) -> Result<BenchReport, OpenError> {
    let model = open_model(path)?;
    let sequences = o.sequences.max(1);
    let mut engine = model.engine(EngineOptions {
        context: o.prompt + o.decode + 64,
        slots: sequences,
        batch: o.prompt.max(sequences).max(1),
        outputs: sequences,
        threads: o.threads,
        kv_type: KvType::F16,
        swa_full: false,
    })?;
    let vocab = engine.vocab_size() as u32;
    // Warm up: fault the pages in and build the tables, then forget it.
    engine.step(&[Chunk {
        slot: 0,
        tokens: &tokens(8, vocab, 99),
        logits: Logits::Last,
    }]);
    engine.clear(0).ok();

    let prompt = tokens(o.prompt, vocab, 1);
    let rounds = o.rounds.max(1);
    let (mut prompt_s, mut decode_s, mut batched_s) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        engine.clear(0).ok();
        let started = Instant::now();
        for piece in prompt.chunks(engine.chunk_limit() as usize) {
            engine.step(&[Chunk {
                slot: 0,
                tokens: piece,
                logits: Logits::Last,
            }]);
        }
        prompt_s.push(started.elapsed().as_secs_f64());

        let started = Instant::now();
        decode(&mut engine, &[0], o.decode);
        decode_s.push(started.elapsed().as_secs_f64());
    }

    let slots: Vec<u32> = (0..sequences).collect();
    for _ in 0..rounds {
        for &slot in &slots {
            engine.clear(slot).ok();
        }
        let starts: Vec<Vec<u32>> = slots.iter().map(|&s| tokens(16, vocab, 10 + s)).collect();
        let chunks: Vec<Chunk<'_>> = slots
            .iter()
            .zip(&starts)
            .map(|(&slot, t)| Chunk {
                slot,
                tokens: t,
                logits: Logits::Last,
            })
            .collect();
        engine.step(&chunks);
        let started = Instant::now();
        decode(&mut engine, &slots, o.decode);
        batched_s.push(started.elapsed().as_secs_f64());
    }
    let (prompt_s, decode_s, batched_s) = (median(prompt_s), median(decode_s), median(batched_s));
    // Read before the bandwidth floors below allocate their buffer.
    let anonymous_bytes = std::fs::read_to_string("/proc/self/smaps_rollup")
        .map(|t| modelhost_node::memory::kb_field(&t, "Anonymous") * 1024)
        .unwrap_or(0);

    Ok(BenchReport {
        model: path.display().to_string(),
        threads: o.threads,
        kernels: modelhost_engine::simd::kernels(),
        weight_bytes_per_step: engine.weight_bytes_per_step(),
        scratch_bytes: engine.scratch_bytes(),
        kv_bytes: engine.kv_bytes(),
        prompt_tokens: o.prompt,
        prompt_tok_s: f64::from(o.prompt) / prompt_s,
        decode_tokens: o.decode,
        decode_tok_s: f64::from(o.decode) / decode_s,
        sequences,
        batched_tok_s: f64::from(o.decode * sequences) / batched_s,
        anonymous_bytes,
        heap_read_gbs: read_bandwidth(&vec![1u8; 1 << 30], o.threads),
        mapping_read_gbs: read_bandwidth(&model.files[0], o.threads),
    })
}
