//! Attaching: check the passed descriptors against what the host validated, map them, and place
//! the assigned layers in order, reporting as it goes.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use memmap2::Mmap;
use modelhost_protocol::layers::{LayerGroup, LayerRegion};
use modelhost_protocol::placement::DeviceKind;
use modelhost_protocol::wire::{checksum64, Attach, Message, Progress, ReadyStats, WorkerPhase};

use crate::backend::Backend;

/// Progress goes out at least this often during long work (the brief asks for 100 ms).
const PROGRESS_EVERY: Duration = Duration::from_millis(50);

/// Maps one descriptor and checks it is the file the host validated.
fn map_checked(
    fd: OwnedFd,
    check: &modelhost_protocol::wire::FileCheck,
    index: usize,
) -> Result<Mmap, String> {
    let file = File::from(fd);
    let len = file
        .metadata()
        .map_err(|e| format!("file {index}: {e}"))?
        .len();
    if len != check.len {
        return Err(format!(
            "file {index} has {len} bytes, but the host validated {}",
            check.len
        ));
    }
    if len == 0 {
        return Err(format!("file {index} is empty"));
    }
    // SAFETY: a read-only shared mapping of the descriptor the host validated and passed us.
    // The host holds the same file open; in copy mode it is a sealed memfd that cannot shrink.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| format!("mapping file {index}: {e}"))?;
    let header = map.get(..check.header_len as usize).ok_or_else(|| {
        format!(
            "file {index} is shorter than its {}-byte header",
            check.header_len
        )
    })?;
    if checksum64(header) != check.header_hash {
        return Err(format!(
            "file {index}'s header does not match the hash the host sent: not the validated file"
        ));
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
fn region_slices<'m>(region: &LayerRegion, maps: &'m [Mmap]) -> Result<Vec<&'m [u8]>, String> {
    region
        .extents
        .iter()
        .map(|e| {
            let map = maps.get(usize::from(e.shard)).ok_or_else(|| {
                format!(
                    "{}: extent in shard {} but {} files were passed",
                    region.group,
                    e.shard,
                    maps.len()
                )
            })?;
            let end = e.end.min(map.len() as u64);
            if e.start > end {
                return Err(format!(
                    "{}: extent {}..{} lies outside the {}-byte file",
                    region.group,
                    e.start,
                    e.end,
                    map.len()
                ));
            }
            Ok(&map[e.start as usize..end as usize])
        })
        .collect()
}

/// Everything a successful attach holds: keep it alive while serving.
pub struct Attached {
    pub maps: Vec<Mmap>,
    pub stats: ReadyStats,
}

/// Attaches: maps the files, places the assigned regions, allocates the KV cache and scratch.
/// `report` sends Progress and LayerReady as the work goes.
pub fn attach(
    attach: &Attach,
    fds: Vec<OwnedFd>,
    backend: &mut dyn Backend,
    report: &mut dyn FnMut(Message),
) -> Result<Attached, String> {
    let started = Instant::now();
    if fds.len() != attach.files.len() {
        return Err(format!(
            "{} file descriptors arrived for {} files",
            fds.len(),
            attach.files.len()
        ));
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
    let layers_total = attach.assignment.layers.len() as u32;
    let mut done = 0u64;
    let mut layers_done = 0u32;
    let mut last_report: Option<Instant> = None;
    let progress = |phase,
                    done,
                    layers_done,
                    last: &mut Option<Instant>,
                    report: &mut dyn FnMut(Message),
                    force: bool| {
        if force || last.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) {
            *last = Some(Instant::now());
            report(Message::Progress(Progress {
                phase,
                done_bytes: done,
                total_bytes: total,
                layers_done,
                layers_total,
            }));
        }
    };
    progress(WorkerPhase::Upload, 0, 0, &mut last_report, report, true);
    for (region, slices) in pieces {
        for slice in slices {
            backend
                .place(slice, &attach.options, &mut |n| {
                    done += n;
                    progress(
                        WorkerPhase::Upload,
                        done,
                        layers_done,
                        &mut last_report,
                        report,
                        false,
                    );
                })
                .map_err(|e| format!("{}: {e}", region.group))?;
        }
        if let LayerGroup::Block(layer) = region.group {
            layers_done += 1;
            report(Message::LayerReady { layer });
        }
    }
    progress(
        WorkerPhase::Upload,
        done,
        layers_done,
        &mut last_report,
        report,
        true,
    );
    let a = &attach.assignment;
    let kv_progress = |done, last: &mut Option<Instant>, report: &mut dyn FnMut(Message), force| {
        if force || last.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) {
            *last = Some(Instant::now());
            report(Message::Progress(Progress {
                phase: WorkerPhase::Kv,
                done_bytes: done,
                total_bytes: a.kv_bytes,
                layers_done,
                layers_total,
            }));
        }
    };
    kv_progress(0, &mut last_report, report, true);
    let mut cleared = 0u64;
    backend
        .allocate_kv(a.kv_bytes, &mut |n| {
            cleared += n;
            kv_progress(cleared, &mut last_report, report, false);
        })
        .map_err(|e| e.to_string())?;
    backend
        .reserve_scratch(a.scratch_bytes)
        .map_err(|e| e.to_string())?;
    kv_progress(a.kv_bytes, &mut last_report, report, true);
    Ok(Attached {
        maps,
        stats: ReadyStats {
            weights_bytes: backend.weights_bytes(),
            kv_bytes: a.kv_bytes,
            scratch_bytes: a.scratch_bytes,
            elapsed_ms: started.elapsed().as_millis() as u64,
        },
    })
}
