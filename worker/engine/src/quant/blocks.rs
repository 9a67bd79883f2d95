//! The ggml block formats, read the way ggml lays them out (ggml-common.h): scalar
//! dequantization, and unpacking into the integer form every integer dot product here uses.
//!
//! Unpacked, a row is `q` (one unsigned quant per weight, at most 63) with, per group of 16
//! weights, an integer `scale` and `offset`, and per super-block float factors `d` and `dmin`,
//! such that weight `i` of group `g` in super-block `s` is
//!
//! ```text
//! w_i = d_s · scale_g · q_i − dmin_s · offset_g
//! ```
//!
//! so that a dot product with activations `a` (quantized with one factor `da` per super-block)
//! is `Σ_s da_s · (d_s · Σ_g scale_g · Σ_{i∈g} q_i·a_i − dmin_s · Σ_g offset_g · Σ_{i∈g} a_i)`:
//! integer sums, with two float products per super-block.

use crate::f16::read_f16;

/// A row unpacked for the integer dot product (see the module's documentation).
///
/// The 32-weight formats have a scale of 1 and the same offset in every group (`offset32`);
/// they leave `scale` and `offset` empty.
#[derive(Debug, Clone, Default)]
pub struct Unpacked {
    pub q: Vec<u8>,
    pub scale: Vec<i16>,
    pub offset: Vec<i16>,
    pub d: Vec<f32>,
    pub dmin: Vec<f32>,
    pub offset32: i16,
    /// For a prompt's kernel: each 32-weight chunk's two group scales, each repeated eight
    /// times (the multiplier vector of its products), so that it is one load per chunk rather
    /// than built again for every group of activation rows. Filled by `spread_scales`.
    pub scale_vectors: Vec<i16>,
}

impl Unpacked {
    /// Sizes the buffers for a row of `n` weights in super-blocks of `block`.
    pub fn reset(&mut self, n: usize, block: usize) {
        self.q.resize(n, 0);
        let groups = if block == 32 { 0 } else { n / 16 };
        self.scale.resize(groups, 0);
        self.offset.resize(groups, 0);
        self.d.resize(n / block, 0.0);
        self.dmin.resize(n / block, 0.0);
    }

    /// Fills `scale_vectors` from `scale`: for chunk `c`, eight copies of `scale[2c]` then
    /// eight of `scale[2c + 1]`.
    pub fn spread_scales(&mut self) {
        self.scale_vectors.clear();
        for pair in self.scale.chunks_exact(2) {
            self.scale_vectors.extend_from_slice(&[pair[0]; 8]);
            self.scale_vectors.extend_from_slice(&[pair[1]; 8]);
        }
    }

    /// The scale and offset of group `g` (of 16 weights).
    #[inline]
    pub fn group(&self, g: usize) -> (i16, i16) {
        if self.scale.is_empty() {
            (1, self.offset32)
        } else {
            (self.scale[g], self.offset[g])
        }
    }
}

fn nibbles(qs: &[u8], q: &mut [u8]) {
    for j in 0..16 {
        q[j] = qs[j] & 0xf;
        q[j + 16] = qs[j] >> 4;
    }
}

fn fifth_bits(qh: u32, q: &mut [u8]) {
    for j in 0..16 {
        q[j] |= (((qh >> j) << 4) & 0x10) as u8;
        q[j + 16] |= ((qh >> (j + 12)) & 0x10) as u8;
    }
}

fn qh32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The 6-bit scale and min of sub-block `j` (of 8) of a Q4_K or Q5_K block.
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// The 16 signed 6-bit scales of a Q3_K block, as ggml unpacks them.
fn q3k_scales(s: &[u8]) -> [i8; 16] {
    let mut aux = [0u32; 3];
    for (i, a) in aux.iter_mut().enumerate() {
        *a = qh32(s, 4 * i);
    }
    let (kmask1, kmask2) = (0x0303_0303u32, 0x0f0f_0f0fu32);
    let tmp = aux[2];
    let out = [
        (aux[0] & kmask2) | ((tmp & kmask1) << 4),
        (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4),
        ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4),
        ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4),
    ];
    let mut scales = [0i8; 16];
    for (i, word) in out.iter().enumerate() {
        for (k, byte) in word.to_le_bytes().iter().enumerate() {
            scales[4 * i + k] = (*byte as i8) - 32;
        }
    }
    scales
}

