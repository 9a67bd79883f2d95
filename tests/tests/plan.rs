//! `modelhost plan` on the real model, checked against figures computed by hand with llama.cpp's
//! rules (gemma 3: 1 KV head of 256 + 256 values per cell, 1 KiB per cell per block in f16; five
//! of every six blocks keep a 512-token window plus one 512-token batch, 1024 cells).

use modelhost_tests::{gemma_model, modelhost, modelhost_ok};
use serde_json::Value;

fn plan(args: &[&str]) -> Value {
    let model = gemma_model();
    let mut all = vec!["plan", model.to_str().unwrap(), "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&modelhost_ok(&all)).expect("plan --json prints JSON")
}

fn blocks(device: &Value) -> Vec<u64> {
    device["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_u64().unwrap())
        .collect()
}

#[test]
fn a_24_gib_gpu_takes_the_whole_model_and_the_output() {
    let p = plan(&["--devices", "cuda:0=24GiB", "--ctx", "8192"]);
    let gpu = &p["replicas"][0]["devices"][0];
    assert_eq!(blocks(gpu), (0..18).collect::<Vec<_>>());
    assert_eq!(gpu["output"], true);
    // Three global blocks of 8192 cells and fifteen windowed blocks of 1024 cells, 1 KiB each.
    assert_eq!(gpu["kv_bytes"], 3 * 8192 * 1024 + 15 * 1024 * 1024);
    assert_eq!(p["replicas"][0]["cpu_layers"].as_array().unwrap().len(), 0);
    assert_eq!(p["host"]["kv_bytes"], 0);
}

/// llama-cpp-python (llama.cpp's C API defaults) keeps a full-size cache for windowed layers too:
/// it reported 24.00 MiB for the 3 global layers and 120.00 MiB for the 15 windowed ones at ctx
/// 8192. Its 514.50 MiB CPU compute buffer is mostly the logits of a 512-token batch; the
/// engine computes logits only where a step asks for them, and the plan sizes scratch as the
/// engine allocates it (about 25 MiB here, with the prompt kernels' activation panels;
/// `tests/tests/engine.rs` holds the two within 10%).
#[test]
fn swa_full_matches_llama_cpp_python() {
    let p = plan(&["--devices", "cpu", "--ctx", "8192", "--swa-full"]);
    let replica = &p["replicas"][0];
    assert_eq!(replica["cpu_kv_bytes"], 144 << 20);
    let scratch = replica["cpu_scratch_bytes"].as_u64().unwrap();
    assert!(
        (22 << 20..28 << 20).contains(&scratch),
        "scratch {scratch}: the engine's buffers for a 512-token batch and one sequence's logits"
    );
}

#[test]
fn a_small_gpu_takes_the_last_blocks_and_the_cpu_keeps_the_rest() {
    // 768 MiB of reserve and overhead and 25 MiB of scratch leave 107 MiB: room for some blocks
    // of about 3.6 MiB of weights plus 1 or 32 MiB of KV each.
    let p = plan(&["--devices", "cuda:0=900MiB", "--ctx", "32768"]);
    let replica = &p["replicas"][0];
    let gpu = blocks(&replica["devices"][0]);
    let cpu: Vec<u64> = replica["cpu_layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_u64().unwrap())
        .collect();
    assert!(!gpu.is_empty() && !cpu.is_empty(), "{p}");
    assert_eq!(*gpu.last().unwrap(), 17, "offloaded from the output side");
    assert_eq!(cpu.len() + gpu.len(), 18);
    assert_eq!(*cpu.last().unwrap() + 1, gpu[0]);
    assert_eq!(replica["cpu_output"], true);
    let d = &replica["devices"][0];
    assert!(d["total_bytes"].as_u64().unwrap() <= d["budget_bytes"].as_u64().unwrap());
}

#[test]
fn replicas_on_two_gpus_and_a_cpu_worker() {
    let p = plan(&[
        "--devices",
        "cuda:0=8GiB,cuda:1=8GiB,cpu",
        "--mode",
        "replicate",
        "--ctx",
        "4096",
    ]);
    let replicas = p["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 3);
    assert_eq!(blocks(&replicas[0]["devices"][0]).len(), 18);
    assert_eq!(blocks(&replicas[1]["devices"][0]).len(), 18);
    assert_eq!(replicas[2]["cpu_layers"].as_array().unwrap().len(), 18);
    assert_eq!(
        p["host"]["weight_bytes"], 253_113_024u64,
        "one mapping for all three"
    );
}

#[test]
fn the_table_explains_itself_and_refusals_are_clear() {
    let model = gemma_model();
    let m = model.to_str().unwrap();
    let text = modelhost_ok(&["plan", m, "--devices", "cuda:0=24GiB", "--ctx", "8192"]);
    for expected in [
        "plan for gemma-3-270m-q4_k_m: split, 18 blocks",
        "0-17 (18)",
        "why:",
        "15 of 18 blocks attend to a 512-token window",
        "output stage",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }

    let out = modelhost(&["plan", m, "--devices", "cpu=100MiB"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("does not fit") && err.contains("bytes short"),
        "{err}"
    );

    let out = modelhost(&[
        "plan",
        m,
        "--devices",
        "cuda:0=24GiB",
        "--gpu-layers",
        "40",
        "--ctx",
        "4096",
    ]);
    assert!(
        out.status.success(),
        "more layers than blocks is capped, with a warning"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("--gpu-layers 40 is more than the 18 blocks")
    );

    let out = modelhost(&["plan", m, "--devices", "tpu:0"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"tpu:0\" is not a device"));

    if !modelhost_worker_has_cuda() {
        let out = modelhost(&["plan", m, "--devices", "cuda:0"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            err.contains("cuda:0: no CUDA driver on this machine"),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// Whether this machine has a CUDA driver (the GPU machine runs these tests too).
fn modelhost_worker_has_cuda() -> bool {
    [
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
        "/usr/lib64/libcuda.so.1",
        "/usr/lib/libcuda.so.1",
    ]
    .iter()
    .any(|p| std::path::Path::new(p).exists())
}
