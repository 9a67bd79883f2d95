//! The AVX2 (with FMA and F16C) kernels. Each has the scalar kernel of `quant/mod.rs` as its
//! reference and returns the same value up to the order of float additions.

use std::arch::x86_64::*;

use super::avx512;
use super::blocks::Unpacked;
use super::{super_block_sum, ActRow, PreparedRow, Sink, WeightFormat, PANEL_MIN_ROWS};

/// The sum of a vector's eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) fn hsum(v: __m256) -> f32 {
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
pub(super) fn read_f16(bytes: &[u8], at: usize) -> f32 {
    let h = u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    _mm_cvtss_f32(f16_lanes(h))
}

/// The f16 `h` as f32 in every lane. Broadcast rather than moved into lane 0: from
/// `_mm_cvtsi32_si128` LLVM emits `vpinsrw` into whatever register it likes, which once was
/// an accumulator, chaining every block's factor to the previous block's sum (the Q8_0 decode
/// kernel then ran at a third of its speed).
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(super) fn f16_lanes(h: u16) -> __m128 {
    _mm_cvtph_ps(_mm_set1_epi16(h as i16))
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

#[inline]
#[target_feature(enable = "avx2")]
fn load32(b: &[u8]) -> __m256i {
    assert!(b.len() >= 32);
    // SAFETY: 32 bytes (checked above).
    unsafe { _mm256_loadu_si256(b.as_ptr() as *const __m256i) }
}

/// Rows of a matrix against activation rows, for the formats with register kernels (Q8_0, the
/// 4- and 5-bit formats, Q4_K, Q5_K, Q6_K): `bytes` holds whole rows, the first being row
/// `first`. The activation rows go in groups of up to four: a weight block is loaded and
/// unpacked in registers once per group, then multiplied with each of its rows, so that a
/// decode step of several sequences reads and unpacks each weight once. Returns `false` for a
/// format without a register kernel. `wide` takes the AVX-512 VNNI kernels where they exist
/// (`avx512.rs`): the same results, 64 bytes at a time.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C, and AVX-512 F, BW, VL and VNNI where `wide` is true.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn rows(
    format: WeightFormat,
    bytes: &[u8],
    first: usize,
    acts: &super::QuantizedActs,
    out: &Sink,
    wide: bool,
) -> bool {
    let rb = format.row_bytes(acts.k);
    if rb == 0 {
        return true;
    }
    if acts.rows > PANEL_MIN_ROWS
        && matches!(
            format,
            WeightFormat::Q4K | WeightFormat::Q5K | WeightFormat::Q6K
        )
    {
        if wide {
            // SAFETY: `wide` is true only where AVX-512 F, BW, VL and VNNI were detected.
            let done = unsafe {
                match format {
                    WeightFormat::Q6K => {
                        avx512::rows_k_panel::<16>(format, bytes, first, acts, out)
                    }
                    _ => avx512::rows_k_panel::<32>(format, bytes, first, acts, out),
                }
            };
            if done {
                return true;
            }
        } else {
            let done = match format {
                WeightFormat::Q4K => rows_k_panel::<32, 8>(format, bytes, first, acts, out),
                WeightFormat::Q5K => rows_k_panel::<32, 4>(format, bytes, first, acts, out),
                _ => rows_k_panel::<16, 2>(format, bytes, first, acts, out),
            };
            if done {
                return true;
            }
        }
        rows_k_unpacked(format, bytes, first, acts, out);
        return true;
    }
    if wide && acts.rows > PANEL_MIN_ROWS {
        // SAFETY: `wide` is true only where AVX-512 F, BW, VL and VNNI were detected.
        if unsafe { rows_32_tiled_wide(format, bytes, first, acts, out) } {
            return true;
        }
    }
    if acts.rows > PANEL_MIN_ROWS && rows_32_panels(format, bytes, first, acts, out) {
        return true;
    }
    // With many activation rows (a prompt), the weight rows go in tiles small enough to stay
    // in the L1 cache while every group of activation rows passes over them.
    let tile = if acts.rows > PANEL_MIN_ROWS {
        (TILE_BYTES / rb).max(1)
    } else {
        usize::MAX
    };
    let all = bytes.len() / rb;
    let mut r = 0;
    while r < all {
        let end = all.min(r.saturating_add(tile));
        let span = &bytes[r * rb..end * rb];
        let mut j = 0;
        while j < acts.rows {
            let n = (acts.rows - j).min(4);
            // SAFETY: as for this function.
            let done = unsafe {
                match n {
                    1 => rows_n::<1>(format, span, first + r, acts, j, out, wide),
                    2 => rows_n::<2>(format, span, first + r, acts, j, out, wide),
                    3 => rows_n::<3>(format, span, first + r, acts, j, out, wide),
                    _ => rows_n::<4>(format, span, first + r, acts, j, out, wide),
                }
            };
            if !done {
                return false;
            }
            j += n;
        }
        r = end;
    }
    true
}

/// Bytes of weight rows in a prompt's tile.
pub(super) const TILE_BYTES: usize = 16 << 10;

/// Activation rows per tile when a K-quant row is unpacked once for many (a prompt): they stay
/// in the L2 cache while the tile's weight rows pass over them (128 rows of 4,096 quants are
/// 512 KiB). 128 rather than 32 unpacks each row a quarter as often: the 1 GiB Q4_K model's
/// prompts +7 to 10% (3 of 3 interleaved pairs).
const ACT_TILE: usize = 128;

/// Weight rows unpacked together by [`rows_k_panel`]: each load of a panel's activations
/// serves all of them (four keep their accumulators in the sixteen registers).
const BAND_K: usize = 4;

/// K-quant rows (Q4_K, Q5_K: `SUB` 32, the span of a scale; Q6_K: 16) against a prompt's
/// activation panels of eight rows (`Q8x256` in
/// [`QuantizedActs::panel`](super::QuantizedActs::panel)), where the AVX2 kernels run: a band
/// of four weight rows is unpacked to a byte per quant, then for each four quants of the
/// panel's eight rows, one `vpmaddubsw` per weight row multiplies the row's four bytes,
/// broadcast, with four quants of each activation row. The products' pairs are summed in i16
/// over `CHUNK` fours (as many as cannot overflow: 8 for Q4_K's 4-bit quants, 4 for Q5_K, 2
/// for Q6_K), then scaled per group with `vpmaddwd`: the exact integers of each super-block,
/// and the offsets through the activations' sums as [`rows_k`] takes them. The float
/// expression is the scalar kernel's, lane by lane: the same bits as every other K-quant
/// kernel. `false` where the panel is missing or the format has no unpacker.
#[target_feature(enable = "avx2,fma,f16c")]
fn rows_k_panel<const SUB: usize, const CHUNK: usize>(
    format: WeightFormat,
    bytes: &[u8],
    first: usize,
    acts: &super::QuantizedActs,
    out: &Sink,
) -> bool {
    let k = acts.k;
    let lanes = super::PANEL_AVX2;
    let panels = acts.rows.div_ceil(lanes);
    let panel = &acts.panel;
    let pair_len = if SUB == 16 { k / 32 } else { k / 64 };
    let pair_sums = if SUB == 16 {
        &panel.pairs16
    } else {
        &panel.pairs32
    };
    if k == 0
        || !k.is_multiple_of(256)
        || acts.format != super::ActFormat::Q8x256
        || panel.lanes != lanes
        || panel.qs.len() != panels * lanes * k
        || panel.d.len() != panels * lanes * (k / 256)
        || pair_sums.len() != panels * lanes * pair_len
    {
        return false;
    }
    let rb = format.row_bytes(k);
    let all = bytes.len() / rb;
    let mut band: [Unpacked; BAND_K] = Default::default();
    // Per band row, its groups' offsets in i16 pairs, for `vpmaddwd` against the panel's
    // pairs of sums (a group of 32 has its offset at every other 16).
    let mut offsets = vec![0i32; BAND_K * pair_len];
    let mut r0 = 0;
    while r0 < all {
        let n = (all - r0).min(BAND_K);
        for (t, u) in band.iter_mut().enumerate().take(n) {
            u.reset(k, 256);
            // SAFETY: AVX2 and F16C come with this function's features.
            if !unsafe { unpack(format, &bytes[(r0 + t) * rb..(r0 + t + 1) * rb], u) } {
                return false;
            }
            let step = SUB / 16;
            for (j, w) in offsets[t * pair_len..(t + 1) * pair_len]
                .iter_mut()
                .enumerate()
            {
                let h = 2 * step * j;
                *w = super::i16_pair(u.offset[h], u.offset[h + step]);
            }
        }
        for p in 0..panels {
            let rows = (acts.rows - p * lanes).min(lanes);
            let panel_at = (p, rows, first + r0);
            match n {
                1 => band_panel_k::<SUB, CHUNK, 1>(&band, &offsets, panel, k, panel_at, out),
                2 => band_panel_k::<SUB, CHUNK, 2>(&band, &offsets, panel, k, panel_at, out),
                3 => band_panel_k::<SUB, CHUNK, 3>(&band, &offsets, panel, k, panel_at, out),
                _ => band_panel_k::<SUB, CHUNK, 4>(&band, &offsets, panel, k, panel_at, out),
            }
        }
        r0 += n;
    }
    true
}

