//! Fault injection with real processes, seeded and repeatable: workers killed at random points of
//! their attach, and a worker frozen with SIGSTOP. Afterwards nothing has leaked from the host:
//! no zombies, no descriptors, no mappings.
//!
//! `MODELHOST_FAULT_SEED=N` replays a run; the seed is printed.

use std::path::Path;
use std::time::{Duration, Instant};

use modelhost_tests::daemon::{Daemon, DaemonOptions};
use modelhost_tests::http::{get, request, subscribe};
use modelhost_tests::models::{gone, ready_with, wait_for};
use modelhost_tests::{gemma_model, Scratch};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

/// xorshift64*: small and repeatable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Open descriptors, mappings of the model file, all mappings, and child processes (zombies
/// flagged) of a process.
fn census(pid: u32) -> (usize, usize, usize, Vec<String>) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let maps_text = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let model = gemma_model().canonicalize().unwrap().display().to_string();
    let model_maps = maps_text.lines().filter(|l| l.ends_with(&model)).count();
    let maps = maps_text.lines().count();
    let children = children(pid)
        .into_iter()
        .map(|(child, state)| format!("{child} {state}"))
        .collect();
    (fds, model_maps, maps, children)
}

/// The census once the last unload has let go: no mapping of the model and no child left
/// (within 10 s), then 300 ms more for the threads that ran it to end. A forced unload's reply
/// comes when its workers are stopped, and the mapping goes with the last reference to it.
fn settled_census(pid: u32) -> (usize, usize, usize, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let (_, model_maps, _, children) = census(pid);
        if model_maps == 0 && children.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    census(pid)
}

/// The child processes of a process, each with its state letter (`Z` for a zombie).
fn children(pid: u32) -> Vec<(i32, String)> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let after = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>();
        let child = entry.file_name().to_string_lossy().parse::<i32>();
        if let (Ok(child), Some(parent)) = (child, after.get(1)) {
            if parent.parse::<u32>().ok() == Some(pid) {
                children.push((child, after[0].to_owned()));
            }
        }
    }
    children
}

fn load(socket: &Path, name: &str, workers: usize) {
    let body = json!({
        "path": gemma_model(), "name": name, "prefault": false, "spawn_workers": true,
        "devices": vec!["cpu"; workers], "placement": { "ctx": 512, "mode": "replicate" },
    });
    let r = request(socket, "POST", "/v1/models", Some(&body));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
}

