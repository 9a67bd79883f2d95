//! IEEE half precision and bfloat16, converted as ggml converts them (round to nearest even,
//! NaN kept a NaN). The row conversions use F16C where the CPU has it.

/// f16 bits to f32.
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match exp {
        0 if man == 0 => sign,
        0 => {
            // Subnormal: normalise the mantissa.
            let shift = man.leading_zeros() - 21;
            let man = (man << shift) & 0x3ff;
            sign | ((113 - shift) << 23) | (man << 13)
        }
        0x1f => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// f32 to f16 bits, rounding to nearest even.
#[inline]
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x7f_ffff;
    if exp == 0xff {
        // Inf stays Inf; a NaN keeps a quiet mantissa bit.
        return sign
            | 0x7c00
            | if man != 0 {
                0x200 | (man >> 13) as u16
            } else {
                0
            };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        // Subnormal result: shift the implicit bit in, round to nearest even.
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rest = m & ((1u32 << shift) - 1);
        let mut r = m >> shift;
        if rest > half || (rest == half && r & 1 == 1) {
            r += 1;
        }
        return sign | r as u16;
    }
    let mut r = ((e as u32) << 10) | (man >> 13);
    let rest = man & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && r & 1 == 1) {
        // A carry out of the mantissa correctly bumps the exponent (up to Inf).
        r += 1;
    }
    sign | r as u16
}

/// bf16 bits to f32.
#[inline]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// Rounds through f16 and back, as ggml does when it stores a value as f16.
#[inline]
pub fn round_f16(x: f32) -> f32 {
    f16_to_f32(f32_to_f16(x))
}

/// Reads the little-endian f16 at `bytes[at..at + 2]` as f32.
#[inline]
pub fn read_f16(bytes: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
}

/// f16 values to f32.
pub fn f16_row_to_f32(src: &[u16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2() {
        // SAFETY: AVX2 and F16C were detected at run time.
        unsafe { x86::f16_to_f32(src, dst) };
        return;
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f16_to_f32(s);
    }
}

/// f32 values to f16, rounding to nearest even.
pub fn f32_row_to_f16(src: &[f32], dst: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2() {
        // SAFETY: AVX2 and F16C were detected at run time.
        unsafe { x86::f32_to_f16(src, dst) };
        return;
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f32_to_f16(s);
    }
}

/// Rounds each value to the nearest f16 (to nearest even), in place: [`round_f16`] on each.
pub fn round_row_f16(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2() {
        // SAFETY: AVX2 and F16C were detected at run time.
        unsafe { x86::round_f16(x) };
        return;
    }
    for v in x {
        *v = round_f16(*v);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn round_f16(x: &mut [f32]) {
        let n = x.len();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n.
            unsafe {
                let v = _mm256_loadu_ps(x.as_ptr().add(i));
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                _mm256_storeu_ps(x.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            }
            i += 8;
        }
        for v in &mut x[i..] {
            *v = super::round_f16(*v);
        }
    }

    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n keeps both 8-lane accesses in bounds.
            unsafe {
                let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
                _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            }
            i += 8;
        }
        for j in i..n {
            dst[j] = super::f16_to_f32(src[j]);
        }
    }

    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn f32_to_f16(src: &[f32], dst: &mut [u16]) {
        let n = src.len().min(dst.len());
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n keeps both 8-lane accesses in bounds.
            unsafe {
                let x = _mm256_loadu_ps(src.as_ptr().add(i));
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x);
                _mm_storeu_si128(dst.as_mut_ptr().add(i) as *mut __m128i, h);
            }
            i += 8;
        }
        for j in i..n {
            dst[j] = super::f32_to_f16(src[j]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_f16_round_trips_through_f32() {
        for h in 0..=u16::MAX {
            let x = f16_to_f32(h);
            if x.is_nan() {
                assert!(f16_to_f32(f32_to_f16(x)).is_nan());
            } else {
                assert_eq!(f32_to_f16(x), h, "{h:#06x} = {x}");
            }
        }
    }

    #[test]
    fn rows_round_as_each_value_does() {
        // Every f16 and the midpoints around it, both signs, past the largest and into the
        // subnormals: the row (F16C where present) against the scalar rounding.
        let mut values = Vec::new();
        for h in 0..=u16::MAX {
            let x = f16_to_f32(h);
            if x.is_finite() {
                values.extend([x, x * (1.0 + f32::EPSILON), x * (1.0 - f32::EPSILON)]);
                values.push(f32::from_bits(x.to_bits() + (1 << 12)));
            }
        }
        values.extend([65520.0, -65520.0, 1e-8, -1e-8, 1e30, f32::INFINITY]);
        let mut row = values.clone();
        round_row_f16(&mut row);
        for (x, got) in values.iter().zip(&row) {
            assert_eq!(got.to_bits(), round_f16(*x).to_bits(), "{x:e}");
        }
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f32_to_f16(65520.0), 0x7c00, "rounds up to Inf");
        assert_eq!(f32_to_f16(1.0 + 1.0 / 2048.0), 0x3c00, "a tie goes to even");
        assert_eq!(f32_to_f16(1.0 + 3.0 / 2048.0), 0x3c02);
        assert_eq!(f32_to_f16(5.960_464_5e-8), 0x0001, "the smallest subnormal");
        assert_eq!(f32_to_f16(2.0e-8), 0x0000);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
    }

    #[test]
    fn the_row_conversions_agree_with_the_scalar_ones() {
        let values: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.37).collect();
        let mut halves = vec![0u16; values.len()];
        f32_row_to_f16(&values, &mut halves);
        for (h, v) in halves.iter().zip(&values) {
            assert_eq!(*h, f32_to_f16(*v));
        }
        let mut back = vec![0f32; values.len()];
        f16_row_to_f32(&halves, &mut back);
        for (b, h) in back.iter().zip(&halves) {
            assert_eq!(*b, f16_to_f32(*h));
        }
    }
}
