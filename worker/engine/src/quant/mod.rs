//! Weight formats and the dot products over them.
//!
//! Weights stay in their ggml blocks, borrowed from the mapping. A matrix product quantizes the
//! activations once (to 8 bits with a factor per 32 values for the 32-weight block formats, per
//! 256 for the K-quants, as ggml does), then takes integer dot products with each weight row.
//! Every row is first *prepared* into a small per-thread buffer, and that buffer serves every
//! activation row of the batch, so a weight row is read from memory once per step whatever the
//! batch size:
//! - Q8_0 rows are used as they are;
//! - the 4-, 5- and K-quant rows are unpacked to one byte per weight with integer scales
//!   ([`blocks::Unpacked`]);
//! - float rows (F32, F16, BF16) are converted to f32.
//!
//! Each kernel has a scalar version and, on x86_64 with AVX2, FMA and F16C, a SIMD version with
//! the same result up to float summation order (`tests/kernels.rs` holds them to each other).
//! Where the CPU also has AVX-512 VNNI, the row kernels of the 32-weight formats and the
//! K-quants' prompt kernel take 64 bytes at a time (`avx512.rs`); they compute the AVX2 kernels'
//! integers and float operations, so the results are the same bits.

#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod blocks;
#[cfg(target_arch = "x86_64")]
mod x86;

use modelhost_protocol::GgmlType;

use crate::f16::{bf16_to_f32, f16_to_f32, read_f16, round_f16};
pub use crate::simd::Kernels;
use blocks::Unpacked;
use std::sync::Mutex;

use crate::pool::Pool;

/// The weight formats the engine computes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
}

/// How activations are quantized for a weight format's dot product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActFormat {
    /// Kept as f32 (float weights).
    F32,
    /// 8 bits with an f16-rounded factor per 32 values (ggml's q8_0).
    Q8x32,
    /// 8 bits with an f32 factor per 256 values and sums per 16 (ggml's q8_K).
    Q8x256,
}

impl ActFormat {
    /// Values per quantization factor.
    pub fn block(self) -> usize {
        match self {
            ActFormat::F32 => 1,
            ActFormat::Q8x32 => 32,
            ActFormat::Q8x256 => 256,
        }
    }
}

impl WeightFormat {
    /// The engine's format for a ggml type, or `None` for a type it cannot compute with.
    pub fn from_ggml(t: GgmlType) -> Option<WeightFormat> {
        Some(match t {
            GgmlType::F32 => WeightFormat::F32,
            GgmlType::F16 => WeightFormat::F16,
            GgmlType::BF16 => WeightFormat::BF16,
            GgmlType::Q4_0 => WeightFormat::Q4_0,
            GgmlType::Q4_1 => WeightFormat::Q4_1,
            GgmlType::Q5_0 => WeightFormat::Q5_0,
            GgmlType::Q5_1 => WeightFormat::Q5_1,
            GgmlType::Q8_0 => WeightFormat::Q8_0,
            GgmlType::Q2_K => WeightFormat::Q2K,
            GgmlType::Q3_K => WeightFormat::Q3K,
            GgmlType::Q4_K => WeightFormat::Q4K,
            GgmlType::Q5_K => WeightFormat::Q5K,
            GgmlType::Q6_K => WeightFormat::Q6K,
            _ => return None,
        })
    }

    pub fn ggml(self) -> GgmlType {
        match self {
            WeightFormat::F32 => GgmlType::F32,
            WeightFormat::F16 => GgmlType::F16,
            WeightFormat::BF16 => GgmlType::BF16,
            WeightFormat::Q4_0 => GgmlType::Q4_0,
            WeightFormat::Q4_1 => GgmlType::Q4_1,
            WeightFormat::Q5_0 => GgmlType::Q5_0,
            WeightFormat::Q5_1 => GgmlType::Q5_1,
            WeightFormat::Q8_0 => GgmlType::Q8_0,
            WeightFormat::Q2K => GgmlType::Q2_K,
            WeightFormat::Q3K => GgmlType::Q3_K,
            WeightFormat::Q4K => GgmlType::Q4_K,
            WeightFormat::Q5K => GgmlType::Q5_K,
            WeightFormat::Q6K => GgmlType::Q6_K,
        }
    }

    /// Every format, for tests.
    pub const ALL: [WeightFormat; 13] = [
        WeightFormat::F32,
        WeightFormat::F16,
        WeightFormat::BF16,
        WeightFormat::Q4_0,
        WeightFormat::Q4_1,
        WeightFormat::Q5_0,
        WeightFormat::Q5_1,
        WeightFormat::Q8_0,
        WeightFormat::Q2K,
        WeightFormat::Q3K,
        WeightFormat::Q4K,
        WeightFormat::Q5K,
        WeightFormat::Q6K,
    ];

