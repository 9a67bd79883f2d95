//! The AVX-512 VNNI row kernels (AVX-512 F, BW, VL and VNNI on top of the AVX2 set).
//!
//! Each one computes exactly what its AVX2 counterpart in `x86.rs` computes, 64 bytes at a time:
//! - The 32-weight formats take two blocks per register. `vpdpbusd` gives the integer sums that
//!   AVX2 builds with `vpmaddubsw` then `vpmaddwd` (no pair can saturate: |w| ≤ 128 and
//!   |x| ≤ 127). Signed weights multiply the activations plus 128 (kept beside the quants)
//!   from a start of -128·Σw per lane, which gives the same sums without moving the weights'
//!   signs onto every activation row. The low and high halves of one float accumulator are the AVX2 kernel's
//!   accumulators for even and odd blocks. The factor products and the FMAs are the same
//!   operations, lane for lane.
//! - The K-quants' prompt kernel ([`rows_k_panel`]) multiplies a band of unpacked weight rows
//!   with panels of sixteen activation rows, one `vpdpbusd` per weight and four quants of
//!   each row. Its integers per super-block are exact, as every K-quant kernel's are, and its
//!   float expression is the scalar kernel's, lane by lane.
//! - Q4_K's decode kernel ([`rows_k4`]) forms `x86::rows_k`'s exact integers 128 quants per
//!   instruction and finishes with its float expression.
//!
//! So the results are the same bits as the AVX2 kernels' (and for the K-quants the scalar
//! kernel's; `tests/kernels.rs` checks both), and a token's logits do not depend on which
//! kernel set or batch size computed them.

use std::arch::x86_64::*;

use super::blocks::Unpacked;
use super::x86::{
    act_rows, as_bytes, block_32, hsum, k4_scales_mins, prefetch_ahead, qh32, read_f16, ActBlocks,
    TILE_BYTES,
};
use super::{i16_pair, ActPanel, ActRow, QuantizedActs, Sink, PANEL};

/// Blocks `b` and `b + 1` of a 32-weight row as one register of 64 quants: Q8_0's as they are;
/// the others' nibbles (and fifth bits) unpacked, less their offset where they have one.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn load_pair<const SIZE: usize, const QS: usize, const QH: usize, const OFF: i8, const Q8: bool>(
    row: &[u8],
    b: usize,
) -> __m512i {
    let blk = &row[SIZE * b..SIZE * (b + 2)];
    let q = if Q8 {
        assert!(SIZE == 34);
        // SAFETY: bytes 2..34 of each of the two 34-byte blocks in `blk`.
        unsafe {
            let lo = _mm256_loadu_si256(blk.as_ptr().add(2) as *const __m256i);
            let hi = _mm256_loadu_si256(blk.as_ptr().add(SIZE + 2) as *const __m256i);
            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
        }
    } else {
        assert!(QS + 16 <= SIZE);
        // SAFETY: 16 bytes at QS of each block, inside it (checked above).
        let (v0, v1) = unsafe {
            (
                _mm_loadu_si128(blk.as_ptr().add(QS) as *const __m128i),
                _mm_loadu_si128(blk.as_ptr().add(SIZE + QS) as *const __m128i),
            )
        };
        // [v0, v1, v0 >> 4, v1 >> 4] by 128-bit lanes, reordered to [v0, v0 >> 4, v1, v1 >> 4]:
        // each block's low nibbles then its high nibbles, as `x86::nibbles_32` lays them out.
        let both = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(v0), v1);
        let z = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(both), _mm256_srli_epi16::<4>(both));
        let z = _mm512_shuffle_i64x2::<0b11_01_10_00>(z, z);
        let q = _mm512_and_si512(z, _mm512_set1_epi8(0x0f));
        if QH != 0 {
            // Bit i of the two blocks' fifth bits adds 16 to quant i.
            let bits = u64::from(qh32(blk, QH)) | (u64::from(qh32(blk, SIZE + QH)) << 32);
            _mm512_mask_add_epi8(q, bits, q, _mm512_set1_epi8(0x10))
        } else {
            q
        }
    };
    if OFF != 0 {
        _mm512_sub_epi8(q, _mm512_set1_epi8(OFF))
    } else {
        q
    }
}

/// The activation rows of a group as raw pointers, their lengths checked once: the innermost
/// loop then loads without bounds checks, and keeps its accumulators in registers.
struct ActPointers<const N: usize> {
    qs: [*const i8; N],
    /// The quants plus 128, for signed weights (null where the rows have none).
    biased: [*const u8; N],
    d: [*const f32; N],
    bsums: [*const i16; N],
}

