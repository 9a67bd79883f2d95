//! The KV cache: for every layer, keys and values per sequence slot, in the buffer the worker
//! allocated at attach (f16 by default, as in llama.cpp, or f32).
//!
//! Global layers keep a cell per position of a slot's context. Sliding-window layers keep a ring
//! of cells (position `p` in cell `p % cells`) just large enough for the window plus one chunk
//! of new tokens, so a step never overwrites a key that one of its own queries still needs.

use modelhost_protocol::arch::ArchParams;

use crate::error::{BuildError, StepError};
use crate::f16::f32_row_to_f16;

/// How keys and values are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvType {
    F16,
    F32,
}

impl KvType {
    pub fn bytes(self) -> u64 {
        match self {
            KvType::F16 => 2,
            KvType::F32 => 4,
        }
    }

    pub fn from_name(name: &str) -> Result<KvType, BuildError> {
        match name {
            "f16" => Ok(KvType::F16),
            "f32" => Ok(KvType::F32),
            other => Err(BuildError::KvType(other.to_owned())),
        }
    }
}

/// The cells of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerCells {
    /// Cells per slot.
    pub cells: u32,
    /// The window, for a sliding-window layer.
    pub window: Option<u32>,
}

/// The cache's shape: what the planner sized, read back the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvLayout {
    pub slots: u32,
    pub context: u32,
    pub layers: Vec<LayerCells>,
    kv_heads: u32,
    key_length: u32,
    value_length: u32,
}

impl KvLayout {
    /// The layout for `slots` sequences of `context` tokens with steps of at most `batch`
    /// tokens. Sliding-window layers get the planner's cells (`window · slots + batch`, padded
    /// to 256, at most the whole context) shared out per slot; with `swa_full` they keep the
    /// whole context like the others.
    pub fn new(p: &ArchParams, context: u32, slots: u32, batch: u32, swa_full: bool) -> KvLayout {
        let slots = slots.max(1);
        let layers = p
            .swa_layers
            .iter()
            .map(
                |&windowed| match (windowed && !swa_full, p.sliding_window) {
                    (true, Some(window)) => {
                        let total = (u64::from(window) * u64::from(slots) + u64::from(batch))
                            .next_multiple_of(256)
                            .min(u64::from(context) * u64::from(slots));
                        let cells = (total / u64::from(slots)) as u32;
                        LayerCells {
                            cells,
                            window: (cells < context).then_some(window),
                        }
                    }
                    _ => LayerCells {
                        cells: context,
                        window: None,
                    },
                },
            )
            .collect();
        KvLayout {
            slots,
            context,
            layers,
            kv_heads: p.head_count_kv,
            key_length: p.key_length,
            value_length: p.value_length,
        }
    }

    fn layer_elements(&self, l: usize) -> (usize, usize) {
        let cells = self.slots as usize * self.layers[l].cells as usize;
        let heads = self.kv_heads as usize;
        (
            cells * heads * self.key_length as usize,
            cells * heads * self.value_length as usize,
        )
    }

    /// Bytes the cache takes in `ty`.
    pub fn bytes(&self, ty: KvType) -> u64 {
        (0..self.layers.len())
            .map(|l| {
                let (k, v) = self.layer_elements(l);
                (k + v) as u64 * ty.bytes()
            })
            .sum()
    }

    /// The most tokens one slot may add in a step: a sliding-window ring must keep the window
    /// of the step's first token while it writes the step's last.
    pub fn chunk_limit(&self) -> u32 {
        self.layers
            .iter()
            .filter_map(|l| l.window.map(|w| l.cells + 1 - w.min(l.cells)))
            .min()
            .unwrap_or(self.context)
            .max(1)
    }
}

/// Keys and values of one layer, in f16 or f32.
enum Store<'b> {
    F16 { k: &'b mut [u16], v: &'b mut [u16] },
    F32 { k: &'b mut [f32], v: &'b mut [f32] },
}

