//! `modelhost up`, the README's one command, with real processes: it starts a host when none
//! answers, brings up N workers on the real model and reports their memory; a failed `up` leaves
//! the host as it found it; and running it again names the way out.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use modelhost_tests::daemon::{Daemon, DaemonOptions};
use modelhost_tests::http::{get, try_get_json};
use modelhost_tests::{gemma_model, modelhost, Scratch};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

fn up(socket: &Path, extra: &[&str]) -> Output {
    let model = gemma_model();
    let mut args = vec![
        "up",
        model.to_str().unwrap(),
        "--socket",
        socket.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    modelhost(&args)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A host that `up` started in the background: stopped with SIGTERM when the test ends.
struct Started(Option<i32>);

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
}

#[test]
fn up_starts_a_host_and_brings_up_workers_that_share_the_model() {
    let dir = Scratch::new("up");
    let socket = dir.path("run/control.sock");
    let out = up(&socket, &["--workers", "3", "--name", "g", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let _host = Started(report["host"]["pid"].as_i64().map(|p| p as i32));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("started a host"),
        "up says it started a host: {}",
        stderr(&out)
    );

    let model = &report["model"];
    assert_eq!(model["name"], "g");
    let workers = model["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 3);
    let file_bytes = model["file_bytes"].as_u64().unwrap();
    let mut total_pss = report["host"]["host_memory"]["pss_bytes"].as_u64().unwrap();
    let mut kv = 0;
    for worker in workers {
        assert_eq!(worker["state"], "ready", "{worker}");
        assert_eq!(worker["layers_ready"], 18, "{worker}");
        assert!(worker["pid"].as_u64().is_some(), "{worker}");
        total_pss += worker["memory"]["pss_bytes"].as_u64().unwrap();
        kv += worker["kv_bytes"].as_u64().unwrap();
    }
    // The point of it all: three workers and the host hold about one copy of the model.
    let ratio = (total_pss - kv) as f64 / file_bytes as f64;
    assert!(
        ratio < 1.2,
        "host + 3 workers hold {ratio:.2} × the file besides KV"
    );

    // The host `up` started keeps serving after `up` has returned.
    let listed: Value = get(&socket, "/v1/models").json();
    assert_eq!(listed["data"][0]["name"], "g", "{listed}");

    // Without --json, the table: one row per worker, the host row, and the total.
    let table = up(&socket, &["--workers", "1", "--name", "h"]);
    assert!(table.status.success(), "{}", stderr(&table));
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("h ready: 1 workers"), "{text}");
    assert!(text.contains("h-0 ") && text.contains("18/18"), "{text}");
    assert!(text.contains("total PSS"), "{text}");
}

#[test]
fn a_failed_up_leaves_the_host_as_it_found_it() {
    let dir = Scratch::new("up-fails");
    // Every worker this host spawns dies at once, before its handshake.
    let daemon = Daemon::start(
        &dir.path("control.sock"),
        DaemonOptions {
            env: vec![("MODELHOST_WORKER", "/bin/false".into())],
            ..Default::default()
        },
    );
    let socket = &daemon.socket;

    let started = Instant::now();
    let out = up(socket, &["--workers", "2", "--name", "doomed"]);
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(
        message.contains("worker doomed-")
            && message.contains("exited (exit status: 1) before its handshake"),
        "the error names the worker and how it ended: {message}"
    );
    assert!(
        message.contains("unloaded doomed again"),
        "the error says what up undid: {message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "up gave up after {:?}",
        started.elapsed()
    );
    let listed: Value = get(socket, "/v1/models").json();
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(0), "{listed}");

    // --keep-on-failure leaves it loaded, with its failed workers and their errors.
    let out = up(
        socket,
        &["--workers", "1", "--name", "doomed", "--keep-on-failure"],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("stays loaded"), "{}", stderr(&out));
    let model = try_get_json(socket, "/v1/models/doomed").expect("still loaded");
    assert_eq!(model["workers"][0]["state"], "failed", "{model}");
    assert!(
        model["workers"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("before its handshake")),
        "{model}"
    );

    // Arguments that contradict each other are refused before anything is loaded.
    let contradiction = up(socket, &["--workers", "3", "--device", "cpu,cpu"]);
    assert!(!contradiction.status.success());
    assert!(
        stderr(&contradiction).contains("--workers 3 but --device lists 2 devices"),
        "{}",
        stderr(&contradiction)
    );
    let none = up(socket, &["--workers", "0"]);
    assert!(!none.status.success(), "zero workers is refused");

    // Running up again under the same name says how to get out of the way.
    let again = up(socket, &["--workers", "1", "--name", "doomed"]);
    assert!(!again.status.success());
    let message = stderr(&again);
    assert!(
        message.contains("model_exists") && message.contains("modelhost unload NAME --force"),
        "{message}"
    );
    assert_eq!(get(socket, "/healthz").status, 200);
}