impl<const N: usize> ActPointers<N> {
    /// The rows `a`, which must hold `blocks` blocks of 32, and their biased quants where
    /// `signed` weights will use them.
    fn new(a: &[ActRow<'_>; N], blocks: usize, signed: bool) -> ActPointers<N> {
        for x in a {
            assert!(
                x.qs.len() >= 32 * blocks && x.d.len() >= blocks && x.bsums.len() >= 2 * blocks
            );
            assert!(!signed || x.biased.len() >= 32 * blocks);
        }
        ActPointers {
            qs: std::array::from_fn(|n| a[n].qs.as_ptr()),
            biased: std::array::from_fn(|n| a[n].biased.as_ptr()),
            d: std::array::from_fn(|n| a[n].d.as_ptr()),
            bsums: std::array::from_fn(|n| a[n].bsums.as_ptr()),
        }
    }
}

/// -128·(the sum of each lane's four signed weights): where a dot product of the activations
/// plus 128 with the weights starts, so that it ends at the dot product of the activations.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn minus_128_sums(w: __m512i) -> __m512i {
    let sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(-128), w);
    _mm512_sub_epi32(_mm512_setzero_si512(), sums)
}

/// The f16 factors at `at0` and `at1` of `row` as f32, spread over a register's low and high
/// halves: one conversion for both (the same values as two scalar ones).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn factor_pair(row: &[u8], at0: usize, at1: usize) -> __m512 {
    let bits = u32::from(u16::from_le_bytes([row[at0], row[at0 + 1]]))
        | (u32::from(u16::from_le_bytes([row[at1], row[at1 + 1]])) << 16);
    let both = _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32));
    let spread = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(both))
}

/// One pair of 32-weight blocks (`q`, its factors spread in `dwv`, and mins `m`) against the activation
/// rows at block `b`: the low half of `acc` takes block `b`, the high half `b + 1`, and `mins`
/// the two blocks' min terms in order. `signed` quants multiply the activations plus 128, less
/// 128·Σw per lane (the same integers as AVX2's sign trick); unsigned ones (the formats with a
/// min) multiply the activations as they are.
///
/// # Safety
/// `b + 2` must not pass the blocks `a` was made for.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn pair_products<const N: usize>(
    q: __m512i,
    dwv: __m512,
    m: (f32, f32),
    signed: bool,
    with_min: bool,
    a: &ActPointers<N>,
    b: usize,
    acc: &mut [__m512; N],
    mins: &mut [f32; N],
) {
    let start = if signed {
        minus_128_sums(q)
    } else {
        _mm512_setzero_si512()
    };
    let spread = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    for n in 0..N {
        // SAFETY: 64 quants (biased or not) at 32b and two factors at b, within the rows (the
        // caller's promise).
        let (p, da) = unsafe {
            let p = if signed {
                let xb = _mm512_loadu_si512(a.biased[n].add(32 * b) as *const _);
                _mm512_dpbusd_epi32(start, xb, q)
            } else {
                let x = _mm512_loadu_si512(a.qs[n].add(32 * b) as *const _);
                _mm512_dpbusd_epi32(start, q, x)
            };
            (p, _mm_loadl_epi64(a.d[n].add(b) as *const __m128i))
        };
        let p = _mm512_cvtepi32_ps(p);
        let dav = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_castsi128_ps(da)));
        acc[n] = _mm512_fmadd_ps(_mm512_mul_ps(dwv, dav), p, acc[n]);
        if with_min {
            for (k, mk) in [(0, m.0), (1, m.1)] {
                let block = b + k;
                // SAFETY: as above, for the factor and the two sums of `block`.
                let (da, s0, s1) = unsafe {
                    (
                        *a.d[n].add(block),
                        *a.bsums[n].add(2 * block),
                        *a.bsums[n].add(2 * block + 1),
                    )
                };
                let sum = f32::from(s0) + f32::from(s1);
                mins[n] += mk * da * sum;
            }
        }
    }
}

/// The end of a row: a last odd block into the even accumulators (AVX2's order), then AVX2's
/// sum of even and odd.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn finish_row<
    const SIZE: usize,
    const QS: usize,
    const QH: usize,
    const MIN: usize,
    const OFF: i8,
    const Q8: bool,
    const N: usize,
