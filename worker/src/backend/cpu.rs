//! The CPU backend: layers are used in place, in the pages the host mapped. Placing a layer
//! means faulting its pages in (and optionally locking or checksumming them); nothing is copied.

use modelhost_node::pages::{populate_read, populate_write};
use modelhost_protocol::wire::{checksum64, WorkerOptions};

use super::{Backend, BackendError};

/// Bytes faulted in per step between progress reports.
const STEP: usize = 4 << 20;

#[derive(Default)]
pub struct CpuBackend {
    weights: u64,
    /// The KV cache, in 8-byte words so that the engine can read it as f16 or f32.
    kv: Vec<u64>,
    /// Where the KV cache is (address and bytes), to fault it in once the engine has it.
    kv_range: (usize, usize),
    /// Bytes of it faulted in so far by `idle_step`.
    kv_populated: usize,
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
        let out_of_memory = BackendError::OutOfMemory {
            what: "KV cache",
            bytes,
        };
        let words = BackendError::len_for("KV cache", bytes.div_ceil(8))?;
        let kv = zeroed_words(words).ok_or(out_of_memory)?;
        // The memory is really held once it is faulted in, but a worker need not wait for it:
        // a first request touches a few cells of each layer, and faulting in 27 MiB (gemma at
        // ctx 4096) took 10 to 15 ms of a new worker's 16 ms to Ready. `idle_step` does it
        // when the worker has nothing else to do.
        self.kv_range = (kv.as_ptr() as usize, words * 8);
        self.kv_populated = 0;
        progress(bytes);
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

    /// Faults in the next step of the KV cache. The worker calls it only while it has nothing
    /// to do, so a new worker's first request does not wait for it: done before Ready, or
    /// beside the first request on a thread of its own, it added 9 to 13 ms to a new gemma
    /// worker's first token (the faulting takes CPU time and holds the mmap lock that the
    /// engine's allocations wait for). The cache lives as long as the worker serves, in the
    /// engine.
    fn idle_step(&mut self) -> bool {
        let (start, len) = self.kv_range;
        let done = self.kv_populated;
        if done >= len {
            return false;
        }
        // Steps end on page boundaries, so that no page straddles two (each call takes only
        // the whole pages of its range).
        let from = start + done;
        let page = modelhost_node::pages::page_size();
        let to = (from + POPULATE_STEP) / page * page;
        let to = if to <= from {
            start + len
        } else {
            to.min(start + len)
        };
        if !populate_write(from as *mut u8, to - from) && to - from >= 2 * page {
            // The kernel lacks MADV_POPULATE_WRITE (before Linux 5.14): the engine's writes
            // fault the pages in as it uses them.
            self.kv_populated = len;
            return false;
        }
        self.kv_populated = to - start;
        self.kv_populated < len
    }
}

/// Bytes of KV cache faulted in per idle step (about 0.1 ms): the longest a request that
/// arrives during one waits for it.
const POPULATE_STEP: usize = 256 << 10;

/// `words` zeroed words, or `None` where the memory cannot be had. Zeroed by the allocator
/// (fresh pages from the kernel are zero), so nothing here writes, or faults in, the pages.
fn zeroed_words(words: usize) -> Option<Vec<u64>> {
    if words == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<u64>(words).ok()?;
    // SAFETY: `layout` has a non-zero size.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut u64;
    if ptr.is_null() {
        return None;
    }
    // SAFETY: `ptr` came from the global allocator with the layout of `words` u64s, and all
    // of them are initialized (zero).
    Some(unsafe { Vec::from_raw_parts(ptr, words, words) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages of `kv` that are resident, and all its whole pages (mincore).
    fn resident(kv: &[u64]) -> (usize, usize) {
        let page = modelhost_node::pages::page_size();
        let start = (kv.as_ptr() as usize).next_multiple_of(page);
        let pages = (kv.as_ptr() as usize + kv.len() * 8 - start) / page;
        let mut flags = vec![0u8; pages];
        // SAFETY: [start, start + pages · page) lies inside `kv`; mincore only reads the page
        // tables into `flags`, one byte per page.
        let rc =
            unsafe { libc::mincore(start as *mut libc::c_void, pages * page, flags.as_mut_ptr()) };
        assert_eq!(rc, 0);
        (flags.iter().filter(|&&f| f & 1 != 0).count(), pages)
    }

    #[test]
    fn the_kv_cache_is_zeroed_reported_and_faulted_in_by_idle_steps() {
        // Above glibc's largest mmap threshold (32 MiB), so the allocation is fresh pages that
        // nothing touches before the idle steps.
        let mut backend = CpuBackend::new();
        let bytes = (64 << 20) + 5;
        let mut reported = Vec::new();
        backend
            .allocate_kv(bytes, &mut |n| reported.push(n))
            .unwrap();
        assert_eq!(reported, [bytes]);
        assert_eq!(backend.kv.len() as u64, bytes.div_ceil(8));
        let (held, pages) = resident(&backend.kv);
        assert!(
            held < pages / 2,
            "{held} of {pages} pages resident before any idle step"
        );
        let mut steps = 1;
        while backend.idle_step() {
            steps += 1;
        }
        assert!(
            (bytes as usize).div_ceil(POPULATE_STEP) <= steps
                && steps <= (bytes as usize).div_ceil(POPULATE_STEP) + 1,
            "{steps} steps"
        );
        assert!(!backend.idle_step());
        let (held, pages) = resident(&backend.kv);
        assert_eq!(held, pages, "pages resident after the idle steps");
        assert!(backend.kv.iter().all(|&w| w == 0));
    }

    #[test]
    fn a_kv_cache_beyond_the_address_space_is_out_of_memory() {
        let mut backend = CpuBackend::new();
        let error = backend.allocate_kv(u64::MAX / 2, &mut |_| {}).unwrap_err();
        assert!(
            matches!(
                error,
                BackendError::OutOfMemory {
                    what: "KV cache",
                    ..
                }
            ),
            "{error}"
        );
    }
}