macro_rules! for_blocks {
    ($bytes:expr, $size:expr, $elems:expr, |$b:ident, $i:ident| $body:block) => {
        for ($i, $b) in $bytes.chunks_exact($size).enumerate() {
            let _ = $elems;
            $body
        }
    };
}

pub fn unpack_q4_0(bytes: &[u8], u: &mut Unpacked) {
    for_blocks!(bytes, 18, 32, |b, i| {
        let d = read_f16(b, 0);
        nibbles(&b[2..18], &mut u.q[32 * i..32 * i + 32]);
        u.d[i] = d;
        u.dmin[i] = d;
    });
    u.offset32 = 8;
}

pub fn unpack_q4_1(bytes: &[u8], u: &mut Unpacked) {
    for_blocks!(bytes, 20, 32, |b, i| {
        nibbles(&b[4..20], &mut u.q[32 * i..32 * i + 32]);
        u.d[i] = read_f16(b, 0);
        u.dmin[i] = -read_f16(b, 2);
    });
    u.offset32 = 1;
}

pub fn unpack_q5_0(bytes: &[u8], u: &mut Unpacked) {
    for_blocks!(bytes, 22, 32, |b, i| {
        let d = read_f16(b, 0);
        let q = &mut u.q[32 * i..32 * i + 32];
        nibbles(&b[6..22], q);
        fifth_bits(qh32(b, 2), q);
        u.d[i] = d;
        u.dmin[i] = d;
    });
    u.offset32 = 16;
}

pub fn unpack_q5_1(bytes: &[u8], u: &mut Unpacked) {
    for_blocks!(bytes, 24, 32, |b, i| {
        let q = &mut u.q[32 * i..32 * i + 32];
        nibbles(&b[8..24], q);
        fifth_bits(qh32(b, 4), q);
        u.d[i] = read_f16(b, 0);
        u.dmin[i] = -read_f16(b, 2);
    });
    u.offset32 = 1;
}

pub fn unpack_q2_k(bytes: &[u8], u: &mut Unpacked) {
    for_blocks!(bytes, 84, 256, |b, i| {
        let (scales, qs) = (&b[0..16], &b[16..80]);
        u.d[i] = read_f16(b, 80);
        u.dmin[i] = read_f16(b, 82);
        let q = &mut u.q[256 * i..256 * i + 256];
        let mut out = 0;
        for half in 0..2 {
            let qs = &qs[32 * half..32 * half + 32];
            for shift in [0, 2, 4, 6] {
                for l in 0..32 {
                    q[out + l] = (qs[l] >> shift) & 3;
                }
                out += 32;
            }
        }
        for (g, &sc) in scales.iter().enumerate() {
            u.scale[16 * i + g] = i16::from(sc & 0xf);
            u.offset[16 * i + g] = i16::from(sc >> 4);
        }
    });
}

pub fn unpack_q3_k(bytes: &[u8], u: &mut Unpacked) {
    for_blocks!(bytes, 110, 256, |b, i| {
        let (hmask, qs) = (&b[0..32], &b[32..96]);
        let scales = q3k_scales(&b[96..108]);
        let d = read_f16(b, 108);
        u.d[i] = d;
        u.dmin[i] = d;
        let q = &mut u.q[256 * i..256 * i + 256];
        let mut out = 0;
        let mut m = 1u8;
        for half in 0..2 {
            let qs = &qs[32 * half..32 * half + 32];
            for shift in [0, 2, 4, 6] {
                for l in 0..32 {
                    let high = if hmask[l] & m != 0 { 4 } else { 0 };
                    q[out + l] = ((qs[l] >> shift) & 3) + high;
                }
                out += 32;
                m <<= 1;
            }
        }
        for (g, &sc) in scales.iter().enumerate() {
            let s = i16::from(sc);
            u.scale[16 * i + g] = s;
            u.offset[16 * i + g] = 4 * s;
        }
    });
}

