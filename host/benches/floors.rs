//! The baselines a worker's attach is measured against, on a file already in the page cache:
//! - `mmap_touch`: map the file read-only and shared, read one byte per page, unmap: the floor
//!   for making every page of a model usable in a new process;
//! - `heap_read`: read the whole file into the heap, as a `--no-mmap` loader does.
//!
//!     cargo bench -p modelhost-host --bench floors -- FILE...
//!
//! Prints `file name median_ms min_ms` per measurement, medians of 7 runs after a warm-up.

use std::hint::black_box;
use std::time::Instant;

fn median_ms(mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut times: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[3], times[0])
}

fn main() {
    let files: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    for path in files {
        let (median, best) = median_ms(|| {
            let file = std::fs::File::open(&path).expect("open");
            // SAFETY: a read-only mapping of a file nothing writes during the benchmark.
            let map = unsafe { memmap2::Mmap::map(&file) }.expect("mmap");
            let mut sum = 0u8;
            for offset in (0..map.len()).step_by(4096) {
                sum ^= map[offset];
            }
            black_box(sum);
        });
        println!("{path} mmap_touch {median:.2} {best:.2}");
        let (median, best) = median_ms(|| {
            black_box(std::fs::read(&path).expect("read"));
        });
        println!("{path} heap_read {median:.2} {best:.2}");
    }
}