    /// Weights per block.
    pub fn block_elems(self) -> usize {
        self.ggml().block_size() as usize
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        self.ggml().type_size() as usize
    }

    /// Bytes of a row of `n` weights (`n` a multiple of the block).
    pub fn row_bytes(self, n: usize) -> usize {
        n / self.block_elems() * self.block_bytes()
    }

    /// The activations this format's dot product takes.
    pub fn activation(self) -> ActFormat {
        match self {
            WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16 => ActFormat::F32,
            WeightFormat::Q4_0
            | WeightFormat::Q4_1
            | WeightFormat::Q5_0
            | WeightFormat::Q5_1
            | WeightFormat::Q8_0 => ActFormat::Q8x32,
            _ => ActFormat::Q8x256,
        }
    }

    fn unpacker(self) -> Option<fn(&[u8], &mut Unpacked)> {
        Some(match self {
            WeightFormat::Q4_0 => blocks::unpack_q4_0,
            WeightFormat::Q4_1 => blocks::unpack_q4_1,
            WeightFormat::Q5_0 => blocks::unpack_q5_0,
            WeightFormat::Q5_1 => blocks::unpack_q5_1,
            WeightFormat::Q2K => blocks::unpack_q2_k,
            WeightFormat::Q3K => blocks::unpack_q3_k,
            WeightFormat::Q4K => blocks::unpack_q4_k,
            WeightFormat::Q5K => blocks::unpack_q5_k,
            WeightFormat::Q6K => blocks::unpack_q6_k,
            _ => return None,
        })
    }

    /// Dequantizes one row (`bytes` holds whole blocks) into `out`.
    pub fn dequantize_row(self, bytes: &[u8], out: &mut [f32]) {
        match self {
            WeightFormat::F32 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            WeightFormat::F16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
                }
            }
            WeightFormat::BF16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = bf16_to_f32(u16::from_le_bytes([b[0], b[1]]));
                }
            }
            WeightFormat::Q8_0 => blocks::dequantize_q8_0(bytes, out),
            other => {
                let mut u = Unpacked::default();
                let n = bytes.len() / other.block_bytes() * other.block_elems();
                u.reset(n, other.activation().block());
                if let Some(unpack) = other.unpacker() {
                    unpack(bytes, &mut u);
                }
                blocks::dequantize_unpacked(&u, other.activation().block(), &mut out[..n]);
            }
        }
    }
}

/// Activation rows quantized for one activation format.
#[derive(Debug, Clone)]
pub struct QuantizedActs {
    pub format: ActFormat,
    /// Values per row.
    pub k: usize,
    pub rows: usize,
    /// For `F32`: the values.
    pub f32s: Vec<f32>,
    /// For the 8-bit formats: the quants, a factor per block and a sum per 16 quants.
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub bsums: Vec<i16>,
    /// For `Q8x32`: the quants plus 128, as unsigned bytes. The AVX-512 kernels multiply them
    /// with signed weights and take 128·Σw off once per weight block, where the quants
    /// themselves would need the weights' signs moved onto them for every activation row.
    pub biased: Vec<u8>,
    /// The rows again, in panels of [`ActPanel::lanes`] rows, for more than
    /// [`PANEL_MIN_ROWS`] rows (a prompt) where a panel kernel runs: `Q8x256` against K-quant
    /// weights (panels of [`PANEL`] for the AVX-512 VNNI kernels, of [`PANEL_AVX2`] for the
    /// AVX2 ones), `Q8x32` against the 32-weight formats where the AVX2 kernels run. One
    /// register then holds four quants of each of the panel's rows, and a weight's four
    /// bytes, broadcast, multiply them all at once. Rows past the last are zeros. Empty
    /// otherwise.
    pub panel: ActPanel,
}

/// Rows in a `Q8x256` activation panel: the lanes of one 512-bit register of i32.
pub const PANEL: usize = 16;

/// Rows in a `Q8x32` activation panel: the lanes of one 256-bit register of i32.
pub const PANEL_AVX2: usize = 8;

/// Decoding (up to four activation rows) takes the register kernels, which need no panel.
pub const PANEL_MIN_ROWS: usize = 4;

/// `lo` and `hi` as the low and high i16 of one i32: a pair for `vpdpwssd`.
pub(crate) fn i16_pair(lo: i16, hi: i16) -> i32 {
    i32::from(lo as u16) | (i32::from(hi) << 16)
}