/// The first `R` unpacked rows of `band` against panel `p` (`at`: the panel, its rows in use,
/// the first weight row's index) into `out`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn band_panel_k<const SUB: usize, const CHUNK: usize, const R: usize>(
    band: &[Unpacked; BAND_K],
    offsets: &[i32],
    panel: &super::ActPanel,
    k: usize,
    at: (usize, usize, usize),
    out: &Sink,
) {
    const LANES: usize = super::PANEL_AVX2;
    let (p, rows, first) = at;
    let supers = k / 256;
    let pair_len = if SUB == 16 { k / 32 } else { k / 64 };
    let pair_sums = if SUB == 16 {
        &panel.pairs16[p * LANES * pair_len..(p + 1) * LANES * pair_len]
    } else {
        &panel.pairs32[p * LANES * pair_len..(p + 1) * LANES * pair_len]
    };
    let (qs, d) = (
        &panel.qs[p * LANES * k..(p + 1) * LANES * k],
        &panel.d[p * LANES * supers..(p + 1) * LANES * supers],
    );
    for u in &band[..R] {
        assert!(u.q.len() >= k && u.scale.len() >= k / 16);
        assert!(u.d.len() >= supers && u.dmin.len() >= supers);
    }
    assert!(offsets.len() >= BAND_K * pair_len);
    // The rows' quants and scales as raw pointers, taken once: the innermost loop then keeps
    // them in registers rather than reading each row's Vec again.
    let quants: [*const u8; R] = std::array::from_fn(|r| band[r].q.as_ptr());
    let scales: [*const i16; R] = std::array::from_fn(|r| band[r].scale.as_ptr());
    let x = qs.as_ptr() as *const u8;
    let mut sums = [_mm256_setzero_ps(); R];
    for sb in 0..supers {
        let mut s1 = [_mm256_setzero_si256(); R];
        for group in 0..256 / SUB {
            for chunk in 0..SUB / (4 * CHUNK) {
                let mut acc = [_mm256_setzero_si256(); R];
                for i in 0..CHUNK {
                    let g = 64 * sb + (SUB / 4) * group + CHUNK * chunk + i;
                    // SAFETY: 32 bytes at 32g, g < k/4, of the panel's 8k quants; four bytes
                    // at 4g of each unpacked row's k quants (checked above). Unchecked: the
                    // innermost loop of a prompt.
                    unsafe {
                        let xv = _mm256_loadu_si256(x.add(32 * g) as *const __m256i);
                        for (r, q) in quants.iter().enumerate() {
                            let w =
                                _mm256_set1_epi32((q.add(4 * g) as *const i32).read_unaligned());
                            acc[r] = _mm256_add_epi16(acc[r], _mm256_maddubs_epi16(w, xv));
                        }
                    }
                }
                // A group's scale is the same for each of its 16s.
                let h = 16 * sb + (SUB / 16) * group;
                for (r, sc) in scales.iter().enumerate() {
                    // SAFETY: h < k/16 (checked above).
                    let scale = _mm256_set1_epi16(unsafe { *sc.add(h) });
                    s1[r] = _mm256_add_epi32(s1[r], _mm256_madd_epi16(acc[r], scale));
                }
            }
        }
        // The offsets, two groups per `vpmaddwd`.
        let mut s2 = [_mm256_setzero_si256(); R];
        let pairs = 128 / SUB;
        for j in pairs * sb..pairs * (sb + 1) {
            // SAFETY: 8 i32 at 8j, j < pair_len, of the panel's 8 · pair_len pairs.
            let sum =
                unsafe { _mm256_loadu_si256(pair_sums.as_ptr().add(8 * j) as *const __m256i) };
            for (r, s2) in s2.iter_mut().enumerate() {
                // SAFETY: j < pair_len, r < BAND_K (asserted above).
                let offset = _mm256_set1_epi32(unsafe { *offsets.get_unchecked(r * pair_len + j) });
                *s2 = _mm256_add_epi32(*s2, _mm256_madd_epi16(sum, offset));
            }
        }
        // SAFETY: 8 f32 at 8·sb of the panel's 8·supers factors.
        let da = unsafe { _mm256_loadu_ps(d.as_ptr().add(LANES * sb)) };
        for (r, u) in band[..R].iter().enumerate() {
            // `super_block_sum`, lane by lane: da · (d · s1 − dmin · s2).
            let t1 = _mm256_mul_ps(_mm256_set1_ps(u.d[sb]), _mm256_cvtepi32_ps(s1[r]));
            let t2 = _mm256_mul_ps(_mm256_set1_ps(u.dmin[sb]), _mm256_cvtepi32_ps(s2[r]));
            sums[r] = _mm256_add_ps(sums[r], _mm256_mul_ps(da, _mm256_sub_ps(t1, t2)));
        }
    }
    for (r, sum) in sums.iter().enumerate() {
        let mut values = [0f32; LANES];
        // SAFETY: 8 f32 into `values`.
        unsafe { _mm256_storeu_ps(values.as_mut_ptr(), *sum) };
        for (lane, &v) in values.iter().enumerate().take(rows) {
            out.put(LANES * p + lane, first + r, v);
        }
    }
}

/// K-quant rows against many activation rows: each row is unpacked once into a buffer per tile
/// of activation rows (rather than once per group of four), then each group of four takes its
/// dot products from the buffer. The float operations are those of [`rows_k`] in the same
/// order, so the results are the same bits whichever path a row takes.
#[target_feature(enable = "avx2,fma,f16c")]
fn rows_k_unpacked(
    format: WeightFormat,
    bytes: &[u8],
    first: usize,
    acts: &super::QuantizedActs,
    out: &Sink,
) {
    let k = acts.k;
    let rb = format.row_bytes(k);
    let mut u = Unpacked::default();
    let mut j0 = 0;
    while j0 < acts.rows {
        let j1 = acts.rows.min(j0 + ACT_TILE);
        // The tile's rows, sliced once rather than for every weight row (5% of a Q4_K prompt).
        let tile: Vec<ActRow> = (j0..j1).map(|j| acts.row(j)).collect();
        for (i, row) in bytes.chunks_exact(rb).enumerate() {
            u.reset(k, 256);
            // SAFETY: AVX2 and F16C were detected by our caller; the formats here have SIMD
            // unpackers.
            if !unsafe { unpack(format, row, &mut u) } {
                return;
            }
            u.spread_scales();
            let mut j = j0;
            while j < j1 {
                let row = first + i;
                match (j1 - j).min(4) {
                    1 => unpacked_k::<1>(&u, row, group(&tile, j - j0), j, out),
                    2 => unpacked_k::<2>(&u, row, group(&tile, j - j0), j, out),
                    3 => unpacked_k::<3>(&u, row, group(&tile, j - j0), j, out),
                    _ => unpacked_k::<4>(&u, row, group(&tile, j - j0), j, out),
                }
                j += (j1 - j).min(4);
            }
        }
        j0 = j1;
    }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn unpacked_k<const N: usize>(u: &Unpacked, row: usize, a: &[ActRow; N], j: usize, out: &Sink) {
    let supers = u.d.len();
    assert!(
        u.q.len() >= 256 * supers
            && u.scale_vectors.len() >= 128 * supers
            && u.offset.len() >= 16 * supers
    );
    for x in a {
        assert!(x.qs.len() >= 256 * supers && x.d.len() >= supers && x.bsums.len() >= 16 * supers);
    }
    let mut sums = [0f32; N];
    for sb in 0..supers {
        let mut isum = [_mm256_setzero_si256(); N];
        for c in 0..8 {
            let at = 256 * sb + 32 * c;
            // SAFETY: at + 32 <= 256·supers, within the quants, every activation row's quants
            // and (at / 2 + 16 <= 128·supers) the scale vectors, all checked above. Unchecked
            // loads: this is the innermost loop of every prompt on a K-quant model.
            let (q, scales) = unsafe {
                (
                    _mm256_loadu_si256(u.q.as_ptr().add(at) as *const __m256i),
                    _mm256_loadu_si256(u.scale_vectors.as_ptr().add(at / 2) as *const __m256i),
                )
            };
            for n in 0..N {
                // SAFETY: as above.
                let x = unsafe { _mm256_loadu_si256(a[n].qs.as_ptr().add(at) as *const __m256i) };
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), scales);
                isum[n] = _mm256_add_epi32(isum[n], p);
            }
        }
        // SAFETY: 16 i16 at 16·sb of `u.offset` (checked above).
        let corr = unsafe { _mm256_loadu_si256(u.offset.as_ptr().add(16 * sb) as *const __m256i) };
        for n in 0..N {
            // SAFETY: 16 i16 at 16·sb of the sums (checked above).
            let bs =
                unsafe { _mm256_loadu_si256(a[n].bsums.as_ptr().add(16 * sb) as *const __m256i) };
            let (s1, s2) = hsum_pair_i32(isum[n], _mm256_madd_epi16(corr, bs));
            sums[n] += super_block_sum(a[n].d[sb], u.d[sb], u.dmin[sb], s1, s2);
        }
    }
    for (n, &sum) in sums.iter().enumerate() {
        out.put(j + n, row, sum);
    }
}