>(
    row: &[u8],
    blocks: usize,
    a: &[ActRow<'_>; N],
    acc: &[__m512; N],
    mins: &mut [f32; N],
) -> [f32; N] {
    // Plain loops, not closures: a closure does not inherit this function's target features,
    // so the intrinsics in it would not inline, and the accumulators would live in memory.
    let mut even = [_mm256_setzero_ps(); N];
    let mut odd = [_mm256_setzero_ps(); N];
    for n in 0..N {
        even[n] = _mm512_castps512_ps256(acc[n]);
        odd[n] = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc[n])));
    }
    if blocks % 2 == 1 {
        let last = &row[SIZE * (blocks - 1)..SIZE * blocks];
        // SAFETY: `last` is the row's last block, and `ActBlocks::new` checks that each
        // activation row holds `blocks` blocks.
        unsafe {
            block_32::<SIZE, QS, QH, MIN, OFF, Q8, N>(
                last.as_ptr(),
                &ActBlocks::new(a, blocks),
                blocks - 1,
                &mut even,
                mins,
            )
        };
    }
    let mut sums = [0f32; N];
    for n in 0..N {
        sums[n] = hsum(_mm256_add_ps(even[n], odd[n])) + mins[n];
    }
    sums
}

/// `x86::rows_32` (decoding: up to four activation rows, the weights streamed from the
/// mapping and unpacked in registers), two blocks at a time.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn rows_32<
    const SIZE: usize,
    const QS: usize,
    const QH: usize,
    const MIN: usize,
    const OFF: i8,
    const Q8: bool,
    const N: usize,
>(
    bytes: &[u8],
    first: usize,
    acts: &QuantizedActs,
    j: usize,
    out: &Sink,
) {
    let blocks = acts.k / 32;
    let rb = blocks * SIZE;
    if rb == 0 {
        return;
    }
    let a = act_rows::<N>(acts, j);
    let pointers = ActPointers::new(&a, blocks, Q8 || OFF != 0);
    let signed = Q8 || OFF != 0;
    for (i, row) in bytes.chunks_exact(rb).enumerate() {
        let mut acc = [_mm512_setzero_ps(); N];
        let mut mins = [0f32; N];
        let mut b = 0;
        while b + 2 <= blocks {
            // A line per pair (44 to 68 bytes): two, for Q8_0's 68, streamed slower.
            prefetch_ahead(bytes, i * rb + SIZE * b, 1);
            let q = load_pair::<SIZE, QS, QH, OFF, Q8>(row, b);
            let dwv = factor_pair(row, SIZE * b, SIZE * (b + 1));
            let m = if MIN != 0 {
                (
                    read_f16(row, SIZE * b + MIN),
                    read_f16(row, SIZE * (b + 1) + MIN),
                )
            } else {
                (0.0, 0.0)
            };
            // SAFETY: b + 2 <= blocks.
            unsafe {
                pair_products::<N>(
                    q,
                    dwv,
                    m,
                    signed,
                    MIN != 0,
                    &pointers,
                    b,
                    &mut acc,
                    &mut mins,
                )
            };
            b += 2;
        }
        let sums = finish_row::<SIZE, QS, QH, MIN, OFF, Q8, N>(row, blocks, &a, &acc, &mut mins);
        for (n, sum) in sums.into_iter().enumerate() {
            out.put(j + n, first + i, sum);
        }
    }
}

/// The 32-weight formats against many activation rows (a prompt): a tile of weight rows is
/// unpacked once into registers' layout (64 quants per pair of blocks, and the factors), then
/// every group of up to four activation rows passes over it. The operations per pair are
/// those of [`rows_32`], so the results are the same bits.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn rows_32_tiled<
    const SIZE: usize,
    const QS: usize,
    const QH: usize,
    const MIN: usize,
    const OFF: i8,
    const Q8: bool,
