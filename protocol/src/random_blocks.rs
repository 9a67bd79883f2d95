//! Random weights in any ggml block format whose values are sane: the quants are random bits and
//! the float fields (block scales and mins, float weights) are finite and chosen so that the
//! weights come out with a chosen spread around zero. Synthetic models and the engine's tests
//! use them; a file of random bits would hold NaN and infinite scales.

use crate::GgmlType;

/// Positions of the f16 scale fields in a block, and the standard deviation of the integer part
/// each weight gets from its quants and sub-block scales (from the format's definition in ggml),
/// with the mean of its quants where the format subtracts a min.
struct Layout {
    d: usize,
    min: Option<usize>,
    spread: f32,
    mean_q: f32,
}

fn layout(ty: GgmlType) -> Option<Layout> {
    let l = |d, min, spread, mean_q| {
        Some(Layout {
            d,
            min,
            spread,
            mean_q,
        })
    };
    match ty {
        GgmlType::Q4_0 => l(0, None, 4.61, 0.0),
        GgmlType::Q4_1 => l(0, Some(2), 4.61, 7.5),
        GgmlType::Q5_0 => l(0, None, 9.23, 0.0),
        GgmlType::Q5_1 => l(0, Some(2), 9.23, 15.5),
        GgmlType::Q8_0 => l(0, None, 73.9, 0.0),
        GgmlType::Q2_K => l(80, Some(82), 12.7, 1.5),
        GgmlType::Q3_K => l(108, None, 42.4, 0.0),
        GgmlType::Q4_K => l(0, Some(2), 218.0, 7.5),
        GgmlType::Q5_K => l(0, Some(2), 442.0, 15.5),
        GgmlType::Q6_K => l(208, None, 1365.0, 0.0),
        _ => None,
    }
}

/// f32 to IEEE half bits, rounding to nearest (for the small finite values written here).
pub fn f16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    let man = bits & 0x7f_ffff;
    if exp >= 0x1f {
        return sign | 0x7bff; // the largest finite half, never Inf
    }
    if exp <= 0 {
        if exp < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - exp) as u32;
        return sign | ((m + (1 << (shift - 1))) >> shift) as u16;
    }
    let r = ((exp as u32) << 10 | (man >> 13)) + u32::from(man & 0x1000 != 0);
    sign | r.min(0x7bff) as u16
}

/// `elements` weights of type `ty` (a multiple of its block size) with random quants, whose
/// values have a standard deviation of about `sigma` around zero. `next` supplies random bits.
/// Returns `None` for a type whose blocks this cannot lay out (the IQ and ternary types).
pub fn random_weights(
    ty: GgmlType,
    elements: usize,
    sigma: f32,
    next: &mut dyn FnMut() -> u64,
) -> Option<Vec<u8>> {
    // [0, 1)
    fn unit(next: &mut dyn FnMut() -> u64) -> f32 {
        (next() >> 40) as f32 / (1u64 << 24) as f32
    }
    // A sum of four uniforms: close enough to normal, and never far out.
    let gauss = |next: &mut dyn FnMut() -> u64| (0..4).map(|_| unit(next)).sum::<f32>() - 2.0;
    match ty {
        GgmlType::F32 => Some(
            (0..elements)
                .flat_map(|_| (gauss(next) * sigma * 1.73).to_le_bytes())
                .collect(),
        ),
        GgmlType::F16 => Some(
            (0..elements)
                .flat_map(|_| f16_bits(gauss(next) * sigma * 1.73).to_le_bytes())
                .collect(),
        ),
        GgmlType::BF16 => Some(
            (0..elements)
                .flat_map(|_| (((gauss(next) * sigma * 1.73).to_bits() >> 16) as u16).to_le_bytes())
                .collect(),
        ),
        _ => {
            let layout = layout(ty)?;
            let (block, size) = (ty.block_size() as usize, ty.type_size() as usize);
            let mut out = Vec::with_capacity(elements / block * size);
            let mut bits = Vec::with_capacity(size + 8);
            for _ in 0..elements / block {
                bits.clear();
                while bits.len() < size {
                    bits.extend_from_slice(&next().to_le_bytes());
                }
                bits.truncate(size);
                // Each block's scale varies a little, as a real model's do.
                let d = sigma / layout.spread * (0.75 + 0.5 * unit(next));
                bits[layout.d..layout.d + 2].copy_from_slice(&f16_bits(d).to_le_bytes());
                if let Some(at) = layout.min {
                    // Formats with a min subtract it: centre the weights on zero. Q4_1 and
                    // Q5_1 add theirs (w = d·q + m), the K-quants subtract theirs.
                    let m = layout.mean_q * d;
                    let m = if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
                        -m
                    } else {
                        m
                    };
                    bits[at..at + 2].copy_from_slice(&f16_bits(m).to_le_bytes());
                }
                out.extend_from_slice(&bits);
            }
            Some(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_round_to_nearest_and_stay_finite() {
        assert_eq!(f16_bits(1.0), 0x3c00);
        assert_eq!(f16_bits(-2.0), 0xc000);
        assert_eq!(f16_bits(0.5), 0x3800);
        assert_eq!(f16_bits(1.0e9), 0x7bff);
        assert_eq!(f16_bits(5.960_464_5e-8), 0x0001);
        assert_eq!(f16_bits(0.0), 0);
    }

    #[test]
    fn every_supported_type_has_whole_blocks() {
        let mut state = 1u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            state
        };
        for ty in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Q2_K,
            GgmlType::Q3_K,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ] {
            let bytes = random_weights(ty, 512, 0.02, &mut next).unwrap();
            assert_eq!(
                bytes.len() as u64,
                ty.bytes_for(512).unwrap(),
                "{}",
                ty.name()
            );
        }
        assert!(random_weights(
            GgmlType::from_name("iq2_xxs").unwrap(),
            256,
            0.02,
            &mut next
        )
        .is_none());
    }
}
