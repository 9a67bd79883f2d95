//! Workers with the real gemma model and real processes: readiness, layer order, page sharing,
//! restart without disk reads, host death, and protocol violations.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use modelhost_tests::daemon::{Daemon, DaemonOptions};
use modelhost_tests::http::{get, request, subscribe};
use modelhost_tests::models::{gone, ready_with, wait_for};
use modelhost_tests::{binary, gemma_model, workspace_root, Scratch};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

fn load_with_workers(socket: &Path, name: &str, workers: usize) {
    let body = json!({
        "path": gemma_model(), "name": name, "spawn_workers": true,
        "devices": vec!["cpu"; workers], "placement": { "ctx": 4096, "mode": "replicate" },
    });
    modelhost_tests::models::load(socket, &body);
}

fn pids(model: &Value) -> Vec<u32> {
    model["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_u64().unwrap() as u32)
        .collect()
}

fn pss(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

#[test]
fn four_cpu_workers_become_ready_sharing_one_copy_of_the_pages() {
    let dir = Scratch::new("workers");
    let daemon = Daemon::start(&dir.path("control.sock"), DaemonOptions::default());
    let events = subscribe(&daemon.socket);
    load_with_workers(&daemon.socket, "g", 4);
    let model = wait_for(&daemon.socket, "g", "four ready workers", |m| {
        ready_with(m, 4)
    });

    // LayerReady arrives for every block, in order, from every worker.
    let mut layers: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    while layers.len() < 4 || layers.values().any(|l| l.len() < 18) {
        let e = events
            .recv_timeout(Duration::from_secs(10))
            .expect("layer events");
        if e["type"] == "worker_layer_ready" {
            layers
                .entry(e["worker"].as_str().unwrap().to_owned())
                .or_default()
                .push(e["layer"].as_u64().unwrap());
        }
    }
    for (worker, order) in &layers {
        assert_eq!(*order, (0..18).collect::<Vec<_>>(), "{worker}");
    }
    for w in model["workers"].as_array().unwrap() {
        assert_eq!(
            (
                w["layers"].as_u64(),
                w["layers_ready"].as_u64(),
                w["restarts"].as_u64()
            ),
            (Some(18), Some(18), Some(0))
        );
    }

    // Sharing: host + workers stay near one copy of the file plus their own KV caches.
    let file = std::fs::metadata(gemma_model()).unwrap().len();
    let kv: u64 = model["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["kv_bytes"].as_u64().unwrap())
        .sum();
    let total: u64 = pss(daemon.pid()) + pids(&model).iter().map(|&p| pss(p)).sum::<u64>();
    let bound = file * 13 / 10 + kv;
    println!("host + 4 workers: PSS {total} bytes; file {file}; KV {kv}; bound {bound}; {:.2} × the file without KV", (total - kv) as f64 / file as f64);
    assert!(total <= bound, "PSS {total} exceeds {bound}");

    // Unloading a model with running workers needs force, and then stops them.
    let refused = request(&daemon.socket, "DELETE", "/v1/models/g", None);
    assert_eq!(
        (refused.status, refused.error_code().as_str()),
        (409, "model_in_use")
    );
    let workers = pids(&model);
    assert_eq!(
        request(&daemon.socket, "DELETE", "/v1/models/g?force=true", None).status,
        200
    );
    assert!(
        workers.iter().all(|&p| gone(u64::from(p))),
        "workers still running after a forced unload"
    );
}

#[test]
fn a_killed_worker_restarts_without_reading_the_disk() {
    let dir = Scratch::new("restart");
    let daemon = Daemon::start(&dir.path("control.sock"), DaemonOptions::default());
    load_with_workers(&daemon.socket, "g", 2);
    let model = wait_for(&daemon.socket, "g", "two ready workers", |m| {
        ready_with(m, 2)
    });
    let victim = pids(&model)[1];
    let killed_at = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    let model = wait_for(&daemon.socket, "g", "the restarted worker", |m| {
        ready_with(m, 2) && m["workers"][1]["pid"].as_u64() != Some(u64::from(victim))
    });
    let back = killed_at.elapsed();
    let worker = &model["workers"][1];
    assert_eq!(worker["restarts"], 1);
    let pid = worker["pid"].as_u64().unwrap();
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    let read_bytes: u64 = io
        .lines()
        .find_map(|l| l.strip_prefix("read_bytes:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let file = std::fs::metadata(gemma_model()).unwrap().len();
    println!("restarted worker {pid}: Ready {back:?} after kill -9, read_bytes {read_bytes} (file {file})");
    assert!(
        read_bytes < file / 100,
        "the restarted worker read {read_bytes} bytes from disk"
    );
    assert_eq!(
        model["workers"][0]["restarts"], 0,
        "the other worker was not disturbed"
    );
    // The restart is what an operator's alert sees.
    let metrics = String::from_utf8(get(&daemon.socket, "/metrics").body).unwrap();
    for line in [
        "# TYPE modelhost_worker_restarts_total counter",
        "modelhost_worker_restarts_total{model=\"g\",worker=\"g-1\",device=\"cpu\"} 1",
        "modelhost_worker_restarts_total{model=\"g\",worker=\"g-0\",device=\"cpu\"} 0",
        "modelhost_worker_ready{model=\"g\",worker=\"g-1\",device=\"cpu\"} 1",
        "modelhost_worker_failed{model=\"g\",worker=\"g-1\",device=\"cpu\"} 0",
        "modelhost_worker_layers_ready{model=\"g\",worker=\"g-1\",device=\"cpu\"} 18",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
}

#[test]
fn when_the_host_dies_every_worker_exits_within_a_second() {
    let dir = Scratch::new("orphans");
    let mut daemon = Daemon::start(&dir.path("control.sock"), DaemonOptions::default());
    load_with_workers(&daemon.socket, "g", 3);
    let workers = pids(&wait_for(&daemon.socket, "g", "three ready workers", |m| {
        ready_with(m, 3)
    }));
    daemon.signal(Signal::SIGKILL);
    let killed = Instant::now();
    assert!(daemon.wait_exit(Duration::from_secs(5)).is_some());
    while !workers.iter().all(|&p| gone(u64::from(p))) {
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "workers outlived the host by a second: {workers:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("all workers gone {:?} after the host", killed.elapsed());
}

#[test]
fn protocol_violations_are_refused_and_nothing_else_is_disturbed() {
    let dir = Scratch::new("violations");
    let fake = workspace_root().join("tests/fixtures/fake-worker.py");
    let daemon = Daemon::start(
        &dir.path("control.sock"),
        DaemonOptions {
            env: vec![
                ("MODELHOST_WORKER", fake.display().to_string()),
                (
                    "MODELHOST_REAL_WORKER",
                    binary("modelhost-worker").display().to_string(),
                ),
                (
                    "MODELHOST_FAKE_PROTOCOL_VERSION",
                    modelhost_protocol::wire::PROTOCOL_VERSION.to_string(),
                ),
            ],
            ..Default::default()
        },
    );
    let socket = &daemon.socket;
    load_with_workers(socket, "healthy", 1);
    wait_for(socket, "healthy", "the healthy model", |m| ready_with(m, 1));

    let cases = [
        ("badmagic", "bad magic"),
        ("badversion", "protocol version 99"),
        ("oversized", "exceeds the"),
        ("unknown", "unknown message"),
        ("liar", "says it drives cpu:99"),
    ];
    for (name, text) in cases {
        load_with_workers(socket, name, 2);
        let model = wait_for(socket, name, text, |m| {
            let w = &m["workers"];
            w[1]["state"] == "ready" && w[0]["error"].as_str().is_some_and(|e| e.contains(text))
        });
        assert_ne!(model["workers"][0]["state"], "ready", "{name}");
        assert_eq!(
            model["workers"][1]["restarts"], 0,
            "{name}: the real worker was disturbed"
        );
    }
    let healthy = get(socket, "/v1/models/healthy").json();
    assert!(ready_with(&healthy, 1));
    assert_eq!(healthy["workers"][0]["restarts"], 0);
    assert_eq!(get(socket, "/healthz").status, 200);
    let log = daemon.log_text();
    assert!(
        log.contains("refusing worker") && log.contains("says it drives cpu:99"),
        "the violation is logged"
    );
}

#[test]
fn workers_a_process_manager_starts_join_over_the_worker_socket() {
    use std::io::Read;
    let dir = Scratch::new("join");
    let config = dir.path("config.toml");
    std::fs::write(&config, "worker_handshake_timeout_ms = 300\n").unwrap();
    let daemon = Daemon::start(
        &dir.path("control.sock"),
        DaemonOptions {
            config: Some(&config),
            ..Default::default()
        },
    );
    let socket = &daemon.socket;
    let workers_socket = dir.path("workers.sock");
    assert_eq!(
        std::fs::metadata(&workers_socket)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let body = json!({ "path": gemma_model(), "name": "g", "prefault": false, "placement": { "ctx": 4096 } });
    assert_eq!(
        request(socket, "POST", "/v1/models", Some(&body)).status,
        201
    );

    let mut joined = std::process::Command::new(binary("modelhost-worker"))
        .args([
            "--connect",
            workers_socket.to_str().unwrap(),
            "--model",
            "g",
            "--device",
            "cpu",
            "--worker-id",
            "svc-0",
        ])
        .spawn()
        .unwrap();
    let model = wait_for(socket, "g", "the joined worker", |m| ready_with(m, 1));
    let worker = &model["workers"][0];
    assert_eq!(worker["id"], "svc-0");
    assert_eq!(
        worker["pid"].as_u64(),
        Some(u64::from(joined.id())),
        "tracked by its real pid"
    );
    assert_eq!(worker["layers_ready"], 18);

    // Its process manager, not the host, restarts it: the host records that it went.
    joined.kill().unwrap();
    joined.wait().unwrap();
    wait_for(socket, "g", "the departure", |m| {
        m["workers"][0]["state"] == "stopped"
    });

    // A worker for a model the host does not have is refused, and exits.
    let refused = std::process::Command::new(binary("modelhost-worker"))
        .args([
            "--connect",
            workers_socket.to_str().unwrap(),
            "--model",
            "nope",
            "--worker-id",
            "stray",
        ])
        .output()
        .unwrap();
    assert!(
        refused.status.success(),
        "told to shut down, it exits cleanly"
    );
    assert!(
        daemon.log_text().contains("refusing worker"),
        "the refusal is logged"
    );

    // A connection that never completes the handshake is dropped at the deadline.
    let mut silent = std::os::unix::net::UnixStream::connect(&workers_socket).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = silent.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "still open after {:?}",
        started.elapsed()
    );
    // The connection closes as the daemon logs why; give the line a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !daemon.log_text().contains("no handshake") {
        assert!(
            Instant::now() < deadline,
            "the dropped connection was not logged"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn status_field(pid: u64, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[test]
fn a_numa_worker_is_pinned_and_worker_options_reach_the_workers() {
    let dir = Scratch::new("numa");
    let daemon = Daemon::start(&dir.path("control.sock"), DaemonOptions::default());
    let body = json!({
        "path": gemma_model(), "name": "n", "spawn_workers": true, "devices": ["cpu:0"],
        "placement": { "ctx": 4096 }, "worker_options": { "mlock": true },
    });
    let response = request(&daemon.socket, "POST", "/v1/models", Some(&body));
    assert_eq!(
        response.status,
        201,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let model = wait_for(&daemon.socket, "n", "the NUMA worker", |m| ready_with(m, 1));
    let pid = model["workers"][0]["pid"].as_u64().unwrap();

    let node_cpus = std::fs::read_to_string("/sys/devices/system/node/node0/cpulist").unwrap();
    let parse = |s: &str| modelhost_node::cpu::parse_cpulist(s.trim()).unwrap();
    assert_eq!(
        parse(&status_field(pid, "Cpus_allowed_list:")),
        parse(&node_cpus)
    );

    // mlock reached the worker: its locked memory covers the weights it placed (less the
    // boundary pages neighbouring layers share, which the sum of extents counts twice).
    let locked_kb: u64 = status_field(pid, "VmLck:")
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    let weights = model["workers"][0]["weights_bytes"].as_u64().unwrap();
    assert!(
        locked_kb * 1024 >= weights / 100 * 99,
        "VmLck {locked_kb} kB for {weights} bytes of weights"
    );
}

#[test]
fn a_workers_stderr_reaches_the_host_log_as_json_lines() {
    let dir = Scratch::new("stderr");
    // A worker that says why it is giving up, in two lines, and exits.
    let worker = dir.path("talkative-worker");
    std::fs::write(
        &worker,
        "#!/bin/sh\nprintf 'modelhost-worker: first words\\nlast words' >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.path("config.toml");
    std::fs::write(&config, "log_format = \"json\"\n").unwrap();
    let daemon = Daemon::start(
        &dir.path("control.sock"),
        DaemonOptions {
            config: Some(&config),
            env: vec![("MODELHOST_WORKER", worker.display().to_string())],
            ..Default::default()
        },
    );
    load_with_workers(&daemon.socket, "m", 1);
    wait_for(&daemon.socket, "m", "the worker to fail", |m| {
        m["workers"][0]["state"] == "failed"
    });
    let log = daemon.log_text();
    let events: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let said = |words: &str| {
        events.iter().any(|e| {
            e["worker"] == "m-0"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m == format!("worker stderr: {words}"))
        })
    };
    assert!(said("first words"), "the prefix is dropped:\n{log}");
    assert!(said("last words"), "a last line without a newline:\n{log}");
}

/// A CPU worker builds the inference engine over the pages it attached and says so in Ready:
/// its kernels, threads (by default the machine's CPUs shared out among the workers, at least
/// one) and slots, and the scratch the engine really allocated. A model it cannot compute
/// with still loads and shares; the worker names the tensor type it cannot run.
#[test]
fn workers_report_whether_they_compute() {
    let dir = Scratch::new("inference");
    let daemon = Daemon::start(&dir.path("control.sock"), DaemonOptions::default());
    let socket = &daemon.socket;
    load_with_workers(socket, "g", 4);
    let model = wait_for(socket, "g", "four ready workers", |m| ready_with(m, 4));
    let threads = (modelhost_node::cpu::usable_cpus() / 4).max(1) as u64;
    for w in model["workers"].as_array().unwrap() {
        let ready = &w["inference"]["ready"];
        assert!(ready.is_object(), "{w:#}");
        assert_eq!(ready["threads"], threads, "four workers share the CPUs");
        assert_eq!(ready["slots"], 1);
        // The best kernels this machine runs, as the engine chooses them in this process.
        assert_eq!(ready["kernels"], modelhost_engine::simd::kernels());
        // The engine's buffers for a 512-token batch, not llama.cpp's 514 MiB.
        let scratch = w["scratch_bytes"].as_u64().unwrap();
        assert!((10 << 20..40 << 20).contains(&scratch), "scratch {scratch}");
        let planned = model["plan"]["replicas"][0]["cpu_scratch_bytes"]
            .as_u64()
            .unwrap();
        assert!(
            scratch.abs_diff(planned) * 10 <= scratch,
            "the plan sized scratch ({planned}) within 10% of the engine's {scratch}"
        );
    }

    let iq = dir.path("iq.gguf");
    modelhost_tests::modelhost_ok(&[
        "synth",
        "--types",
        "iq2_xxs",
        "--size",
        "4MiB",
        "-o",
        iq.to_str().unwrap(),
    ]);
    let body = json!({
        "path": iq, "name": "iq", "spawn_workers": true, "devices": ["cpu"],
        "placement": { "ctx": 512 },
    });
    modelhost_tests::models::load(socket, &body);
    let model = wait_for(socket, "iq", "the worker", |m| ready_with(m, 1));
    let reason = model["workers"][0]["inference"]["unavailable"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        reason.starts_with("unsupported tensor type iq2_xxs in "),
        "{reason}"
    );
    assert!(daemon
        .log_text()
        .contains("inference: unsupported tensor type iq2_xxs"));
    // The first model computes on; nothing was disturbed.
    let g = get(socket, "/v1/models/g").json();
    assert!(ready_with(&g, 4));
}