/// One key or value row.
#[derive(Clone, Copy)]
pub enum KvRow<'a> {
    F16(&'a [u16]),
    F32(&'a [f32]),
}

/// The cache.
pub struct KvCache {
    layout: KvLayout,
    ty: KvType,
    buffer: Vec<u64>,
    /// Element offsets of each layer's keys and values in the buffer.
    offsets: Vec<(usize, usize)>,
    /// Tokens held per slot.
    lens: Vec<u32>,
}

impl KvCache {
    /// A cache over `buffer` (the worker's KV allocation, zeroed), which must hold the layout.
    pub fn new(layout: KvLayout, ty: KvType, buffer: Vec<u64>) -> Result<KvCache, BuildError> {
        let needed = layout.bytes(ty);
        let given = buffer.len() as u64 * 8;
        if needed > given {
            return Err(BuildError::KvTooSmall { needed, given });
        }
        let mut offsets = Vec::with_capacity(layout.layers.len());
        let mut at = 0usize;
        for l in 0..layout.layers.len() {
            let (k, v) = layout.layer_elements(l);
            offsets.push((at, at + k));
            at += k + v;
        }
        Ok(KvCache {
            lens: vec![0; layout.slots as usize],
            layout,
            ty,
            buffer,
            offsets,
        })
    }

    /// An owned, zeroed buffer for `layout` (for tests and the bench).
    pub fn allocate(layout: KvLayout, ty: KvType) -> Result<KvCache, BuildError> {
        let words = layout.bytes(ty).div_ceil(8) as usize;
        KvCache::new(layout, ty, vec![0u64; words])
    }

    pub fn layout(&self) -> &KvLayout {
        &self.layout
    }

    pub fn kv_type(&self) -> KvType {
        self.ty
    }

    /// Bytes of the buffer.
    pub fn bytes(&self) -> u64 {
        self.buffer.len() as u64 * 8
    }

    pub fn len(&self, slot: u32) -> u32 {
        self.lens[slot as usize]
    }

    pub fn set_len(&mut self, slot: u32, len: u32) {
        self.lens[slot as usize] = len;
    }

    /// Forgets everything slot `slot` holds.
    pub fn clear(&mut self, slot: u32) -> Result<(), StepError> {
        self.check_slot(slot)?;
        self.lens[slot as usize] = 0;
        Ok(())
    }

    /// Keeps the first `keep` tokens of slot `slot`, where the cache still holds what they
    /// need: a sliding-window ring may have overwritten the window of an old position. Returns
    /// the length kept: `keep` (at most the length held), or 0 when the window is gone.
    pub fn truncate(&mut self, slot: u32, keep: u32) -> Result<u32, StepError> {
        self.check_slot(slot)?;
        let len = self.lens[slot as usize];
        let keep = keep.min(len);
        let lost = self.layout.layers.iter().any(|l| match l.window {
            // Positions up to len - 1 - cells have been overwritten; `keep` needs the window
            // before it, from keep - window.
            Some(w) => len > l.cells && (keep + 1).saturating_sub(w) <= len - 1 - l.cells,
            None => false,
        });
        let kept = if lost && keep > 0 { 0 } else { keep };
        self.lens[slot as usize] = kept;
        Ok(kept)
    }

    pub fn check_slot(&self, slot: u32) -> Result<(), StepError> {
        if slot >= self.layout.slots {
            return Err(StepError::NoSuchSlot {
                slot,
                slots: self.layout.slots,
            });
        }
        Ok(())
    }

    /// Where `slot`'s cells of KV head 0 start in layer `layer`, counted in cells, and the
    /// cell of `pos` among them (see [`LayerView`] for the layout).
    fn cell(&self, layer: usize, slot: u32, pos: u32) -> (usize, usize) {
        let cells = self.layout.layers[layer].cells;
        let cell = if self.layout.layers[layer].window.is_some() {
            pos % cells
        } else {
            pos
        };
        let heads = self.layout.kv_heads as usize;
        (slot as usize * heads * cells as usize, cell as usize)
    }

    fn store(&mut self, layer: usize) -> Store<'_> {
        let (k_at, v_at) = self.offsets[layer];
        let (k_len, v_len) = self.layout.layer_elements(layer);
        match self.ty {
            KvType::F16 => {
                // SAFETY: u64 storage viewed as u16: any bit pattern is a valid u16, and u64's
                // alignment satisfies u16's.
                let all = unsafe { self.buffer.align_to_mut::<u16>().1 };
                debug_assert_eq!(v_at, k_at + k_len);
                let (k, rest) = all[k_at..].split_at_mut(k_len);
                Store::F16 {
                    k,
                    v: &mut rest[..v_len],
                }
            }
            KvType::F32 => {
                // SAFETY: as above, for f32.
                let all = unsafe { self.buffer.align_to_mut::<f32>().1 };
                let (k, rest) = all[k_at..].split_at_mut(k_len);
                Store::F32 {
                    k,
                    v: &mut rest[..v_len],
                }
            }
        }
    }

    /// Stores the keys and values (all KV heads) of `slot`'s token at `pos` in layer `layer`.
    pub fn write(&mut self, layer: usize, slot: u32, pos: u32, k: &[f32], v: &[f32]) {
        let (base, cell) = self.cell(layer, slot, pos);
        let cells = self.layout.layers[layer].cells as usize;
        let (dk, dv) = (
            self.layout.key_length as usize,
            self.layout.value_length as usize,
        );
        match self.store(layer) {
            Store::F16 { k: ks, v: vs } => {
                for (h, (kh, vh)) in k.chunks_exact(dk).zip(v.chunks_exact(dv)).enumerate() {
                    let at = base + h * cells + cell;
                    f32_row_to_f16(kh, &mut ks[at * dk..(at + 1) * dk]);
                    f32_row_to_f16(vh, &mut vs[at * dv..(at + 1) * dv]);
                }
            }
            Store::F32 { k: ks, v: vs } => {
                for (h, (kh, vh)) in k.chunks_exact(dk).zip(v.chunks_exact(dv)).enumerate() {
                    let at = base + h * cells + cell;
                    ks[at * dk..(at + 1) * dk].copy_from_slice(kh);
                    vs[at * dv..(at + 1) * dv].copy_from_slice(vh);
                }
            }
        }
    }

    /// Read access to one layer, for attention.
    pub fn layer(&self, layer: usize) -> LayerView<'_> {
        let (k_at, v_at) = self.offsets[layer];
        let (k_len, v_len) = self.layout.layer_elements(layer);
        let (keys, values) = match self.ty {
            KvType::F16 => {
                // SAFETY: as in `store`.
                let all = unsafe { self.buffer.align_to::<u16>().1 };
                (
                    KvRow::F16(&all[k_at..k_at + k_len]),
                    KvRow::F16(&all[v_at..v_at + v_len]),
                )
            }
            KvType::F32 => {
                // SAFETY: as in `store`.
                let all = unsafe { self.buffer.align_to::<f32>().1 };
                (
                    KvRow::F32(&all[k_at..k_at + k_len]),
                    KvRow::F32(&all[v_at..v_at + v_len]),
                )
            }
        };
        LayerView {
            keys,
            values,
            cells: self.layout.layers[layer],
            kv_heads: self.layout.kv_heads as usize,
            key_length: self.layout.key_length as usize,
            value_length: self.layout.value_length as usize,
        }
    }
}

