//! The kernels against their definitions: every weight format's dot product equals the dot
//! product of the dequantized weights with the dequantized activations, and each SIMD kernel
//! equals its scalar reference within a stated tolerance.

use modelhost_engine::quant::{
    dot, dot_rows_using, dot_scalar, prepare, prepare_scalar, ActFormat, Kernels, PreparedRow,
    QuantizedActs, WeightFormat,
};
use modelhost_protocol::random_blocks::random_weights;
use proptest::prelude::*;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn normal(&mut self) -> f32 {
        (0..4)
            .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32)
            .sum::<f32>()
            - 2.0
    }
}

fn weights(format: WeightFormat, n: usize, rng: &mut Rng) -> Vec<u8> {
    random_weights(format.ggml(), n, 0.05, &mut || rng.next()).unwrap()
}

fn activations(format: ActFormat, n: usize, rng: &mut Rng) -> (Vec<f32>, QuantizedActs) {
    let x: Vec<f32> = (0..n).map(|_| rng.normal() * 3.0).collect();
    let mut q = QuantizedActs::new(format);
    q.quantize(&x, 1, n);
    (x, q)
}

/// The activation row as the kernels see it, back in floats.
fn dequantized_acts(q: &QuantizedActs) -> Vec<f32> {
    if q.format == ActFormat::F32 {
        return q.f32s.clone();
    }
    let block = q.format.block();
    q.qs.iter()
        .enumerate()
        .map(|(i, &v)| q.d[i / block] * f32::from(v))
        .collect()
}

#[test]
fn activation_quantization_is_within_half_a_step() {
    let mut rng = Rng(7);
    for format in [ActFormat::Q8x32, ActFormat::Q8x256] {
        let (x, q) = activations(format, 1024, &mut rng);
        let back = dequantized_acts(&q);
        for (i, (a, b)) in x.iter().zip(&back).enumerate() {
            let step = q.d[i / format.block()].abs();
            // Q8x32 stores its factor as f16: allow its rounding on top of half a step.
            assert!(
                (a - b).abs() <= 0.5 * step + 1e-3 * a.abs(),
                "{format:?} {i}: {a} vs {b}"
            );
        }
        for (g, s) in q.bsums.iter().enumerate() {
            let sum: i16 = q.qs[16 * g..16 * g + 16]
                .iter()
                .map(|&v| i16::from(v))
                .sum();
            assert_eq!(*s, sum);
        }
    }
}