>(
    bytes: &[u8],
    first: usize,
    acts: &QuantizedActs,
    out: &Sink,
) {
    let blocks = acts.k / 32;
    let rb = blocks * SIZE;
    if rb == 0 {
        return;
    }
    let pairs = blocks / 2;
    // The tile's prepared pairs (192 bytes each: 64 of them are quants) sit on the stack: a
    // heap buffer per call was measured to cost a tenth of a prompt in the kernel zeroing
    // fresh pages. Twice TILE_BYTES of quants (96 KiB in all) measured 3% faster than one
    // and 5% faster than half: a larger tile passes over the activations fewer times. A row
    // too long for the tile goes to the streaming kernel.
    const TILE_PAIRS: usize = TILE_BYTES / 32;
    if pairs > TILE_PAIRS {
        let mut j = 0;
        while j < acts.rows {
            let n = (acts.rows - j).min(4);
            match n {
                1 => rows_32::<SIZE, QS, QH, MIN, OFF, Q8, 1>(bytes, first, acts, j, out),
                2 => rows_32::<SIZE, QS, QH, MIN, OFF, Q8, 2>(bytes, first, acts, j, out),
                3 => rows_32::<SIZE, QS, QH, MIN, OFF, Q8, 3>(bytes, first, acts, j, out),
                _ => rows_32::<SIZE, QS, QH, MIN, OFF, Q8, 4>(bytes, first, acts, j, out),
            }
            j += n;
        }
        return;
    }
    let tile = (TILE_PAIRS / pairs.max(1)).max(1);
    let all = bytes.len() / rb;
    let signed = Q8 || OFF != 0;
    let spread_index = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    let mut prepared = [PreparedPair {
        q: _mm512_setzero_si512(),
        start: _mm512_setzero_si512(),
        dw: _mm512_setzero_ps(),
    }; TILE_PAIRS];
    let mut min_factors = [0f32; 2 * TILE_PAIRS];
    SPREAD_FACTORS.with_borrow_mut(|spread| {
        // Every activation row's factors, each pair of blocks spread over a register's two
        // halves as `pair_products` spreads them: built once here for all the tiles.
        spread.clear();
        for j in 0..acts.rows {
            let d = acts.row(j).d;
            for p in 0..pairs {
                let two = &d[2 * p..2 * p + 2];
                // SAFETY: two f32 in `two`.
                let da = unsafe { _mm_loadl_epi64(two.as_ptr() as *const __m128i) };
                spread.push(_mm512_permutexvar_ps(
                    spread_index,
                    _mm512_castps128_ps512(_mm_castsi128_ps(da)),
                ));
            }
        }
        let mut r = 0;
        while r < all {
            let end = all.min(r + tile);
            // Everything of a pair of blocks that does not depend on the activations, once
            // per tile: the quants, where their products start, and the two factors spread.
            for (t, row) in bytes[r * rb..end * rb].chunks_exact(rb).enumerate() {
                for p in 0..pairs {
                    let b = 2 * p;
                    let q = load_pair::<SIZE, QS, QH, OFF, Q8>(row, b);
                    prepared[t * pairs + p] = PreparedPair {
                        q,
                        start: if signed {
                            minus_128_sums(q)
                        } else {
                            _mm512_setzero_si512()
                        },
                        dw: factor_pair(row, SIZE * b, SIZE * (b + 1)),
                    };
                    if MIN != 0 {
                        min_factors[t * 2 * pairs + b] = read_f16(row, SIZE * b + MIN);
                        min_factors[t * 2 * pairs + b + 1] = read_f16(row, SIZE * (b + 1) + MIN);
                    }
                }
            }
            let unpacked = UnpackedTile {
                span: &bytes[r * rb..end * rb],
                first: first + r,
                pairs: &prepared[..(end - r) * pairs],
                min_factors: &min_factors,
                spread: spread.as_slice(),
                pairs_per_row: pairs,
            };
            let mut j = 0;
            while j < acts.rows {
                let n = (acts.rows - j).min(4);
                match n {
                    1 => tile_rows::<SIZE, QS, QH, MIN, OFF, Q8, 1>(&unpacked, acts, j, out),
                    2 => tile_rows::<SIZE, QS, QH, MIN, OFF, Q8, 2>(&unpacked, acts, j, out),
                    3 => tile_rows::<SIZE, QS, QH, MIN, OFF, Q8, 3>(&unpacked, acts, j, out),
                    _ => tile_rows::<SIZE, QS, QH, MIN, OFF, Q8, 4>(&unpacked, acts, j, out),
                }
                j += n;
            }
            r = end;
        }
    });
}

