//! The element-wise and row operations of a transformer block, computed as llama.cpp's CPU
//! backend computes them (its order of operations, its f16 roundings), so that the engine's
//! logits stay close to the reference.

use std::sync::OnceLock;

use crate::f16::{f16_to_f32, f32_to_f16, round_f16};

/// `1 / sqrt(mean(x²) + eps)`, the squares (f32, as ggml rounds them) summed in f64.
///
/// ggml adds the squares one after another. Eight independent f64 sums, added at the end,
/// differ from that order by a few f64 ulps, far below the f32 the mean is rounded to, and
/// they do not wait on each other: a row's sum takes an eighth of the time. The norms run
/// several times per layer and token, so the serial sum was a measurable part of a prompt.
fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let mut lanes = [0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane += f64::from(v * v);
        }
    }
    for (lane, v) in lanes.iter_mut().zip(chunks.remainder()) {
        *lane += f64::from(v * v);
    }
    let sum = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
        + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    let mean = (sum / x.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

/// `out = x / rms(x) · w` (ggml's rms_norm then mul: the sum of squares in f64).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let scale = rms_scale(x, eps);
    for ((o, v), w) in out.iter_mut().zip(x).zip(w) {
        *o = (v * scale) * w;
    }
}

/// [`rms_norm`] in place.
pub fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let scale = rms_scale(x, eps);
    for (v, w) in x.iter_mut().zip(w) {
        *v = (*v * scale) * w;
    }
}

/// The rotation of one position: a cosine and sine per rotated pair.
pub struct RopeTable {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

/// How rope rotates: its base, the dimensions it covers, the position scale and the per-pair
/// frequency factors (Llama 3).
#[derive(Debug, Clone)]
pub struct Rope {
    pub dims: usize,
    pub base: f32,
    pub freq_scale: f32,
    pub neox: bool,
    pub factors: Option<Vec<f32>>,
}

impl Rope {
    /// The table for position `pos`, as ggml builds it: theta multiplied by `base^(-2/dims)`
    /// pair after pair in f32.
    pub fn table(&self, pos: u32, table: &mut RopeTable) {
        let pairs = self.dims / 2;
        table.cos.resize(pairs, 0.0);
        table.sin.resize(pairs, 0.0);
        let theta_scale = self.base.powf(-2.0 / self.dims as f32);
        let mut theta = pos as f32;
        for i in 0..pairs {
            let ff = self.factors.as_ref().map_or(1.0, |f| f[i]);
            let t = self.freq_scale * (theta / ff);
            table.cos[i] = t.cos();
            table.sin[i] = t.sin();
            theta *= theta_scale;
        }
    }

    /// Rotates one head in place.
    pub fn apply(&self, head: &mut [f32], table: &RopeTable) {
        let pairs = self.dims / 2;
        for i in 0..pairs {
            let (a, b) = if self.neox {
                (i, i + pairs)
            } else {
                (2 * i, 2 * i + 1)
            };
            let (x0, x1) = (head[a], head[b]);
            let (c, s) = (table.cos[i], table.sin[i]);
            head[a] = x0 * c - x1 * s;
            head[b] = x0 * s + x1 * c;
        }
    }
}

/// GELU (tanh form) as ggml's CPU backend evaluates it: from a table indexed by the input
/// rounded to f16, holding f16 results; below -10 it is 0, above 10 the input. The table here
/// holds those f16 results already widened to f32 (the same values), so that a lookup needs
/// no conversion back.
fn gelu_table() -> &'static [f32] {
    static TABLE: OnceLock<Vec<f32>> = OnceLock::new();
    TABLE.get_or_init(|| {
        const SQRT_2_OVER_PI: f32 = 0.797_884_6;
        const COEF_A: f32 = 0.044_715;
        (0..=u16::MAX)
            .map(|h| {
                let x = f16_to_f32(h);
                let y = 0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + COEF_A * x * x)).tanh());
                round_f16(y)
            })
            .collect()
    })
}

/// ggml's GELU of one value, from `table`.
#[inline]
fn gelu_from(table: &[f32], x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        table[usize::from(f32_to_f16(x))]
    }
}

/// `gate = gelu(gate) · up` (GeGLU).
pub fn geglu(gate: &mut [f32], up: &[f32]) {
    let table = gelu_table();
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2() {
        // SAFETY: AVX2 and F16C were detected at run time; the table has an entry for every
        // f16.
        unsafe { x86::geglu(gate, up, table) };
        return;
    }
    for (g, u) in gate.iter_mut().zip(up) {
        *g = gelu_from(table, *g) * u;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// [`super::geglu`] eight values at a time: F16C rounds them to f16 (to nearest even, as
    /// the scalar conversion does), a gather reads the table, and the two ends are blended in.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn geglu(gate: &mut [f32], up: &[f32], table: &[f32]) {
        assert_eq!(table.len(), 1 << 16);
        let n = gate.len().min(up.len());
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n keeps the loads and the store in bounds, and every index
            // is an f16's bits, below the table's 65,536 entries.
            unsafe {
                let x = _mm256_loadu_ps(gate.as_ptr().add(i));
                let u = _mm256_loadu_ps(up.as_ptr().add(i));
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x);
                let looked_up = _mm256_i32gather_ps::<4>(table.as_ptr(), _mm256_cvtepu16_epi32(h));
                let high = _mm256_cmp_ps::<_CMP_GE_OQ>(x, _mm256_set1_ps(10.0));
                let low = _mm256_cmp_ps::<_CMP_LE_OQ>(x, _mm256_set1_ps(-10.0));
                let gelu = _mm256_andnot_ps(low, _mm256_blendv_ps(looked_up, x, high));
                _mm256_storeu_ps(gate.as_mut_ptr().add(i), _mm256_mul_ps(gelu, u));
            }
            i += 8;
        }
        for j in i..n {
            gate[j] = super::gelu_from(table, gate[j]) * up[j];
        }
    }
}