/// Activation rows in panels of `L` rows (see [`QuantizedActs::panel`]; `L` is [`PANEL`] for
/// `Q8x256`, [`PANEL_AVX2`] for `Q8x32`). For panel `p` of rows `Lp..Lp + L`:
/// - `qs[(p·k/4 + g)·4L + 4·lane + i]` is quant `4g + i` of row `Lp + lane`;
/// - `biased` holds the same quants plus 128 as unsigned bytes (`Q8x32` only);
/// - `pairs16[(p·k/32 + j)·L + lane]` holds that row's sums of quants `32j..32j + 16` (low
///   i16) and `32j + 16..32j + 32` (high i16);
/// - `pairs32[(p·k/64 + j)·L + lane]` its sums of quants `64j..64j + 32` and
///   `64j + 32..64j + 64`, likewise (`Q8x256` only);
/// - `d[(p·k/B + s)·L + lane]` is its factor for block `s`, `B` the format's block (256 or
///   32).
///
#[derive(Debug, Clone, Default)]
pub struct ActPanel {
    /// Rows per panel, as last built.
    pub lanes: usize,
    pub qs: Vec<i8>,
    pub biased: Vec<u8>,
    pub pairs16: Vec<i32>,
    pub pairs32: Vec<i32>,
    pub d: Vec<f32>,
}

impl ActPanel {
    /// Rows per panel for `format` where `kernels` run: a register's i32 lanes, 16 for the
    /// AVX-512 VNNI kernels (`Q8x256` only), 8 for the AVX2 ones.
    pub fn lanes_for(format: ActFormat, kernels: Kernels) -> usize {
        if format == ActFormat::Q8x256 && kernels >= Kernels::Avx512Vnni {
            PANEL
        } else {
            PANEL_AVX2
        }
    }

    /// Bytes held for `rows` rows of `k` values in `format`.
    pub fn bytes_for(format: ActFormat, rows: usize, k: usize) -> usize {
        if rows <= PANEL_MIN_ROWS || format == ActFormat::F32 {
            return 0;
        }
        // Padded to the widest panel the format may be built in.
        let lanes = Self::lanes_for(format, Kernels::Avx512Vnni);
        let padded = rows.div_ceil(lanes) * lanes;
        let (biased, per_64) = if format == ActFormat::Q8x32 {
            (k, 0)
        } else {
            (0, 4)
        };
        padded * (k + biased + k / 32 * 4 + k / 64 * per_64 + k / format.block() * 4)
    }

    fn reserve(&mut self, format: ActFormat, rows: usize, k: usize) {
        if rows > PANEL_MIN_ROWS && format != ActFormat::F32 {
            let lanes = Self::lanes_for(format, Kernels::Avx512Vnni);
            let padded = rows.div_ceil(lanes) * lanes;
            self.qs.reserve_exact(padded * k);
            self.pairs16.reserve_exact(padded * k / 32);
            if format == ActFormat::Q8x256 {
                self.pairs32.reserve_exact(padded * k / 64);
            } else {
                self.biased.reserve_exact(padded * k);
            }
            self.d.reserve_exact(padded * k / format.block());
        }
    }

    /// Lays out `rows` rows of `k` quants (`qs`), their sums per 16 (in pairs, and per 32 in
    /// pairs for `Q8x256`) and factors per block of `format`, in panels of `lanes` rows.
    #[allow(clippy::too_many_arguments)]
    fn build(
        &mut self,
        format: ActFormat,
        lanes: usize,
        qs: &[i8],
        bsums: &[i16],
        d: &[f32],
        rows: usize,
        k: usize,
    ) {
        self.lanes = lanes;
        let panels = rows.div_ceil(lanes);
        let block = format.block();
        let wide_pairs = format == ActFormat::Q8x256;
        self.qs.clear();
        self.qs.resize(panels * lanes * k, 0);
        self.pairs16.clear();
        self.pairs16.resize(panels * lanes * k / 32, 0);
        self.pairs32.clear();
        if wide_pairs {
            self.pairs32.resize(panels * lanes * k / 64, 0);
        }
        self.d.clear();
        self.d.resize(panels * lanes * k / block, 0.0);
        for row in 0..rows {
            let (p, lane) = (row / lanes, row % lanes);
            let src = &qs[row * k..(row + 1) * k];
            let base = p * lanes * k;
            for (g, four) in src.chunks_exact(4).enumerate() {
                let at = base + 4 * lanes * g + 4 * lane;
                self.qs[at..at + 4].copy_from_slice(four);
            }
            let sums = &bsums[row * k / 16..(row + 1) * k / 16];
            for (j, two) in sums.chunks_exact(2).enumerate() {
                self.pairs16[(p * k / 32 + j) * lanes + lane] = i16_pair(two[0], two[1]);
            }
            if wide_pairs {
                // |a + b| ≤ 32 · 127: no i16 overflows.
                for (j, four) in sums.chunks_exact(4).enumerate() {
                    self.pairs32[(p * k / 64 + j) * lanes + lane] =
                        i16_pair(four[0] + four[1], four[2] + four[3]);
                }
            }
            for (s, &f) in d[row * k / block..(row + 1) * k / block].iter().enumerate() {
                self.d[(p * k / block + s) * lanes + lane] = f;
            }
        }
        self.biased.clear();
        if !wide_pairs {
            self.biased.resize(self.qs.len(), 0);
            plus_128(&self.qs, &mut self.biased);
        }
    }

