//! modelhost's CUDA path on a machine without a GPU, against the stand-in libcuda
//! (`tests/fixtures/standin-libcuda.c`): device memory in host memory, with modelhost's side of
//! the driver's contract checked and counted. These tests cover the code that no CI machine
//! could otherwise run (the inventory, the backend's allocations, both upload paths, a full
//! device) and say nothing about a real GPU; `scripts/gpu-check.sh` does that on one.
//!
//! The stand-in is found through `LD_LIBRARY_PATH`, which a process reads when it starts. So the
//! backend test runs its body in a child copy of this test executable, and the end-to-end test
//! gives it to the host, whose workers inherit it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use modelhost_protocol::placement::DeviceId;
use modelhost_protocol::wire::{checksum64, WorkerOptions};
use modelhost_tests::daemon::{Daemon, DaemonOptions};
use modelhost_tests::http::{get, request};
use modelhost_tests::models::{load_on_device, ready_with, wait_for};
use modelhost_tests::standin_cuda::{counter, library_dir, trace};
use modelhost_tests::{gemma_model, Scratch};
use modelhost_worker::backend::cuda::CudaBackend;
use modelhost_worker::backend::{Backend, BackendError};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

/// Set in the child that runs a test's body with the stand-in loaded.
const INNER: &str = "MODELHOST_STANDIN_INNER";
/// The stand-in's device memory, in bytes.
const DEVICE_BYTES: u64 = 2 << 30;

/// Runs `test` again in a child process with the stand-in first in `LD_LIBRARY_PATH`, and fails
/// if the child fails. Returns true in the child, where the body should run.
fn in_child_with_standin(test: &str, trace_dir: &Path) -> bool {
    if std::env::var_os(INNER).is_some() {
        return true;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads", "1"])
        .env(INNER, "1")
        .env("LD_LIBRARY_PATH", library_dir())
        .env("STANDIN_CUDA_TRACE", trace_dir)
        .env("STANDIN_CUDA_MEM", DEVICE_BYTES.to_string())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "the body of {test}, with the stand-in:\n{text}"
    );
    println!("{text}");
    false
}

/// A read-only shared mapping of a file of pseudo-random bytes, as a worker maps a model.
fn file_mapping(path: &Path, len: usize) -> memmap2::Mmap {
    let mut file = std::fs::File::create(path).unwrap();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let bytes: Vec<u8> = (0..len.div_ceil(8))
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .take(len)
        .collect();
    file.write_all(&bytes).unwrap();
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: the file is this test's own and nobody changes it while it is mapped.
    unsafe { memmap2::Mmap::map(&file) }.unwrap()
}

fn own_trace(dir: &Path) -> BTreeMap<String, String> {
    trace(dir, u64::from(std::process::id()))
}

