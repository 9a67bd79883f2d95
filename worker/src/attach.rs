//! Attaching: check the passed descriptors against what the host validated, map them, and place
//! the assigned layers in order, reporting as it goes.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use memmap2::Mmap;
use modelhost_protocol::layers::{LayerGroup, LayerRegion};
use modelhost_protocol::placement::DeviceKind;
use modelhost_protocol::progress::ProgressThrottle;
use modelhost_protocol::wire::{
    checksum64, Attach, FileCheck, Message, Progress, ReadyStats, WorkerPhase,
};

use crate::backend::{Backend, BackendError};

/// Why an attach failed. Each names the file (by shard index) or the layer group it concerns.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("{fds} file descriptors arrived for {files} files")]
    DescriptorCount { fds: usize, files: usize },
    #[error("file {index}: {source}")]
    Stat {
        index: usize,
        #[source]
        source: io::Error,
    },
    #[error("file {index} has {len} bytes, but the host validated {expected}")]
    WrongSize {
        index: usize,
        len: u64,
        expected: u64,
    },
    #[error("file {index} is empty")]
    Empty { index: usize },
    #[error("mapping file {index}: {source}")]
    Map {
        index: usize,
        #[source]
        source: io::Error,
    },
    #[error("file {index} is shorter than its {header_len}-byte header")]
    ShortHeader { index: usize, header_len: u64 },
    #[error("file {index}'s header does not match the hash the host sent: not the validated file")]
    HeaderMismatch { index: usize },
    #[error("{group}: extent in shard {shard} but {files} files were passed")]
    NoSuchShard {
        group: String,
        shard: u16,
        files: usize,
    },
    #[error("{group}: extent {start}..{end} lies outside the {len}-byte file")]
    ExtentOutside {
        group: String,
        start: u64,
        end: u64,
        len: u64,
    },
    /// The backend failed while placing a group's pieces.
    #[error("{group}: {source}")]
    Place {
        group: String,
        #[source]
        source: BackendError,
    },
    /// The backend failed allocating the KV cache or scratch.
    #[error(transparent)]
    Allocate(BackendError),
}

impl AttachError {
    /// The backend failure behind this error, if one is (a full device, a driver error).
    pub fn backend(&self) -> Option<&BackendError> {
        match self {
            AttachError::Place { source, .. } | AttachError::Allocate(source) => Some(source),
            _ => None,
        }
    }
}

/// Maps one descriptor and checks it is the file the host validated.
fn map_checked(fd: OwnedFd, check: &FileCheck, index: usize) -> Result<Mmap, AttachError> {
    let file = File::from(fd);
    let len = file
        .metadata()
        .map_err(|source| AttachError::Stat { index, source })?
        .len();
    if len != check.len {
        return Err(AttachError::WrongSize {
            index,
            len,
            expected: check.len,
        });
    }
    if len == 0 {
        return Err(AttachError::Empty { index });
    }
    // SAFETY: a read-only shared mapping of the descriptor the host validated and passed us.
    // The host holds the same file open; in copy mode it is a sealed memfd that cannot shrink.
    let map = unsafe { Mmap::map(&file) }.map_err(|source| AttachError::Map { index, source })?;
    modelhost_node::pages::prefer_huge_pages(&map);
    let header = usize::try_from(check.header_len)
        .ok()
        .and_then(|n| map.get(..n))
        .ok_or(AttachError::ShortHeader {
            index,
            header_len: check.header_len,
        })?;
    if checksum64(header) != check.header_hash {
        return Err(AttachError::HeaderMismatch { index });
    }
    Ok(map)
}

/// The regions this worker places, in order: for a CPU worker the token embedding first (it
/// runs the input), then the assigned blocks, then the output stage if assigned.
fn assigned_regions(attach: &Attach) -> Vec<&LayerRegion> {
    let manifest = &attach.manifest;
    let a = &attach.assignment;
    let mut regions = Vec::new();
    if a.device.kind == DeviceKind::Cpu {
        regions.extend(manifest.region(&LayerGroup::TokenEmbedding));
    }
    regions.extend(
        a.layers
            .iter()
            .filter_map(|&l| manifest.region(&LayerGroup::Block(l))),
    );
    if a.output {
        regions.extend(manifest.region(&LayerGroup::OutputNorm));
        let projection = if manifest.tied_output {
            LayerGroup::TokenEmbedding
        } else {
            LayerGroup::Output
        };
        if a.device.kind != DeviceKind::Cpu || !manifest.tied_output {
            regions.extend(manifest.region(&projection));
        }
    }
    regions
}

