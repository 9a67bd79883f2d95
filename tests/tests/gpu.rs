//! The CUDA path end to end, for a machine with an NVIDIA GPU: a real host plans `cuda:0` from
//! the driver's free memory, spawns CUDA workers that upload every block (through pinned staging,
//! then from the registered mapping), restarts one after `kill -9`, and reports a device too
//! small for its plan as out of memory while it keeps serving. Ignored elsewhere; run with
//! `scripts/gpu-check.sh`.
//!
//! The model is synthetic (`modelhost synth`), so the test needs nothing from the network.

use std::time::Instant;

use modelhost_tests::daemon::{Daemon, DaemonOptions};
use modelhost_tests::http::{get, request};
use modelhost_tests::models::{load_on_device, ready_with, wait_for};
use modelhost_tests::{modelhost_ok, Scratch};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

fn worker(model: &Value) -> &Value {
    &model["workers"][0]
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn cuda_workers_upload_every_block_restart_and_report_a_full_device() {
    let dir = Scratch::new("gpu");
    let model = dir.path("synth-2g.gguf");
    modelhost_ok(&[
        "synth",
        "--out",
        model.to_str().unwrap(),
        "--size",
        "2GiB",
        "--types",
        "q4_k,q8_0,f16",
        "--ctx",
        "1048576",
    ]);
    let daemon = Daemon::start(&dir.path("control.sock"), DaemonOptions::default());
    let socket = &daemon.socket;

    for (name, registered) in [("staged", false), ("registered", true)] {
        let started = Instant::now();
        load_on_device(
            socket,
            &model,
            name,
            "cuda:0",
            json!({ "worker_options": { "registered_upload": registered } }),
        );
        let loaded = wait_for(socket, name, "a ready CUDA worker", |m| ready_with(m, 1));
        let w = worker(&loaded);
        assert_eq!(w["device"], "cuda:0", "{w}");
        let blocks = loaded["hyper_params"]["block_count"].as_u64().unwrap();
        assert_eq!(w["layers"], blocks, "every block fits on the GPU: {w}");
        assert_eq!(w["layers_ready"], blocks, "{w}");
        let weights = w["weights_bytes"].as_u64().unwrap();
        assert!(weights > 1 << 30, "the blocks' weights are on the GPU: {w}");
        assert!(w["kv_bytes"].as_u64().unwrap() > 0, "{w}");
        println!(
            "{name}: {blocks} blocks, {weights} bytes of weights on cuda:0; worker Ready in {} ms \
             ({:?} from the load request)",
            w["ready_ms"],
            started.elapsed()
        );
    }

    // A killed CUDA worker comes back from the pages in memory and uploads again.
    let before = wait_for(socket, "staged", "ready", |m| ready_with(m, 1));
    let victim = worker(&before)["pid"].as_u64().unwrap();
    let killed_at = Instant::now();
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    let after = wait_for(socket, "staged", "the restarted CUDA worker", |m| {
        ready_with(m, 1) && worker(m)["pid"].as_u64() != Some(victim)
    });
    assert_eq!(worker(&after)["restarts"], 1);
    println!(
        "restart: Ready {:?} after kill -9 (worker ready_ms {})",
        killed_at.elapsed(),
        worker(&after)["ready_ms"]
    );

    // A plan for a far larger card than this one: the worker's KV allocation meets a full device,
    // says so, and the host keeps serving the other models.
    load_on_device(
        socket,
        &model,
        "toolarge",
        "cuda:0=4096GiB",
        json!({ "placement": { "ctx": 1048576, "parallel": 2, "mode": "replicate" } }),
    );
    let failed = wait_for(socket, "toolarge", "a failed worker", |m| {
        worker(m)["state"] == "failed"
    });
    let error = worker(&failed)["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("out of memory allocating") && error.contains("KV cache"),
        "a full device is named as such: {error}"
    );
    println!("full device: {error}");
    for name in ["staged", "registered"] {
        let model = get(socket, &format!("/v1/models/{name}")).json();
        assert!(ready_with(&model, 1), "{name} kept serving: {model}");
    }

    // Unloading stops the workers, and their device memory goes with them.
    for name in ["staged", "registered", "toolarge"] {
        let response = request(
            socket,
            "DELETE",
            &format!("/v1/models/{name}?force=true"),
            None,
        );
        assert_eq!(response.status, 200, "{name}");
    }
}