#[test]
fn workers_killed_at_random_points_always_come_back_and_nothing_leaks() {
    let seed: u64 = std::env::var("MODELHOST_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2026);
    println!("MODELHOST_FAULT_SEED={seed}");
    let mut rng = Rng(seed | 1);
    let dir = Scratch::new("faults");
    let daemon = Daemon::start(&dir.path("control.sock"), DaemonOptions::default());
    let socket = &daemon.socket;
    // Warm up once, so lazily created runtime threads and buffers are in the baseline.
    load(socket, "warmup", 1);
    wait_for(socket, "warmup", "warm-up", |m| ready_with(m, 1));
    assert_eq!(
        request(socket, "DELETE", "/v1/models/warmup?force=true", None).status,
        200
    );
    let before = settled_census(daemon.pid());

    let rounds = 50;
    let mut restarts = 0;
    let mut halfway = before.clone();
    for round in 0..rounds {
        if round == rounds / 2 {
            halfway = settled_census(daemon.pid());
        }
        let name = format!("f{round}");
        // Kill one of the two workers from /proc, 0 to 150 ms after the daemon forks it: before
        // its exec, before its Hello, mid-attach, or after Ready. The load's reply is no signal
        // to aim by (it may come back before the workers are spawned), so it runs beside.
        let before_load: Vec<i32> = children(daemon.pid()).iter().map(|c| c.0).collect();
        let loading = {
            let socket = socket.clone();
            let name = name.clone();
            std::thread::spawn(move || load(&socket, &name, 2))
        };
        let delay = Duration::from_micros(rng.next() % 150_000);
        let deadline = Instant::now() + Duration::from_secs(30);
        let victim = loop {
            let fresh = children(daemon.pid())
                .into_iter()
                .find(|(pid, state)| state != "Z" && !before_load.contains(pid));
            if let Some((pid, _)) = fresh {
                break pid;
            }
            assert!(
                Instant::now() < deadline,
                "no worker was spawned for {name}"
            );
            std::thread::sleep(Duration::from_micros(200));
        };
        std::thread::sleep(delay);
        kill(Pid::from_raw(victim), Signal::SIGKILL).expect("the victim was alive");
        loading.join().expect("the load request");
        let model = wait_for(socket, &name, "the killed worker replaced", |m| {
            let workers = m["workers"].as_array().map_or(&[][..], Vec::as_slice);
            ready_with(m, 2)
                && workers
                    .iter()
                    .all(|w| w["pid"].as_u64() != Some(victim as u64))
        });
        restarts += model["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["restarts"].as_u64().unwrap())
            .sum::<u64>();
        assert_eq!(
            request(
                socket,
                "DELETE",
                &format!("/v1/models/{name}?force=true"),
                None
            )
            .status,
            200
        );
    }
    let after = settled_census(daemon.pid());
    println!(
        "{rounds} rounds, {restarts} restarts; host fds {} -> {} -> {}, model mappings {} -> {}, all mappings {} -> {} -> {}, children {:?}",
        before.0, halfway.0, after.0, before.1, after.1, before.2, halfway.2, after.2, after.3
    );
    // Every kill hit a live worker, and each was replaced exactly once: no replacement died.
    assert_eq!(restarts, rounds as u64, "one restart per kill");
    assert_eq!(after.0, before.0, "descriptors leaked");
    assert_eq!(after.1, 0, "a mapping of the model outlived its unload");
    // The model's mappings and the descriptors are the resources a load takes, and they are
    // checked exactly above. The total also counts thread stacks: tokio's blocking pool grows and
    // shrinks with concurrency, and glibc caches up to 40 MiB of freed 2 MiB stacks, so it moves
    // by a few dozen between runs; only runaway growth means a leak.
    assert!(
        after.2 <= before.2 + 64,
        "mappings grew from {} to {} (halfway {})",
        before.2,
        after.2,
        halfway.2
    );
    assert!(after.3.is_empty(), "children left behind: {:?}", after.3);
}

#[test]
fn a_frozen_worker_misses_its_heartbeats_and_is_replaced() {
    let dir = Scratch::new("sigstop");
    let config = dir.path("config.toml");
    std::fs::write(&config, "worker_heartbeat_timeout_ms = 1000\n").unwrap();
    let daemon = Daemon::start(
        &dir.path("control.sock"),
        DaemonOptions {
            config: Some(&config),
            ..Default::default()
        },
    );
    load(&daemon.socket, "s", 1);
    let model = wait_for(&daemon.socket, "s", "the worker", |m| ready_with(m, 1));
    let frozen = model["workers"][0]["pid"].as_u64().unwrap();
    kill(Pid::from_raw(frozen as i32), Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    let model = wait_for(&daemon.socket, "s", "the replacement", |m| {
        ready_with(m, 1) && m["workers"][0]["pid"].as_u64() != Some(frozen)
    });
    let took = stopped.elapsed();
    println!("frozen worker replaced after {took:?}");
    // The timeout runs from the last heartbeat, which came up to one interval (a sixth of the
    // timeout) before the freeze.
    assert!(
        took >= Duration::from_millis(1000 - 1000 / 6),
        "replaced before the 1 s heartbeat timeout: {took:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "the configured timeout, not the default 3 s: {took:?}"
    );
    assert_eq!(model["workers"][0]["restarts"], 1);
    assert!(gone(frozen), "the frozen worker was killed");
    assert!(daemon.log_text().contains("worker spawned"));
}

/// A forced unload waits for its workers to exit: frozen ones are killed only after the 1 s stop
/// grace. That wait must not hold the async threads, which answer every other request (and will
/// carry token streams): with two such unloads running, the API still answers at once. When the
/// handler waited on the runtime, both of its threads sat in the unloads and `/healthz` came back
/// only after one of them.
#[test]
fn forced_unloads_of_frozen_workers_leave_the_api_answering() {
    let dir = Scratch::new("unload-frozen");
    let daemon = Daemon::start(&dir.path("control.sock"), DaemonOptions::default());
    let socket = daemon.socket.clone();
    let mut frozen = Vec::new();
    for name in ["a", "b"] {
        load(&socket, name, 1);
        let model = wait_for(&socket, name, "the worker", |m| ready_with(m, 1));
        frozen.push(model["workers"][0]["pid"].as_u64().unwrap());
    }
    for &pid in &frozen {
        kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
    }
    let events = subscribe(&socket);
    let unloads: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|name| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let r = request(
                    &socket,
                    "DELETE",
                    &format!("/v1/models/{name}?force=true"),
                    None,
                );
                (r.status, Instant::now())
            })
        })
        .collect();
    // Both unloads are under way once both workers are told to stop.
    let mut stopping = 0;
    while stopping < 2 {
        let e = events
            .recv_timeout(Duration::from_secs(10))
            .expect("stopping events");
        if e["type"] == "worker_state" && e["state"] == "stopping" {
            stopping += 1;
        }
    }
    let health = get(&socket, "/healthz");
    let answered = Instant::now();
    assert_eq!(health.status, 200);
    for unload in unloads {
        let (status, done) = unload.join().unwrap();
        assert_eq!(status, 200);
        assert!(
            answered < done,
            "/healthz waited for a forced unload to finish"
        );
    }
    assert!(frozen.iter().all(|&pid| gone(pid)), "frozen workers left");
}

