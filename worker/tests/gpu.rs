//! CUDA backend checks for a machine with an NVIDIA GPU. Ignored elsewhere; run them with
//! `scripts/gpu-check.sh` (or `cargo test -p modelhost-worker --test gpu -- --ignored`).
//!
//! The weights come from a read-only shared mapping of a real file, as a worker's do, and are
//! placed in layer-sized pieces, as an attach places them.

use std::io::Write;
use std::time::Instant;

use cudarc::driver::CudaContext;
use memmap2::Mmap;
use modelhost_protocol::placement::DeviceId;
use modelhost_protocol::wire::{checksum64, WorkerOptions};
use modelhost_worker::backend::cuda::CudaBackend;
use modelhost_worker::backend::{Backend, BackendError};

/// A layer of a 7B model at Q4_K is about 100 MiB; 48 MiB keeps several pieces per GiB.
const PIECE: usize = 48 << 20;
/// A layer of gemma-3-270m.
const SMALL_PIECE: usize = 4 << 20;

/// A file of `len` pseudo-random bytes, mapped read-only and shared, its pages in memory.
fn file_mapping(name: &str, len: usize) -> Mmap {
    let path = std::env::temp_dir().join(format!("modelhost-gpu-{name}-{}", std::process::id()));
    let mut file = std::fs::File::create(&path).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let n = left.min(block.len());
        file.write_all(&block[..n]).unwrap();
        left -= n;
    }
    drop(file);
    let file = std::fs::File::open(&path).unwrap();
    // SAFETY: the file is private to this test and nobody truncates it while it is mapped.
    let map = unsafe { Mmap::map(&file) }.unwrap();
    std::fs::remove_file(&path).unwrap();
    let _ = map.advise(memmap2::Advice::WillNeed);
    let mut sum = 0u64;
    for page in map.chunks(4096) {
        sum = sum.wrapping_add(page[0] as u64);
    }
    std::hint::black_box(sum);
    map
}

fn options(registered: bool) -> WorkerOptions {
    WorkerOptions {
        registered_upload: registered,
        ..Default::default()
    }
}

/// Places `bytes` in pieces of `piece` bytes on a fresh backend; returns it and the GB/s.
fn upload(registered: bool, bytes: &[u8], piece: usize) -> (CudaBackend, f64) {
    let mut backend = CudaBackend::new(DeviceId::cuda(0)).expect("a CUDA device");
    let mut reported = 0u64;
    let started = Instant::now();
    for piece in bytes.chunks(piece) {
        backend
            .place(piece, &options(registered), &mut |n| reported += n)
            .unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(
        reported,
        bytes.len() as u64,
        "progress adds up to the bytes"
    );
    assert_eq!(backend.weights_bytes(), bytes.len() as u64);
    (backend, bytes.len() as f64 / seconds / 1e9)
}

fn path_name(registered: bool) -> &'static str {
    if registered {
        "registered mapping"
    } else {
        "pinned staging"
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn uploads_arrive_intact_on_both_paths() {
    // Not a multiple of the piece or the staging buffer: the short tails are copied too.
    let map = file_mapping("intact", (200 << 20) + 12345);
    for registered in [false, true] {
        let (backend, gbps) = upload(registered, &map, PIECE);
        let back: Vec<u8> = backend.read_back().unwrap().concat();
        assert_eq!(back.len(), map.len());
        assert_eq!(
            checksum64(&back),
            checksum64(&map),
            "{}",
            path_name(registered)
        );
        println!("upload ({}): {gbps:.2} GB/s", path_name(registered));
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn kv_cache_and_scratch_live_in_device_memory_and_a_full_device_says_so() {
    let context = CudaContext::new(0).unwrap();
    let (free, _) = context.mem_get_info().unwrap();
    let mut backend = CudaBackend::new(DeviceId::cuda(0)).unwrap();
    let mut cleared = 0;
    backend.allocate_kv(1 << 30, &mut |n| cleared += n).unwrap();
    assert_eq!(cleared, 1 << 30);
    backend.reserve_scratch(256 << 20).unwrap();
    let (after, _) = context.mem_get_info().unwrap();
    assert!(
        free - after >= (1 << 30) + (256 << 20),
        "the KV cache and scratch are device memory: free went from {free} to {after}"
    );
    let err = backend
        .allocate_kv(free as u64 + (8 << 30), &mut |_| {})
        .unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::OutOfMemory {
                what: "KV cache",
                ..
            }
        ),
        "a full device is OutOfMemory: {err}"
    );
    let empty = backend.reserve_scratch(0);
    assert!(empty.is_ok(), "no scratch is no allocation: {empty:?}");
}

/// Best of three, to keep one slow run from deciding the figure.
fn best(mut run: impl FnMut() -> f64) -> f64 {
    (0..3).map(|_| run()).fold(0.0, f64::max)
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn upload_bandwidth_against_pinned_host_to_device() {
    let len = 1usize << 30;
    let map = file_mapping("bandwidth", len);
    let ctx = CudaContext::new(0).unwrap();
    let stream = ctx.new_stream().unwrap();
    let mut device = stream.alloc_zeros::<u8>(len).unwrap();
    // The ceiling: one pinned buffer copied to the device, the fastest host-to-device path.
    // SAFETY: filled before it is read.
    let mut pinned = unsafe { ctx.alloc_pinned::<u8>(len) }.unwrap();
    pinned.as_mut_slice().unwrap().copy_from_slice(&map);
    let pinned_gbps = best(|| {
        let started = Instant::now();
        stream.memcpy_htod(&pinned, &mut device).unwrap();
        stream.synchronize().unwrap();
        len as f64 / started.elapsed().as_secs_f64() / 1e9
    });
    // What a loader without either path does: one copy from the pageable mapping.
    let pageable_gbps = best(|| {
        let started = Instant::now();
        stream.memcpy_htod(&map[..], &mut device).unwrap();
        stream.synchronize().unwrap();
        len as f64 / started.elapsed().as_secs_f64() / 1e9
    });
    drop((device, pinned));
    let staged = best(|| upload(false, &map, PIECE).1);
    let registered = best(|| upload(true, &map, PIECE).1);
    // Small layers (gemma-3-270m's are 4 MiB): each piece fits one staging buffer, so the
    // staged path hands it to the driver's pageable copy, and nothing overlaps across pieces.
    let staged_small = best(|| upload(false, &map, SMALL_PIECE).1);
    let registered_small = best(|| upload(true, &map, SMALL_PIECE).1);
    println!(
        "\n1 GiB from a file mapping, in {} MiB pieces, best of 3:",
        PIECE >> 20
    );
    println!("| path | GB/s | × pinned |\n|---|---|---|");
    println!("| pinned host-to-device (the ceiling) | {pinned_gbps:.2} | 1.00 |");
    for (name, gbps) in [
        ("pageable copy from the mapping (no staging)", pageable_gbps),
        ("worker, pinned staging", staged),
        ("worker, registered mapping", registered),
        ("worker, pinned staging, 4 MiB pieces", staged_small),
        ("worker, registered mapping, 4 MiB pieces", registered_small),
    ] {
        println!("| {name} | {gbps:.2} | {:.2} |", gbps / pinned_gbps);
    }
}
