//! Which SIMD kernels this CPU runs, decided once at run time so that one binary runs on any
//! x86_64. `MODELHOST_NO_SIMD=1` forces the scalar kernels (for tests and comparisons).

use std::sync::OnceLock;

/// Whether the AVX2 kernels (AVX2, FMA and F16C) run on this CPU.
#[inline]
pub fn has_avx2() -> bool {
    static AVX2: OnceLock<bool> = OnceLock::new();
    *AVX2.get_or_init(|| {
        if std::env::var_os("MODELHOST_NO_SIMD").is_some_and(|v| v == "1") {
            return false;
        }
        detect()
    })
}

#[cfg(target_arch = "x86_64")]
fn detect() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> bool {
    false
}

/// The kernels in use, for reports: "avx2" or "scalar".
pub fn kernels() -> &'static str {
    if has_avx2() {
        "avx2"
    } else {
        "scalar"
    }
}