/// # Safety
/// As for [`rows`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_n<const N: usize>(
    format: WeightFormat,
    bytes: &[u8],
    first: usize,
    acts: &super::QuantizedActs,
    j: usize,
    out: &Sink,
    wide: bool,
) -> bool {
    // Block size, where the nibbles start, where the fifth bits are (0: none), where the min
    // is (0: none), and the offset subtracted from the quants of formats without a min.
    macro_rules! rows_32_either {
        ($size:literal, $qs:literal, $qh:literal, $min:literal, $off:literal, $q8:literal) => {
            if wide {
                // SAFETY: the caller's promise for `wide`.
                unsafe {
                    avx512::rows_32::<$size, $qs, $qh, $min, $off, $q8, N>(
                        bytes, first, acts, j, out,
                    )
                }
            } else {
                rows_32::<$size, $qs, $qh, $min, $off, $q8, N>(bytes, first, acts, j, out)
            }
        };
    }
    match format {
        WeightFormat::Q8_0 => rows_32_either!(34, 2, 0, 0, 0, true),
        WeightFormat::Q4_0 => rows_32_either!(18, 2, 0, 0, 8, false),
        WeightFormat::Q4_1 => rows_32_either!(20, 4, 0, 2, 0, false),
        WeightFormat::Q5_0 => rows_32_either!(22, 6, 2, 0, 16, false),
        WeightFormat::Q5_1 => rows_32_either!(24, 8, 4, 2, 0, false),
        WeightFormat::Q4K if wide => {
            // SAFETY: the caller's promise for `wide`.
            unsafe { avx512::rows_k4::<N>(bytes, first, acts, j, out) }
        }
        WeightFormat::Q4K => rows_k::<N, 4>(bytes, first, acts, j, out),
        WeightFormat::Q5K => rows_k::<N, 5>(bytes, first, acts, j, out),
        WeightFormat::Q6K => rows_k::<N, 6>(bytes, first, acts, j, out),
        _ => return false,
    }
    true
}

/// The 32-weight formats against many activation rows with the AVX-512 VNNI tile kernel;
/// `false` for another format.
///
/// # Safety
/// The CPU must have AVX2, FMA, F16C and AVX-512 F, BW, VL and VNNI.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_32_tiled_wide(
    format: WeightFormat,
    bytes: &[u8],
    first: usize,
    acts: &super::QuantizedActs,
    out: &Sink,
) -> bool {
    // SAFETY: the caller's promise.
    unsafe {
        match format {
            WeightFormat::Q8_0 => {
                avx512::rows_32_tiled::<34, 2, 0, 0, 0, true>(bytes, first, acts, out)
            }
            WeightFormat::Q4_0 => {
                avx512::rows_32_tiled::<18, 2, 0, 0, 8, false>(bytes, first, acts, out)
            }
            WeightFormat::Q4_1 => {
                avx512::rows_32_tiled::<20, 4, 0, 2, 0, false>(bytes, first, acts, out)
            }
            WeightFormat::Q5_0 => {
                avx512::rows_32_tiled::<22, 6, 2, 0, 16, false>(bytes, first, acts, out)
            }
            WeightFormat::Q5_1 => {
                avx512::rows_32_tiled::<24, 8, 4, 2, 0, false>(bytes, first, acts, out)
            }
            _ => return false,
        }
    }
    true
}

/// The 32-weight formats against a prompt's panels ([`rows_32_panel`]); `false` for another
/// format, or where the activations have no panel.
#[target_feature(enable = "avx2,fma,f16c")]
fn rows_32_panels(
    format: WeightFormat,
    bytes: &[u8],
    first: usize,
    acts: &super::QuantizedActs,
    out: &Sink,
) -> bool {
    match format {
        WeightFormat::Q8_0 => rows_32_panel::<34, 2, 0, 0, 0, true>(bytes, first, acts, out),
        WeightFormat::Q4_0 => rows_32_panel::<18, 2, 0, 0, 8, false>(bytes, first, acts, out),
        WeightFormat::Q4_1 => rows_32_panel::<20, 4, 0, 2, 0, false>(bytes, first, acts, out),
        WeightFormat::Q5_0 => rows_32_panel::<22, 6, 2, 0, 16, false>(bytes, first, acts, out),
        WeightFormat::Q5_1 => rows_32_panel::<24, 8, 4, 2, 0, false>(bytes, first, acts, out),
        _ => false,
    }
}

/// The activation rows `j..j + N`.
/// Rows `at..at + N` of a tile of activation rows.
#[inline]
pub(super) fn group<'t, 'a, const N: usize>(
    tile: &'t [ActRow<'a>],
    at: usize,
) -> &'t [ActRow<'a>; N] {
    tile[at..at + N]
        .try_into()
        .expect("a group lies within its tile")
}

pub(super) fn act_rows<const N: usize>(acts: &super::QuantizedActs, j: usize) -> [ActRow<'_>; N] {
    std::array::from_fn(|n| acts.row(j + n))
}

/// The 32-weight formats. Q8_0 (`Q8`) and the formats without a min multiply signed weights
/// (`q - OFF`) by the activations with the sign trick; those with a min multiply unsigned quants
/// and add `m · d_a · Σx` per block.
///
/// The loop reads through raw pointers, with every length checked once before it: with slices
/// and a prefetch clamped to the row, a pair of Q8_0 blocks took about 70 instructions, two
/// thirds of them bounds checks, address arithmetic and the prefetch's own loop, and the kernel
/// ran at 7 G products/s in L2 on an AVX2-only Zen 3 where the same vector work streams faster
/// than memory.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn rows_32<
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
    acts: &super::QuantizedActs,
    j: usize,
    out: &Sink,
) {
    let blocks = acts.k / 32;
    let rb = blocks * SIZE;
    if rb == 0 {
        return;
    }
    let acts = ActBlocks::<N>::new(&act_rows::<N>(acts, j), blocks);
    for (i, row) in bytes.chunks_exact(rb).enumerate() {
        let row = row.as_ptr();
        // Two sets of accumulators, for even and odd blocks: with one activation row, a single
        // chain of dependent FMAs would bound the loop.
        let (mut even, mut odd) = ([_mm256_setzero_ps(); N], [_mm256_setzero_ps(); N]);
        let mut mins = [0f32; N];
        // The same order of additions for every N, so that a token's result does not depend on
        // how many others share its step.
        let mut b = 0;
        while b + 2 <= blocks {
            // A line per pair (34 to 68 bytes), near and far ahead; a prefetch past the end of
            // the weights reads nothing and cannot fault.
            let at = row.wrapping_add(SIZE * b);
            _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH_BYTES) as *const i8);
            _mm_prefetch::<_MM_HINT_T2>(at.wrapping_add(PREFETCH_FAR_BYTES) as *const i8);
            // SAFETY: blocks b and b + 1 lie within the row (b + 2 <= blocks), and every
            // activation row holds `blocks` blocks (checked above).
            unsafe {
                block_32::<SIZE, QS, QH, MIN, OFF, Q8, N>(at, &acts, b, &mut even, &mut mins);
                block_32::<SIZE, QS, QH, MIN, OFF, Q8, N>(
                    at.add(SIZE),
                    &acts,
                    b + 1,
                    &mut odd,
                    &mut mins,
                );
            }
            b += 2;
        }
        if b < blocks {
            // SAFETY: as above, for the last block.
            unsafe {
                block_32::<SIZE, QS, QH, MIN, OFF, Q8, N>(
                    row.add(SIZE * b),
                    &acts,
                    b,
                    &mut even,
                    &mut mins,
                );
            }
        }
        for n in 0..N {
            out.put(
                j + n,
                first + i,
                hsum(_mm256_add_ps(even[n], odd[n])) + mins[n],
            );
        }
    }
}

/// `N` activation rows of at least `blocks` blocks of 32 as raw pointers to their quants,
/// factors and sums, for the innermost loops of the 32-weight formats.
pub(super) struct ActBlocks<const N: usize> {
    qs: [*const u8; N],
    d: [*const f32; N],
    bsums: [*const i16; N],
}