    fn clear(&mut self) {
        self.qs.clear();
        self.biased.clear();
        self.pairs16.clear();
        self.pairs32.clear();
        self.d.clear();
    }
}

/// Each quant plus 128, as an unsigned byte, into `biased` (as long as `qs`).
fn plus_128(qs: &[i8], biased: &mut [u8]) {
    // A plain loop over two slices of one length, which compiles to vector XORs.
    for (b, &q) in biased.iter_mut().zip(qs) {
        *b = (q as u8) ^ 0x80;
    }
}

/// One quantized activation row.
#[derive(Debug, Clone, Copy)]
pub struct ActRow<'a> {
    pub f32s: &'a [f32],
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub bsums: &'a [i16],
    /// The quants plus 128 (`Q8x32` only; empty otherwise).
    pub biased: &'a [u8],
}

/// The buffers of some whole rows of quantized activations, to be filled.
struct QuantizedParts<'a> {
    qs: &'a mut [i8],
    d: &'a mut [f32],
    bsums: &'a mut [i16],
    /// Empty where the format keeps no biased copy.
    biased: &'a mut [u8],
}

impl<'a> QuantizedParts<'a> {
    /// The first `values` values' buffers, and the rest.
    fn split(self, values: usize, format: ActFormat) -> (QuantizedParts<'a>, QuantizedParts<'a>) {
        let (qs, qs_rest) = self.qs.split_at_mut(values);
        let (d, d_rest) = self.d.split_at_mut(values / format.block());
        let (bsums, bsums_rest) = self.bsums.split_at_mut(values / 16);
        let biased_len = if self.biased.is_empty() { 0 } else { values };
        let (biased, biased_rest) = self.biased.split_at_mut(biased_len);
        (
            QuantizedParts {
                qs,
                d,
                bsums,
                biased,
            },
            QuantizedParts {
                qs: qs_rest,
                d: d_rest,
                bsums: bsums_rest,
                biased: biased_rest,
            },
        )
    }

    /// Quantizes `x`, the values these buffers were cut for.
    fn quantize(&mut self, format: ActFormat, x: &[f32]) {
        let block = format.block();
        for (b, ((xs, qs), d)) in x
            .chunks_exact(block)
            .zip(self.qs.chunks_exact_mut(block))
            .zip(self.d.iter_mut())
            .enumerate()
        {
            *d = match format {
                ActFormat::Q8x32 => quantize_q8x32(xs, qs),
                _ => quantize_q8x256(xs, qs),
            };
            let sums = &mut self.bsums[b * block / 16..(b + 1) * block / 16];
            for (s, q16) in sums.iter_mut().zip(qs.chunks_exact(16)) {
                *s = q16.iter().map(|&q| i16::from(q)).sum();
            }
        }
        if !self.biased.is_empty() {
            plus_128(self.qs, self.biased);
        }
    }
}

impl QuantizedActs {
    pub fn new(format: ActFormat) -> QuantizedActs {
        QuantizedActs {
            format,
            k: 0,
            rows: 0,
            f32s: Vec::new(),
            qs: Vec::new(),
            d: Vec::new(),
            bsums: Vec::new(),
            biased: Vec::new(),
            panel: ActPanel::default(),
        }
    }

    /// Reserves room for `rows` rows of `k` values; returns the bytes reserved.
    pub fn reserve(&mut self, rows: usize, k: usize) -> usize {
        match self.format {
            ActFormat::F32 => self.f32s.reserve_exact(rows * k),
            f => {
                self.qs.reserve_exact(rows * k);
                self.d.reserve_exact(rows * k / f.block());
                self.bsums.reserve_exact(rows * k / 16);
                if f == ActFormat::Q8x32 {
                    self.biased.reserve_exact(rows * k);
                }
                self.panel.reserve(f, rows, k);
            }
        }
        Self::bytes_for(self.format, rows, k)
    }