/// The factors, scales and mins of Q4_K or Q5_K block `b` (super-block `i`).
pub fn k4_scales(b: &[u8], i: usize, u: &mut Unpacked) {
    u.d[i] = read_f16(b, 0);
    u.dmin[i] = read_f16(b, 2);
    let scales = &b[4..16];
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, scales);
        u.scale[16 * i + 2 * j..16 * i + 2 * j + 2].fill(i16::from(sc));
        u.offset[16 * i + 2 * j..16 * i + 2 * j + 2].fill(i16::from(m));
    }
}

/// The factor and scales of Q6_K block `b` (super-block `i`).
pub fn q6k_scales(b: &[u8], i: usize, u: &mut Unpacked) {
    let d = read_f16(b, 208);
    u.d[i] = d;
    u.dmin[i] = d;
    for (g, &sc) in b[192..208].iter().enumerate() {
        let s = i16::from(sc as i8);
        u.scale[16 * i + g] = s;
        u.offset[16 * i + g] = 32 * s;
    }
}

pub fn unpack_q4_k(bytes: &[u8], u: &mut Unpacked) {
    for_blocks!(bytes, 144, 256, |b, i| {
        let qs = &b[16..144];
        let q = &mut u.q[256 * i..256 * i + 256];
        for j in 0..4 {
            for l in 0..32 {
                q[64 * j + l] = qs[32 * j + l] & 0xf;
                q[64 * j + 32 + l] = qs[32 * j + l] >> 4;
            }
        }
        k4_scales(b, i, u);
    });
}

pub fn unpack_q5_k(bytes: &[u8], u: &mut Unpacked) {
    for_blocks!(bytes, 176, 256, |b, i| {
        let (qh, qs) = (&b[16..48], &b[48..176]);
        let q = &mut u.q[256 * i..256 * i + 256];
        for j in 0..4 {
            let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
            for l in 0..32 {
                q[64 * j + l] = (qs[32 * j + l] & 0xf) + if qh[l] & u1 != 0 { 16 } else { 0 };
                q[64 * j + 32 + l] = (qs[32 * j + l] >> 4) + if qh[l] & u2 != 0 { 16 } else { 0 };
            }
        }
        k4_scales(b, i, u);
    });
}

pub fn unpack_q6_k(bytes: &[u8], u: &mut Unpacked) {
    for_blocks!(bytes, 210, 256, |b, i| {
        let (ql, qh) = (&b[0..128], &b[128..192]);
        let q = &mut u.q[256 * i..256 * i + 256];
        for n in 0..2 {
            let (ql, qh, q) = (&ql[64 * n..], &qh[32 * n..], &mut q[128 * n..]);
            for l in 0..32 {
                q[l] = (ql[l] & 0xf) | ((qh[l] & 3) << 4);
                q[l + 32] = (ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4);
                q[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                q[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
            }
        }
        q6k_scales(b, i, u);
    });
}

/// Dequantizes an unpacked row: `w_i = d · scale · q_i − dmin · offset`.
pub fn dequantize_unpacked(u: &Unpacked, block: usize, out: &mut [f32]) {
    for (i, w) in out.iter_mut().enumerate() {
        let (s, (scale, offset)) = (i / block, u.group(i / 16));
        *w = u.d[s] * f32::from(scale) * f32::from(u.q[i]) - u.dmin[s] * f32::from(offset);
    }
}

/// Q8_0: a scale and 32 signed bytes per block.
pub fn dequantize_q8_0(bytes: &[u8], out: &mut [f32]) {
    for (b, o) in bytes.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
        let d = read_f16(b, 0);
        for (x, &q) in o.iter_mut().zip(&b[2..34]) {
            *x = d * f32::from(q as i8);
        }
    }
}