thread_local! {
    /// [`rows_32_tiled`]'s spread activation factors, kept per thread: a prompt's can pass the
    /// allocator's mapping threshold, and fresh pages on every matrix product cost more than
    /// the product's arithmetic on them.
    static SPREAD_FACTORS: std::cell::RefCell<Vec<__m512>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A pair of 32-weight blocks made ready for [`tile_rows`]: the quants (signed, less their
/// offset, for the formats without a min), -128·Σw per lane where they are signed
/// ([`minus_128_sums`]), and the two blocks' factors spread over the halves.
#[derive(Clone, Copy)]
struct PreparedPair {
    q: __m512i,
    start: __m512i,
    dw: __m512,
}

/// A tile of 32-weight rows made ready for [`rows_32_tiled`], with the activations' spread
/// factors.
struct UnpackedTile<'a> {
    /// The tile's rows as they are in the file (for an odd last block), the first being row
    /// `first` of the matrix.
    span: &'a [u8],
    first: usize,
    /// Per row, its pairs of blocks.
    pairs: &'a [PreparedPair],
    /// Per block: the min's factor (the formats with a min).
    min_factors: &'a [f32],
    /// Per activation row and pair of blocks: the two factors spread over the two halves.
    spread: &'a [__m512],
    pairs_per_row: usize,
}

/// The tile's rows against activation rows `j..j + N`, two weight rows at a time: each
/// activation load and spread factor serves both. Every output's operations are
/// [`pair_products`]'s, in its order, so the sums are the same bits.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn tile_rows<
    const SIZE: usize,
    const QS: usize,
    const QH: usize,
    const MIN: usize,
    const OFF: i8,
    const Q8: bool,
    const N: usize,
>(
    tile: &UnpackedTile<'_>,
    acts: &QuantizedActs,
    j: usize,
    out: &Sink,
) {
    let blocks = acts.k / 32;
    let rb = blocks * SIZE;
    let a = act_rows::<N>(acts, j);
    let pointers = ActPointers::new(&a, blocks, Q8 || OFF != 0);
    let pairs = tile.pairs_per_row;
    let rows = tile.span.len() / rb;
    assert!(2 * pairs <= blocks && tile.spread.len() >= (j + N) * pairs);
    assert!(tile.pairs.len() >= rows * pairs && tile.min_factors.len() >= rows * 2 * pairs);
    let spread: [*const __m512; N] = {
        let mut rows = [tile.spread.as_ptr(); N];
        for (n, r) in rows.iter_mut().enumerate() {
            *r = tile.spread[(j + n) * pairs..].as_ptr();
        }
        rows
    };
    // Two rows per pass; a tile's odd last row passes with itself, its second result unused.
    for t in (0..rows).step_by(2) {
        let second = (t + 1).min(rows - 1);
        // SAFETY: rows t and `second` are in the tile (both below `rows`), and the pairs and
        // factors hold every row of it (asserted above).
        let sums = unsafe {
            two_rows::<MIN, OFF, Q8, N>(tile, [t, second], &pointers, &spread, &a, pairs)
        };
        for (k, row_sums) in sums.iter().enumerate().take(second + 1 - t) {
            let row = &tile.span[(t + k) * rb..(t + k + 1) * rb];
            let mut mins = row_sums.1;
            let s = finish_row::<SIZE, QS, QH, MIN, OFF, Q8, N>(
                row,
                blocks,
                &a,
                &row_sums.0,
                &mut mins,
            );
            for (n, sum) in s.into_iter().enumerate() {
                out.put(j + n, tile.first + t + k, sum);
            }
        }
    }
}

/// The products of one prepared pair with an activation row's 64 quants `x` (biased where
/// the weights are `SIGNED`) and spread factors `dav`, added into `acc` ([`pair_products`]'s
/// operations).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn add_pair<const SIGNED: bool>(w: &PreparedPair, x: __m512i, dav: __m512, acc: &mut __m512) {
    let prod = if SIGNED {
        _mm512_dpbusd_epi32(w.start, x, w.q)
    } else {
        _mm512_dpbusd_epi32(w.start, w.q, x)
    };
    *acc = _mm512_fmadd_ps(_mm512_mul_ps(w.dw, dav), _mm512_cvtepi32_ps(prod), *acc);
}

/// An activation row's min terms of blocks `b` and `b + 1` against factors `mf` (the formats
/// with a min).
#[inline]
fn add_mins(a: &ActRow<'_>, mf: &[f32], b: usize, mins: &mut f32) {
    for block in [b, b + 1] {
        let sum = f32::from(a.bsums[2 * block]) + f32::from(a.bsums[2 * block + 1]);
        *mins += mf[block] * a.d[block] * sum;
    }
}

/// Weight rows `rows[0]` and `rows[1]` of the tile (the same row twice, for an odd last one)
/// against the activation rows: their float accumulators and min terms.
///
/// # Safety
/// Both rows must be in the tile, and `pointers` and `spread` must hold `pairs` pairs of
/// every activation row.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn two_rows<const MIN: usize, const OFF: i8, const Q8: bool, const N: usize>(
    tile: &UnpackedTile<'_>,
    rows: [usize; 2],
    pointers: &ActPointers<N>,
    spread: &[*const __m512; N],
    a: &[ActRow<'_>; N],
    pairs: usize,
) -> [([__m512; N], [f32; N]); 2] {
    let mut acc0 = [_mm512_setzero_ps(); N];
    let mut acc1 = [_mm512_setzero_ps(); N];
    let mut mins0 = [0f32; N];
    let mut mins1 = [0f32; N];
    let [t0, t1] = rows;
    // SAFETY: the caller's promise: rows t0 and t1 hold `pairs` pairs each.
    let (w0s, w1s) = unsafe {
        (
            std::slice::from_raw_parts(tile.pairs.as_ptr().add(t0 * pairs), pairs),
            std::slice::from_raw_parts(tile.pairs.as_ptr().add(t1 * pairs), pairs),
        )
    };
    let mf0 = &tile.min_factors[t0 * 2 * pairs..(t0 + 1) * 2 * pairs];
    let mf1 = &tile.min_factors[t1 * 2 * pairs..(t1 + 1) * 2 * pairs];
    for p in 0..pairs {
        let (w0, w1) = (&w0s[p], &w1s[p]);
        for n in 0..N {
            // SAFETY: pair p of row n, within what the caller promised.
            unsafe {
                let dav = *spread[n].add(p);
                if Q8 || OFF != 0 {
                    let x = _mm512_loadu_si512(pointers.biased[n].add(64 * p) as *const _);
                    add_pair::<true>(w0, x, dav, &mut acc0[n]);
                    add_pair::<true>(w1, x, dav, &mut acc1[n]);
                } else {
                    let x = _mm512_loadu_si512(pointers.qs[n].add(64 * p) as *const _);
                    add_pair::<false>(w0, x, dav, &mut acc0[n]);
                    add_pair::<false>(w1, x, dav, &mut acc1[n]);
                }
            }
            if MIN != 0 {
                add_mins(&a[n], mf0, 2 * p, &mut mins0[n]);
                add_mins(&a[n], mf1, 2 * p, &mut mins1[n]);
            }
        }
    }
    [(acc0, mins0), (acc1, mins1)]
}