impl<const N: usize> ActBlocks<N> {
    /// Panics where a row holds fewer than `blocks` blocks.
    pub(super) fn new(a: &[ActRow<'_>; N], blocks: usize) -> ActBlocks<N> {
        for x in a {
            assert!(
                x.qs.len() >= 32 * blocks && x.d.len() >= blocks && x.bsums.len() >= 2 * blocks
            );
        }
        ActBlocks {
            qs: std::array::from_fn(|n| a[n].qs.as_ptr() as *const u8),
            d: std::array::from_fn(|n| a[n].d.as_ptr()),
            bsums: std::array::from_fn(|n| a[n].bsums.as_ptr()),
        }
    }
}

/// Block `b` of a 32-weight row (`blk` points at it) against the activation rows, into `acc`
/// and `mins`.
///
/// # Safety
/// `blk` points at `SIZE` readable bytes, and `b` is below the `blocks` that `a` was made for.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn block_32<
    const SIZE: usize,
    const QS: usize,
    const QH: usize,
    const MIN: usize,
    const OFF: i8,
    const Q8: bool,
    const N: usize,
>(
    blk: *const u8,
    a: &ActBlocks<N>,
    b: usize,
    acc: &mut [__m256; N],
    mins: &mut [f32; N],
) {
    // SAFETY (every read of this function): within the block and the activation rows' block
    // `b`, by the caller's promise.
    let q = unsafe { block_quants::<QS, QH, OFF, Q8>(blk) };
    // Signed weights (Q8_0's, and the quants of the formats without a min less their offset)
    // take the sign trick: |w| once per block, the activations' signs flipped by w per row.
    // The formats with a min multiply their unsigned quants directly. (Taking OFF·Σx out of an
    // unsigned product instead costs a vector subtraction and four scalar operations per
    // activation row: measured 20 to 25% slower on prompts, where four rows share a block.)
    let signed = Q8 || OFF != 0;
    let wabs = if signed { _mm256_sign_epi8(q, q) } else { q };
    let f16 = |at: usize| unsafe { (blk.add(at) as *const u16).read_unaligned() };
    // The factor in every lane, so that each row's `dw · da` is one vector multiply (the
    // scalar product's bits in every lane).
    let dw = _mm256_cvtph_ps(_mm_set1_epi16(f16(0) as i16));
    let m = if MIN != 0 {
        _mm_cvtss_f32(f16_lanes(f16(MIN)))
    } else {
        0.0
    };
    let ones = _mm256_set1_epi16(1);
    for n in 0..N {
        let x = unsafe { _mm256_loadu_si256(a.qs[n].add(32 * b) as *const __m256i) };
        let p = if signed {
            _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(x, q))
        } else {
            _mm256_maddubs_epi16(q, x)
        };
        let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
        let da = unsafe { *a.d[n].add(b) };
        acc[n] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(da)), p, acc[n]);
        if MIN != 0 {
            let (s0, s1) = unsafe { (*a.bsums[n].add(2 * b), *a.bsums[n].add(2 * b + 1)) };
            mins[n] += m * da * (f32::from(s0) + f32::from(s1));
        }
    }
}

/// The 32 weights of a 32-weight block (`blk` points at it) as bytes: Q8_0's signed quants,
/// the 4- and 5-bit quants less `OFF` where the format has no min (signed), or as they are
/// where it has one (unsigned).
///
/// # Safety
/// `blk` points at a whole block of the format.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn block_quants<const QS: usize, const QH: usize, const OFF: i8, const Q8: bool>(
    blk: *const u8,
) -> __m256i {
    // SAFETY (every read): within the block, by the caller's promise.
    let q = if Q8 {
        unsafe { _mm256_loadu_si256(blk.add(2) as *const __m256i) }
    } else {
        let v = unsafe { _mm_loadu_si128(blk.add(QS) as *const __m128i) };
        let both = _mm256_set_m128i(_mm_srli_epi16::<4>(v), v);
        let q = _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
        if QH != 0 {
            let bits = unsafe { (blk.add(QH) as *const u32).read_unaligned() };
            _mm256_or_si256(q, fifth_bits_32(bits))
        } else {
            q
        }
    };
    if OFF != 0 {
        _mm256_sub_epi8(q, _mm256_set1_epi8(OFF))
    } else {
        q
    }
}

/// How [`rows_32_panel`] multiplies a format's weights with a panel's activations, in
/// `vpmaddubsw`'s unsigned-by-signed bytes, to the exact sums of four products.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PanelProducts {
    /// Q8_0: the weights' magnitudes by the activations with the weights' signs (the sign
    /// trick of [`block_32`]).
    Signs,
    /// Q4_0, Q5_0: the activations plus 128 by the signed weights, less 128 times the four
    /// weights' sum. `vpsignb` took a third of the kernel's time on a Zen 3; this costs a
    /// `vpsubd`. (Q8_0's weights are too wide for it: two products can pass an i16.)
    Biased,
    /// Q4_1, Q5_1: the unsigned quants by the activations.
    Unsigned,
}

impl PanelProducts {
    const fn of(q8: bool, off: i8) -> PanelProducts {
        if q8 {
            PanelProducts::Signs
        } else if off != 0 {
            PanelProducts::Biased
        } else {
            PanelProducts::Unsigned
        }
    }
}

/// One weight row of a 32-weight format made ready for [`rows_32_panel`], per four weights
/// `g`: the bytes it multiplies ([`PanelProducts`]: magnitudes, signed weights or unsigned
/// quants), the weights' signs (`Signs` only) or 128 times the four weights' sum (`Biased`
/// only; both empty otherwise); per block its factor and min as f32.
#[derive(Default)]
struct PanelRow32 {
    weights: Vec<u8>,
    signs: Vec<i8>,
    offsets: Vec<i32>,
    d: Vec<f32>,
    m: Vec<f32>,
}

impl PanelRow32 {
    /// Unpacks `row`, whole blocks of the format, once for every panel it meets.
    #[target_feature(enable = "avx2,f16c")]
    fn fill<
        const SIZE: usize,
        const QS: usize,
        const QH: usize,
        const MIN: usize,
        const OFF: i8,
        const Q8: bool,
    >(
        &mut self,
        row: &[u8],
    ) {
        let blocks = row.len() / SIZE;
        let products = PanelProducts::of(Q8, OFF);
        self.weights.resize(32 * blocks, 0);
        // Only the products that read them keep the signs or the offsets.
        let signs = if products == PanelProducts::Signs {
            32 * blocks
        } else {
            0
        };
        let offsets = if products == PanelProducts::Biased {
            8 * blocks
        } else {
            0
        };
        self.signs.resize(signs, 0);
        self.offsets.resize(offsets, 0);
        self.d.resize(blocks, 0.0);
        self.m.resize(blocks, 0.0);
        for (b, blk) in row.chunks_exact(SIZE).enumerate() {
            // SAFETY: `blk` is a whole block.
            let q = unsafe { block_quants::<QS, QH, OFF, Q8>(blk.as_ptr()) };
            let weights = match products {
                PanelProducts::Signs => _mm256_sign_epi8(q, q),
                _ => q,
            };
            // SAFETY: 32 bytes at 32b of vectors of 32 · blocks (`signs` where they are kept).
            unsafe {
                _mm256_storeu_si256(
                    self.weights.as_mut_ptr().add(32 * b) as *mut __m256i,
                    weights,
                );
                if products == PanelProducts::Signs {
                    _mm256_storeu_si256(self.signs.as_mut_ptr().add(32 * b) as *mut __m256i, q);
                }
            }
            if products == PanelProducts::Biased {
                // 128 · the sum of each four weights, as `vpmaddubsw` then `vpmaddwd` by
                // ones sum them: the lanes' order is the weights'.
                let sums = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(_mm256_set1_epi8(1), q),
                    _mm256_set1_epi16(1),
                );
                // SAFETY: 8 i32 at 8b of 8 · blocks.
                unsafe {
                    _mm256_storeu_si256(
                        self.offsets.as_mut_ptr().add(8 * b) as *mut __m256i,
                        _mm256_slli_epi32::<7>(sums),
                    )
                };
            }
            self.d[b] = read_f16(blk, 0);
            self.m[b] = if MIN != 0 { read_f16(blk, MIN) } else { 0.0 };
        }
    }
}

/// Weight rows unpacked together by [`rows_32_panel`], so that each panel's activations,
/// read once from the L2 cache, serve all of them from L1.
const BAND_32: usize = 4;