#[test]
fn every_dot_product_equals_the_dequantized_one() {
    let mut rng = Rng(11);
    let n = 1024;
    for format in WeightFormat::ALL {
        for _ in 0..8 {
            let w = weights(format, n, &mut rng);
            let mut deq = vec![0f32; n];
            format.dequantize_row(&w, &mut deq);
            assert!(deq.iter().all(|v| v.is_finite()), "{format:?}");
            let (_, q) = activations(format.activation(), n, &mut rng);
            let a = dequantized_acts(&q);
            let exact: f64 = deq
                .iter()
                .zip(&a)
                .map(|(w, x)| f64::from(*w) * f64::from(*x))
                .sum();
            let scale: f64 = deq
                .iter()
                .zip(&a)
                .map(|(w, x)| f64::from((w * x).abs()))
                .sum();
            let mut row = PreparedRow::default();
            prepare(format, &w, n, &mut row);
            let got = f64::from(dot_scalar(format, &w, &row, q.row(0)));
            assert!(
                (got - exact).abs() <= 1e-5 * scale + 1e-6,
                "{format:?}: {got} vs {exact} (scale {scale})"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// SIMD against scalar: equal up to float summation order, which the tolerance bounds at
    /// 1e-5 of the sum of the terms' magnitudes.
    #[test]
    fn simd_kernels_equal_the_scalar_ones(seed in any::<u64>(), blocks in 1usize..6, which in 0usize..13) {
        let format = WeightFormat::ALL[which];
        let n = 256 * blocks;
        let mut rng = Rng(seed);
        let w = weights(format, n, &mut rng);
        let (_, q) = activations(format.activation(), n, &mut rng);
        let (mut slow_row, mut row) = (PreparedRow::default(), PreparedRow::default());
        prepare_scalar(format, &w, n, &mut slow_row);
        prepare(format, &w, n, &mut row);
        let (u, v) = (slow_row.unpacked(), row.unpacked());
        // Unpacking is exact: the SIMD unpackers must produce the scalar ones' bytes.
        prop_assert_eq!(&u.q, &v.q);
        prop_assert_eq!(&u.scale, &v.scale);
        prop_assert_eq!(&u.offset, &v.offset);
        prop_assert_eq!(&u.d, &v.d);
        prop_assert_eq!(&u.dmin, &v.dmin);
        prop_assert_eq!(u.offset32, v.offset32);
        let scalar = dot_scalar(format, &w, &slow_row, q.row(0));
        let fast = dot(format, &w, &row, q.row(0));
        let mut deq = vec![0f32; n];
        format.dequantize_row(&w, &mut deq);
        let scale: f32 = deq.iter().zip(dequantized_acts(&q)).map(|(w, x)| (w * x).abs()).sum();
        prop_assert!((scalar - fast).abs() <= 1e-5 * scale + 1e-6, "{:?}: {} vs {}", format, scalar, fast);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The row kernels a matrix product uses (in registers for one or two activation rows,
    /// through a prepared buffer for more) against the scalar dot product of each pair.
    #[test]
    fn row_kernels_equal_the_scalar_dot_products(
        seed in any::<u64>(),
        blocks in 1usize..4,
        rows in 1usize..5,
        acts_rows in 1usize..10,
        which in 0usize..13,
    ) {
        let format = WeightFormat::ALL[which];
        let n = 256 * blocks;
        let mut rng = Rng(seed);
        let w: Vec<u8> = (0..rows).flat_map(|_| weights(format, n, &mut rng)).collect();
        let x: Vec<f32> = (0..acts_rows * n).map(|_| rng.normal() * 3.0).collect();
        let mut q = QuantizedActs::new(format.activation());
        q.quantize(&x, acts_rows, n);
        let mut got = vec![f32::NAN; rows * acts_rows];
        let mut prepared = PreparedRow::default();
        modelhost_engine::quant::dot_rows(format, &w, n, 0..rows, &q, &mut prepared, |j, r, v| {
            got[j * rows + r] = v;
        });
        let rb = format.row_bytes(n);
        for r in 0..rows {
            let row = &w[r * rb..(r + 1) * rb];
            let mut p = PreparedRow::default();
            prepare_scalar(format, row, n, &mut p);
            let mut deq = vec![0f32; n];
            format.dequantize_row(row, &mut deq);
            for j in 0..acts_rows {
                let want = dot_scalar(format, row, &p, q.row(j));
                let a = &x[j * n..(j + 1) * n];
                let scale: f32 = deq.iter().zip(a).map(|(w, x)| (w * x).abs()).sum();
                let v = got[j * rows + r];
                prop_assert!((v - want).abs() <= 1e-5 * scale + 1e-6, "{:?} row {} act {}: {} vs {}", format, r, j, v, want);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The K-quants (Q4_K, Q5_K, Q6_K) take exact integers per super-block and one float
    /// expression for each, so every kernel set, decoding (up to four activation rows) or a
    /// prompt (more), gives the scalar dot product's bits.
    #[test]
    fn k_quant_rows_give_the_scalar_bits(
        seed in any::<u64>(),
        blocks in 1usize..6,
        rows in 1usize..11,
        acts_rows in 1usize..40,
        which in 0usize..3,
        extreme in any::<bool>(),
        same_sign in any::<bool>(),
    ) {
        let format = [WeightFormat::Q4K, WeightFormat::Q5K, WeightFormat::Q6K][which];
        let n = 256 * blocks;
        let mut rng = Rng(seed);
        let mut w: Vec<u8> = (0..rows).flat_map(|_| weights(format, n, &mut rng)).collect();
        if extreme {
            // Every quant and scale bit set: the largest integers the kernels can meet (Q6_K's
            // scales then read -1; its quants 63).
            let rb = format.row_bytes(n);
            for row in w.chunks_exact_mut(rb) {
                for blk in row.chunks_exact_mut(rb / blocks) {
                    let len = blk.len();
                    let keep = if format == WeightFormat::Q6K { len - 2..len } else { 0..4 };
                    for (i, b) in blk.iter_mut().enumerate() {
                        if !keep.contains(&i) {
                            *b = 0xff;
                        }
                    }
                }
            }
        }
        // Extreme activations of one sign make the largest sums of products a kernel holds
        // (those that would pass an i16 if summed too long); of both signs, others.
        let x: Vec<f32> = (0..acts_rows * n)
            .map(|i| if extreme { if same_sign || i % 3 == 0 { 50.0 } else { -50.0 } } else { rng.normal() * 3.0 })
            .collect();
        let mut q = QuantizedActs::new(format.activation());
        q.quantize(&x, acts_rows, n);
        let rb = format.row_bytes(n);
        let mut want = Vec::new();
        for j in 0..acts_rows {
            for r in 0..rows {
                let row = &w[r * rb..(r + 1) * rb];
                let mut p = PreparedRow::default();
                prepare_scalar(format, row, n, &mut p);
                want.push(dot_scalar(format, row, &p, q.row(j)).to_bits());
            }
        }
        for kernels in [Kernels::Scalar, Kernels::Avx2, Kernels::Avx512Vnni] {
            if !kernels.available() {
                continue;
            }
            let got = all_dots(kernels, format, &w, n, rows, &q);
            prop_assert_eq!(&got, &want, "{:?} with {:?}, {} blocks, {} rows, {} activation rows", format, kernels, blocks, rows, acts_rows);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A prompt's rows against the 32-weight formats (more than four activation rows: the
    /// AVX2 panel kernel where AVX2 is the best the CPU has) give the bits each row gets
    /// alone (one activation row: the register kernel), for odd and even numbers of blocks,
    /// panels cut short, and Q8_0 quants of any byte.
    #[test]
    fn prompt_rows_give_the_bits_of_one_row_alone(
        seed in any::<u64>(),
        blocks in 1usize..10,
        rows in 1usize..7,
        acts_rows in 5usize..30,
        which in 0usize..5,
        raw_q8 in any::<bool>(),
    ) {
        let format = [
            WeightFormat::Q8_0,
            WeightFormat::Q4_0,
            WeightFormat::Q4_1,
            WeightFormat::Q5_0,
            WeightFormat::Q5_1,
        ][which];
        let n = 32 * blocks;
        let mut rng = Rng(seed);
        let mut w: Vec<u8> = (0..rows).flat_map(|_| weights(format, n, &mut rng)).collect();
        if raw_q8 && format == WeightFormat::Q8_0 {
            for block in w.chunks_exact_mut(34) {
                block[2..].iter_mut().for_each(|b| *b = rng.next() as u8);
            }
        }
        let x: Vec<f32> = (0..acts_rows * n).map(|_| rng.normal() * 3.0).collect();
        let mut q = QuantizedActs::new(format.activation());
        q.quantize(&x, acts_rows, n);
        let kernels = modelhost_engine::simd::kernels_in_use();
        let together = all_dots(kernels, format, &w, n, rows, &q);
        let mut alone = Vec::new();
        for j in 0..acts_rows {
            let mut one = QuantizedActs::new(format.activation());
            one.quantize(&x[j * n..(j + 1) * n], 1, n);
            alone.extend(all_dots(kernels, format, &w, n, rows, &one));
        }
        prop_assert_eq!(together, alone, "{:?} with {:?}, {} blocks, {} rows, {} activation rows", format, kernels, blocks, rows, acts_rows);
    }
}

/// Every dot product of `rows` weight rows with `acts_rows` activation rows, by `kernels`.
fn all_dots(
    kernels: Kernels,
    format: WeightFormat,
    w: &[u8],
    n: usize,
    rows: usize,
    q: &QuantizedActs,
) -> Vec<u32> {
    let mut got = vec![f32::NAN.to_bits(); rows * q.rows];
    let mut prepared = PreparedRow::default();
    dot_rows_using(
        kernels,
        format,
        w,
        n,
        0..rows,
        q,
        &mut prepared,
        |j, r, v| {
            got[j * rows + r] = v.to_bits();
        },
    );
    got
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The AVX-512 VNNI kernels give the AVX2 kernels' bits, for every format, for decoding
    /// (up to four activation rows, streamed) and prompts (more, tiled), and for rows with an
    /// odd number of 32-weight blocks.
    #[test]
    fn avx512_kernels_give_the_avx2_bits(
        seed in any::<u64>(),
        blocks in 1usize..10,
        rows in 1usize..6,
        acts_rows in 1usize..12,
        which in 0usize..13,
        raw_q8 in any::<bool>(),
    ) {
        if !Kernels::Avx512Vnni.available() {
            eprintln!("no AVX-512 VNNI on this CPU: nothing to compare");
            return Ok(());
        }
        let format = WeightFormat::ALL[which];
        let n = format.activation().block().max(32) * blocks;
        let mut rng = Rng(seed);
        let mut w: Vec<u8> = (0..rows).flat_map(|_| weights(format, n, &mut rng)).collect();
        if raw_q8 && format == WeightFormat::Q8_0 {
            // Any byte at all for the quants, -128 included, which no quantizer writes but a
            // file may hold.
            for block in w.chunks_exact_mut(34) {
                block[2..].iter_mut().for_each(|b| *b = rng.next() as u8);
            }
        }
        let x: Vec<f32> = (0..acts_rows * n).map(|_| rng.normal() * 3.0).collect();
        let mut q = QuantizedActs::new(format.activation());
        q.quantize(&x, acts_rows, n);
        let avx2 = all_dots(Kernels::Avx2, format, &w, n, rows, &q);
        let avx512 = all_dots(Kernels::Avx512Vnni, format, &w, n, rows, &q);
        prop_assert!(avx512.iter().all(|&v| v != f32::NAN.to_bits()), "a dot product was never written");
        prop_assert_eq!(avx2, avx512, "{:?}, {} blocks, {} rows, {} activation rows", format, blocks, rows, acts_rows);
    }
}

proptest! {
    /// The SIMD activation quantization equals the scalar one exactly (same rounding, same
    /// factor), including ties and blocks of zeros.
    #[test]
    fn simd_quantization_equals_scalar(seed in any::<u64>(), scale in 0.0f32..100.0, ties in any::<bool>()) {
        use modelhost_engine::quant::{quantize_q8x256, quantize_q8x256_scalar, quantize_q8x32, quantize_q8x32_scalar};
        let mut rng = Rng(seed);
        let x: Vec<f32> = (0..256)
            .map(|i| if ties { (i as f32 - 128.0) * 0.5 * scale / 64.0 } else { rng.normal() * scale })
            .collect();
        let (mut a, mut b) = (vec![0i8; 256], vec![0i8; 256]);
        prop_assert_eq!(quantize_q8x256(&x, &mut a).to_bits(), quantize_q8x256_scalar(&x, &mut b).to_bits());
        prop_assert_eq!(&a, &b);
        for block in x.chunks(32) {
            let (mut a, mut b) = (vec![0i8; 32], vec![0i8; 32]);
            prop_assert_eq!(quantize_q8x32(block, &mut a).to_bits(), quantize_q8x32_scalar(block, &mut b).to_bits());
            prop_assert_eq!(&a, &b);
        }
    }
}

/// Every format's block decoder against gguf-py's `gguf.quants.dequantize` (0.19.0) on random
/// blocks with scales of both signs: `tests/fixtures/dequant.bin`, made by
/// `scripts/reference/dequant_fixture.py`. The values agree to f32 rounding (gguf-py multiplies
/// in another order).
#[test]
fn dequantization_matches_gguf_py() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dequant.bin");
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..4], b"MHDQ");
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let mut at = 8;
    let mut seen = Vec::new();
    for _ in 0..u32_at(4) {
        let ty = modelhost_protocol::GgmlType::try_from(u32_at(at) as u32).unwrap();
        let n = u32_at(at + 4);
        let raw = &bytes[at + 8..at + 8 + n];
        at += 8 + n;
        let count = u32_at(at);
        let want: Vec<f32> = bytes[at + 4..at + 4 + 4 * count]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        at += 4 + 4 * count;
        let format = WeightFormat::from_ggml(ty).unwrap();
        let mut got = vec![0f32; count];
        format.dequantize_row(raw, &mut got);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-6 * scale.max(1.0),
                "{}: value {i}: {g} vs gguf-py {w}",
                ty.name()
            );
        }
        seen.push(format);
    }
    assert_eq!(
        seen,
        WeightFormat::ALL,
        "every format the engine computes with"
    );
}