    /// Bytes held for `rows` rows of `k` values.
    pub fn bytes_for(format: ActFormat, rows: usize, k: usize) -> usize {
        match format {
            ActFormat::F32 => rows * k * 4,
            ActFormat::Q8x32 => {
                rows * (2 * k + k / format.block() * 4 + k / 16 * 2)
                    + ActPanel::bytes_for(format, rows, k)
            }
            ActFormat::Q8x256 => {
                rows * (k + k / format.block() * 4 + k / 16 * 2)
                    + ActPanel::bytes_for(format, rows, k)
            }
        }
    }

    /// Quantizes `rows` rows of `k` values from `x` (row-major).
    pub fn quantize(&mut self, x: &[f32], rows: usize, k: usize) {
        let format = self.format;
        if let Some(mut parts) = self.prepare(x, rows, k) {
            parts.quantize(format, &x[..rows * k]);
        }
        self.lay_out_panel();
    }

    /// Builds [`QuantizedActs::panel`] where the kernels in use will read it.
    fn lay_out_panel(&mut self) {
        let kernels = crate::simd::kernels_in_use();
        let wanted = self.rows > PANEL_MIN_ROWS
            && match self.format {
                ActFormat::Q8x256 => kernels >= Kernels::Avx2,
                // The AVX-512 kernels take the 32-weight formats in tiles of their own.
                ActFormat::Q8x32 => kernels == Kernels::Avx2,
                ActFormat::F32 => false,
            };
        if wanted {
            let (rows, k) = (self.rows, self.k);
            let format = self.format;
            let lanes = ActPanel::lanes_for(format, kernels);
            self.panel
                .build(format, lanes, &self.qs, &self.bsums, &self.d, rows, k);
        } else {
            self.panel.clear();
        }
    }

    /// [`QuantizedActs::quantize`] with the rows shared out over `pool`'s threads (each row
    /// is quantized on its own, so the result is the same).
    pub fn quantize_on(&mut self, pool: &Pool, x: &[f32], rows: usize, k: usize) {
        let format = self.format;
        let threads = pool.threads().min(rows);
        let Some(mut rest) = self.prepare(x, rows, k) else {
            return;
        };
        if threads <= 1 {
            rest.quantize(format, &x[..rows * k]);
            self.lay_out_panel();
            return;
        }
        let mut parts = Vec::with_capacity(threads);
        let mut start = 0;
        for t in 0..threads {
            let end = rows * (t + 1) / threads;
            let (part, tail) = rest.split((end - start) * k, format);
            parts.push(Mutex::new((start..end, part)));
            rest = tail;
            start = end;
        }
        pool.run(&|t| {
            if let Some(part) = parts.get(t) {
                let mut part = part.lock().unwrap_or_else(|e| e.into_inner());
                let (range, out) = &mut *part;
                out.quantize(format, &x[range.start * k..range.end * k]);
            }
        });
        drop(parts);
        self.lay_out_panel();
    }

    /// Sizes the buffers for `rows` rows of `k`, and returns them to be filled; F32 rows
    /// are copied here, and need nothing more (`None`).
    fn prepare(&mut self, x: &[f32], rows: usize, k: usize) -> Option<QuantizedParts<'_>> {
        self.k = k;
        self.rows = rows;
        if self.format == ActFormat::F32 {
            self.f32s.clear();
            self.f32s.extend_from_slice(&x[..rows * k]);
            return None;
        }
        let block = self.format.block();
        self.qs.resize(rows * k, 0);
        self.d.resize(rows * k / block, 0.0);
        self.bsums.resize(rows * k / 16, 0);
        let biased = if self.format == ActFormat::Q8x32 {
            rows * k
        } else {
            0
        };
        self.biased.resize(biased, 0);
        Some(QuantizedParts {
            qs: &mut self.qs,
            d: &mut self.d,
            bsums: &mut self.bsums,
            biased: &mut self.biased,
        })
    }

    /// Row `j`.
    #[inline]
    pub fn row(&self, j: usize) -> ActRow<'_> {
        let k = self.k;
        if self.format == ActFormat::F32 {
            return ActRow {
                f32s: &self.f32s[j * k..(j + 1) * k],
                qs: &[],
                d: &[],
                bsums: &[],
                biased: &[],
            };
        }
        let block = self.format.block();
        ActRow {
            f32s: &[],
            qs: &self.qs[j * k..(j + 1) * k],
            d: &self.d[j * k / block..(j + 1) * k / block],
            bsums: &self.bsums[j * k / 16..(j + 1) * k / 16],
            biased: if self.biased.is_empty() {
                &[]
            } else {
                &self.biased[j * k..(j + 1) * k]
            },
        }
    }
}