/// The 32-weight formats against a prompt's activation panels (`Q8x32` in
/// [`QuantizedActs::panel`](super::QuantizedActs::panel)), where the AVX2 kernels run: a band
/// of weight rows is unpacked once ([`PanelRow32`]), then meets the panels, one register lane
/// per activation row. For each four weights, broadcast, one `vpmaddubsw` and one
/// `vpmaddwd` give the four products' sum for eight rows at once, where [`rows_32`] unpacks
/// a block again for every four rows and takes the same two instructions per row. The
/// float operations are [`rows_32`]'s, lane by lane and in its order (the even and the odd
/// blocks' accumulators, their horizontal sum, the mins), so the results are its bits.
/// `false` where the panel is missing.
#[target_feature(enable = "avx2,fma,f16c")]
fn rows_32_panel<
    const SIZE: usize,
    const QS: usize,
    const QH: usize,
    const MIN: usize,
    const OFF: i8,
    const Q8: bool,
>(
    bytes: &[u8],
    first: usize,
    acts: &super::QuantizedActs,
    out: &Sink,
) -> bool {
    let k = acts.k;
    let blocks = k / 32;
    let panel = &acts.panel;
    let lanes = super::PANEL_AVX2;
    let panels = acts.rows.div_ceil(lanes);
    let size = panels * lanes * k;
    if blocks == 0
        || acts.format != super::ActFormat::Q8x32
        || panel.lanes != lanes
        || panel.qs.len() != size
        || panel.biased.len() != size
        || panel.d.len() != size / 32
        || panel.pairs16.len() != size / 32
    {
        return false;
    }
    let products = PanelProducts::of(Q8, OFF);
    let x = match products {
        PanelProducts::Biased => panel.biased.as_ptr(),
        _ => panel.qs.as_ptr() as *const u8,
    };
    let rb = blocks * SIZE;
    let all = bytes.len() / rb;
    let mut band: [PanelRow32; BAND_32] = Default::default();
    let mut r0 = 0;
    while r0 < all {
        let n = (all - r0).min(BAND_32);
        for (t, w) in band.iter_mut().enumerate().take(n) {
            w.fill::<SIZE, QS, QH, MIN, OFF, Q8>(&bytes[(r0 + t) * rb..(r0 + t + 1) * rb]);
        }
        for p in 0..panels {
            let at = p * lanes * blocks;
            let rows = (acts.rows - p * lanes).min(lanes);
            for (t, w) in band.iter().enumerate().take(n) {
                // SAFETY: the panel holds `panels` panels of `k` quants, `blocks` factors and
                // pairs of sums (checked above); `w` holds `blocks` blocks.
                let sums = unsafe {
                    let (x, d) = (x.add(p * lanes * k), panel.d.as_ptr().add(at));
                    let even = panel_pass_32(w, x, d, blocks, 0, products);
                    let odd = panel_pass_32(w, x, d, blocks, 1, products);
                    let sums = lane_sums(&even, &odd);
                    if MIN != 0 {
                        let pairs = panel.pairs16.as_ptr().add(at);
                        _mm256_add_ps(sums, panel_mins(w, pairs, d, blocks))
                    } else {
                        sums
                    }
                };
                let mut values = [0f32; 8];
                // SAFETY: 8 f32 into `values`.
                unsafe { _mm256_storeu_ps(values.as_mut_ptr(), sums) };
                for (lane, &v) in values.iter().enumerate().take(rows) {
                    out.put(lanes * p + lane, first + r0 + t, v);
                }
            }
        }
        r0 += n;
    }
    true
}

/// One parity of [`rows_32`]'s accumulators for a panel's eight activation rows: blocks
/// `start`, `start + 2`, ... of `w` against the panel's quants at `x` (four of each row for
/// group `g` at `32g`, biased for `Biased` products) with the rows' factors at `d` (block
/// `b`'s at `8b`). Element `i` holds, for each row, what lane `i` of that row's accumulator
/// holds in [`rows_32`].
///
/// # Safety
/// `x` and `d` point into a panel of `blocks` blocks as above, and `w` holds `blocks` blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn panel_pass_32(
    w: &PanelRow32,
    x: *const u8,
    d: *const f32,
    blocks: usize,
    start: usize,
    products: PanelProducts,
) -> [__m256; 8] {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); 8];
    let (weights, signs, offsets) = (w.weights.as_ptr(), w.signs.as_ptr(), w.offsets.as_ptr());
    let mut b = start;
    while b < blocks {
        // SAFETY (every read): b < blocks, within `w` and the panel by the caller's promise.
        // Each row's `dw · da`, as in `block_32`.
        let scale = unsafe { _mm256_mul_ps(_mm256_set1_ps(w.d[b]), _mm256_loadu_ps(d.add(8 * b))) };
        for (i, acc) in acc.iter_mut().enumerate() {
            let g = 8 * b + i;
            let (xv, wv) = unsafe {
                (
                    _mm256_loadu_si256(x.add(32 * g) as *const __m256i),
                    _mm256_set1_epi32((weights.add(4 * g) as *const i32).read_unaligned()),
                )
            };
            let p = match products {
                PanelProducts::Signs => {
                    let sign = unsafe { (signs.add(4 * g) as *const i32).read_unaligned() };
                    let p = _mm256_maddubs_epi16(wv, _mm256_sign_epi8(xv, _mm256_set1_epi32(sign)));
                    _mm256_madd_epi16(p, ones)
                }
                PanelProducts::Biased => {
                    let offset = _mm256_set1_epi32(unsafe { *offsets.add(g) });
                    _mm256_sub_epi32(
                        _mm256_madd_epi16(_mm256_maddubs_epi16(xv, wv), ones),
                        offset,
                    )
                }
                PanelProducts::Unsigned => _mm256_madd_epi16(_mm256_maddubs_epi16(wv, xv), ones),
            };
            *acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), *acc);
        }
        b += 2;
    }
    acc
}

/// [`hsum`] of `even[lane] + odd[lane]` over the eight lanes, for each of eight rows at once
/// (element `i` of each input holds lane `i`): the same additions in the same order.
#[inline]
#[target_feature(enable = "avx2")]
fn lane_sums(even: &[__m256; 8], odd: &[__m256; 8]) -> __m256 {
    let v: [__m256; 8] = std::array::from_fn(|i| _mm256_add_ps(even[i], odd[i]));
    let s: [__m256; 4] = std::array::from_fn(|i| _mm256_add_ps(v[i], v[i + 4]));
    _mm256_add_ps(_mm256_add_ps(s[0], s[2]), _mm256_add_ps(s[1], s[3]))
}

/// [`block_32`]'s mins for a panel's eight rows: over the blocks in order, `m · da · (s0 +
/// s1)` with the rows' sums per 16 in i16 pairs at `pairs` (block `b`'s at `8b`) and factors
/// at `d`.
///
/// # Safety
/// As for [`panel_pass_32`], with `pairs` beside `d`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn panel_mins(w: &PanelRow32, pairs: *const i32, d: *const f32, blocks: usize) -> __m256 {
    let mut mins = _mm256_setzero_ps();
    for b in 0..blocks {
        // SAFETY: b < blocks, within the panel by the caller's promise.
        let (pair, da) = unsafe {
            (
                _mm256_loadu_si256(pairs.add(8 * b) as *const __m256i),
                _mm256_loadu_ps(d.add(8 * b)),
            )
        };
        let low = _mm256_srai_epi32::<16>(_mm256_slli_epi32::<16>(pair));
        let high = _mm256_srai_epi32::<16>(pair);
        let sum = _mm256_add_ps(_mm256_cvtepi32_ps(low), _mm256_cvtepi32_ps(high));
        let t = _mm256_mul_ps(_mm256_set1_ps(w.m[b]), da);
        mins = _mm256_add_ps(mins, _mm256_mul_ps(t, sum));
    }
    mins
}

