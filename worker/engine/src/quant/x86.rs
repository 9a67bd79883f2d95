//! The AVX2 (with FMA and F16C) kernels. Each has the scalar kernel of `quant/mod.rs` as its
//! reference and returns the same value up to the order of float additions.

use std::arch::x86_64::*;

use super::blocks::Unpacked;
use super::{ActRow, PreparedRow, WeightFormat};

/// The sum of a vector's eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps::<1>(v);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// An f16 at `bytes[at..at + 2]` as f32, by F16C.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn read_f16(bytes: &[u8], at: usize) -> f32 {
    let h = u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h))))
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot(format: WeightFormat, bytes: &[u8], row: &PreparedRow, a: ActRow<'_>) -> f32 {
    match format {
        WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16 => dot_f32(&row.floats, a.f32s),
        WeightFormat::Q8_0 => dot_q8_0(bytes, a),
        WeightFormat::Q4_0 | WeightFormat::Q4_1 | WeightFormat::Q5_0 | WeightFormat::Q5_1 => {
            dot_unpacked_32(&row.unpacked, a)
        }
        _ => dot_unpacked_256(&row.unpacked, a),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q8_0(bytes: &[u8], a: ActRow<'_>) -> f32 {
    let blocks = bytes.len() / 34;
    assert!(a.qs.len() >= 32 * blocks && a.d.len() >= blocks);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    for b in 0..blocks {
        let blk = &bytes[34 * b..34 * b + 34];
        // SAFETY: `blk[2..34]` and `a.qs[32b..32b + 32]` are 32 bytes each (checked above).
        let (w, x) = unsafe {
            (
                _mm256_loadu_si256(blk.as_ptr().add(2) as *const __m256i),
                _mm256_loadu_si256(a.qs.as_ptr().add(32 * b) as *const __m256i),
            )
        };
        // maddubs takes unsigned × signed: move w's sign onto x.
        let p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
        let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(read_f16(blk, 0) * a.d[b]), p, acc);
    }
    hsum(acc)
}

/// The 32-weight formats: a factor pair per block of 32.
#[target_feature(enable = "avx2,fma")]
fn dot_unpacked_32(u: &Unpacked, a: ActRow<'_>) -> f32 {
    let blocks = u.d.len();
    assert!(u.q.len() >= 32 * blocks && a.qs.len() >= 32 * blocks && a.d.len() >= blocks);
    assert!(u.scale.len() >= 2 * blocks && a.bsums.len() >= 2 * blocks);
    let mut acc = _mm256_setzero_ps();
    let mut off = 0f32;
    for b in 0..blocks {
        // SAFETY: 32 bytes at 32b of each (checked above).
        let (q, x) = unsafe {
            (
                _mm256_loadu_si256(u.q.as_ptr().add(32 * b) as *const __m256i),
                _mm256_loadu_si256(a.qs.as_ptr().add(32 * b) as *const __m256i),
            )
        };
        let scales = _mm256_set_m128i(
            _mm_set1_epi16(u.scale[2 * b + 1]),
            _mm_set1_epi16(u.scale[2 * b]),
        );
        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), scales);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(u.d[b] * a.d[b]), _mm256_cvtepi32_ps(p), acc);
        let ioff = i32::from(u.offset[2 * b]) * i32::from(a.bsums[2 * b])
            + i32::from(u.offset[2 * b + 1]) * i32::from(a.bsums[2 * b + 1]);
        off += a.d[b] * (u.dmin[b] * ioff as f32);
    }
    hsum(acc) - off
}

/// The K-quants: integer sums over a super-block of 256, then one float product.
#[target_feature(enable = "avx2,fma")]
fn dot_unpacked_256(u: &Unpacked, a: ActRow<'_>) -> f32 {
    let supers = u.d.len();
    assert!(u.q.len() >= 256 * supers && a.qs.len() >= 256 * supers && a.d.len() >= supers);
    assert!(u.scale.len() >= 16 * supers && u.offset.len() >= 16 * supers);
    assert!(a.bsums.len() >= 16 * supers);
    let mut acc = _mm256_setzero_ps();
    let mut off = 0f32;
    for s in 0..supers {
        let mut isum = _mm256_setzero_si256();
        for c in 0..8 {
            let at = 256 * s + 32 * c;
            // SAFETY: 32 bytes at `at` < 256 · supers of each (checked above).
            let (q, x) = unsafe {
                (
                    _mm256_loadu_si256(u.q.as_ptr().add(at) as *const __m256i),
                    _mm256_loadu_si256(a.qs.as_ptr().add(at) as *const __m256i),
                )
            };
            let g = 16 * s + 2 * c;
            let scales =
                _mm256_set_m128i(_mm_set1_epi16(u.scale[g + 1]), _mm_set1_epi16(u.scale[g]));
            isum = _mm256_add_epi32(isum, _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), scales));
        }
        acc = _mm256_fmadd_ps(
            _mm256_set1_ps(u.d[s] * a.d[s]),
            _mm256_cvtepi32_ps(isum),
            acc,
        );
        // SAFETY: 16 i16 at 16s of each (checked above).
        let (o, bs) = unsafe {
            (
                _mm256_loadu_si256(u.offset.as_ptr().add(16 * s) as *const __m256i),
                _mm256_loadu_si256(a.bsums.as_ptr().add(16 * s) as *const __m256i),
            )
        };
        let ioff = _mm256_madd_epi16(o, bs);
        let ioff = hsum(_mm256_cvtepi32_ps(ioff));
        off += a.d[s] * (u.dmin[s] * ioff);
    }
    hsum(acc) - off
}

/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, lane) in acc.iter_mut().enumerate() {
            // SAFETY: i + 8k + 8 <= n.
            let (x, y) = unsafe {
                (
                    _mm256_loadu_ps(a.as_ptr().add(i + 8 * k)),
                    _mm256_loadu_ps(b.as_ptr().add(i + 8 * k)),
                )
            };
            *lane = _mm256_fmadd_ps(x, y, *lane);
        }
        i += 32;
    }
    while i + 8 <= n {
        // SAFETY: i + 8 <= n.
        let (x, y) = unsafe {
            (
                _mm256_loadu_ps(a.as_ptr().add(i)),
                _mm256_loadu_ps(b.as_ptr().add(i)),
            )
        };
        acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
        i += 8;
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut sum = hsum(v);
    for j in i..n {
        sum += a[j] * b[j];
    }
    sum
}

/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let va = _mm256_set1_ps(alpha);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n.
        unsafe {
            let r = _mm256_fmadd_ps(
                va,
                _mm256_loadu_ps(x.as_ptr().add(i)),
                _mm256_loadu_ps(y.as_ptr().add(i)),
            );
            _mm256_storeu_ps(y.as_mut_ptr().add(i), r);
        }
        i += 8;
    }
    for j in i..n {
        y[j] += alpha * x[j];
    }
}

/// Unpacks a row with SIMD where a fast path exists; `false` leaves it to the scalar unpacker.
pub fn unpack(_format: WeightFormat, _bytes: &[u8], _u: &mut Unpacked) -> bool {
    false
}
