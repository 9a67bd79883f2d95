//! CUDA backend checks for a machine with an NVIDIA GPU. Ignored elsewhere; run them with
//! `scripts/gpu-check.sh` (or `cargo test -p modelhost-worker --test gpu -- --ignored`).

use std::time::Instant;

use modelhost_protocol::placement::DeviceId;
use modelhost_protocol::wire::{checksum64, WorkerOptions};
use modelhost_worker::backend::cuda::CudaBackend;
use modelhost_worker::backend::Backend;

/// A page-aligned buffer of pseudo-random bytes, as the shared mapping would be.
fn buffer(len: usize) -> memmap2::MmapMut {
    let mut map = memmap2::MmapMut::map_anon(len).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in map.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    map
}

fn upload(registered: bool, bytes: &[u8]) -> (CudaBackend, f64) {
    let mut backend = CudaBackend::new(DeviceId::cuda(0)).expect("a CUDA device");
    let options = WorkerOptions {
        registered_upload: registered,
        ..Default::default()
    };
    let started = Instant::now();
    backend.place(bytes, &options, &mut |_| {}).unwrap();
    let seconds = started.elapsed().as_secs_f64();
    (backend, bytes.len() as f64 / seconds / 1e9)
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn uploads_arrive_intact_on_both_paths() {
    let bytes = buffer((256 << 20) + 12345);
    for registered in [false, true] {
        let (backend, gbps) = upload(registered, &bytes);
        let back = backend.read_back().unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(
            checksum64(&back[0]),
            checksum64(&bytes),
            "registered={registered}"
        );
        println!(
            "upload ({}): {gbps:.2} GB/s",
            if registered {
                "registered mapping"
            } else {
                "pinned staging"
            }
        );
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn kv_cache_and_scratch_live_in_device_memory() {
    let mut backend = CudaBackend::new(DeviceId::cuda(0)).unwrap();
    backend.allocate_kv(1 << 30).unwrap();
    backend.reserve_scratch(256 << 20).unwrap();
    let err = backend.allocate_kv(1 << 50).unwrap_err();
    assert!(err.to_string().contains("out of memory"), "{err}");
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn upload_bandwidth_against_pinned_host_to_device() {
    use cudarc::driver::CudaContext;
    let len = 1usize << 30;
    let bytes = buffer(len);
    // The baseline: one pinned buffer copied to the device, the fastest host-to-device path.
    let ctx = CudaContext::new(0).unwrap();
    let stream = ctx.new_stream().unwrap();
    // SAFETY: filled before it is read.
    let mut pinned = unsafe { ctx.alloc_pinned::<u8>(len) }.unwrap();
    pinned.as_mut_slice().unwrap().copy_from_slice(&bytes);
    let mut device = stream.alloc_zeros::<u8>(len).unwrap();
    let started = Instant::now();
    stream.memcpy_htod(&pinned, &mut device).unwrap();
    stream.synchronize().unwrap();
    let pinned_gbps = len as f64 / started.elapsed().as_secs_f64() / 1e9;
    let (_, staged) = upload(false, &bytes);
    let (_, registered) = upload(true, &bytes);
    println!("| path | GB/s | × pinned |\n|---|---|---|");
    println!("| pinned host-to-device (baseline) | {pinned_gbps:.2} | 1.00 |");
    println!(
        "| worker, pinned staging | {staged:.2} | {:.2} |",
        staged / pinned_gbps
    );
    println!(
        "| worker, registered mapping | {registered:.2} | {:.2} |",
        registered / pinned_gbps
    );
}