#[test]
fn the_cuda_backend_keeps_the_driver_contract() {
    let dir = Scratch::new("standin-backend");
    if !in_child_with_standin("the_cuda_backend_keeps_the_driver_contract", &dir.0) {
        return;
    }
    // In the child: the stand-in writes its trace where the parent said.
    let traces = std::path::PathBuf::from(std::env::var_os("STANDIN_CUDA_TRACE").unwrap());
    // Not a multiple of the piece, the 16 MiB staging buffer or the 64 MiB registered step.
    const PIECE: usize = (24 << 20) + 4096;
    let len = (100 << 20) + 12345;
    let map = file_mapping(&dir.path("weights"), len);
    let pieces = map.chunks(PIECE).count() as u64;
    let full_stages: u64 = map
        .chunks(PIECE)
        .map(|p| (p.len() / (16 << 20)) as u64)
        .sum();

    for registered in [false, true] {
        let before = own_trace_or_empty(&traces);
        let mut backend = CudaBackend::new(DeviceId::cuda(0)).expect("the stand-in device");
        let options = WorkerOptions {
            registered_upload: registered,
            ..Default::default()
        };
        let mut reported = 0u64;
        for piece in map.chunks(PIECE) {
            backend
                .place(piece, &options, &mut |n| reported += n)
                .unwrap();
        }
        assert_eq!(
            reported, len as u64,
            "progress adds up (registered={registered})"
        );
        assert_eq!(backend.weights_bytes(), len as u64);
        let back = backend.read_back().unwrap().concat();
        assert_eq!(
            checksum64(&back),
            checksum64(&map),
            "the bytes arrived in order (registered={registered})"
        );
        let after = own_trace(&traces);
        let delta = |key: &str| counter(&after, key) - before.get(key).copied().unwrap_or(0);
        if registered {
            assert_eq!(delta("htod_registered"), len as u64, "{after:?}");
            assert_eq!(
                delta("htod_pinned") + delta("htod_pageable"),
                0,
                "{after:?}"
            );
            assert_eq!(delta("registrations"), pieces, "one registration per piece");
            assert_eq!(delta("unregistrations"), pieces, "each one undone");
            assert_eq!(delta("read_only_registrations"), pieces, "all read-only");
        } else {
            assert_eq!(delta("htod_registered"), 0, "{after:?}");
            assert_eq!(
                delta("htod_pinned"),
                full_stages * (16 << 20),
                "full chunks go through the pinned buffers"
            );
            assert_eq!(
                delta("htod_pinned") + delta("htod_pageable"),
                len as u64,
                "{after:?}"
            );
        }
    }

    let mut backend = CudaBackend::new(DeviceId::cuda(0)).unwrap();
    let mut cleared = Vec::new();
    backend
        .allocate_kv((1 << 30) + 4096, &mut |n| cleared.push(n))
        .unwrap();
    assert_eq!(cleared, [1 << 30, 4096], "KV progress in steps");
    let allocs = counter(&own_trace(&traces), "allocs");
    backend.reserve_scratch(0).unwrap();
    backend
        .place(&[], &WorkerOptions::default(), &mut |_| {})
        .unwrap();
    assert_eq!(
        counter(&own_trace(&traces), "allocs"),
        allocs,
        "nothing is allocated for zero bytes"
    );
    let full = backend.allocate_kv(DEVICE_BYTES, &mut |_| {}).unwrap_err();
    assert!(
        matches!(full, BackendError::OutOfMemory { what: "KV cache", bytes } if bytes == DEVICE_BYTES),
        "a full device is OutOfMemory: {full}"
    );
    assert_eq!(
        full.to_string(),
        format!("out of memory allocating {DEVICE_BYTES} bytes for the KV cache")
    );
    let end = own_trace(&traces);
    assert_eq!(counter(&end, "violations"), 0, "{end:?}");
}

fn own_trace_or_empty(dir: &Path) -> BTreeMap<String, u64> {
    let path = dir.join(format!("{}.trace", std::process::id()));
    if !path.exists() {
        return BTreeMap::new();
    }
    own_trace(dir)
        .into_iter()
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect()
}