/// Slices of the mappings a region covers, checked against the files.
fn region_slices<'m>(region: &LayerRegion, maps: &'m [Mmap]) -> Result<Vec<&'m [u8]>, AttachError> {
    region
        .extents
        .iter()
        .map(|e| {
            let map = maps
                .get(usize::from(e.shard))
                .ok_or_else(|| AttachError::NoSuchShard {
                    group: region.group.to_string(),
                    shard: e.shard,
                    files: maps.len(),
                })?;
            let end = e.end.min(map.len() as u64);
            if e.start > end {
                return Err(AttachError::ExtentOutside {
                    group: region.group.to_string(),
                    start: e.start,
                    end: e.end,
                    len: map.len() as u64,
                });
            }
            Ok(&map[e.start as usize..end as usize])
        })
        .collect()
}

/// Everything a successful attach holds: keep it alive while serving.
pub struct Attached {
    /// The mapped files, shared with the engine that computes from them.
    pub maps: Vec<Arc<Mmap>>,
    pub stats: ReadyStats,
}

/// Sends Progress for one phase, throttled.
struct Reporter<'r> {
    report: &'r mut dyn FnMut(Message),
    throttle: ProgressThrottle,
    layers_total: u32,
}

impl Reporter<'_> {
    fn progress(&mut self, phase: WorkerPhase, done: u64, total: u64, layers: u32, force: bool) {
        if self.throttle.due(Instant::now(), force) {
            (self.report)(Message::Progress(Progress {
                phase,
                done_bytes: done,
                total_bytes: total,
                layers_done: layers,
                layers_total: self.layers_total,
            }));
        }
    }
}

/// Attaches: maps the files, places the assigned regions, allocates the KV cache and scratch.
/// `report` sends Progress and LayerReady as the work goes.
pub fn attach(
    attach: &Attach,
    fds: Vec<OwnedFd>,
    backend: &mut dyn Backend,
    report: &mut dyn FnMut(Message),
) -> Result<Attached, AttachError> {
    let started = Instant::now();
    if fds.len() != attach.files.len() {
        return Err(AttachError::DescriptorCount {
            fds: fds.len(),
            files: attach.files.len(),
        });
    }
    let maps = fds
        .into_iter()
        .zip(&attach.files)
        .enumerate()
        .map(|(i, (fd, check))| map_checked(fd, check, i))
        .collect::<Result<Vec<_>, _>>()?;

    let regions = assigned_regions(attach);
    let mut pieces = Vec::with_capacity(regions.len());
    for region in &regions {
        pieces.push((region, region_slices(region, &maps)?));
    }
    let total: u64 = pieces
        .iter()
        .flat_map(|(_, s)| s.iter())
        .map(|s| s.len() as u64)
        .sum();
    let mut reporter = Reporter {
        report,
        throttle: ProgressThrottle::new(),
        layers_total: attach.assignment.layers.len() as u32,
    };
    let upload = WorkerPhase::Upload;
    let mut done = 0u64;
    let mut layers_done = 0u32;
    reporter.progress(upload, 0, total, 0, true);
    for (region, slices) in pieces {
        for slice in slices {
            backend
                .place(slice, &attach.options, &mut |n| {
                    done += n;
                    reporter.progress(upload, done, total, layers_done, false);
                })
                .map_err(|source| AttachError::Place {
                    group: region.group.to_string(),
                    source,
                })?;
        }
        if let LayerGroup::Block(layer) = region.group {
            layers_done += 1;
            (reporter.report)(Message::LayerReady { layer });
        }
    }
    reporter.progress(upload, done, total, layers_done, true);
    let a = &attach.assignment;
    reporter.progress(WorkerPhase::Kv, 0, a.kv_bytes, layers_done, true);
    let mut cleared = 0u64;
    backend
        .allocate_kv(a.kv_bytes, &mut |n| {
            cleared += n;
            reporter.progress(WorkerPhase::Kv, cleared, a.kv_bytes, layers_done, false);
        })
        .map_err(AttachError::Allocate)?;
    backend
        .reserve_scratch(a.scratch_bytes)
        .map_err(AttachError::Allocate)?;
    reporter.progress(WorkerPhase::Kv, a.kv_bytes, a.kv_bytes, layers_done, true);
    Ok(Attached {
        maps: maps.into_iter().map(Arc::new).collect(),
        stats: ReadyStats {
            weights_bytes: backend.weights_bytes(),
            kv_bytes: a.kv_bytes,
            scratch_bytes: a.scratch_bytes,
            elapsed_ms: started.elapsed().as_millis() as u64,
            inference: Default::default(),
        },
    })
}