/// The model file truncated on disk while loaded. The guarantee (ARCHITECTURE.md): the host never
/// touches model pages except through MADV_POPULATE_READ and mincore, which report missing pages
/// as errors, so it cannot die of SIGBUS; a worker checks the file's size against the validated
/// one before it maps, and fails cleanly. In copy mode the sealed memfd does not change at all.
#[test]
fn truncating_a_loaded_model_on_disk_kills_nothing() {
    let dir = Scratch::new("truncate");
    let model = dir.path("m.gguf");
    std::fs::copy(gemma_model(), &model).unwrap();
    let daemon = Daemon::start(&dir.path("control.sock"), DaemonOptions::default());
    let socket = &daemon.socket;
    for (name, copy) in [("mapped", false), ("copied", true)] {
        let body = json!({ "path": model, "name": name, "prefault": true, "copy": copy, "placement": { "ctx": 512 } });
        assert_eq!(
            request(socket, "POST", "/v1/models", Some(&body)).status,
            201
        );
        wait_for(socket, name, "the load", |m| m["state"] == "ready");
    }

    let len = std::fs::metadata(&model).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&model)
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    // The host is alive and still describes both models (mincore cannot fault).
    assert_eq!(get(socket, "/healthz").status, 200);
    assert_eq!(get(socket, "/v1/models/mapped").json()["state"], "ready");
    // A new load of the damaged file is refused with the reason.
    let again = request(
        socket,
        "POST",
        "/v1/models",
        Some(&json!({ "path": model, "name": "again" })),
    );
    assert_eq!(
        (again.status, again.error_code().as_str()),
        (422, "invalid_gguf")
    );

    // A worker for the mapped model fails cleanly instead of dying of SIGBUS.
    let worker = |name: &str| {
        std::process::Command::new(modelhost_tests::binary("modelhost-worker"))
            .args([
                "--connect",
                dir.path("workers.sock").to_str().unwrap(),
                "--model",
                name,
                "--worker-id",
                &format!("{name}-w"),
            ])
            .output()
            .unwrap()
    };
    let out = worker("mapped");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("but the host validated"), "{err}");

    // In copy mode nothing notices: a worker attaches to the sealed copy and becomes Ready.
    let mut joined = std::process::Command::new(modelhost_tests::binary("modelhost-worker"))
        .args([
            "--connect",
            dir.path("workers.sock").to_str().unwrap(),
            "--model",
            "copied",
            "--worker-id",
            "copied-w",
        ])
        .spawn()
        .unwrap();
    let copied = wait_for(socket, "copied", "a worker on the sealed copy", |m| {
        m["workers"].as_array().is_some_and(|w| {
            w.iter()
                .any(|w| w["id"] == "copied-w" && w["state"] == "ready")
        })
    });
    assert_eq!(copied["workers"][0]["layers_ready"], 18);
    joined.kill().unwrap();
    joined.wait().unwrap();
    assert_eq!(get(socket, "/healthz").status, 200);
    assert!(!daemon.log_text().contains("SIGBUS"));
}

