//! The inference engine against llama.cpp, and its own consistency: logits and greedy
//! continuations recorded from llama-cpp-python 0.3.36 by `scripts/reference/engine-fixtures.sh`
//! into `tests/fixtures/engine/`, and the engine's batching, slots and errors.

use modelhost_engine::{EngineOptions, KvType};
use modelhost_tests::reference::{compare, fixture, read_reference, synthetic_model};
use modelhost_tests::{gemma_model, Scratch};
use modelhost_worker::standalone::open_model;

fn options(threads: usize) -> EngineOptions {
    sized(1024, 1, 64, threads)
}

/// An f16 engine of `slots` slots of `context` tokens, steps of `batch` tokens (each may be an
/// output), and `threads` threads.
fn sized(context: u32, slots: u32, batch: u32, threads: usize) -> EngineOptions {
    EngineOptions {
        context,
        slots,
        batch,
        outputs: batch,
        threads,
        kv_type: KvType::F16,
        swa_full: false,
    }
}

/// The real model: ten prompts of 5 to 400 tokens, against llama.cpp as llama-cpp-python runs
/// it (repacked weights, batches of 512).
///
/// The mean KL(llama.cpp ‖ engine) must be at most 0.01 (issue 13). Top-1 agreement and
/// identical greedy continuations are held to llama.cpp's agreement with itself: this model
/// sits on near-ties so often that 8-bit activation rounding decides them, and llama.cpp run
/// with batches of 1, or without its repacking, agrees with the fixture on 95.8% and 96.8% of
/// positions and on 4 and 3 of the 10 greedy continuations
/// (`scripts/reference/engine_reference.py --batch 1`, `--no-repack`; docs/engine.md).
#[test]
fn gemma_matches_llama_cpp() {
    let model = open_model(&gemma_model()).unwrap();
    let reference = read_reference(&fixture("engine/gemma.ref"));
    let mut engine = model.engine(options(2)).unwrap();
    let a = compare(&mut engine, &reference, 64);
    println!(
        "gemma: {} positions, top-1 {:.4}, KL mean {:.6} max {:.6}, greedy {}/{}, full rows max |diff| {} (max |logit| {})",
        a.positions,
        a.top1_rate(),
        a.kl_mean(),
        a.kl_max,
        a.greedy_same,
        a.greedy_total,
        a.full_max_diff,
        a.full_max_abs
    );
    assert!(a.kl_mean() <= 0.01, "KL {}", a.kl_mean());
    assert!(a.top1_rate() >= 0.94, "top-1 {}", a.top1_rate());
    assert!(
        a.greedy_same >= 3,
        "greedy {}/{}",
        a.greedy_same,
        a.greedy_total
    );
}

const ARCHES: [&str; 4] = ["gemma3", "llama", "qwen2", "qwen3"];
const TYPES: [&str; 13] = [
    "f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_K", "q3_K", "q4_K", "q5_K",
    "q6_K",
];

