//! `out = x · Wᵀ` for a batch of activation rows: the rows of `W` are split over the compute
//! threads; each thread prepares a weight row once and takes its dot product with every
//! activation row, so each weight byte is read once per step whatever the batch.

use std::sync::Mutex;

use crate::pool::Pool;
use crate::quant::{dot_rows_into, PreparedRow, QuantizedActs, Sink};
use crate::weights::{Matrix, ModelFile};

/// Per-thread prepared weight rows.
pub struct RowBuffers(Vec<Mutex<PreparedRow>>);

impl RowBuffers {
    /// Buffers for `threads` threads and rows of up to `width` weights.
    pub fn new(threads: usize, width: usize) -> RowBuffers {
        RowBuffers(
            (0..threads)
                .map(|_| Mutex::new(PreparedRow::with_capacity(width)))
                .collect(),
        )
    }
}

/// `out[j · w.rows + r] = Σ_i x[j][i] · w[r][i]` for every activation row `j` of `acts`.
pub fn matmul(
    pool: &Pool,
    files: &[ModelFile],
    w: &Matrix,
    acts: &QuantizedActs,
    out: &mut [f32],
    rows: &RowBuffers,
) {
    assert_eq!(acts.k, w.cols, "{}: activations of the wrong width", w.name);
    assert!(out.len() >= acts.rows * w.rows);
    let bytes = w.bytes(files);
    let (m, n) = (w.rows, acts.rows);
    // SAFETY: `out` holds n rows of m (asserted above), and each thread writes only the
    // elements of the weight rows of its own chunks.
    let sink = unsafe { Sink::new(out.as_mut_ptr(), n * m, m, 0) };
    let kernels = crate::simd::kernels_in_use();
    // Chunks small enough that the threads finish together, large enough that a chunk's
    // weights stream for a while: the row kernels prefetch within a chunk, and each new chunk
    // starts a new stream that the hardware prefetcher has to find again.
    let row_bytes = w.format.row_bytes(w.cols).max(1);
    let chunk = (CHUNK_BYTES / row_bytes)
        .min(m.div_ceil(pool.threads() * CHUNKS_PER_THREAD))
        .max(1);
    pool.for_chunks(m, chunk, &|t, range| {
        let mut prepared = rows.0[t].lock().unwrap_or_else(|e| e.into_inner());
        dot_rows_into(
            kernels,
            w.format,
            bytes,
            w.cols,
            range,
            acts,
            &mut prepared,
            &sink,
        );
    });
}

/// Weight bytes in a chunk of rows, at most. With 64 KiB chunks (and 8 per thread), two
/// threads decoded gemma at 63 to 68 tok/s and the 1 GiB Q4_K model at 14.2; with 1 MiB (and
/// 4 per thread), 77 to 81 and 16.8 to 17.0, prompts unchanged (`modelhost-worker --bench`,
/// alternated runs). One chunk per thread was as fast on gemma but slower on the Q4_K model,
/// where a thread held up by serial work leaves the other nothing to take.
const CHUNK_BYTES: usize = 1 << 20;

/// Chunks per thread, at least, on a matrix too small for `CHUNK_BYTES` chunks.
const CHUNKS_PER_THREAD: usize = 4;
