//! A small pool of compute threads that run one parallel loop at a time. The thread that calls
//! [`Pool::run`] takes part as worker 0, so a pool of one thread spawns none.
//!
//! Threads wait for work spinning briefly, then sleeping on a condition variable: a decode step
//! issues hundreds of short loops, and waking a sleeping thread for each would cost more than
//! the loops themselves; several workers sharing two cores must not burn them while idle.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A pointer to f32s that the threads of one job share, each writing elements that no other
/// thread writes (disjoint rows of an output). It is `Send` and `Sync` for that use alone.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(*mut f32);

// SAFETY: only used to write elements that exactly one thread of a job owns.
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub(crate) fn new(out: &mut [f32]) -> SharedOut {
        SharedOut(out.as_mut_ptr())
    }

    /// The element at `offset` (a method, so that closures capture the whole `SharedOut`).
    pub(crate) fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// A job: called once per thread with the thread's index.
type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// Bumped for each job; a worker runs each generation once.
    generation: AtomicUsize,
    /// Workers still running the current job.
    pending: AtomicUsize,
    /// The current job, valid while `pending` is above zero.
    job: Mutex<Option<&'static Job>>,
    wake: Condvar,
    sleeping: Mutex<()>,
    stop: std::sync::atomic::AtomicBool,
    /// A worker's job panicked (a bug): the caller re-raises it once every worker is done.
    panicked: std::sync::atomic::AtomicBool,
}

/// Waits, even while unwinding, until no worker can still be running the job that borrows
/// the caller's closure.
struct Quiesce<'a>(&'a Shared);

impl Drop for Quiesce<'_> {
    fn drop(&mut self) {
        while self.0.pending.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        *self.0.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Compute threads for one engine.
pub struct Pool {
    threads: usize,
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
}

/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_micros(200);

impl Pool {
    /// A pool of `threads` (at least 1) including the caller.
    pub fn new(threads: usize) -> std::io::Result<Pool> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            job: Mutex::new(None),
            wake: Condvar::new(),
            sleeping: Mutex::new(()),
            stop: std::sync::atomic::AtomicBool::new(false),
            panicked: std::sync::atomic::AtomicBool::new(false),
        });
        let mut handles = Vec::with_capacity(threads - 1);
        for index in 1..threads {
            let shared = Arc::clone(&shared);
            handles.push(
                std::thread::Builder::new()
                    .name(format!("engine-{index}"))
                    .spawn(move || worker(&shared, index))?,
            );
        }
        Ok(Pool {
            threads,
            shared,
            handles,
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(thread)` on every thread of the pool, and returns when all have finished.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.threads == 1 {
            f(0);
            return;
        }
        // SAFETY: the job is only called while `pending` is above zero, and this function does
        // not return or unwind (the `Quiesce` guard below) until `pending` is back at zero, so
        // `f` outlives every call.
        let job: &'static Job =
            unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync + '_), &'static Job>(f) };
        *self.shared.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(job);
        self.shared
            .pending
            .store(self.threads - 1, Ordering::Release);
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        {
            let _guard = self
                .shared
                .sleeping
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        {
            let _quiesce = Quiesce(&self.shared);
            f(0);
        }
        if self.shared.panicked.swap(false, Ordering::AcqRel) {
            panic!("an engine thread panicked");
        }
    }

    /// Runs `f(thread, range)` over `0..n` in chunks of `chunk` that the threads claim one at a
    /// time, so that a thread that started late or runs slower (a busy core, a sleeping
    /// worker's wake-up) takes fewer chunks and nobody waits for it at the end.
    pub fn for_chunks(
        &self,
        n: usize,
        chunk: usize,
        f: &(dyn Fn(usize, std::ops::Range<usize>) + Sync),
    ) {
        let chunk = chunk.max(1);
        if self.threads == 1 || n <= chunk {
            f(0, 0..n);
            return;
        }
        let next = AtomicUsize::new(0);
        self.run(&|t| loop {
            let start = next.fetch_add(chunk, Ordering::Relaxed);
            if start >= n {
                return;
            }
            f(t, start..n.min(start + chunk));
        });
    }

    /// Splits `data`, rows of `row` values, into one contiguous run of rows per thread, and
    /// runs `f(rows, values)` on each: for element-wise work on a batch (the gated
    /// activations), which would otherwise run on one thread while the others wait.
    pub fn for_rows_mut(
        &self,
        data: &mut [f32],
        row: usize,
        f: &(dyn Fn(std::ops::Range<usize>, &mut [f32]) + Sync),
    ) {
        let rows = data.len() / row.max(1);
        let threads = self.threads.min(rows).max(1);
        if threads == 1 {
            f(0..rows, data);
            return;
        }
        let mut parts = Vec::with_capacity(threads);
        let mut rest = data;
        let mut start = 0;
        for t in 0..threads {
            let end = rows * (t + 1) / threads;
            let (part, tail) = rest.split_at_mut((end - start) * row);
            parts.push(Mutex::new((start..end, part)));
            rest = tail;
            start = end;
        }
        self.run(&|t| {
            if let Some(part) = parts.get(t) {
                let mut part = part.lock().unwrap_or_else(|e| e.into_inner());
                let (range, values) = &mut *part;
                f(range.clone(), values);
            }
        });
    }
}

fn worker(shared: &Shared, index: usize) {
    let mut seen = 0usize;
    loop {
        let started = Instant::now();
        loop {
            if shared.stop.load(Ordering::Acquire) {
                return;
            }
            if shared.generation.load(Ordering::Acquire) != seen {
                break;
            }
            if started.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            let guard = shared.sleeping.lock().unwrap_or_else(|e| e.into_inner());
            if shared.generation.load(Ordering::Acquire) == seen
                && !shared.stop.load(Ordering::Acquire)
            {
                let _ = shared
                    .wake
                    .wait_timeout(guard, Duration::from_millis(100))
                    .map(|(g, _)| drop(g));
            }
        }
        seen = shared.generation.load(Ordering::Acquire);
        let job = *shared.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(job) = job {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(index))).is_err() {
                shared.panicked.store(true, Ordering::Release);
            }
        }
        shared.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        {
            let _guard = self
                .shared
                .sleeping
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_thread_runs_each_job_once() {
        let pool = Pool::new(3).unwrap();
        let hits = AtomicU64::new(0);
        for round in 0..1000u64 {
            pool.run(&|t| {
                hits.fetch_add(1 << (16 * t as u64), Ordering::Relaxed);
            });
            let h = hits.load(Ordering::Relaxed);
            let expect = (round + 1) * (1 + (1 << 16) + (1 << 32));
            assert_eq!(h, expect, "round {round}");
        }
    }

    #[test]
    fn chunks_cover_everything_once() {
        let pool = Pool::new(3).unwrap();
        for (n, chunk) in [
            (0usize, 4usize),
            (1, 4),
            (5, 4),
            (1001, 7),
            (64, 64),
            (65, 64),
        ] {
            let covered: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
            pool.for_chunks(n, chunk, &|_, r| {
                assert!(r.len() <= chunk);
                for i in r {
                    covered[i].fetch_add(1, Ordering::Relaxed);
                }
            });
            assert!(
                covered.iter().all(|c| c.load(Ordering::Relaxed) == 1),
                "n = {n}, chunk = {chunk}"
            );
        }
    }
}