/// Every architecture in every block format: a random-weight model of six blocks (gemma3's
/// sliding window of 16 is crossed by the 48- and 65-token prompts), teacher-forced and greedy.
///
/// Goals (issue 13): a mean KL of at most 0.01 for each model, and top-1 agreement of at least
/// 99%, here over each architecture's 13 models (1469 positions). A single model's 113
/// positions hold a near-tie or two that 8-bit activation rounding decides either way (llama.cpp
/// prompted in batches of 1 instead of 64 disagrees with itself on as many), so one model is held
/// to 97%, which any real error in a kernel or a block misses by far.
#[test]
fn synthetic_models_match_llama_cpp() {
    let dir = Scratch::new("engine-synth");
    let mut failures = Vec::new();
    for arch in ARCHES {
        let (mut positions, mut top1) = (0, 0);
        for ty in TYPES {
            let path = synthetic_model(&dir.0, arch, ty);
            let model = open_model(&path).unwrap();
            let reference = read_reference(&fixture(&format!("engine/{arch}-{ty}.ref")));
            let mut engine = model.engine(options(2)).unwrap();
            let a = compare(&mut engine, &reference, 64);
            println!(
                "{arch:6} {ty:5}: top-1 {:.4}, KL mean {:.6} max {:.6}, greedy {}/{}, full max |diff| {:.4} of {:.2}",
                a.top1_rate(),
                a.kl_mean(),
                a.kl_max,
                a.greedy_same,
                a.greedy_total,
                a.full_max_diff,
                a.full_max_abs
            );
            if a.top1_rate() < 0.97 || a.kl_mean() > 0.01 {
                failures.push(format!(
                    "{arch} {ty}: top-1 {}, KL {}",
                    a.top1_rate(),
                    a.kl_mean()
                ));
            }
            positions += a.positions;
            top1 += a.top1;
        }
        let rate = top1 as f64 / positions as f64;
        println!("{arch}: top-1 {rate:.4} over {positions} positions");
        if rate < 0.99 {
            failures.push(format!("{arch}: top-1 {rate} over {positions} positions"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

use modelhost_engine::{Chunk, Engine, Logits, StepError};

fn synthetic_engine(dir: &Scratch, arch: &str, ty: &str, slots: u32, batch: u32) -> Engine {
    let path = synthetic_model(&dir.0, arch, ty);
    let model = open_model(&path).unwrap();
    model.engine(sized(256, slots, batch, 2)).unwrap()
}

/// Tokens for a slot: deterministic, inside the synthetic vocabulary, past its special tokens.
fn tokens(n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| 300 + (i.wrapping_mul(2_654_435_761).wrapping_add(seed * 97) % 700))
        .collect()
}

fn step_all(e: &mut Engine, slot: u32, tokens: &[u32]) -> Vec<f32> {
    let r = e.step(&[Chunk {
        slot,
        tokens,
        logits: Logits::All,
    }]);
    r[0].as_ref().expect("the chunk runs");
    e.logits()[..tokens.len() * e.vocab_size()].to_vec()
}

fn step_last(e: &mut Engine, slot: u32, tokens: &[u32]) -> Vec<f32> {
    let r = e.step(&[Chunk {
        slot,
        tokens,
        logits: Logits::Last,
    }]);
    r[0].as_ref().expect("the chunk runs");
    e.logits()[..e.vocab_size()].to_vec()
}

/// A token's logits do not depend on how the sequence was batched: one chunk of 40 tokens,
/// chunks of 7, and one token at a time give the same bits, past gemma3's window of 16 too.
/// (Each activation row is quantized on its own, and each dot product sums in the same order
/// whatever the batch, so the results are exactly equal.)
#[test]
fn decoding_token_by_token_equals_one_batch() {
    let dir = Scratch::new("engine-batch");
    for (arch, ty) in [
        ("gemma3", "q4_K"),
        ("llama", "q5_0"),
        ("qwen2", "f16"),
        ("qwen3", "q3_K"),
    ] {
        let mut e = synthetic_engine(&dir, arch, ty, 1, 64);
        let v = e.vocab_size();
        let t = tokens(40, 1);
        let whole = step_all(&mut e, 0, &t);
        e.clear(0).unwrap();
        let mut sevens = Vec::new();
        for piece in t.chunks(7) {
            sevens.extend(step_all(&mut e, 0, piece));
        }
        assert_eq!(whole, sevens, "{arch} {ty}: chunks of 7");
        e.clear(0).unwrap();
        for (i, &tok) in t.iter().enumerate() {
            let row = step_last(&mut e, 0, &[tok]);
            assert_eq!(
                row,
                &whole[i * v..(i + 1) * v],
                "{arch} {ty}: token {i} alone"
            );
        }
        assert_eq!(e.slot_len(0).unwrap(), 40);
    }
}

/// Gemma has one KV head, so a token decoded alone is one attention item, and its four query
/// heads are split over the threads (three threads: parts of two, two and none). The logits
/// are still those of the whole batch, bit for bit.
#[test]
fn one_kv_head_split_over_threads_decodes_as_the_batch() {
    let model = open_model(&gemma_model()).unwrap();
    let mut e = model.engine(sized(256, 1, 16, 3)).unwrap();
    let v = e.vocab_size();
    let t = tokens(12, 3);
    let whole = step_all(&mut e, 0, &t);
    e.clear(0).unwrap();
    for (i, &tok) in t.iter().enumerate() {
        let row = step_last(&mut e, 0, &[tok]);
        assert!(row == whole[i * v..(i + 1) * v], "token {i} alone");
    }
}

/// Four sequences in one step give each one's logits as if it ran alone, and a step reads each
/// weight once for all of them.
#[test]
fn four_sequences_batched_equal_each_alone() {
    let dir = Scratch::new("engine-slots");
    for (arch, ty) in [("gemma3", "q6_K"), ("llama", "q8_0")] {
        let mut e = synthetic_engine(&dir, arch, ty, 4, 64);
        let v = e.vocab_size();
        let prompts: Vec<Vec<u32>> = (0..4).map(|s| tokens(9 + 3 * s, s as u32)).collect();
        let mut alone = Vec::new();
        for (slot, p) in prompts.iter().enumerate() {
            alone.push(step_last(&mut e, slot as u32, p));
            alone.push(step_last(&mut e, slot as u32, &[500 + slot as u32]));
        }
        for slot in 0..4 {
            e.clear(slot).unwrap();
        }
        let chunks: Vec<Chunk<'_>> = prompts
            .iter()
            .enumerate()
            .map(|(slot, p)| Chunk {
                slot: slot as u32,
                tokens: p,
                logits: Logits::Last,
            })
            .collect();
        let results = e.step(&chunks);
        for (slot, r) in results.iter().enumerate() {
            let rows = r.clone().unwrap();
            assert_eq!(
                &e.logits()[rows.start * v..rows.end * v],
                &alone[2 * slot][..],
                "{arch}: slot {slot}'s prompt"
            );
        }
        let next: Vec<[u32; 1]> = (0..4).map(|s| [500 + s]).collect();
        let chunks: Vec<Chunk<'_>> = next
            .iter()
            .enumerate()
            .map(|(slot, t)| Chunk {
                slot: slot as u32,
                tokens: t,
                logits: Logits::Last,
            })
            .collect();
        e.step(&chunks);
        for slot in 0..4 {
            assert_eq!(
                &e.logits()[slot * v..(slot + 1) * v],
                &alone[2 * slot + 1][..],
                "{arch}: slot {slot}'s next token"
            );
        }
    }
}

/// A bad chunk gets its own named error and the others in the step run as if it were absent.
#[test]
fn bad_chunks_are_refused_by_name_and_the_others_run() {
    let dir = Scratch::new("engine-bad");
    let mut e = synthetic_engine(&dir, "llama", "q4_0", 2, 16);
    let v = e.vocab_size();
    let good = tokens(5, 3);
    let alone = step_last(&mut e, 1, &good);
    e.clear(1).unwrap();
    let cases: Vec<(Vec<u32>, u32, StepError)> = vec![
        (
            vec![1, 5000],
            0,
            StepError::TokenOutOfRange {
                token: 5000,
                vocab: 1024,
            },
        ),
        (vec![1, 2], 7, StepError::NoSuchSlot { slot: 7, slots: 2 }),
        (
            tokens(12, 1),
            0,
            StepError::BatchTooLarge {
                tokens: 17,
                batch: 16,
            },
        ),
    ];
    for (bad, slot, error) in cases {
        let r = e.step(&[
            Chunk {
                slot: 1,
                tokens: &good,
                logits: Logits::Last,
            },
            Chunk {
                slot,
                tokens: &bad,
                logits: Logits::Last,
            },
        ]);
        assert_eq!(r[1], Err(error.clone()));
        assert_eq!(
            &e.logits()[..v],
            &alone[..],
            "the good chunk beside {error}"
        );
        e.clear(1).unwrap();
        assert_eq!(
            e.slot_len(0).unwrap(),
            0,
            "nothing of the bad chunk was kept"
        );
    }
    // The same slot twice in one step.
    let r = e.step(&[
        Chunk {
            slot: 0,
            tokens: &good,
            logits: Logits::Last,
        },
        Chunk {
            slot: 0,
            tokens: &good,
            logits: Logits::Last,
        },
    ]);
    assert_eq!(r[1], Err(StepError::DuplicateSlot { slot: 0 }));
    // A sequence longer than its slot.
    e.clear(0).unwrap();
    for _ in 0..16 {
        step_last(&mut e, 0, &tokens(16, 9));
    }
    assert_eq!(e.slot_len(0).unwrap(), 256);
    let r = e.step(&[Chunk {
        slot: 0,
        tokens: &[7],
        logits: Logits::Last,
    }]);
    assert_eq!(
        r[0],
        Err(StepError::ContextFull {
            slot: 0,
            len: 256,
            adding: 1,
            context: 256
        })
    );
}

/// Keeping a prefix and continuing gives what the whole sequence gave; a sliding-window slot
/// that has overwritten the window a prefix needs keeps nothing rather than something wrong.
#[test]
fn a_kept_prefix_continues_like_the_whole_sequence() {
    let dir = Scratch::new("engine-prefix");
    let mut e = synthetic_engine(&dir, "qwen3", "q5_K", 1, 64);
    let v = e.vocab_size();
    let t = tokens(30, 4);
    let whole = step_all(&mut e, 0, &t);
    assert_eq!(e.keep_prefix(0, 20).unwrap(), 20);
    let again = step_all(&mut e, 0, &t[20..]);
    assert_eq!(again, &whole[20 * v..]);

    // gemma3's windowed layers keep a ring of 256 cells (the window of 16 and a batch, padded)
    // of the 1024-token context.
    let model = open_model(&synthetic_model(&dir.0, "gemma3", "q8_0")).unwrap();
    let mut g = model.engine(sized(1024, 1, 16, 2)).unwrap();
    let long = tokens(600, 5);
    for piece in long.chunks(16) {
        step_last(&mut g, 0, piece);
    }
    assert_eq!(
        g.keep_prefix(0, 590).unwrap(),
        590,
        "the window before 590 is still there"
    );
    assert_eq!(
        g.keep_prefix(0, 20).unwrap(),
        0,
        "the window before 20 was overwritten long ago"
    );
    // What was kept still continues correctly: 590 tokens, then the rest again.
    let mut h = model.engine(sized(1024, 1, 16, 2)).unwrap();
    let mut rows = Vec::new();
    for piece in long.chunks(10) {
        rows = step_last(&mut h, 0, piece);
    }
    assert_eq!(h.keep_prefix(0, 590).unwrap(), 590);
    assert_eq!(step_last(&mut h, 0, &long[590..]), rows);
}

/// The planner sizes a CPU worker's scratch as the engine allocates it, within 10% (issue 13);
/// it used llama.cpp's figure, 514 MiB for gemma, where the engine needs about 21.
#[test]
fn the_plan_sizes_scratch_as_the_engine_allocates_it() {
    use modelhost_protocol::placement::{plan, DeviceId, DeviceSpec, PlanOptions};
    let model = open_model(&gemma_model()).unwrap();
    for (ctx, parallel, batch) in [(8192u32, 1u32, 512u32), (4096, 4, 256), (32768, 2, 512)] {
        let options = PlanOptions {
            context_length: Some(ctx),
            parallel,
            batch,
            ..PlanOptions::default()
        };
        let host = DeviceSpec {
            id: DeviceId::cpu(),
            name: "host".into(),
            total_bytes: 64 << 30,
            free_bytes: 64 << 30,
            limit_bytes: None,
        };
        let p = plan(&model.manifest, &[host], &options).unwrap();
        let planned = p.replicas[0].cpu_scratch_bytes as f64;
        let engine = model
            .engine(EngineOptions {
                context: ctx,
                slots: parallel,
                batch,
                outputs: parallel,
                threads: 4,
                kv_type: KvType::F16,
                swa_full: false,
            })
            .unwrap();
        let real = engine.scratch_bytes() as f64;
        println!(
            "ctx {ctx} × {parallel}, batch {batch}: plan {planned} bytes, engine {real} bytes"
        );
        assert!(
            (planned - real).abs() / real <= 0.10,
            "plan {planned} vs engine {real}"
        );
        assert!(
            engine.kv_bytes() <= p.replicas[0].cpu_kv_bytes,
            "the engine's KV fits the plan's"
        );
    }
}

/// A model the engine cannot run is a named build error, never a panic: a missing tensor, a
/// tensor whose shape disagrees with the hyper-parameters, one that runs past its file, an
/// unsupported KV type.
#[test]
fn models_the_engine_cannot_run_are_named() {
    use modelhost_engine::{BuildError, Engine};
    let dir = Scratch::new("engine-build");
    let model = open_model(&synthetic_model(&dir.0, "llama", "q8_0")).unwrap();
    let params = model.manifest.inference.clone().unwrap();
    let build = |tensors: Vec<modelhost_protocol::layers::RegionTensor>, kv: KvType| {
        Engine::new(
            &params,
            &tensors,
            model.files.clone(),
            EngineOptions {
                kv_type: kv,
                ..options(1)
            },
            None,
        )
        .err()
    };
    let all = model.tensors();
    let without: Vec<_> = all
        .iter()
        .filter(|t| t.name != "blk.3.ffn_down.weight")
        .cloned()
        .collect();
    assert_eq!(
        build(without, KvType::F16),
        Some(BuildError::MissingTensor("blk.3.ffn_down.weight".into()))
    );
    let mut reshaped = all.clone();
    let t = reshaped
        .iter_mut()
        .find(|t| t.name == "blk.0.attn_k.weight")
        .unwrap();
    t.dims = vec![256, 64];
    assert!(matches!(
        build(reshaped, KvType::F16),
        Some(BuildError::Shape { ref tensor, .. }) if tensor == "blk.0.attn_k.weight"
    ));
    let mut outside = all.clone();
    let t = outside
        .iter_mut()
        .find(|t| t.name == "output.weight")
        .unwrap();
    t.offset = model.files[0].len() as u64 - 16;
    assert!(matches!(
        build(outside, KvType::F16),
        Some(BuildError::OutOfFile { ref tensor, .. }) if tensor == "output.weight"
    ));
    let message = modelhost_engine::kv::KvType::from_name("q8_0")
        .unwrap_err()
        .to_string();
    assert_eq!(
        message,
        "KV cache type q8_0 is not supported by the CPU engine (use f16 or f32)"
    );
    assert!(
        build(all, KvType::F32).is_none(),
        "the untouched model builds, with an f32 cache too"
    );
}