/// `gate = silu(gate) · up` (SwiGLU).
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = x / (1.0 + (-x).exp()) * u;
    }
}

/// Softmax in place, the sum in f64 as ggml keeps it.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += f64::from(*v);
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sum_of_squares_in_lanes_gives_the_sequential_sums_scale() {
        // ggml's order, one f64 sum: the lanes must round to the same f32 scale on rows of
        // every length up to a layer's width, with values of very different sizes.
        let mut seed = 0x9e37_79b9_u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed as f32 / u32::MAX as f32 - 0.5) * 2f32.powi((seed % 24) as i32 - 12)
        };
        let mut differ = 0;
        for len in 1..=700 {
            let x: Vec<f32> = (0..len).map(|_| next()).collect();
            let sum: f64 = x.iter().map(|v| f64::from(v * v)).sum();
            let sequential = 1.0 / ((sum / len as f64) as f32 + 1e-6).sqrt();
            differ += usize::from(rms_scale(&x, 1e-6) != sequential);
        }
        assert_eq!(differ, 0);
    }

    #[test]
    fn rms_norm_makes_unit_rms() {
        let x = [3.0f32, -4.0, 0.0, 5.0];
        let mut out = [0f32; 4];
        rms_norm(&x, &[1.0; 4], 0.0, &mut out);
        let rms: f32 = (out.iter().map(|v| v * v).sum::<f32>() / 4.0).sqrt();
        assert!((rms - 1.0).abs() < 1e-6);
    }

    #[test]
    fn rope_rotates_pairs_by_position() {
        let rope = Rope {
            dims: 4,
            base: 10000.0,
            freq_scale: 1.0,
            neox: true,
            factors: None,
        };
        let mut table = RopeTable {
            cos: vec![],
            sin: vec![],
        };
        rope.table(0, &mut table);
        let mut head = [1.0f32, 2.0, 3.0, 4.0];
        rope.apply(&mut head, &table);
        assert_eq!(head, [1.0, 2.0, 3.0, 4.0], "position 0 does not rotate");
        rope.table(1, &mut table);
        rope.apply(&mut head, &table);
        // The first pair (0, 2) turns by 1 radian; the norm of each pair is kept.
        let (c, s) = (1f32.cos(), 1f32.sin());
        assert!((head[0] - (c - 3.0 * s)).abs() < 1e-6);
        assert!((head[2] - (s + 3.0 * c)).abs() < 1e-6);
        assert!(((head[1] * head[1] + head[3] * head[3]) - 20.0).abs() < 1e-4);
    }

    #[test]
    fn gelu_matches_its_definition_within_f16() {
        let mut g = [-11.0f32, -1.0, 0.0, 0.5, 3.0, 12.0];
        geglu(&mut g, &[1.0; 6]);
        let exact = |x: f32| 0.5 * x * (1.0 + (0.797_884_6 * x * (1.0 + 0.044_715 * x * x)).tanh());
        for (got, x) in g.iter().zip([-11.0f32, -1.0, 0.0, 0.5, 3.0, 12.0]) {
            let want = if x <= -10.0 {
                0.0
            } else if x >= 10.0 {
                x
            } else {
                exact(x)
            };
            assert!(
                (got - want).abs() <= 2e-3 * want.abs().max(1e-3),
                "{x}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn geglu_in_eight_lanes_gives_the_scalar_bits() {
        // Every f16 value (so every table entry), the ends and the values beside them, and
        // values between f16s, which must round as the scalar conversion rounds them.
        let mut gate: Vec<f32> = (0..=u16::MAX)
            .map(f16_to_f32)
            .filter(|x| !x.is_nan())
            .collect();
        gate.extend([
            -10.0,
            10.0,
            -9.999_999,
            9.999_999,
            -10.000_001,
            10.000_001,
            -0.0,
            1e-30,
        ]);
        gate.extend((0..4000).map(|i| (i as f32 - 2000.0) * 0.006_103_515_7));
        let up: Vec<f32> = (0..gate.len())
            .map(|i| 1.0 + (i % 7) as f32 * 0.25)
            .collect();
        let table = gelu_table();
        let want: Vec<u32> = gate
            .iter()
            .zip(&up)
            .map(|(&g, &u)| (gelu_from(table, g) * u).to_bits())
            .collect();
        let mut got = gate.clone();
        geglu(&mut got, &up);
        let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
        let first_difference = got.iter().zip(&want).position(|(a, b)| a != b);
        assert_eq!(
            first_difference,
            None,
            "at {:?}",
            first_difference.map(|i| gate[i])
        );
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut x = [1.0f32, 2.0, 3.0, -1e9];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(x[3], 0.0);
    }
}