/// One layer's keys and values. Each slot holds its cells head by head: KV head `h`'s key
/// (or value) for cell `c` of slot `s` is row `(s · heads + h) · cells + c`, so that the
/// keys one query head reads over its context are one contiguous stream. (With the heads of a
/// cell side by side instead, each key was a row apart by all the heads' width, a new page
/// every few keys: the hardware prefetcher stopped at each, and decoding the 1 GiB Q4_K
/// model after a 512-token prompt ran at 5.6 to 6.8 tok/s against 8.0 to 9.2 after 16.)
pub struct LayerView<'a> {
    keys: KvRow<'a>,
    values: KvRow<'a>,
    pub cells: LayerCells,
    kv_heads: usize,
    key_length: usize,
    value_length: usize,
}

impl LayerView<'_> {
    /// The width of one key head.
    pub fn key_length(&self) -> usize {
        self.key_length
    }

    /// The row of head `head`'s key or value at `slot`, `pos`.
    fn index(&self, slot: u32, pos: u32, head: usize) -> usize {
        let cells = self.cells.cells as usize;
        let cell = match self.cells.window {
            Some(_) => pos % self.cells.cells,
            None => pos,
        };
        (slot as usize * self.kv_heads + head) * cells + cell as usize
    }

    /// The key of head `head` at `slot`, `pos`.
    pub fn key(&self, slot: u32, pos: u32, head: usize) -> KvRow<'_> {
        let at = self.index(slot, pos, head) * self.key_length;
        match self.keys {
            KvRow::F16(k) => KvRow::F16(&k[at..at + self.key_length]),
            KvRow::F32(k) => KvRow::F32(&k[at..at + self.key_length]),
        }
    }

    /// The value of head `head` at `slot`, `pos`.
    pub fn value(&self, slot: u32, pos: u32, head: usize) -> KvRow<'_> {
        let at = self.index(slot, pos, head) * self.value_length;
        match self.values {
            KvRow::F16(v) => KvRow::F16(&v[at..at + self.value_length]),
            KvRow::F32(v) => KvRow::F32(&v[at..at + self.value_length]),
        }
    }

    /// The first position a query at `pos` may attend to.
    pub fn first_visible(&self, pos: u32) -> u32 {
        match self.cells.window {
            Some(w) => (pos + 1).saturating_sub(w),
            None => 0,
        }
    }
}
