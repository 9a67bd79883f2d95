//! Which SIMD kernels this CPU runs, decided once at run time so that one binary runs on any
//! x86_64. `MODELHOST_NO_SIMD=1` forces the scalar kernels, and `MODELHOST_NO_AVX512=1` the
//! AVX2 ones on a CPU that has AVX-512 (for tests and comparisons).

use std::sync::OnceLock;

/// A set of kernels, from the plainest to the widest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kernels {
    Scalar,
    /// AVX2 with FMA and F16C.
    Avx2,
    /// The AVX2 set plus AVX-512 F, BW, VL and VNNI: some integer dot products take 64 bytes
    /// at a time through `vpdpbusd`/`vpdpwssd`. They compute the same integers and the same
    /// float operations as the AVX2 kernels, so the results are the same bits.
    Avx512Vnni,
}

impl Kernels {
    /// The name reports give.
    pub fn name(self) -> &'static str {
        match self {
            Kernels::Scalar => "scalar",
            Kernels::Avx2 => "avx2",
            Kernels::Avx512Vnni => "avx512-vnni",
        }
    }

    /// Whether this CPU can run these kernels (whatever the environment asks).
    pub fn available(self) -> bool {
        match self {
            Kernels::Scalar => true,
            Kernels::Avx2 => detect_avx2(),
            Kernels::Avx512Vnni => detect_avx2() && detect_avx512(),
        }
    }
}

/// The kernels in use: the widest this CPU has, less what the environment turns off.
#[inline]
pub fn kernels_in_use() -> Kernels {
    static IN_USE: OnceLock<Kernels> = OnceLock::new();
    *IN_USE.get_or_init(|| {
        let off = |name: &str| std::env::var_os(name).is_some_and(|v| v == "1");
        if off("MODELHOST_NO_SIMD") || !Kernels::Avx2.available() {
            Kernels::Scalar
        } else if off("MODELHOST_NO_AVX512") || !Kernels::Avx512Vnni.available() {
            Kernels::Avx2
        } else {
            Kernels::Avx512Vnni
        }
    })
}

/// Whether the AVX2 kernels (AVX2, FMA and F16C) run on this CPU.
#[inline]
pub fn has_avx2() -> bool {
    kernels_in_use() >= Kernels::Avx2
}

#[cfg(target_arch = "x86_64")]
fn detect_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}

#[cfg(target_arch = "x86_64")]
fn detect_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512vnni")
}

#[cfg(not(target_arch = "x86_64"))]
fn detect_avx2() -> bool {
    false
}

#[cfg(not(target_arch = "x86_64"))]
fn detect_avx512() -> bool {
    false
}

/// The kernels in use, for reports: "avx512-vnni", "avx2" or "scalar".
pub fn kernels() -> &'static str {
    kernels_in_use().name()
}