/// The row loop of the K-quant decode kernels, for `$n` activation rows of `$bits`-bit
/// super-blocks, `$super_block(block, rows, sb)` giving a super-block's eight lanes of `s1` and
/// eight of `s2` for each row: two super-blocks at a time share the lane sums and the float
/// expression (in the scalar's order), the last odd one goes alone. A macro rather than a
/// function taking `$super_block`, so that the AVX-512 kernel's super-blocks inline into a
/// loop compiled with its target features.
macro_rules! k_quant_rows {
    ($n:ident, $bits:expr, $super_block:expr, $bytes:expr, $first:expr, $acts:expr, $j:expr, $out:expr) => {{
        use $crate::quant::x86::{
            act_rows, hsum_pair_i32, k_block_bytes, k_factor_pair, prefetch_ahead, read_f16,
            super_block_sum_pair,
        };
        let (bytes, acts, j) = ($bytes, $acts, $j);
        let size = k_block_bytes($bits);
        let supers = acts.k / 256;
        let rb = supers * size;
        if rb != 0 {
            let a = act_rows::<$n>(acts, j);
            for x in &a {
                assert!(
                    x.qs.len() >= 256 * supers
                        && x.d.len() >= supers
                        && x.bsums.len() >= 16 * supers
                );
            }
            for (i, row) in bytes.chunks_exact(rb).enumerate() {
                let mut sums = [0f32; $n];
                let mut sb = 0;
                while sb + 2 <= supers {
                    prefetch_ahead(bytes, i * rb + size * sb, 2 * size);
                    let (b0, b1) = (&row[size * sb..], &row[size * (sb + 1)..]);
                    let (p0, c0) = $super_block(b0, &a, sb);
                    let (p1, c1) = $super_block(b1, &a, sb + 1);
                    let factors = k_factor_pair::<{ $bits }>(b0, b1);
                    for n in 0..$n {
                        let (t0, t1) = super_block_sum_pair(
                            p0[n],
                            c0[n],
                            p1[n],
                            c1[n],
                            factors,
                            &a[n].d[sb..],
                        );
                        sums[n] += t0;
                        sums[n] += t1;
                    }
                    sb += 2;
                }
                if sb < supers {
                    prefetch_ahead(bytes, i * rb + size * sb, size);
                    let blk = &row[size * sb..];
                    let (p, c) = $super_block(blk, &a, sb);
                    let (d, dmin) = match $bits {
                        6 => (read_f16(blk, 208), read_f16(blk, 208)),
                        _ => (read_f16(blk, 0), read_f16(blk, 2)),
                    };
                    for n in 0..$n {
                        let (s1, s2) = hsum_pair_i32(p[n], c[n]);
                        sums[n] += $crate::quant::super_block_sum(a[n].d[sb], d, dmin, s1, s2);
                    }
                }
                for (n, &sum) in sums.iter().enumerate() {
                    $out.put(j + n, $first + i, sum);
                }
            }
        }
    }};
}
pub(super) use k_quant_rows;

/// Q4_K, Q5_K and Q6_K: per super-block, the quants unpacked in registers two 32-value chunks
/// at a time and their products scaled per 16 or 32 values, summed to the exact integers of
/// [`super_block_sum`]; the mins (Q4_K, Q5_K) or the offset of 32 (Q6_K) go through the
/// activations' sums per 16 ([`k_quant_rows`] has the loop).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn rows_k<const N: usize, const BITS: u8>(
    bytes: &[u8],
    first: usize,
    acts: &super::QuantizedActs,
    j: usize,
    out: &Sink,
) {
    k_quant_rows!(
        N,
        BITS,
        super_block_k::<N, BITS>,
        bytes,
        first,
        acts,
        j,
        out
    );
}

/// Bytes of a Q4_K (`BITS` 4), Q5_K (5) or Q6_K (6) super-block.
pub(super) const fn k_block_bytes(bits: u8) -> usize {
    match bits {
        4 => 144,
        5 => 176,
        _ => 210,
    }
}

/// Super-block `sb` (`blk` starts with it) against each activation row: eight lanes of the
/// quants' products scaled per group, and eight of the offsets times the activations' sums.
/// The lane sums are the super-block's `s1` and `s2`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn super_block_k<const N: usize, const BITS: u8>(
    blk: &[u8],
    a: &[ActRow<'_>; N],
    sb: usize,
) -> ([__m256i; N], [__m256i; N]) {
    let blk = &blk[..k_block_bytes(BITS)];
    // The super-block's quants and sums of each activation row, sliced once at their fixed
    // sizes: the loads below then need no bounds checks of their own (with `a[n].qs[256·sb..]`
    // there was one per load).
    let quants: [&[i8; 256]; N] = std::array::from_fn(|n| {
        a[n].qs[256 * sb..256 * sb + 256]
            .try_into()
            .expect("256 quants")
    });
    let sums: [&[i16; 16]; N] = std::array::from_fn(|n| {
        a[n].bsums[16 * sb..16 * sb + 16]
            .try_into()
            .expect("16 sums")
    });
    let mask4 = _mm256_set1_epi8(0x0f);
    let mask2 = _mm256_set1_epi8(3);
    let one = _mm256_set1_epi8(1);
    let mut isum = [_mm256_setzero_si256(); N];
    // The scales as 8-bit values in a vector, and the offsets' integer weights per 16 values.
    let (scales8, corr) = match BITS {
        6 => {
            // SAFETY: 16 bytes at 192 in a 210-byte block.
            let sc = unsafe { _mm_loadu_si128(blk[192..208].as_ptr() as *const __m128i) };
            // The offset of 32 as 32 · scale per 16, times d (`blocks::q6k_scales`).
            (sc, _mm256_slli_epi16::<5>(_mm256_cvtepi8_epi16(sc)))
        }
        _ => {
            let sm = k4_scales_mins(blk);
            // The mins, each for 32 values, repeated for the two sums per 16.
            (sm, _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(sm, sm)))
        }
    };
    // Four pairs of 32-value chunks: (quants, offset of the chunk in the super-block).
    for pair in 0..4 {
        let (q0, at0, q1, at1) = match BITS {
            6 => {
                let (n, half) = (pair / 2, pair % 2);
                let l = load32(&blk[64 * n + 32 * half..]);
                let h = load32(&blk[128 + 32 * n..]);
                let hi = |k: i32| {
                    let bits = _mm256_and_si256(_mm256_srl_epi16(h, _mm_cvtsi32_si128(k)), mask2);
                    _mm256_slli_epi16::<4>(bits)
                };
                let lo_q = _mm256_or_si256(_mm256_and_si256(l, mask4), hi(2 * half as i32));
                let hi_q = _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(l), mask4),
                    hi(4 + 2 * half as i32),
                );
                (lo_q, 128 * n + 32 * half, hi_q, 128 * n + 64 + 32 * half)
            }
            _ => {
                let five = BITS == 5;
                let qs = if five { &blk[48..] } else { &blk[16..] };
                let v = load32(&qs[32 * pair..]);
                let mut lo = _mm256_and_si256(v, mask4);
                let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask4);
                if five {
                    let qh = load32(&blk[16..]);
                    let bits = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * pair as i32));
                    lo = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(_mm256_and_si256(bits, one)));
                    let bits = _mm256_srli_epi16::<1>(bits);
                    hi = _mm256_or_si256(hi, _mm256_slli_epi16::<4>(_mm256_and_si256(bits, one)));
                }
                (lo, 64 * pair, hi, 64 * pair + 32)
            }
        };
        let (s0, s1) = match BITS {
            // A scale per 16 values: the chunk's two, one per 128-bit half.
            6 => (
                scale_pair_i8(scales8, at0 / 16),
                scale_pair_i8(scales8, at1 / 16),
            ),
            // A scale per 32 values: the chunk's one in every lane.
            _ => (
                scale_all_u8(scales8, at0 / 32),
                scale_all_u8(scales8, at1 / 32),
            ),
        };
        for n in 0..N {
            let x = quants[n];
            let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(q0, load32(as_bytes(&x[at0..]))), s0);
            let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(q1, load32(as_bytes(&x[at1..]))), s1);
            isum[n] = _mm256_add_epi32(isum[n], _mm256_add_epi32(p0, p1));
        }
    }
    let mut corrs = [_mm256_setzero_si256(); N];
    for n in 0..N {
        // SAFETY: 16 i16 in `sums[n]`.
        let bs = unsafe { _mm256_loadu_si256(sums[n].as_ptr() as *const __m256i) };
        corrs[n] = _mm256_madd_epi16(corr, bs);
    }
    (isum, corrs)
}

/// The f16 factors `[d, dmin]` of two K-quant super-blocks as `[d0, dmin0, d1, dmin1]`
/// (Q6_K's offset is scaled by its `d`).
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(super) fn k_factor_pair<const BITS: u8>(b0: &[u8], b1: &[u8]) -> __m128 {
    let bits = |b: &[u8]| -> u64 {
        match BITS {
            6 => {
                let d = u64::from(u16::from_le_bytes([b[208], b[209]]));
                d | (d << 16)
            }
            _ => u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        }
    };
    _mm_cvtph_ps(_mm_cvtsi64_si128((bits(b0) | (bits(b1) << 32)) as i64))
}

/// [`super_block_sum`] for two super-blocks at once: `p0`, `c0` and `p1`, `c1` their lanes of
/// `s1` and `s2`, `f` their `[d0, dmin0, d1, dmin1]`, `da` the activation row's factors from
/// the first. The same float operations, so the same two values.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn super_block_sum_pair(
    p0: __m256i,
    c0: __m256i,
    p1: __m256i,
    c1: __m256i,
    f: __m128,
    da: &[f32],
) -> (f32, f32) {
    // [s1_0, s2_0, s1_1, s2_1], exact.
    let h = _mm256_hadd_epi32(_mm256_hadd_epi32(p0, c0), _mm256_hadd_epi32(p1, c1));
    let s = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
    let prod = _mm_mul_ps(_mm_cvtepi32_ps(s), f);
    // Lanes 0 and 2: d · s1 − dmin · s2 of each.
    let diff = _mm_sub_ps(prod, _mm_movehdup_ps(prod));
    let (da0, da1) = (da[0], da[1]);
    let t = _mm_mul_ps(diff, _mm_setr_ps(da0, da0, da1, da1));
    (_mm_cvtss_f32(t), _mm_cvtss_f32(_mm_movehl_ps(t, t)))
}