/// Weight rows unpacked together by [`rows_k_panel`]: each activation register then serves
/// eight of them. Eight measured 3% faster than four (the offsets then run after the
/// products, so that the registers suffice).
const BAND: usize = 8;

/// K-quant rows (Q4_K, Q5_K: `SUB` 32, the span of a scale; Q6_K: 16) against a prompt's
/// activation panels ([`QuantizedActs::panel`]): a band of eight rows is unpacked to a byte per
/// quant, then for each panel of sixteen activation rows and each four quants, one
/// `vpdpbusd` per weight row multiplies the weight row's four bytes, broadcast, with four
/// quants of each of the sixteen activation rows. Per super-block the integers are exact
/// (the scale applied per group with `vpmulld`, the offsets through the activations' sums),
/// and the float expression is the scalar kernel's, lane by lane: the same bits as every
/// other K-quant kernel. `false` where the panel is missing or the format has no unpacker.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn rows_k_panel<const SUB: usize>(
    format: super::WeightFormat,
    bytes: &[u8],
    first: usize,
    acts: &QuantizedActs,
    out: &Sink,
) -> bool {
    let k = acts.k;
    let panels = acts.rows.div_ceil(PANEL);
    let panel = &acts.panel;
    if k == 0
        || !k.is_multiple_of(256)
        || panel.lanes != PANEL
        || panel.qs.len() != panels * PANEL * k
    {
        return false;
    }
    let rb = format.row_bytes(k);
    let all = bytes.len() / rb;
    let mut band: [Unpacked; BAND] = Default::default();
    // Per band row, its scales per 16 quants widened to i32, then its groups' offsets in
    // i16 pairs: the kernel multiplies by both straight from memory (a broadcast operand),
    // where each scale took a load, a sign extension and a move from a general register,
    // and each group's offset a `vpmulld` of its own.
    let per_row = k / 16;
    let mut widened = vec![0i32; 2 * BAND * per_row];
    let mut r0 = 0;
    while r0 < all {
        let n = (all - r0).min(BAND);
        for (t, u) in band.iter_mut().enumerate().take(n) {
            u.reset(k, 256);
            let row = &bytes[(r0 + t) * rb..(r0 + t + 1) * rb];
            // SAFETY: AVX2 and F16C come with the features this function was compiled for.
            if !unsafe { super::x86::unpack(format, row, u) } {
                return false;
            }
            let (scales, offsets) = widened.split_at_mut(BAND * per_row);
            let at = t * per_row..(t + 1) * per_row;
            for (w, &v) in scales[at.clone()].iter_mut().zip(&u.scale) {
                *w = i32::from(v);
            }
            // Groups 2j and 2j + 1, for `vpdpwssd` against the panel's pairs of sums (a
            // group of 32 has its offset at every other 16).
            let step = SUB / 16;
            for (j, w) in offsets[at].iter_mut().take(k / (2 * SUB)).enumerate() {
                let h = 2 * step * j;
                *w = i16_pair(u.offset[h], u.offset[h + step]);
            }
        }
        for p in 0..panels {
            let lanes = (acts.rows - p * PANEL).min(PANEL);
            let at = (p, lanes, first + r0);
            match n {
                1 => band_panel::<SUB, 1>(&band, &widened, panel, k, at, out),
                2 => band_panel::<SUB, 2>(&band, &widened, panel, k, at, out),
                3 => band_panel::<SUB, 3>(&band, &widened, panel, k, at, out),
                4 => band_panel::<SUB, 4>(&band, &widened, panel, k, at, out),
                5 => band_panel::<SUB, 5>(&band, &widened, panel, k, at, out),
                6 => band_panel::<SUB, 6>(&band, &widened, panel, k, at, out),
                7 => band_panel::<SUB, 7>(&band, &widened, panel, k, at, out),
                _ => band_panel::<SUB, 8>(&band, &widened, panel, k, at, out),
            }
        }
        r0 += n;
    }
    true
}