#[test]
fn a_host_runs_cuda_workers_on_the_standin_driver() {
    let dir = Scratch::new("standin-host");
    let traces = dir.path("traces");
    std::fs::create_dir_all(&traces).unwrap();
    let daemon = Daemon::start(
        &dir.path("control.sock"),
        DaemonOptions {
            env: vec![
                ("LD_LIBRARY_PATH", library_dir().display().to_string()),
                ("STANDIN_CUDA_TRACE", traces.display().to_string()),
                ("STANDIN_CUDA_MEM", DEVICE_BYTES.to_string()),
                ("STANDIN_CUDA_DEVICES", "2".into()),
            ],
            ..Default::default()
        },
    );
    let socket = &daemon.socket;

    // `cuda:0` with no size: the host asks the driver for the device's free memory.
    for (name, registered) in [("staged", false), ("registered", true)] {
        load_on_device(
            socket,
            &gemma_model(),
            name,
            "cuda:0",
            json!({ "worker_options": { "registered_upload": registered } }),
        );
        let model = wait_for(socket, name, "a ready CUDA worker", |m| ready_with(m, 1));
        // The budget is the driver's free memory less the 512 MiB reserve.
        let plan = &model["plan"]["replicas"][0]["devices"][0];
        assert_eq!(
            plan["budget_bytes"].as_u64(),
            Some(DEVICE_BYTES - (512 << 20)),
            "planned from the driver's free memory: {plan}"
        );
        let worker = &model["workers"][0];
        assert_eq!(worker["device"], "cuda:0");
        assert_eq!(worker["layers_ready"], 18, "{worker}");
        let weights = worker["weights_bytes"].as_u64().unwrap();
        let pid = worker["pid"].as_u64().unwrap();
        let t = trace(&traces, pid);
        assert_eq!(counter(&t, "violations"), 0, "{t:?}");
        if registered {
            assert_eq!(counter(&t, "htod_registered"), weights, "{t:?}");
            assert_eq!(counter(&t, "htod_pinned") + counter(&t, "htod_pageable"), 0);
            assert_eq!(
                counter(&t, "registrations"),
                counter(&t, "unregistrations"),
                "{t:?}"
            );
        } else {
            assert_eq!(counter(&t, "htod_registered"), 0, "{t:?}");
            assert_eq!(
                counter(&t, "htod_pinned") + counter(&t, "htod_pageable"),
                weights,
                "{t:?}"
            );
        }
        println!("{name}: worker {pid} uploaded {weights} bytes through the stand-in: {t:?}");
    }

    // Split mode: one instance across both devices, a worker per device with its own blocks.
    load_on_device(
        socket,
        &gemma_model(),
        "split",
        "cuda:0",
        json!({ "devices": ["cuda:0", "cuda:1"],
                "placement": { "ctx": 4096, "mode": "split" } }),
    );
    let split = wait_for(socket, "split", "two ready CUDA workers", |m| {
        ready_with(m, 2)
    });
    let workers = split["workers"].as_array().unwrap();
    let devices: Vec<&str> = workers
        .iter()
        .filter_map(|w| w["device"].as_str())
        .collect();
    assert_eq!(devices, ["cuda:0", "cuda:1"], "{split}");
    let blocks: Vec<u64> = workers
        .iter()
        .filter_map(|w| w["layers"].as_u64())
        .collect();
    assert_eq!(
        blocks.iter().sum::<u64>(),
        18,
        "the blocks are split: {blocks:?}"
    );
    assert!(
        blocks.iter().all(|b| *b > 0),
        "both devices hold blocks: {blocks:?}"
    );
    for w in workers {
        let t = trace(&traces, w["pid"].as_u64().unwrap());
        assert_eq!(counter(&t, "violations"), 0, "{t:?}");
        // gemma's blocks are 4 MiB, under one staging buffer: the driver stages them itself.
        assert_eq!(
            counter(&t, "htod_pinned") + counter(&t, "htod_pageable"),
            w["weights_bytes"].as_u64().unwrap(),
            "{w} uploaded its blocks: {t:?}"
        );
    }

    // The daemon asked a worker process about the devices: it never loaded the driver itself,
    // and one query served each load, the split one's two devices included.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", daemon.pid())).unwrap();
    assert!(
        !maps.contains("libcuda"),
        "the host process has the CUDA driver loaded"
    );
    assert!(!traces.join(format!("{}.trace", daemon.pid())).exists());
    let queries = std::fs::read_dir(&traces)
        .unwrap()
        .filter_map(|e| {
            let pid = e
                .ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".trace")?
                .parse()
                .ok()?;
            Some(trace(&traces, pid))
        })
        .filter(|t| counter(t, "allocs") == 0)
        .count();
    assert_eq!(
        queries, 3,
        "one device query per load (staged, registered, split)"
    );

    // kill -9: the supervisor restarts the CUDA worker, which uploads again.
    let before = get(socket, "/v1/models/staged").json();
    let victim = before["workers"][0]["pid"].as_u64().unwrap();
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    let after = wait_for(socket, "staged", "the restarted CUDA worker", |m| {
        ready_with(m, 1) && m["workers"][0]["pid"].as_u64() != Some(victim)
    });
    assert_eq!(after["workers"][0]["restarts"], 1);

    // A plan for a bigger card than the device has: the KV allocation meets a full device, the
    // worker fails with that, and the host goes on serving the others.
    load_on_device(
        socket,
        &gemma_model(),
        "toolarge",
        "cuda:0=64GiB",
        json!({ "placement": { "ctx": 32768, "parallel": 32, "mode": "replicate" } }),
    );
    let failed = wait_for(socket, "toolarge", "the worker to fail", |m| {
        m["workers"][0]["state"] == "failed"
    });
    let error = failed["workers"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("out of memory allocating") && error.contains("for the KV cache"),
        "{error}"
    );
    for (name, n) in [("staged", 1), ("registered", 1), ("split", 2)] {
        let model = get(socket, &format!("/v1/models/{name}")).json();
        assert!(ready_with(&model, n), "{name} kept serving: {model}");
    }
}

