//! The CPU backend: layers are used in place, in the pages the host mapped. Placing a layer
//! means faulting its pages in (and optionally locking or checksumming them); nothing is copied.

use modelhost_protocol::wire::{checksum64, WorkerOptions};

use super::{Backend, BackendError};

/// Bytes faulted in per step between progress reports.
const STEP: usize = 4 << 20;

/// Bytes of KV cache cleared per step between progress reports (about 10 ms of work).
const KV_STEP: usize = 64 << 20;

#[derive(Default)]
pub struct CpuBackend {
    weights: u64,
    kv: Vec<u8>,
    scratch: Vec<u8>,
    /// Checksums of verified pieces, kept so the work cannot be optimised away.
    pub checksum: u64,
}

impl CpuBackend {
    pub fn new() -> CpuBackend {
        CpuBackend::default()
    }
}

/// Faults `bytes` in: MADV_POPULATE_READ where the kernel has it, else a read per page. A file
/// that shrank on disk is an error here (EFAULT), never a touch that would raise SIGBUS.
fn populate(bytes: &[u8]) -> Result<(), BackendError> {
    // SAFETY: `bytes` lies inside a live read-only mapping; madvise only asks the kernel to fault
    // those pages in and changes no memory.
    let rc = unsafe {
        libc::madvise(
            bytes.as_ptr() as *mut libc::c_void,
            bytes.len(),
            libc::MADV_POPULATE_READ,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(BackendError::Device(format!(
                "the model's pages cannot be read ({e}): the file was truncated or replaced on disk; reload it"
            )));
        }
        // A kernel without MADV_POPULATE_READ (before 5.14): touch each page instead.
        let mut sum = 0u8;
        for offset in (0..bytes.len()).step_by(4096) {
            // SAFETY: offset < bytes.len(); a volatile read keeps the touch from being optimised out.
            sum ^= unsafe { std::ptr::read_volatile(bytes.as_ptr().add(offset)) };
        }
        std::hint::black_box(sum);
    }
    Ok(())
}

impl Backend for CpuBackend {
    fn place(
        &mut self,
        bytes: &[u8],
        options: &WorkerOptions,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), BackendError> {
        for chunk in bytes.chunks(STEP) {
            populate(chunk)?;
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
        let len = BackendError::len_for("KV cache", bytes)?;
        let mut kv = Vec::new();
        kv.try_reserve_exact(len)
            .map_err(|_| BackendError::OutOfMemory {
                what: "KV cache",
                bytes,
            })?;
        // Zeroed and touched, as an engine's cache is once used: the memory is really held.
        // In steps, with progress between them.
        while kv.len() < len {
            let step = (len - kv.len()).min(KV_STEP);
            kv.resize(kv.len() + step, 0);
            progress(step as u64);
        }
        self.kv = kv;
        Ok(())
    }

    fn reserve_scratch(&mut self, bytes: u64) -> Result<(), BackendError> {
        let len = BackendError::len_for("scratch", bytes)?;
        // Reserved, not touched: an engine's scratch becomes resident when it computes.
        self.scratch
            .try_reserve_exact(len)
            .map_err(|_| BackendError::OutOfMemory {
                what: "scratch",
                bytes,
            })?;
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
        assert_eq!(backend.kv.len() as u64, bytes);
        assert!(backend.kv.iter().step_by(4096).all(|&b| b == 0));
    }
}
