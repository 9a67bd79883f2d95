//! Page-level work on the host's mappings: prefault, mlock, and residency (mincore). How pages
//! are faulted in, the page size and process memory figures are `modelhost_node`'s, shared with
//! the workers.

use std::io;

use memmap2::{Advice, Mmap};

use crate::model_file::MappedModel;
pub use modelhost_node::memory::{process_memory, ProcessMemory};
pub use modelhost_node::pages::page_size;
use modelhost_node::pages::{populate_read, PopulateError};

/// Bytes prefaulted per step between progress reports and cancellation checks.
const PREFAULT_STEP: usize = 16 << 20;

/// Byte ranges of a model's files, by file index, in the order they are to be read.
pub type ReadPlan = Vec<(usize, std::ops::Range<usize>)>;

/// Every file of `model` whole, in file order: the plan when no better order is known.
pub fn file_order(model: &MappedModel) -> ReadPlan {
    model
        .files()
        .iter()
        .enumerate()
        .filter_map(|(i, f)| f.mapping().map(|m| (i, 0..m.len())))
        .collect()
}

/// Reads the pages of `plan`, in its order, so later accesses by any process sharing the pages
/// find them resident. `progress` gets the bytes done so far and returns false to stop early;
/// then this returns `Ok(false)`. Ranges outside a file are clipped to it.
pub fn prefault(
    model: &MappedModel,
    plan: &[(usize, std::ops::Range<usize>)],
    progress: &mut dyn FnMut(u64) -> bool,
) -> io::Result<bool> {
    let maps: Vec<Option<&Mmap>> = model.files().iter().map(|f| f.mapping()).collect();
    // Tell the kernel to read ahead aggressively while we stream through the files.
    for map in maps.iter().flatten() {
        let _ = map.advise(Advice::Sequential);
    }
    let normal = || {
        for map in maps.iter().flatten() {
            let _ = map.advise(Advice::Normal);
        }
    };
    let mut done = 0u64;
    for (file, range) in plan {
        let Some(Some(map)) = maps.get(*file) else {
            continue;
        };
        let (mut at, end) = (range.start.min(map.len()), range.end.min(map.len()));
        while at < end {
            let step = PREFAULT_STEP.min(end - at);
            // A file that shrank on disk is reported (EFAULT), never touched: that would be
            // SIGBUS.
            if let Err(e) = populate_read(&map[at..at + step]) {
                normal();
                return Err(match e {
                    PopulateError::Truncated => io::Error::other(e.to_string()),
                    PopulateError::Io(e) => e,
                });
            }
            at += step;
            done += step as u64;
            if !progress(done) {
                normal();
                return Ok(false);
            }
        }
    }
    normal();
    Ok(true)
}

/// Why mlock failed, with what the operator needs to fix it.
#[derive(Debug, thiserror::Error)]
#[error("mlock of {bytes} bytes failed ({source}); RLIMIT_MEMLOCK is {limit}: raise it (LimitMEMLOCK= in systemd, ulimit -l) or load without mlock")]
pub struct MlockError {
    pub bytes: u64,
    pub limit: String,
    #[source]
    pub source: io::Error,
}

/// Asks the kernel, on a thread of its own, to start reading `plan`'s ranges of `model` into
/// the page cache, in the plan's order (MADV_WILLNEED), so that the disk works while the host
/// parses the vocabulary and starts the workers. Advice only: a failure is logged and changes
/// nothing.
pub fn read_ahead_in_background(model: std::sync::Arc<MappedModel>, plan: ReadPlan) {
    let advise = move || {
        let page = page_size();
        for (file, range) in &plan {
            let Some(map) = model.files().get(*file).and_then(|f| f.mapping()) else {
                continue;
            };
            // madvise wants a page-aligned start; the plan's ranges are, but be exact anyway.
            let start = range.start.min(map.len()) / page * page;
            let end = range.end.min(map.len());
            if start >= end {
                continue;
            }
            // SAFETY: start..end lies inside a live mapping held by `model`, starting on a page
            // boundary; MADV_WILLNEED schedules reads and changes no memory.
            let rc = unsafe {
                libc::madvise(
                    map.as_ptr().add(start) as *mut libc::c_void,
                    end - start,
                    libc::MADV_WILLNEED,
                )
            };
            if rc != 0 {
                tracing::debug!(error = %io::Error::last_os_error(), "read-ahead advice refused");
            }
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("read-ahead".into())
        .spawn(advise)
    {
        tracing::debug!(error = %e, "no read-ahead thread");
    }
}

/// Locks the mapping's pages in RAM.
pub fn lock(map: &Mmap) -> Result<(), MlockError> {
    map.lock().map_err(|source| MlockError {
        bytes: map.len() as u64,
        limit: memlock_limit(),
        source,
    })
}

/// RLIMIT_MEMLOCK's soft limit, for messages.
pub fn memlock_limit() -> String {
    use nix::sys::resource::{getrlimit, Resource, RLIM_INFINITY};
    match getrlimit(Resource::RLIMIT_MEMLOCK) {
        Ok((soft, _)) if soft == RLIM_INFINITY => "unlimited".into(),
        Ok((soft, _)) => format!("{soft} bytes"),
        Err(e) => format!("unknown ({e})"),
    }
}

/// How many bytes of `map` are resident in RAM, by mincore.
pub fn resident_bytes(map: &Mmap) -> io::Result<u64> {
    let page = page_size();
    let pages = map.len().div_ceil(page);
    let mut vec = vec![0u8; pages];
    // SAFETY: the address and length describe the live mapping `map`, and `vec` has one byte per
    // page of it, as mincore requires.
    let rc = unsafe {
        libc::mincore(
            map.as_ptr() as *mut libc::c_void,
            map.len(),
            vec.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let resident = vec.iter().filter(|&&b| b & 1 == 1).count();
    Ok((resident * page).min(map.len()) as u64)
}