#[test]
fn concurrent_loads_and_an_unload_mid_load_leave_a_consistent_registry() {
    let dir = Scratch::new("concurrent");
    let big = dir.path("big.gguf");
    let out =
        modelhost_tests::modelhost(&["synth", "--out", big.to_str().unwrap(), "--size", "384MiB"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let small = dir.path("small.gguf");
    assert!(modelhost_tests::modelhost(&[
        "synth",
        "--out",
        small.to_str().unwrap(),
        "--size",
        "8MiB"
    ])
    .status
    .success());
    let daemon = Daemon::start(&dir.path("control.sock"), DaemonOptions::default());
    let socket = daemon.socket.clone();

    // Three loads at once, and the same name twice at once: exactly one of those two wins.
    let loads = [
        ("a", gemma_model()),
        ("b", small.clone()),
        ("c", big.clone()),
        ("twice", small.clone()),
        ("twice", gemma_model()),
    ];
    let handles: Vec<_> = loads
        .iter()
        .cloned()
        .map(|(name, path)| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                request(
                    &socket,
                    "POST",
                    "/v1/models",
                    Some(&json!({ "path": path, "name": name })),
                )
                .status
            })
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(&statuses[..3], &[201, 201, 201]);
    let mut twice = statuses[3..].to_vec();
    twice.sort_unstable();
    assert_eq!(
        twice,
        vec![201, 409],
        "one load of the name wins, the other is refused"
    );
    for name in ["a", "b", "c", "twice"] {
        wait_for(&socket, name, "every load", |m| m["state"] == "ready");
    }
    for name in ["a", "b", "c", "twice"] {
        assert_eq!(
            request(&socket, "DELETE", &format!("/v1/models/{name}"), None).status,
            200
        );
    }

    // Unload while the prefault of a cold file is still running: the job stops, nothing is left.
    let file = std::fs::File::open(&big).unwrap();
    nix::fcntl::posix_fadvise(
        &file,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .unwrap();
    let started = request(
        &socket,
        "POST",
        "/v1/models",
        Some(&json!({ "path": big, "name": "cold", "prefault": true })),
    );
    assert_eq!(started.status, 201);
    assert_eq!(started.json()["state"], "loading");
    assert_eq!(
        request(&socket, "DELETE", "/v1/models/cold", None).status,
        200
    );
    assert_eq!(get(&socket, "/v1/models/cold").status, 404);
    assert_eq!(
        get(&socket, "/v1/models").json()["data"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    // And the same name loads again cleanly.
    assert_eq!(
        request(
            &socket,
            "POST",
            "/v1/models",
            Some(&json!({ "path": big, "name": "cold" }))
        )
        .status,
        201
    );
    wait_for(&socket, "cold", "the reload", |m| m["state"] == "ready");
    assert_eq!(get(&socket, "/healthz").status, 200);
}

#[test]
fn killing_the_host_partway_through_a_load_leaves_no_worker_behind() {
    let dir = Scratch::new("host-mid-load");
    let mut daemon = Daemon::start(&dir.path("control.sock"), DaemonOptions::default());
    load(&daemon.socket, "m", 3);
    // As soon as the workers exist, and long before they are all Ready.
    let model = wait_for(&daemon.socket, "m", "worker pids", |m| {
        m["workers"]
            .as_array()
            .is_some_and(|w| w.len() == 3 && w.iter().all(|w| w["pid"].as_u64().is_some()))
    });
    let workers: Vec<u64> = model["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_u64().unwrap())
        .collect();
    daemon.signal(Signal::SIGKILL);
    let killed = Instant::now();
    assert!(daemon.wait_exit(Duration::from_secs(5)).is_some());
    while !workers.iter().all(|&p| gone(p)) {
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "workers outlived their host: {workers:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "host killed mid-load; its {} workers gone after {:?}",
        workers.len(),
        killed.elapsed()
    );
    // A new host on the same path replaces the stale socket and serves.
    let again = Daemon::start(&daemon.socket, DaemonOptions::default());
    assert_eq!(get(&again.socket, "/healthz").status, 200);
}
