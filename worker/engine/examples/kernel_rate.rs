//! How fast each weight format's row kernel reads weights, one thread, one activation row (a
//! decode step) or many (a prompt): once over a matrix that stays in the L2 cache (the kernel's
//! own speed, also as weight-activation products per second) and once over one far larger than
//! the caches (what a decode step sees), beside a plain sum of the same bytes as the memory floor.
//!
//! `cargo run --release -p modelhost-engine --example kernel_rate -- [FORMAT ...] [--rows N] [--cols N]`

use modelhost_engine::quant::{dot_rows, PreparedRow, QuantizedActs, WeightFormat};
use modelhost_protocol::random_blocks::random_weights;
use std::time::Instant;

fn main() {
    let mut formats = Vec::new();
    let mut act_rows = 1usize;
    let mut cols = 4096usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--rows" {
            act_rows = args.next().and_then(|v| v.parse().ok()).expect("--rows N");
            continue;
        }
        if a == "--cols" {
            cols = args.next().and_then(|v| v.parse().ok()).expect("--cols N");
            continue;
        }
        let f = [
            ("q8_0", WeightFormat::Q8_0),
            ("q4_0", WeightFormat::Q4_0),
            ("q5_0", WeightFormat::Q5_0),
            ("q4_k", WeightFormat::Q4K),
            ("q5_k", WeightFormat::Q5K),
            ("q6_k", WeightFormat::Q6K),
        ]
        .into_iter()
        .find(|(n, _)| *n == a)
        .map(|(_, f)| f)
        .unwrap_or_else(|| panic!("unknown format {a}"));
        formats.push(f);
    }
    if formats.is_empty() {
        formats = vec![WeightFormat::Q8_0, WeightFormat::Q4K, WeightFormat::Q6K];
    }
    println!(
        "{act_rows} activation row(s) of {cols}, one thread, {:?} kernels",
        modelhost_engine::simd::kernels_in_use()
    );
    println!("| format | in L2 (GB/s of weights) | products in L2 (G/s) | streamed (GB/s of weights) | plain sum streamed (GB/s) |");
    println!("|---|---|---|---|---|");
    for format in formats {
        let mut seed = 1u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed
        };
        let rb = format.row_bytes(cols);
        let small_rows = (256 << 10) / rb;
        let big_rows = (512 << 20) / rb;
        let small = random_weights(format.ggml(), small_rows * cols, 0.05, &mut next).unwrap();
        let big = random_weights(format.ggml(), big_rows * cols, 0.05, &mut next).unwrap();
        let x: Vec<f32> = (0..cols * act_rows)
            .map(|i| ((i * 7919) % 1000) as f32 / 300.0 - 1.6)
            .collect();
        let mut acts = QuantizedActs::new(format.activation());
        acts.quantize(&x, act_rows, cols);
        let mut prepared = PreparedRow::with_capacity(cols);
        let mut sink = 0f32;
        let mut rate = |w: &[u8], rows: usize, reps: usize| {
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = Instant::now();
                for _ in 0..reps {
                    dot_rows(format, w, cols, 0..rows, &acts, &mut prepared, |_, _, v| {
                        sink += v
                    });
                }
                best = best.min(t.elapsed().as_secs_f64());
            }
            (w.len() * reps) as f64 / best / 1e9
        };
        let in_l2 = rate(&small, small_rows, 400);
        // Weight-activation products per second: weights per byte times rows.
        let products = in_l2 * (cols * small_rows) as f64 / small.len() as f64 * act_rows as f64;
        let streamed = rate(&big, big_rows, 1);
        let mut best = f64::MAX;
        let mut total = 0u64;
        for _ in 0..5 {
            let t = Instant::now();
            let words = big
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()));
            total = total.wrapping_add(words.fold(0u64, |s, w| s.wrapping_add(w)));
            best = best.min(t.elapsed().as_secs_f64());
        }
        let plain = big.len() as f64 / best / 1e9;
        println!(
            "| {} | {in_l2:.2} | {products:.1} | {streamed:.2} | {plain:.1} |",
            format.ggml()
        );
        std::hint::black_box((sink, total));
    }
}
