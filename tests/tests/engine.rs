//! The inference engine against llama.cpp, and its own consistency: logits and greedy
//! continuations recorded from llama-cpp-python 0.3.36 by `scripts/reference/engine-fixtures.sh`
//! into `tests/fixtures/engine/`, and the engine's batching, slots and errors.

use modelhost_engine::{EngineOptions, KvType};
use modelhost_tests::reference::{compare, fixture, read_reference, synthetic_model};
use modelhost_tests::{gemma_model, Scratch};
use modelhost_worker::standalone::open_model;

fn options(threads: usize) -> EngineOptions {
    EngineOptions {
        context: 1024,
        slots: 1,
        batch: 64,
        outputs: 64,
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