/// The sums of the eight i32 lanes of `a` and of `b`: a super-block's two exact integers.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn hsum_pair_i32(a: __m256i, b: __m256i) -> (i32, i32) {
    // [a0+a1, a2+a3, b0+b1, b2+b3 | a4+a5, a6+a7, b4+b5, b6+b7]
    let h = _mm256_hadd_epi32(a, b);
    let q = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
    let q = _mm_hadd_epi32(q, q);
    (_mm_cvtsi128_si32(q), _mm_extract_epi32::<1>(q))
}

/// Q4_K and Q5_K: a super-block's eight 6-bit scales (bytes 0..8 of the result) and eight
/// 6-bit mins (bytes 8..16), unpacked from its twelve bytes a word at a time as ggml does,
/// the four words in the lanes of one register. (The same work on general registers, then
/// moved into a vector, was a quarter of the Q4_K decode kernel's time in L2.)
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn k4_scales_mins(blk: &[u8]) -> __m128i {
    // The twelve bytes as words w0, w1, w2 (and four bytes of quants, unused).
    // SAFETY: 16 bytes at 4 of a block of at least 144.
    let v = unsafe { _mm_loadu_si128(blk[4..20].as_ptr() as *const __m128i) };
    // Lanes [scales_lo, scales_hi, mins_lo, mins_hi]:
    //   scales_lo = w0 & 0x3f..,  scales_hi = (w2 & 0x0f..) | ((w0 >> 6) & 0x03..) << 4,
    //   mins_lo   = w1 & 0x3f..,  mins_hi   = ((w2 >> 4) & 0x0f..) | ((w1 >> 6) & 0x03..) << 4.
    let low = _mm_shuffle_epi32::<0b10_01_10_00>(v); // [w0, w2, w1, w2]
    let low = _mm_srlv_epi32(low, _mm_setr_epi32(0, 0, 0, 4));
    let low = _mm_and_si128(
        low,
        _mm_setr_epi32(0x3f3f_3f3f, 0x0f0f_0f0f, 0x3f3f_3f3f, 0x0f0f_0f0f),
    );
    let top = _mm_shuffle_epi32::<0b01_01_00_00>(v); // [w0, w0, w1, w1]
    let top = _mm_and_si128(
        _mm_srli_epi32::<6>(top),
        _mm_setr_epi32(0, 0x0303_0303, 0, 0x0303_0303),
    );
    _mm_or_si128(low, _mm_slli_epi32::<4>(top))
}

/// Unsigned byte `k` of `v` (k < 8) as sixteen i16 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn scale_all_u8(v: __m128i, k: usize) -> __m256i {
    // Each i16 lane takes byte k then a zero (an index with the top bit set).
    let pick = _mm256_set1_epi16((0x8000 | k as u16) as i16);
    _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(v), pick)
}

/// Signed bytes `g` and `g + 1` of `v` (g < 15) as i16: `g` in the low eight lanes, `g + 1` in
/// the high eight.
#[inline]
#[target_feature(enable = "avx2")]
fn scale_pair_i8(v: __m128i, g: usize) -> __m256i {
    let (lo, hi) = (g as i8, (g + 1) as i8);
    let pick = _mm_set_epi8(
        hi, hi, hi, hi, hi, hi, hi, hi, lo, lo, lo, lo, lo, lo, lo, lo,
    );
    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(v, pick))
}

/// Quantizes one block of activations to 8 bits exactly as the scalar code does: for q8_0
/// (`k_style` false) the multiplier is `127 / max|x|` and the factor `max|x| / 127` rounded to
/// f16; for q8_K the value of largest magnitude maps to -127, with the f32 factor `1 / iscale`.
/// Rounding is to nearest even (`vroundps`), where the scalar code calls `rintf`.
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn quantize_block(x: &[f32], qs: &mut [i8], k_style: bool) -> f32 {
    let n = x.len().min(qs.len());
    assert!(n.is_multiple_of(32));
    let sign = _mm256_set1_ps(-0.0);
    let mut vmax = _mm256_setzero_ps();
    let mut i = 0;
    while i < n {
        // SAFETY: i + 8 <= n.
        let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) };
        vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, v));
        i += 8;
    }
    let lo = _mm256_castps256_ps128(vmax);
    let hi = _mm256_extractf128_ps::<1>(vmax);
    let m = _mm_max_ps(lo, hi);
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_movehdup_ps(m));
    let amax = _mm_cvtss_f32(m);
    let (mul, d) = if k_style {
        if amax == 0.0 {
            qs[..n].fill(0);
            return 0.0;
        }
        // The first element of largest magnitude, with its sign.
        let max = x[..n]
            .iter()
            .copied()
            .find(|v| v.abs() == amax)
            .unwrap_or(amax);
        let iscale = -127.0 / max;
        (iscale, 1.0 / iscale)
    } else {
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        (id, crate::f16::round_f16(amax / 127.0))
    };
    let vm = _mm256_set1_ps(mul);
    let top = _mm256_set1_epi32(127);
    let quant = |at: usize| {
        // SAFETY: at + 8 <= n (the caller steps by 32 below n).
        let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(at)) };
        let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(v, vm),
        );
        _mm256_min_epi32(_mm256_cvtps_epi32(r), top)
    };
    let mut i = 0;
    while i < n {
        // Pack 4 × 8 i32 to 32 i8; the packs interleave the 128-bit lanes, which the final
        // permutation puts back in order.
        let a = _mm256_packs_epi32(quant(i), quant(i + 8));
        let b = _mm256_packs_epi32(quant(i + 16), quant(i + 24));
        let p = _mm256_packs_epi16(a, b);
        let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: i + 32 <= n <= qs.len().
        unsafe { _mm256_storeu_si256(qs.as_mut_ptr().add(i) as *mut __m256i, p) };
        i += 32;
    }
    d
}

/// Signed bytes as bytes, for loading.
#[inline]
pub(super) fn as_bytes(x: &[i8]) -> &[u8] {
    // SAFETY: i8 and u8 have the same size, alignment and validity.
    unsafe { std::slice::from_raw_parts(x.as_ptr() as *const u8, x.len()) }
}

/// How far ahead of what it reads a decode kernel asks for weights into the L1 cache, in
/// bytes: a decode step streams hundreds of megabytes once, and the hardware prefetcher alone
/// leaves the loads waiting (two threads without these requests decoded gemma at 45 tok/s,
/// with them 70 to 80). The kernels ask as they go, a line or a few for each step of their
/// inner loop (a pair of blocks, a pair of super-blocks), rather than a whole row at the start
/// of each row. A row's worth of requests at once (the earlier rule, 4 KiB ahead) streamed
/// Q8_0 at 0.8× a plain sum of the same bytes and Q4_K at 0.7× (`examples/kernel_rate`, rows
/// of 2,048); asking as they go, 0.9× and 0.85×. 2 to 3 KiB ahead did best; 1 KiB was too
/// close.
pub(super) const PREFETCH_BYTES: usize = 2048;

/// How far ahead the same kernels ask for weights into the outer caches only (`prefetcht2`):
/// the near requests alone keep too few lines in flight behind the K-quant kernels, which
/// spend more instructions per byte. The 1 GiB Q4_K model decoded 5 to 10% faster with both
/// (one and two threads, alternated runs); gemma, mostly Q8_0, within noise. A non-temporal
/// hint instead halved the speed.
pub(super) const PREFETCH_FAR_BYTES: usize = 16384;

/// Asks for the cache lines of the `len` bytes [`PREFETCH_BYTES`] after `bytes[at]` into the
/// L1 cache, and of those [`PREFETCH_FAR_BYTES`] after it into the outer caches: a decode
/// kernel about to read `bytes[at..at + len]` calls it. Near the end of `bytes` it asks for
/// lines past it, which costs nothing: a prefetch reads nothing into the program and never
/// faults. (Clamped to `bytes`, the requests for a pair of Q4_K super-blocks were two loops
/// with their bounds, a tenth of the kernel's instructions.)
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn prefetch_ahead(bytes: &[u8], at: usize, len: usize) {
    let base = bytes.as_ptr().wrapping_add(at);
    let mut line = 0;
    while line < len {
        _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(PREFETCH_BYTES + line) as *const i8);
        _mm_prefetch::<_MM_HINT_T2>(base.wrapping_add(PREFETCH_FAR_BYTES + line) as *const i8);
        line += 64;
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

/// The 32-weight formats: a factor pair per block of 32, a scale of 1 and one offset.
#[target_feature(enable = "avx2,fma")]
fn dot_unpacked_32(u: &Unpacked, a: ActRow<'_>) -> f32 {
    let blocks = u.d.len();
    assert!(u.q.len() >= 32 * blocks && a.qs.len() >= 32 * blocks && a.d.len() >= blocks);
    assert!(u.dmin.len() >= blocks && a.bsums.len() >= 2 * blocks);
    let ones = _mm256_set1_epi16(1);
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
        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), ones);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(u.d[b] * a.d[b]), _mm256_cvtepi32_ps(p), acc);
        let asum = i32::from(a.bsums[2 * b]) + i32::from(a.bsums[2 * b + 1]);
        off += a.d[b] * (u.dmin[b] * (i32::from(u.offset32) * asum) as f32);
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

