//! Faulting pages of a shared mapping in, the same way in the host (prefault) and in a CPU worker
//! (placing its layers), and the page size.

use std::io;

/// The system page size.
pub fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map(|p| p as usize)
        .unwrap_or(4096)
}

/// Why pages could not be faulted in.
#[derive(Debug, thiserror::Error)]
pub enum PopulateError {
    /// The kernel reported pages past the end of the file (EFAULT): touching them would have
    /// raised SIGBUS.
    #[error("the model file is shorter than its mapping: it was truncated or replaced on disk")]
    Truncated,
    #[error("faulting the model's pages in: {0}")]
    Io(#[source] io::Error),
}

/// Faults every page of `bytes` (part of a live mapping) in, so that later reads by any process
/// sharing the pages find them resident.
///
/// MADV_POPULATE_READ (Linux 5.14) does it without touching the pages one by one, and reports a
/// file that shrank on disk as EFAULT instead of raising SIGBUS. Where the kernel lacks it
/// (EINVAL), reading one byte per page does the same work, without that protection.
pub fn populate_read(bytes: &[u8]) -> Result<(), PopulateError> {
    if bytes.is_empty() {
        return Ok(());
    }
    let page = page_size();
    // madvise wants a page-aligned start: widen the range down to its page. The widened bytes
    // belong to the same mapping, whose start is page-aligned.
    let start = bytes.as_ptr() as usize;
    let aligned = start - start % page;
    // SAFETY: [aligned, start + len) lies inside the live mapping that `bytes` borrows from
    // (mappings start on a page boundary); MADV_POPULATE_READ only faults pages in and changes
    // no memory.
    let rc = unsafe {
        libc::madvise(
            aligned as *mut libc::c_void,
            bytes.len() + (start - aligned),
            libc::MADV_POPULATE_READ,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) => {
            touch_pages(bytes, page);
            Ok(())
        }
        Some(libc::EFAULT) => Err(PopulateError::Truncated),
        _ => Err(PopulateError::Io(e)),
    }
}

/// Advises a model's mapping `MADV_HUGEPAGE`: where the kernel and file system keep large
/// folios in the page cache, a cold read then fills it in 2 MiB folios, and every process
/// maps them with one entry per 2 MiB rather than 512 (fewer faults during a cold load, fewer
/// TLB misses when a decode step streams the weights). The host, each attached worker and
/// `--bench` call it on every mapping. Advice only: where it is refused, nothing changes.
pub fn prefer_huge_pages(map: &[u8]) {
    if map.is_empty() {
        return;
    }
    // SAFETY: `map` is a live mapping (which starts on a page boundary); MADV_HUGEPAGE changes
    // how its pages may be backed, never their contents.
    unsafe {
        libc::madvise(
            map.as_ptr() as *mut libc::c_void,
            map.len(),
            libc::MADV_HUGEPAGE,
        )
    };
}

/// Asks the kernel to fault in, writable, every whole page of `len` bytes from `start` (memory
/// this process owns, whatever it holds): one call where touching them faults them one at a
/// time. It changes no byte. Best effort: `false` where the kernel lacks
/// MADV_POPULATE_WRITE (before Linux 5.14) or refuses, and the caller's own writes then fault
/// the pages in as before.
pub fn populate_write(start: *mut u8, len: usize) -> bool {
    let page = page_size();
    let first = (start as usize).next_multiple_of(page);
    let end = (start as usize).saturating_add(len) / page * page;
    if end <= first {
        return false;
    }
    // SAFETY: [first, end) is whole pages inside the caller's allocation; MADV_POPULATE_WRITE
    // only maps them (as a write would) and changes no memory.
    let rc = unsafe {
        libc::madvise(
            first as *mut libc::c_void,
            end - first,
            libc::MADV_POPULATE_WRITE,
        )
    };
    rc == 0
}

fn touch_pages(bytes: &[u8], page: usize) {
    let mut sum = 0u8;
    for offset in (0..bytes.len()).step_by(page) {
        // SAFETY: `offset` is in bounds of `bytes`, a valid shared slice; the read is volatile so
        // that the loop is not optimised away.
        sum ^= unsafe { std::ptr::read_volatile(bytes.as_ptr().add(offset)) };
    }
    std::hint::black_box(sum);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heap_slice_at_any_offset_populates() {
        // Anonymous memory is a mapping too: MADV_POPULATE_READ accepts it, and the widening to
        // a page boundary must keep an unaligned slice valid.
        let bytes = vec![7u8; 3 * page_size() + 17];
        populate_read(&bytes[5..]).unwrap();
        populate_read(&bytes[..0]).unwrap();
    }

    /// Pages of `len` bytes from the page-aligned `start` that are resident (mincore).
    fn resident(start: *mut u8, len: usize) -> usize {
        let page = page_size();
        let mut flags = vec![0u8; len.div_ceil(page)];
        // SAFETY: [start, start + len) is a live mapping of this test; `flags` has a byte per
        // page.
        let rc = unsafe { libc::mincore(start as *mut libc::c_void, len, flags.as_mut_ptr()) };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        flags.iter().filter(|&&f| f & 1 == 1).count()
    }

    #[test]
    fn populate_write_maps_the_whole_pages_and_changes_nothing() {
        let page = page_size();
        let len = 64 * page;
        // SAFETY: a fresh private anonymous mapping, unmapped below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        } as *mut u8;
        assert_ne!(ptr as *mut libc::c_void, libc::MAP_FAILED);
        assert_eq!(resident(ptr, len), 0);
        // SAFETY: inside the mapping.
        unsafe { ptr.add(3 * page + 5).write(9) };
        // From mid-page: the first and last partial pages are left alone.
        // SAFETY: inside the mapping.
        let populated = populate_write(unsafe { ptr.add(17) }, len - 17 - 1);
        if populated {
            // The 62 whole pages in range, and the page written above (among them).
            assert_eq!(resident(ptr, len), 62);
        }
        // SAFETY: the mapping is live for `len` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
        assert_eq!(bytes.iter().map(|&b| u64::from(b)).sum::<u64>(), 9);
        assert!(!populate_write(ptr, page - 1));
        // SAFETY: unmaps the mapping made above; `bytes` is not used after this.
        unsafe { libc::munmap(ptr as *mut libc::c_void, len) };
    }

    #[test]
    fn a_truncated_file_is_reported_not_touched() {
        use std::os::fd::AsRawFd;
        let path = std::env::temp_dir().join(format!("mh-node-pages-{}", std::process::id()));
        let page = page_size();
        std::fs::write(&path, vec![1u8; 4 * page]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a private read-only mapping of a file this test owns; it is unmapped below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4 * page,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(page as u64)
            .unwrap();
        // SAFETY: the mapping is live for 4 pages; only the first is still backed by the file.
        let bytes = unsafe { std::slice::from_raw_parts(ptr as *const u8, 4 * page) };
        let result = populate_read(bytes);
        // SAFETY: unmaps the mapping made above; `bytes` is not used after this.
        unsafe { libc::munmap(ptr, 4 * page) };
        let _ = std::fs::remove_file(&path);
        assert!(
            matches!(result, Err(PopulateError::Truncated)),
            "{result:?}"
        );
    }
}