#[test]
fn a_hung_driver_costs_one_load_its_answer_not_the_host() {
    let dir = Scratch::new("standin-hang");
    let daemon = standin_daemon(
        &dir,
        "device_query_timeout_ms = 300\n",
        ("STANDIN_CUDA_HANG_INIT", "1"),
    );
    let socket = &daemon.socket;
    let steady = json!({ "path": gemma_model(), "name": "steady" });
    modelhost_tests::models::load(socket, &steady);

    let started = std::time::Instant::now();
    let body = json!({
        "path": gemma_model(), "name": "on-gpu", "spawn_workers": true, "devices": ["cuda:0"],
    });
    let response = request(socket, "POST", "/v1/models", Some(&body));
    let elapsed = started.elapsed();
    let error: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(response.status, 422, "{error}");
    assert_eq!(error["error"]["code"], "device_unavailable", "{error}");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("cuda:0: the CUDA driver did not answer within 300 ms"),
        "{message}"
    );
    assert!(
        elapsed < std::time::Duration::from_secs(5),
        "the refusal took {elapsed:?}"
    );

    // The hung query was killed, and the host serves on.
    let host = daemon.pid().to_string();
    let leftovers: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let parent = status.lines().find_map(|l| l.strip_prefix("PPid:"))?.trim();
            let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
            (parent == host && cmdline.contains("--inventory")).then(|| format!("{pid}"))
        })
        .collect();
    assert!(
        leftovers.is_empty(),
        "device queries left running: {leftovers:?}"
    );
    assert_eq!(get(socket, "/healthz").status, 200);
    let steady = get(socket, "/v1/models/steady").json();
    assert_eq!(steady["state"], "ready", "{steady}");
    assert_eq!(
        get(socket, "/v1/models/on-gpu").status,
        404,
        "the refused load left nothing behind"
    );
}

/// A host with the stand-in driver, `extra_env` added, and `config` as its config file.
fn standin_daemon(dir: &Scratch, config: &str, extra_env: (&'static str, &str)) -> Daemon {
    let config_path = dir.path("config.toml");
    std::fs::write(&config_path, config).unwrap();
    Daemon::start(
        &dir.path("control.sock"),
        DaemonOptions {
            config: Some(&config_path),
            env: vec![
                ("LD_LIBRARY_PATH", library_dir().display().to_string()),
                (extra_env.0, extra_env.1.to_owned()),
            ],
            ..Default::default()
        },
    )
}

#[test]
fn a_slow_driver_start_is_waited_for() {
    // 3.5 s in cuInit, before the worker's Hello: longer than the 3 s heartbeat timeout, as a
    // machine without persistence mode can take.
    let dir = Scratch::new("standin-slow");
    let daemon = standin_daemon(&dir, "", ("STANDIN_CUDA_INIT_MS", "3500"));
    load_on_device(
        &daemon.socket,
        &gemma_model(),
        "slow",
        "cuda:0=2GiB",
        json!({}),
    );
    let model = wait_for(&daemon.socket, "slow", "the slow worker", |m| {
        ready_with(m, 1)
    });
    assert_eq!(model["workers"][0]["restarts"], 0, "{model}");
    assert!(model["workers"][0]["ready_ms"].as_u64().unwrap() >= 3500);
}

#[test]
fn a_worker_hung_in_the_driver_is_named_and_given_up() {
    let dir = Scratch::new("standin-hung-worker");
    let daemon = standin_daemon(
        &dir,
        "worker_start_timeout_ms = 300\n",
        ("STANDIN_CUDA_HANG_INIT", "1"),
    );
    load_on_device(
        &daemon.socket,
        &gemma_model(),
        "hung",
        "cuda:0=2GiB",
        json!({}),
    );
    let model = wait_for(&daemon.socket, "hung", "the worker to fail", |m| {
        m["workers"][0]["state"] == "failed"
    });
    let error = model["workers"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("no Hello within 300ms of starting"),
        "{error}"
    );
    assert_eq!(get(&daemon.socket, "/healthz").status, 200);
}