/// Quantizes a block of 32 activations (ggml's q8_0); returns its factor.
pub fn quantize_q8x32(x: &[f32], qs: &mut [i8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2() {
        // SAFETY: AVX2 was detected at run time.
        return unsafe { x86::quantize_block(x, qs, false) };
    }
    quantize_q8x32_scalar(x, qs)
}

/// Quantizes a block of 256 activations (ggml's q8_K); returns its factor.
pub fn quantize_q8x256(x: &[f32], qs: &mut [i8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2() {
        // SAFETY: AVX2 was detected at run time.
        return unsafe { x86::quantize_block(x, qs, true) };
    }
    quantize_q8x256_scalar(x, qs)
}

/// ggml's q8_0 as its x86 build computes it: the largest magnitude maps to ±127, the quants
/// are rounded to nearest even with the multiplier `127 / max`, and the factor is stored as f16.
pub fn quantize_q8x32_scalar(x: &[f32], qs: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    for (q, v) in qs.iter_mut().zip(x) {
        *q = (v * id).round_ties_even() as i8;
    }
    round_f16(amax / 127.0)
}

/// ggml's q8_K: the value of largest magnitude maps to -127 (so the range is ±127), with an
/// f32 factor.
pub fn quantize_q8x256_scalar(x: &[f32], qs: &mut [i8]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        qs.fill(0);
        return 0.0;
    }
    let iscale = -127.0 / max;
    for (q, v) in qs.iter_mut().zip(x) {
        *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
    }
    1.0 / iscale
}

/// A weight row made ready for dot products with a batch of activation rows.
#[derive(Debug, Default)]
pub struct PreparedRow {
    unpacked: Unpacked,
    floats: Vec<f32>,
}

impl PreparedRow {
    /// The unpacked quants of a 4-, 5- or K-quant row.
    pub fn unpacked(&self) -> &Unpacked {
        &self.unpacked
    }

    /// A buffer for rows of up to `n` weights.
    pub fn with_capacity(n: usize) -> PreparedRow {
        let mut row = PreparedRow::default();
        row.floats.reserve_exact(n);
        row.unpacked.q.reserve_exact(n);
        row.unpacked.scale.reserve_exact(n / 16);
        row.unpacked.offset.reserve_exact(n / 16);
        row.unpacked.d.reserve_exact(n / 32);
        row.unpacked.dmin.reserve_exact(n / 32);
        row
    }

    /// Bytes a prepared row of `n` weights holds at most.
    pub fn bytes_for(n: usize) -> usize {
        n * 4 + n + n / 16 * 4 + n / 32 * 8
    }
}

/// Prepares weight row `bytes` (of `n` weights in `format`).
pub fn prepare(format: WeightFormat, bytes: &[u8], n: usize, row: &mut PreparedRow) {
    prepare_with(format, bytes, n, row, crate::simd::has_avx2());
}

/// [`prepare`] with the scalar unpackers: the reference for the SIMD ones.
pub fn prepare_scalar(format: WeightFormat, bytes: &[u8], n: usize, row: &mut PreparedRow) {
    prepare_with(format, bytes, n, row, false);
}

fn prepare_with(format: WeightFormat, bytes: &[u8], n: usize, row: &mut PreparedRow, simd: bool) {
    match format {
        WeightFormat::Q8_0 => {}
        WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16 => {
            row.floats.resize(n, 0.0);
            format.dequantize_row(bytes, &mut row.floats);
        }
        _ => {
            row.unpacked.reset(n, format.activation().block());
            if let Some(unpack) = format.unpacker() {
                #[cfg(target_arch = "x86_64")]
                if simd {
                    // SAFETY: `simd` is true only where AVX2 was detected at run time.
                    if unsafe { x86::unpack(format, bytes, &mut row.unpacked) } {
                        return;
                    }
                }
                let _ = simd;
                unpack(bytes, &mut row.unpacked);
            }
        }
    }
}

/// Where the row kernels write their dot products: the one of activation row `j` and weight
/// row `r` at `j · stride + (r - base)`. A plain pointer, not a callback: a decode step writes
/// a quarter of a million logits, and an indirect call for each cost several percent of it.
#[derive(Debug, Clone, Copy)]
pub struct Sink {
    ptr: *mut f32,
    len: usize,
    stride: usize,
    base: usize,
}

// SAFETY: a sink is only a place to write; `Sink::new`'s caller promises that the threads
// sharing one write disjoint elements.
unsafe impl Send for Sink {}
// SAFETY: as above.
unsafe impl Sync for Sink {}

impl Sink {
    /// A sink over `len` floats at `ptr`, rows of `stride`, whose first column is weight row
    /// `base`.
    ///
    /// # Safety
    /// `ptr` must be valid for writes of `len` floats while the sink is used, and threads that
    /// share the memory must write disjoint elements.
    pub unsafe fn new(ptr: *mut f32, len: usize, stride: usize, base: usize) -> Sink {
        Sink {
            ptr,
            len,
            stride,
            base,
        }
    }

    /// Writes the dot product of activation row `j` and weight row `r`.
    #[inline]
    pub fn put(&self, j: usize, r: usize, value: f32) {
        let at = j * self.stride + (r - self.base);
        assert!(at < self.len, "dot product ({j}, {r}) outside its sink");
        // SAFETY: within the `len` floats `new`'s caller vouched for; no other thread writes
        // this element.
        unsafe { *self.ptr.add(at) = value };
    }
}

/// The dot products of weight rows `rows` of a matrix (`bytes` its whole data, rows of `cols`
/// weights in `format`) with every row of `acts`; `out(j, r, value)` receives each. Each weight
/// row is prepared once for all the activation rows.
pub fn dot_rows<F: FnMut(usize, usize, f32)>(
    format: WeightFormat,
    bytes: &[u8],
    cols: usize,
    rows: std::ops::Range<usize>,
    acts: &QuantizedActs,
    prepared: &mut PreparedRow,
    out: F,
) {
    let kernels = crate::simd::kernels_in_use();
    dot_rows_using(kernels, format, bytes, cols, rows, acts, prepared, out);
}

/// [`dot_rows`] with the given kernels, or the widest this CPU has below them (tests compare
/// the sets with each other).
#[allow(clippy::too_many_arguments)]
pub fn dot_rows_using<F: FnMut(usize, usize, f32)>(
    kernels: Kernels,
    format: WeightFormat,
    bytes: &[u8],
    cols: usize,
    rows: std::ops::Range<usize>,
    acts: &QuantizedActs,
    prepared: &mut PreparedRow,
    mut out: F,
) {
    let width = rows.len();
    let mut values = vec![f32::NAN; width * acts.rows];
    // SAFETY: `values` holds acts.rows rows of `width`, and only this thread writes it.
    let sink = unsafe { Sink::new(values.as_mut_ptr(), values.len(), width, rows.start) };
    dot_rows_into(
        kernels,
        format,
        bytes,
        cols,
        rows.clone(),
        acts,
        prepared,
        &sink,
    );
    for j in 0..acts.rows {
        for (i, &value) in values[j * width..(j + 1) * width].iter().enumerate() {
            out(j, rows.start + i, value);
        }
    }
}

/// [`dot_rows_using`] into a [`Sink`]: what the matrix product calls.
#[allow(clippy::too_many_arguments)]
pub fn dot_rows_into(
    kernels: Kernels,
    format: WeightFormat,
    bytes: &[u8],
    cols: usize,
    rows: std::ops::Range<usize>,
    acts: &QuantizedActs,
    prepared: &mut PreparedRow,
    out: &Sink,
) {
    let rb = format.row_bytes(cols);
    #[cfg(target_arch = "x86_64")]
    if kernels >= Kernels::Avx2 && Kernels::Avx2.available() {
        let span = &bytes[rows.start * rb..rows.end * rb];
        let wide = kernels >= Kernels::Avx512Vnni && Kernels::Avx512Vnni.available();
        // SAFETY: AVX2, FMA and F16C were detected at run time, and AVX-512 F, BW, VL and
        // VNNI where `wide` is true.
        if unsafe { x86::rows(format, span, rows.start, acts, out, wide) } {
            return;
        }
    }
    for r in rows {
        let row = &bytes[r * rb..(r + 1) * rb];
        if kernels >= Kernels::Avx2 {
            prepare(format, row, cols, prepared);
        } else {
            prepare_scalar(format, row, cols, prepared);
        }
        for j in 0..acts.rows {
            let a = acts.row(j);
            let value = if kernels >= Kernels::Avx2 {
                dot(format, row, prepared, a)
            } else {
                dot_scalar(format, row, prepared, a)
            };
            out.put(j, r, value);
        }
    }
}

/// The dot product of a prepared weight row (`bytes` is the raw row, used by Q8_0) with one
/// activation row.
#[inline]
pub fn dot(format: WeightFormat, bytes: &[u8], row: &PreparedRow, a: ActRow<'_>) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2() {
        // SAFETY: AVX2, FMA and F16C were detected at run time.
        return unsafe { x86::dot(format, bytes, row, a) };
    }
    dot_scalar(format, bytes, row, a)
}

