//! Page-level work on mappings: prefault, mlock, and residency (mincore and /proc).

use std::io;

use memmap2::{Advice, Mmap};

/// Bytes prefaulted per step between progress reports and cancellation checks.
const PREFAULT_STEP: usize = 16 << 20;

/// Reads every page of `map` once, so later accesses by any process sharing the pages find them
/// resident. `progress` gets the bytes done so far and returns false to stop early; then this
/// returns `Ok(false)`.
pub fn prefault(map: &Mmap, progress: &mut dyn FnMut(u64) -> bool) -> io::Result<bool> {
    let len = map.len();
    // Tell the kernel to read ahead aggressively while we stream through the file.
    let _ = map.advise(Advice::Sequential);
    let mut done = 0usize;
    while done < len {
        let step = PREFAULT_STEP.min(len - done);
        // MADV_POPULATE_READ (Linux 5.14) faults the range in without touching it page by page.
        // Where the kernel lacks it (EINVAL), reading one byte per page does the same. EFAULT
        // means pages past the end of the file: it shrank on disk. Touching those would raise
        // SIGBUS, so that is reported, never touched.
        if let Err(e) = map.advise_range(Advice::PopulateRead, done, step) {
            if e.raw_os_error() != Some(libc::EINVAL) {
                let _ = map.advise(Advice::Normal);
                return Err(truncated(e));
            }
            touch_pages(&map[done..done + step]);
        }
        done += step;
        if !progress(done as u64) {
            let _ = map.advise(Advice::Normal);
            return Ok(false);
        }
    }
    let _ = map.advise(Advice::Normal);
    Ok(true)
}

/// The error for a mapping whose file no longer covers it.
fn truncated(e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::EFAULT) {
        io::Error::other(
            "the model file is shorter than its mapping: it was truncated or replaced on disk",
        )
    } else {
        e
    }
}

fn touch_pages(bytes: &[u8]) {
    let page = page_size();
    let mut sum = 0u8;
    for offset in (0..bytes.len()).step_by(page) {
        // A volatile read, so the loop is not optimised away.
        // SAFETY: `offset` is in bounds of `bytes`, a valid shared slice.
        sum ^= unsafe { std::ptr::read_volatile(bytes.as_ptr().add(offset)) };
    }
    std::hint::black_box(sum);
}

/// The system page size.
pub fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map(|p| p as usize)
        .unwrap_or(4096)
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

/// A process's memory, from /proc/PID/smaps_rollup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessMemory {
    /// Resident set size: pages mapped into this process and in RAM.
    pub rss_bytes: u64,
    /// Proportional set size: shared pages counted once across the processes sharing them.
    pub pss_bytes: u64,
}

/// RSS and PSS of process `pid` (`None` reads this process).
pub fn process_memory(pid: Option<u32>) -> io::Result<ProcessMemory> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/smaps_rollup"),
        None => "/proc/self/smaps_rollup".into(),
    };
    Ok(parse_smaps_rollup(&std::fs::read_to_string(path)?))
}

fn parse_smaps_rollup(text: &str) -> ProcessMemory {
    use modelhost_worker::devices::meminfo_kb;
    ProcessMemory {
        rss_bytes: meminfo_kb(text, "Rss:") * 1024,
        pss_bytes: meminfo_kb(text, "Pss:") * 1024,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_rollup_fields_are_read_in_bytes() {
        let text = "55d0-7ffd ---p 00000000 00:00 0  [rollup]\nRss:              20480 kB\nPss:               8192 kB\nPss_Anon:  100 kB\n";
        assert_eq!(
            parse_smaps_rollup(text),
            ProcessMemory {
                rss_bytes: 20480 * 1024,
                pss_bytes: 8192 * 1024
            }
        );
    }

    #[test]
    fn this_process_has_memory() {
        let m = process_memory(None).unwrap();
        assert!(m.rss_bytes > 0 && m.pss_bytes > 0);
    }
}