/// The first `R` unpacked rows of `band` against panel `p` (`at`: the panel, its rows in use,
/// the first weight row's index) into `out`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn band_panel<const SUB: usize, const R: usize>(
    band: &[Unpacked; BAND],
    widened: &[i32],
    panel: &ActPanel,
    k: usize,
    at: (usize, usize, usize),
    out: &Sink,
) {
    let (p, lanes, first) = at;
    let supers = k / 256;
    // The panel's pairs of sums over a group and the next: per 16 or per 32, as the groups.
    let pair_sums = if SUB == 16 {
        &panel.pairs16[p * k / 2..(p + 1) * k / 2]
    } else {
        &panel.pairs32[p * k / 4..(p + 1) * k / 4]
    };
    let (qs, d) = (
        &panel.qs[p * PANEL * k..(p + 1) * PANEL * k],
        &panel.d[p * PANEL * supers..(p + 1) * PANEL * supers],
    );
    for u in &band[..R] {
        assert!(u.q.len() >= k && u.scale.len() >= k / 16 && u.offset.len() >= k / 16);
        assert!(u.d.len() >= supers && u.dmin.len() >= supers);
    }
    // The rows' quants as raw pointers, taken once: the innermost loop then keeps them in
    // registers rather than reading each row's Vec again.
    let quants: [*const u8; R] = std::array::from_fn(|r| band[r].q.as_ptr());
    let per_row = k / 16;
    assert!(widened.len() >= 2 * BAND * per_row);
    let (scales, offsets) = widened.split_at(BAND * per_row);
    let mut sums = [_mm512_setzero_ps(); R];
    for sb in 0..supers {
        let mut s1 = [_mm512_setzero_si512(); R];
        let mut s2 = [_mm512_setzero_si512(); R];
        for group in 0..256 / SUB {
            let mut acc = [_mm512_setzero_si512(); R];
            for i in 0..SUB / 4 {
                let g = 64 * sb + (SUB / 4) * group + i;
                // SAFETY: 64 bytes at 64g, g < k/4, of the panel's 16k; four bytes at 4g of
                // each unpacked row's k quants (checked above). Unchecked: the innermost loop
                // of a prompt.
                unsafe {
                    let x = _mm512_loadu_si512(qs.as_ptr().add(64 * g) as *const _);
                    for (r, q) in quants.iter().enumerate() {
                        let w = (q.add(4 * g) as *const i32).read_unaligned();
                        acc[r] = _mm512_dpbusd_epi32(acc[r], _mm512_set1_epi32(w), x);
                    }
                }
            }
            // The scale is the same for every 16 quants of a group.
            let h = 16 * sb + (SUB / 16) * group;
            for r in 0..R {
                // SAFETY: h < k/16 = per_row, r < BAND (asserted above).
                let scale = _mm512_set1_epi32(unsafe { *scales.get_unchecked(r * per_row + h) });
                s1[r] = _mm512_add_epi32(s1[r], _mm512_mullo_epi32(acc[r], scale));
            }
        }
        // The offsets, after the products (their registers are free by then), two groups
        // per `vpdpwssd`.
        let pairs = 128 / SUB;
        for j in pairs * sb..pairs * (sb + 1) {
            // SAFETY: 16 i32 at 16j, j < k/(2·SUB), of the panel's 16·k/(2·SUB) pairs.
            let sum = unsafe { _mm512_loadu_si512(pair_sums.as_ptr().add(16 * j) as *const _) };
            for (r, s2) in s2.iter_mut().enumerate() {
                // SAFETY: j < k/(2·SUB) ≤ per_row, r < BAND (asserted above).
                let offset = _mm512_set1_epi32(unsafe { *offsets.get_unchecked(r * per_row + j) });
                *s2 = _mm512_dpwssd_epi32(*s2, sum, offset);
            }
        }
        // SAFETY: 16 f32 at 16·sb of the panel's 16·supers factors.
        let da = unsafe { _mm512_loadu_ps(d.as_ptr().add(16 * sb)) };
        for (r, u) in band[..R].iter().enumerate() {
            // `super_block_sum`, lane by lane: da · (d · s1 − dmin · s2).
            let t1 = _mm512_mul_ps(_mm512_set1_ps(u.d[sb]), _mm512_cvtepi32_ps(s1[r]));
            let t2 = _mm512_mul_ps(_mm512_set1_ps(u.dmin[sb]), _mm512_cvtepi32_ps(s2[r]));
            sums[r] = _mm512_add_ps(sums[r], _mm512_mul_ps(da, _mm512_sub_ps(t1, t2)));
        }
    }
    for (r, sum) in sums.iter().enumerate() {
        let mut values = [0f32; PANEL];
        // SAFETY: 16 f32 into `values`.
        unsafe { _mm512_storeu_ps(values.as_mut_ptr(), *sum) };
        for (lane, &v) in values.iter().enumerate().take(lanes) {
            out.put(PANEL * p + lane, first + r, v);
        }
    }
}