/// [`dot_f32`] with f16 values `b`, widened by F16C as they are loaded: its operations in its
/// order.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f16(a: &[f32], b: &[u16]) -> f32 {
    let n = a.len().min(b.len());
    // SAFETY (the loads below): i + 8k + 8 <= n, or i + 8 <= n.
    let half = |at: usize| unsafe {
        _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr().add(at) as *const __m128i))
    };
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, lane) in acc.iter_mut().enumerate() {
            let x = unsafe { _mm256_loadu_ps(a.as_ptr().add(i + 8 * k)) };
            *lane = _mm256_fmadd_ps(x, half(i + 8 * k), *lane);
        }
        i += 32;
    }
    while i + 8 <= n {
        let x = unsafe { _mm256_loadu_ps(a.as_ptr().add(i)) };
        acc[0] = _mm256_fmadd_ps(x, half(i), acc[0]);
        i += 8;
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut sum = hsum(v);
    for j in i..n {
        sum += a[j] * crate::f16::f16_to_f32(b[j]);
    }
    sum
}

/// [`axpy`] with f16 values `x`, widened by F16C as they are loaded.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn axpy_f16(alpha: f32, x: &[u16], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let va = _mm256_set1_ps(alpha);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n.
        unsafe {
            let xv = _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().add(i) as *const __m128i));
            let r = _mm256_fmadd_ps(va, xv, _mm256_loadu_ps(y.as_ptr().add(i)));
            _mm256_storeu_ps(y.as_mut_ptr().add(i), r);
        }
        i += 8;
    }
    for j in i..n {
        y[j] += alpha * crate::f16::f16_to_f32(x[j]);
    }
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

/// The 32 low-then-high nibbles of 16 bytes, one per byte (ggml's layout: element j is the low
/// nibble of byte j, element j + 16 its high nibble).
#[inline]
#[target_feature(enable = "avx2")]
fn nibbles_32(qs: &[u8]) -> __m256i {
    assert!(qs.len() >= 16);
    // SAFETY: 16 bytes (checked above).
    let v = unsafe { _mm_loadu_si128(qs.as_ptr() as *const __m128i) };
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(v), v);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}

/// 0x10 in byte i where bit i of `bits` is set.
#[inline]
#[target_feature(enable = "avx2")]
fn fifth_bits_32(bits: u32) -> __m256i {
    let shuffle = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), shuffle);
    let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe));
    let set = _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1));
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

#[inline]
#[target_feature(enable = "avx2")]
fn store(q: &mut [u8], v: __m256i) {
    assert!(q.len() >= 32);
    // SAFETY: 32 bytes (checked above).
    unsafe { _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, v) };
}

#[inline]
#[target_feature(enable = "avx2")]
fn load(b: &[u8]) -> __m256i {
    assert!(b.len() >= 32);
    // SAFETY: 32 bytes (checked above).
    unsafe { _mm256_loadu_si256(b.as_ptr() as *const __m256i) }
}

pub(super) fn qh32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Unpacks a row with SIMD where a fast path exists; `false` leaves it to the scalar unpacker
/// (the quants only: scales and factors are a few values per block, read as the scalar
/// unpackers read them).
///
/// # Safety
/// The CPU must have AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn unpack(format: WeightFormat, bytes: &[u8], u: &mut Unpacked) -> bool {
    let mask4 = _mm256_set1_epi8(0x0f);
    match format {
        WeightFormat::Q4_0 | WeightFormat::Q5_0 => {
            let (size, qs_at, five) = if format == WeightFormat::Q4_0 {
                (18, 2, false)
            } else {
                (22, 6, true)
            };
            for (i, b) in bytes.chunks_exact(size).enumerate() {
                let mut q = nibbles_32(&b[qs_at..]);
                if five {
                    q = _mm256_or_si256(q, fifth_bits_32(qh32(b, 2)));
                }
                store(&mut u.q[32 * i..], q);
                let d = read_f16(b, 0);
                u.d[i] = d;
                u.dmin[i] = d;
            }
            u.offset32 = if five { 16 } else { 8 };
            true
        }
        WeightFormat::Q4_1 | WeightFormat::Q5_1 => {
            let (size, qs_at, five) = if format == WeightFormat::Q4_1 {
                (20, 4, false)
            } else {
                (24, 8, true)
            };
            for (i, b) in bytes.chunks_exact(size).enumerate() {
                let mut q = nibbles_32(&b[qs_at..]);
                if five {
                    q = _mm256_or_si256(q, fifth_bits_32(qh32(b, 4)));
                }
                store(&mut u.q[32 * i..], q);
                u.d[i] = read_f16(b, 0);
                u.dmin[i] = -read_f16(b, 2);
            }
            u.offset32 = 1;
            true
        }
        WeightFormat::Q4K | WeightFormat::Q5K => {
            let five = format == WeightFormat::Q5K;
            let size = if five { 176 } else { 144 };
            for (i, b) in bytes.chunks_exact(size).enumerate() {
                let qs = if five { &b[48..176] } else { &b[16..144] };
                let qh = if five {
                    load(&b[16..48])
                } else {
                    _mm256_setzero_si256()
                };
                let q = &mut u.q[256 * i..256 * i + 256];
                for j in 0..4 {
                    let v = load(&qs[32 * j..]);
                    let mut lo = _mm256_and_si256(v, mask4);
                    let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask4);
                    if five {
                        // Bits 2j and 2j + 1 of each qh byte add 16 to the low and high nibble.
                        let shift = _mm_cvtsi32_si128(2 * j as i32);
                        let bits = _mm256_srl_epi16(qh, shift);
                        let one = _mm256_set1_epi8(1);
                        let lo_bit = _mm256_and_si256(bits, one);
                        let hi_bit = _mm256_and_si256(_mm256_srli_epi16::<1>(bits), one);
                        lo = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(lo_bit));
                        hi = _mm256_or_si256(hi, _mm256_slli_epi16::<4>(hi_bit));
                    }
                    store(&mut q[64 * j..], lo);
                    store(&mut q[64 * j + 32..], hi);
                }
                // `blocks::k4_scales` in registers: each scale and min for its two groups
                // of 16.
                let sm = k4_scales_mins(b);
                assert!(u.scale.len() >= 16 * i + 16 && u.offset.len() >= 16 * i + 16);
                // SAFETY: 16 i16 at 16i of each (checked above).
                unsafe {
                    let scales = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(sm, sm));
                    let mins = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(sm, sm));
                    _mm256_storeu_si256(u.scale.as_mut_ptr().add(16 * i) as *mut __m256i, scales);
                    _mm256_storeu_si256(u.offset.as_mut_ptr().add(16 * i) as *mut __m256i, mins);
                }
                u.d[i] = read_f16(b, 0);
                u.dmin[i] = read_f16(b, 2);
            }
            true
        }
        WeightFormat::Q6K => {
            let mask2 = _mm256_set1_epi8(3);
            for (i, b) in bytes.chunks_exact(210).enumerate() {
                let (ql, qh) = (&b[0..128], &b[128..192]);
                let q = &mut u.q[256 * i..256 * i + 256];
                for n in 0..2 {
                    let l0 = load(&ql[64 * n..]);
                    let l1 = load(&ql[64 * n + 32..]);
                    let h = load(&qh[32 * n..]);
                    let high = |k: i32| {
                        let bits =
                            _mm256_and_si256(_mm256_srl_epi16(h, _mm_cvtsi32_si128(k)), mask2);
                        _mm256_slli_epi16::<4>(bits)
                    };
                    let q1 = _mm256_or_si256(_mm256_and_si256(l0, mask4), high(0));
                    let q2 = _mm256_or_si256(_mm256_and_si256(l1, mask4), high(2));
                    let q3 = _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(l0), mask4),
                        high(4),
                    );
                    let q4 = _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(l1), mask4),
                        high(6),
                    );
                    store(&mut q[128 * n..], q1);
                    store(&mut q[128 * n + 32..], q2);
                    store(&mut q[128 * n + 64..], q3);
                    store(&mut q[128 * n + 96..], q4);
                }
                super::blocks::q6k_scales(b, i, u);
            }
            true
        }
        _ => false,
    }
}
