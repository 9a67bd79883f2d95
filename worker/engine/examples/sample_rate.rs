//! How long one draw of the next token takes over a vocabulary the size of gemma's (262,144),
//! for the sampling settings a request can ask for, beside one plain pass over the same row
//! of logits (the floor: every setting must at least read the row once).
//!
//! `cargo run --release -p modelhost-engine --example sample_rate -- [VOCAB]`
//!
//! The logits are a fixed pseudo-random row shaped like a model's: most tokens far below the
//! best, a few dozen near it.

use modelhost_engine::sample::Sampler;
use modelhost_protocol::wire::Sampling;
use std::time::Instant;

fn main() {
    let vocab: usize = std::env::args()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(262_144);
    let mut seed = 7u64;
    let mut uniform = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 40) as f32 / (1u64 << 24) as f32
    };
    // A sum of four uniforms is near normal; spread to a standard deviation of about 3, and
    // lift one token in 4,096 so that the head has a few dozen candidates.
    let logits: Vec<f32> = (0..vocab)
        .map(|i| {
            let v = (uniform() + uniform() + uniform() + uniform() - 2.0) * 5.2;
            if i % 4096 == 17 {
                v + 12.0
            } else {
                v
            }
        })
        .collect();
    let rounds = 200;
    let time = |f: &mut dyn FnMut() -> u64| {
        let mut best = f64::MAX;
        let mut check = 0u64;
        for _ in 0..3 {
            let t = Instant::now();
            for _ in 0..rounds {
                check = check.wrapping_add(f());
            }
            best = best.min(t.elapsed().as_secs_f64() / rounds as f64);
        }
        std::hint::black_box(check);
        best
    };
    let floor = time(&mut || std::hint::black_box(&logits).iter().sum::<f32>().to_bits() as u64);
    println!(
        "{vocab} logits; one pass summing them: {:.1} µs",
        floor * 1e6
    );
    println!("| setting | µs per draw | / one pass |");
    println!("|---|---|---|");
    let settings: [(&str, Sampling); 5] = [
        ("greedy", Sampling::default()),
        (
            "temperature 1 (the OpenAI default)",
            sampling(1.0, 0, 1.0, 0.0),
        ),
        ("temperature 0.8, top-k 40", sampling(0.8, 40, 1.0, 0.0)),
        ("temperature 1, top-p 0.9", sampling(1.0, 0, 0.9, 0.0)),
        ("temperature 1, min-p 0.05", sampling(1.0, 0, 1.0, 0.05)),
    ];
    for (name, params) in settings {
        let mut sampler = Sampler::new(params, &[]);
        let t = time(&mut || u64::from(sampler.sample(&logits, &[], None).token));
        println!("| {name} | {:.1} | {:.1}× |", t * 1e6, t / floor);
    }
}

fn sampling(temperature: f32, top_k: u32, top_p: f32, min_p: f32) -> Sampling {
    Sampling {
        temperature,
        top_k,
        top_p,
        min_p,
        seed: 3,
        ..Sampling::default()
    }
}