/// The scalar dot product: the reference for the SIMD kernels.
pub fn dot_scalar(format: WeightFormat, bytes: &[u8], row: &PreparedRow, a: ActRow<'_>) -> f32 {
    match format {
        WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16 => {
            row.floats.iter().zip(a.f32s).map(|(w, x)| w * x).sum()
        }
        WeightFormat::Q8_0 => {
            let mut sum = 0f32;
            for (b, blk) in bytes.chunks_exact(34).enumerate() {
                let qa = &a.qs[32 * b..32 * b + 32];
                let isum: i32 = blk[2..34]
                    .iter()
                    .zip(qa)
                    .map(|(&w, &x)| i32::from(w as i8) * i32::from(x))
                    .sum();
                sum += isum as f32 * (read_f16(blk, 0) * a.d[b]);
            }
            sum
        }
        _ => dot_unpacked_scalar(&row.unpacked, format.activation().block(), a),
    }
}

/// A K-quant super-block's share of a dot product, from its two exact integers: `s1`, the
/// quants times the activations scaled per group, and `s2`, the groups' offsets times the
/// activations' sums. The scalar kernel's expression ([`dot_unpacked_scalar`]), so that
/// every kernel, scalar or SIMD, decode or prompt, gives the same bits.
#[inline(always)]
pub(crate) fn super_block_sum(da: f32, d: f32, dmin: f32, s1: i32, s2: i32) -> f32 {
    da * (d * s1 as f32 - dmin * s2 as f32)
}

