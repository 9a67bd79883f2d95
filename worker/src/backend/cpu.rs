//! The CPU backend: layers are used in place, in the pages the host mapped. Placing a layer
//! means faulting its pages in (and optionally locking or checksumming them); nothing is copied.

use modelhost_node::pages::{populate_read, populate_write};
use modelhost_protocol::wire::{checksum64, WorkerOptions};

use super::{Backend, BackendError};

/// Bytes faulted in per step between progress reports.
const STEP: usize = 4 << 20;

/// Bytes of KV cache cleared per step between progress reports (about 10 ms of work).
const KV_STEP: usize = 64 << 20;

#[derive(Default)]
pub struct CpuBackend {
    weights: u64,
    /// The KV cache, in 8-byte words so that the engine can read it as f16 or f32.
    kv: Vec<u64>,
    /// Checksums of verified pieces, kept so the work cannot be optimised away.
    pub checksum: u64,
}

impl CpuBackend {
    pub fn new() -> CpuBackend {
        CpuBackend::default()
    }

    /// Hands the KV cache over to the inference engine, which computes in it.
    pub fn take_kv(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.kv)
    }
}

impl Backend for CpuBackend {
    fn place(
        &mut self,
        bytes: &[u8],
        options: &WorkerOptions,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), BackendError> {
        for chunk in bytes.chunks(STEP) {
            if !options.lazy_pages {
                populate_read(chunk)?;
            }
            if options.verify {
                self.checksum ^= checksum64(chunk);
            }
            progress(chunk.len() as u64);
        }
        if options.mlock {
            // SAFETY: locks pages of a live mapping; the range is a valid slice.
            let rc = unsafe { libc::mlock(bytes.as_ptr() as *const libc::c_void, bytes.len()) };
            if rc != 0 {
                return Err(BackendError::Lock {
                    bytes: bytes.len() as u64,
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        self.weights += bytes.len() as u64;
        Ok(())
    }

    fn allocate_kv(
        &mut self,
        bytes: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), BackendError> {
        let words = BackendError::len_for("KV cache", bytes.div_ceil(8))?;
        let mut kv: Vec<u64> = Vec::new();
        kv.try_reserve_exact(words)
            .map_err(|_| BackendError::OutOfMemory {
                what: "KV cache",
                bytes,
            })?;
        // Zeroed and touched, as the engine's cache is once used: the memory is really held.
        // The pages are faulted in first with one call: writing them one page fault at a time
        // took 14 ms of a new worker's 23 ms to Ready on gemma (27 MiB at ctx 4096).
        populate_write(kv.as_mut_ptr() as *mut u8, words * 8);
        // Then zeroed in steps, with progress between them.
        while kv.len() < words {
            let step = (words - kv.len()).min(KV_STEP / 8);
            kv.resize(kv.len() + step, 0);
            progress((step as u64 * 8).min(bytes - (kv.len() as u64 - step as u64) * 8));
        }
        self.kv = kv;
        Ok(())
    }

    fn reserve_scratch(&mut self, _bytes: u64) -> Result<(), BackendError> {
        // The inference engine allocates its own scratch, sized from its real batch, and the
        // worker reports that figure in Ready.
        Ok(())
    }

    fn weights_bytes(&self) -> u64 {
        self.weights
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kv_cache_is_cleared_in_steps_with_progress_and_held() {
        let mut backend = CpuBackend::new();
        let bytes = 2 * KV_STEP as u64 + 5;
        let mut steps = Vec::new();
        backend.allocate_kv(bytes, &mut |n| steps.push(n)).unwrap();
        assert_eq!(steps, [KV_STEP as u64, KV_STEP as u64, 5]);
        assert_eq!(backend.kv.len() as u64, bytes.div_ceil(8));
        assert!(backend.kv.iter().step_by(512).all(|&b| b == 0));
    }
}
