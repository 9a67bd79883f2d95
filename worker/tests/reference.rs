//! The engine against llama.cpp: logits and greedy continuations recorded from llama-cpp-python
//! 0.3.36 by `scripts/reference/engine_reference.py` into `tests/fixtures/`, compared here.

mod common;

use common::{compare, fixture, read_reference};
use modelhost_engine::{EngineOptions, KvType};
use modelhost_worker::standalone::open_model;

fn gemma() -> std::path::PathBuf {
    let path = std::env::var_os("MODELHOST_GEMMA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../models/gemma-3-270m-q4_k_m.gguf")
        });
    assert!(
        path.exists(),
        "{} is missing; run scripts/fetch-models.sh",
        path.display()
    );
    path
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
    let model = open_model(&gemma()).unwrap();
    let reference = read_reference(&fixture("gemma-reference.bin"));
    let mut engine = model
        .engine(EngineOptions {
            context: 1024,
            slots: 1,
            batch: 64,
            outputs: 64,
            threads: 2,
            kv_type: KvType::F16,
            swa_full: false,
        })
        .unwrap();
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