fn dot_unpacked_scalar(u: &Unpacked, block: usize, a: ActRow<'_>) -> f32 {
    let mut sum = 0f32;
    for s in 0..u.d.len() {
        let (mut isum, mut ioff) = (0i32, 0i32);
        for g in s * block / 16..(s + 1) * block / 16 {
            let gsum: i32 = (16 * g..16 * g + 16)
                .map(|i| i32::from(u.q[i]) * i32::from(a.qs[i]))
                .sum();
            let (scale, offset) = u.group(g);
            isum += i32::from(scale) * gsum;
            ioff += i32::from(offset) * i32::from(a.bsums[g]);
        }
        sum += super_block_sum(a.d[s], u.d[s], u.dmin[s], isum, ioff);
    }
    sum
}

/// f32 dot product (attention, float weights).
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2() {
        // SAFETY: AVX2 and FMA were detected at run time.
        return unsafe { x86::dot_f32(a, b) };
    }
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// [`dot_f32`] of `a` with f16 values `b`, each widened to f32 as it is read: the same
/// operations on the same values, so the same bits, with no f32 copy of `b`.
#[inline]
pub fn dot_f16(a: &[f32], b: &[u16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2() {
        // SAFETY: AVX2, FMA and F16C were detected at run time.
        return unsafe { x86::dot_f16(a, b) };
    }
    a.iter().zip(b).map(|(x, &y)| x * f16_to_f32(y)).sum()
}

/// [`axpy`] with f16 values `x`, widened as they are read.
#[inline]
pub fn axpy_f16(alpha: f32, x: &[u16], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2() {
        // SAFETY: AVX2, FMA and F16C were detected at run time.
        unsafe { x86::axpy_f16(alpha, x, y) };
        return;
    }
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += alpha * f16_to_f32(xi);
    }
}

/// `y += alpha · x`.
#[inline]
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2() {
        // SAFETY: AVX2 and FMA were detected at run time.
        unsafe { x86::axpy(alpha, x, y) };
        return;
    }
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_quantized_on_the_pool_are_those_quantized_on_one_thread() {
        let pool = Pool::new(3).unwrap();
        for format in [ActFormat::F32, ActFormat::Q8x32, ActFormat::Q8x256] {
            for rows in [0usize, 1, 2, 3, 5, 17] {
                let k = 512;
                let x: Vec<f32> = (0..rows * k)
                    .map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 0.01)
                    .collect();
                let mut one = QuantizedActs::new(format);
                one.quantize(&x, rows, k);
                let mut shared = QuantizedActs::new(format);
                // Stale contents from a larger batch must not survive.
                shared.quantize(&vec![1.0; 20 * k], 20, k);
                shared.quantize_on(&pool, &x, rows, k);
                assert_eq!((shared.rows, shared.k), (rows, k));
                assert_eq!(shared.f32s, one.f32s, "{format:?}, {rows} rows");
                assert_eq!(shared.qs, one.qs, "{format:?}, {rows} rows");
                assert_eq!(shared.d, one.d, "{format:?}, {rows} rows");
                assert_eq!(shared.bsums, one.bsums, "{format:?}, {rows} rows");
                assert_eq!(shared.biased, one.biased, "{format:?}, {rows} rows");
            }
        }
    }
}
