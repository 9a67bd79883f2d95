use modelhost_engine::quant::{dot_rows, ActFormat, PreparedRow, QuantizedActs, WeightFormat};
use modelhost_protocol::random_blocks::random_weights;
use std::time::Instant;
fn main() {
    let fmt = match std::env::args().nth(1).as_deref() {
        Some("q5_0") => WeightFormat::Q5_0,
        Some("q4_k") => WeightFormat::Q4K,
        Some("q6_k") => WeightFormat::Q6K,
        _ => WeightFormat::Q8_0,
    };
    let cols = 640usize.max(if fmt.block_elems() == 256 { 1024 } else { 640 });
    let rows: usize = std::env::var("ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let mut s = 1u64;
    let w = random_weights(fmt.ggml(), rows * cols, 0.05, &mut || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
        s
    })
    .unwrap();
    let nacts: usize = std::env::args().nth(2).map_or(1, |v| v.parse().unwrap());
    let x: Vec<f32> = (0..cols * nacts).map(|i| (i as f32).sin()).collect();
    let mut a = QuantizedActs::new(fmt.activation());
    a.quantize(&x, nacts, cols);
    let mut p = PreparedRow::default();
    let mut sink = 0f32;
    let reps = (200_000 / rows).max(5);
    for _ in 0..reps {
        let t = Instant::now();
        dot_rows(fmt, &w, cols, 0..rows, &a, &mut p, |_, _, v| sink += v);
        let dt = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let sum: u64 = w
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .fold(0, |a, b| a.wrapping_add(b));
        let dt2 = t.elapsed().as_secs_f64();
        println!(
            "{:?}: {:.2} GB/s ({:.1} ms); plain sum {:.2} GB/s {}",
            fmt,
            w.len() as f64 / dt / 1e9,
            dt * 1e3,
            w.len() as f64 / dt2 / 1e9,
            sum & 1
        );
    }
    let _ = ActFormat::F32;
    println!("{sink}");
}