/// Q4_K rows against up to four activation rows (decoding): `x86::rows_k`'s integers, 128
/// quants per instruction. Each 64 bytes of quants unpack to the low nibbles of groups
/// `2j, 2j + 2` and the high nibbles of `2j + 1, 2j + 3`; a lane shuffle pairs them as groups
/// `2j, 2j + 1` and `2j + 2, 2j + 3`, so each register meets 64 activations in order.
/// `vpdpbusd` sums four products per lane (at most 4 · 15 · 127, an i16), and `vpdpwssd`
/// multiplies each lane, as an i16 pair, by its group's scale held as (scale, 0): the exact
/// scaled sums. The offsets and the float expression are `rows_k`'s.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn rows_k4<const N: usize>(
    bytes: &[u8],
    first: usize,
    acts: &QuantizedActs,
    j: usize,
    out: &Sink,
) {
    super::x86::k_quant_rows!(N, 4, super_block_k4::<N>, bytes, first, acts, j, out);
}

/// One Q4_K super-block against each activation row: eight lanes whose sum is `s1`, and eight
/// whose sum is `s2`, as `x86::super_block_k` gives them.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn super_block_k4<const N: usize>(
    blk: &[u8],
    a: &[ActRow<'_>; N],
    sb: usize,
) -> ([__m256i; N], [__m256i; N]) {
    let blk = &blk[..144];
    let sm = k4_scales_mins(blk);
    // The eight scales and eight mins as sixteen i32 lanes; each pair of groups' scales spread
    // over a register's halves.
    let wide = _mm512_cvtepu8_epi32(sm);
    let spread = |g: i32| {
        let h = g + 1;
        _mm512_permutexvar_epi32(
            _mm512_setr_epi32(g, g, g, g, g, g, g, g, h, h, h, h, h, h, h, h),
            wide,
        )
    };
    let scales = [spread(0), spread(2), spread(4), spread(6)];
    let mask = _mm512_set1_epi8(0x0f);
    let mut quants = [_mm512_setzero_si512(); 4];
    for half in 0..2 {
        // SAFETY: 64 bytes at 16 + 64 · half of a 144-byte block.
        let z = unsafe { _mm512_loadu_si512(blk.as_ptr().add(16 + 64 * half) as *const _) };
        let lo = _mm512_and_si512(z, mask);
        let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(z), mask);
        quants[2 * half] = _mm512_shuffle_i64x2::<0b01_00_01_00>(lo, hi);
        quants[2 * half + 1] = _mm512_shuffle_i64x2::<0b11_10_11_10>(lo, hi);
    }
    let mut isum = [_mm256_setzero_si256(); N];
    let mut corrs = [_mm256_setzero_si256(); N];
    let corr = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(sm, sm));
    for n in 0..N {
        let x = as_bytes(&a[n].qs[256 * sb..256 * sb + 256]);
        let mut acc = _mm512_setzero_si512();
        for (k, (&q, &scale)) in quants.iter().zip(&scales).enumerate() {
            // SAFETY: 64 bytes at 64k of the super-block's 256 activations.
            let xk = unsafe { _mm512_loadu_si512(x.as_ptr().add(64 * k) as *const _) };
            let products = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, xk);
            acc = _mm512_dpwssd_epi32(acc, products, scale);
        }
        isum[n] = _mm256_add_epi32(
            _mm512_castsi512_si256(acc),
            _mm512_extracti64x4_epi64::<1>(acc),
        );
        let bs = &a[n].bsums[16 * sb..16 * sb + 16];
        // SAFETY: 16 i16 in `bs`.
        let bs = unsafe { _mm256_loadu_si256(bs.as_ptr() as *const __m256i) };
        corrs[n] = _mm256_madd_epi16(corr, bs);
    }
    (isum, corrs)
}
