//! `out = x · Wᵀ` for a batch of activation rows: the rows of `W` are split over the compute
//! threads; each thread prepares a weight row once and takes its dot product with every
//! activation row, so each weight byte is read once per step whatever the batch.

use std::sync::Mutex;

use crate::pool::{Pool, SharedOut};
use crate::quant::{dot_rows, PreparedRow, QuantizedActs};
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
    let ptr = SharedOut::new(out);
    let threads = pool.threads().min(m.max(1));
    pool.run(&|t| {
        if t >= threads {
            return;
        }
        let mut prepared = rows.0[t].lock().unwrap_or_else(|e| e.into_inner());
        let range = m * t / threads..m * (t + 1) / threads;
        dot_rows(
            w.format,
            bytes,
            w.cols,
            range,
            acts,
            &mut prepared,
            |j, r, value| {
                debug_assert!(j < n && r < m);
                // SAFETY: j · m + r < n · m <= out.len(), and row r belongs to this thread alone,
                // so no other thread writes this element.
                unsafe { *ptr.at(j * m + r) = value };
            },
        );
    });
}
