//! The real daemon on a temporary socket: loading the real model, refusing bad input while it
//! keeps serving, shutdown, sd_notify, socket permissions and peer checks, SIGHUP, the CLI.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use modelhost_tests::daemon::{Daemon, DaemonOptions};
use modelhost_tests::http::{get, raw, request, subscribe};
use modelhost_tests::{gemma_model, modelhost, Scratch};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

const EVENT_WAIT: Duration = Duration::from_secs(60);

fn load(socket: &Path, body: Value) -> Value {
    modelhost_tests::models::load(socket, &body)
}

/// Collects events until `model` reaches ready or failed; returns them all.
fn until_settled(events: &std::sync::mpsc::Receiver<Value>, model: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let event = events
            .recv_timeout(EVENT_WAIT)
            .expect("an event before the timeout");
        let settled = event["type"] == "model_state"
            && event["model"] == model
            && (event["state"] == "ready" || event["state"] == "failed");
        seen.push(event);
        if settled {
            return seen;
        }
    }
}

#[test]
fn loads_the_real_model_with_monotonic_progress_to_the_total() {
    let dir = Scratch::new("load");
    let daemon = Daemon::start(&dir.path("control.sock"), DaemonOptions::default());
    let events = subscribe(&daemon.socket);
    let model = gemma_model();
    let registered = load(&daemon.socket, json!({ "path": model, "name": "gemma" }));
    assert_eq!(registered["state"], "loading");
    assert_eq!(registered["tensor_count"], 236);

    let seen = until_settled(&events, "gemma");
    let last = seen.last().unwrap();
    assert_eq!(last["state"], "ready", "{seen:?}");
    let progress: Vec<(u64, u64)> = seen
        .iter()
        .filter(|e| e["type"] == "progress" && e["phase"] == "prefault")
        .map(|e| {
            (
                e["done_bytes"].as_u64().unwrap(),
                e["total_bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(!progress.is_empty(), "no progress events in {seen:?}");
    assert!(
        progress.windows(2).all(|w| w[0].0 <= w[1].0),
        "not monotonic: {progress:?}"
    );
    let file_bytes = std::fs::metadata(&model).unwrap().len();
    assert_eq!(*progress.last().unwrap(), (file_bytes, file_bytes));
    let seqs: Vec<u64> = seen.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "sequence numbers out of order: {seqs:?}"
    );

    let list = get(&daemon.socket, "/v1/models").json();
    // OpenAI's envelope, each entry with OpenAI's fields and the whole model info.
    assert_eq!(list["object"], "list");
    let models = &list["data"];
    assert_eq!(models.as_array().unwrap().len(), 1);
    let gemma = &models[0];
    assert_eq!(gemma["id"], gemma["name"]);
    assert_eq!(gemma["object"], "model");
    assert_eq!(gemma["state"], "ready");
    assert_eq!(gemma["layers"].as_array().unwrap().len(), 20);
    // Prefaulted: (nearly) every page is resident right after the load.
    let resident = gemma["residency"]["resident_bytes"].as_u64().unwrap();
    assert!(
        resident * 10 >= file_bytes * 9,
        "resident {resident} of {file_bytes}"
    );
    assert_eq!(
        get(&daemon.socket, "/v1/models/gemma").json()["name"],
        "gemma"
    );

    let metrics = String::from_utf8(get(&daemon.socket, "/metrics").body).unwrap();
    assert!(
        metrics.contains("modelhost_model_ready{model=\"gemma\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "modelhost_model_mapped_bytes{{model=\"gemma\"}} {file_bytes}"
    )));
}

#[test]
fn bad_requests_get_clear_4xx_and_the_loaded_model_keeps_serving() {
    let dir = Scratch::new("bad");
    let model = gemma_model();
    let allowed = model.parent().unwrap().canonicalize().unwrap();
    let config = dir.path("config.toml");
    std::fs::write(
        &config,
        format!(
            "model_dirs = [{:?}, {:?}]\nmax_body_bytes = 65536\n",
            allowed,
            dir.0.canonicalize().unwrap()
        ),
    )
    .unwrap();
    let daemon = Daemon::start(
        &dir.path("control.sock"),
        DaemonOptions {
            config: Some(&config),
            ..Default::default()
        },
    );
    let socket = &daemon.socket;
    load(
        socket,
        json!({ "path": model, "name": "gemma", "prefault": false }),
    );

    let not_gguf = dir.path("notes.gguf");
    std::fs::write(&not_gguf, b"plain text, not weights").unwrap();
    let truncated = dir.path("truncated.gguf");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();

    let cases: Vec<(&str, Value, u16, &str, &str)> = vec![
        (
            "missing file",
            json!({ "path": dir.path("missing.gguf") }),
            404,
            "file_not_found",
            "No such file",
        ),
        (
            "a directory",
            json!({ "path": dir.0 }),
            400,
            "not_a_file",
            "not a regular file",
        ),
        (
            "not GGUF",
            json!({ "path": not_gguf }),
            422,
            "invalid_gguf",
            "not a GGUF file",
        ),
        (
            "truncated GGUF",
            json!({ "path": truncated }),
            422,
            "invalid_gguf",
            "past the end",
        ),
        (
            "duplicate name",
            json!({ "path": model, "name": "gemma" }),
            409,
            "model_exists",
            "already loaded",
        ),
        (
            "outside the allow-list",
            json!({ "path": "/etc/hosts" }),
            403,
            "path_not_allowed",
            "outside the allowed",
        ),
        (
            "traversal out of the allow-list",
            json!({ "path": format!("{}/../../../../etc/hosts", allowed.display()) }),
            403,
            "path_not_allowed",
            "/etc/hosts",
        ),
        (
            // Refused even without devices to plan for: the options are kept for joining
            // workers, and a default must never stand in for a bad one.
            "unknown KV type without devices",
            json!({ "path": model, "name": "kv", "placement": { "kv_type": "q3_bogus" } }),
            400,
            "invalid_placement",
            "unknown KV type \"q3_bogus\"",
        ),
        (
            "relative path",
            json!({ "path": "models/x.gguf" }),
            400,
            "invalid_path",
            "absolute",
        ),
        (
            "bad name",
            json!({ "path": model, "name": "../evil" }),
            400,
            "invalid_name",
            "invalid model name",
        ),
        (
            "unknown field",
            json!({ "path": model, "evil": true }),
            400,
            "invalid_json",
            "unknown field",
        ),
    ];
    for (what, body, status, code, text) in cases {
        let response = request(socket, "POST", "/v1/models", Some(&body));
        assert_eq!(
            response.status,
            status,
            "{what}: {}",
            String::from_utf8_lossy(&response.body)
        );
        let error = response.json();
        assert_eq!(error["error"]["code"], code, "{what}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(text), "{what}: {message}");
    }

    let malformed = raw(
        socket,
        b"POST /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{\"path\": ",
    );
    assert_eq!(
        (malformed.status, malformed.error_code().as_str()),
        (400, "invalid_json")
    );

    let big = format!("{{\"path\": \"{}\"}}", "x".repeat(100_000));
    let oversized = raw(
        socket,
        format!("POST /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{big}", big.len()).as_bytes(),
    );
    assert_eq!(
        (oversized.status, oversized.error_code().as_str()),
        (413, "body_too_large")
    );

    assert_eq!(
        get(socket, "/v1/models/nope").error_code(),
        "model_not_found"
    );
    assert_eq!(
        request(socket, "DELETE", "/v1/models/nope", None).status,
        404
    );
    assert_eq!(request(socket, "PATCH", "/v1/models", None).status, 405);
    assert_eq!(get(socket, "/v2/anything").status, 404);

    // Through all of it, the loaded model is still served.
    let gemma = get(socket, "/v1/models/gemma");
    assert_eq!(gemma.status, 200);
    assert_eq!(gemma.json()["state"], "ready");
    assert_eq!(get(socket, "/healthz").body, b"ok\n");
    assert!(daemon.log_text().contains("request refused"));
}

#[test]
fn an_unreadable_file_is_refused_with_permission_denied() {
    let dir = Scratch::new("unreadable");
    let secret = dir.path("secret.gguf");
    std::fs::copy(gemma_model(), &secret).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
    // Root reads any file, so the daemon runs as nobody when the tests run as root; it needs a
    // directory it may create its socket directory in.
    let uid = nix::unistd::geteuid().is_root().then_some(65534);
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let daemon = Daemon::start(
        &dir.path("run/control.sock"),
        DaemonOptions {
            uid,
            ..Default::default()
        },
    );
    let response = request(
        &daemon.socket,
        "POST",
        "/v1/models",
        Some(&json!({ "path": secret })),
    );
    assert_eq!(
        (response.status, response.error_code().as_str()),
        (403, "permission_denied")
    );
    assert!(response.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("ermission denied"));
}

#[test]
fn sigterm_exits_zero_within_the_bound_and_removes_the_socket() {
    let dir = Scratch::new("term");
    let mut daemon = Daemon::start(&dir.path("control.sock"), DaemonOptions::default());
    load(
        &daemon.socket,
        json!({ "path": gemma_model(), "prefault": false }),
    );
    // An open event stream must not hold shutdown up.
    let _events = subscribe(&daemon.socket);
    let started = Instant::now();
    daemon.signal(Signal::SIGTERM);
    let status = daemon
        .wait_exit(Duration::from_secs(10))
        .expect("exit within 10 s");
    assert!(status.success(), "{status}: {}", daemon.log_text());
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    assert!(!daemon.socket.exists(), "the socket is still there");
}

#[test]
fn notify_socket_receives_ready_then_stopping() {
    let dir = Scratch::new("notify");
    let notify_path = dir.path("notify.sock");
    let listener = UnixDatagram::bind(&notify_path).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut daemon = Daemon::start(
        &dir.path("control.sock"),
        DaemonOptions {
            env: vec![("NOTIFY_SOCKET", notify_path.display().to_string())],
            ..Default::default()
        },
    );
    let mut buf = [0u8; 512];
    let n = listener.recv(&mut buf).expect("READY=1");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(ready.contains("STATUS=serving on"), "{ready}");
    daemon.signal(Signal::SIGTERM);
    let n = listener.recv(&mut buf).expect("STOPPING=1");
    let stopping = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    assert!(daemon
        .wait_exit(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
}

#[test]
fn the_socket_is_owner_only_and_other_uids_are_refused() {
    let dir = Scratch::new("perm");
    let daemon = Daemon::start(&dir.path("run/control.sock"), DaemonOptions::default());
    let mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let dir_mode = std::fs::metadata(dir.path("run"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);

    if !nix::unistd::geteuid().is_root() {
        return; // switching uid needs root; the mode checks above still ran
    }
    // Open the filesystem permissions, so only the daemon's peer-credential check stands between
    // another user and the API.
    std::fs::set_permissions(dir.path("run"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&daemon.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let socket = daemon.socket.to_str().unwrap().to_owned();
    let output = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(modelhost_tests::binary("modelhost"))
            .args(["status", "--socket", &socket])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("peer_not_allowed") && stderr.contains("uid 65534"),
        "{stderr}"
    );
    let metrics = String::from_utf8(get(&daemon.socket, "/metrics").body).unwrap();
    assert!(
        metrics.contains("modelhost_connections_refused_total 1"),
        "{metrics}"
    );
}

#[test]
fn an_allowed_group_gets_group_access_to_both_sockets() {
    use std::os::unix::fs::MetadataExt;
    let dir = Scratch::new("group");
    let config = dir.path("config.toml");
    std::fs::write(&config, "allow_group = 65534\n").unwrap();
    let daemon = Daemon::start(
        &dir.path("control.sock"),
        DaemonOptions {
            config: Some(&config),
            ..Default::default()
        },
    );
    for socket in [daemon.socket.clone(), dir.path("workers.sock")] {
        let meta = std::fs::metadata(&socket).unwrap();
        assert_eq!(
            (meta.permissions().mode() & 0o777, meta.gid()),
            (0o660, 65534),
            "{}",
            socket.display()
        );
    }
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_is_not() {
    let dir = Scratch::new("stale");
    let socket = dir.path("control.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap()); // leaves the file behind
    assert!(socket.exists());
    // A test beside this one may have forked while the listener was open: its child holds the
    // listener until it execs, and a connection made meanwhile is reset when it does (CI saw
    // this once). Wait until nobody listens, as on a socket whose daemon died.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the stale socket still listens"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let daemon = Daemon::start(&socket, DaemonOptions::default());
    assert_eq!(get(&daemon.socket, "/healthz").status, 200);

    let second = modelhost(&["serve", "--socket", socket.to_str().unwrap()]);
    assert_eq!(second.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&second.stderr).contains("already serving"));
    assert_eq!(
        get(&daemon.socket, "/healthz").status,
        200,
        "the first daemon survives"
    );

    let file = dir.path("not-a-socket");
    std::fs::write(&file, "precious").unwrap();
    let third = modelhost(&["serve", "--socket", file.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&third.stderr).contains("not a socket"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
}

#[test]
fn the_same_file_twice_shares_one_mapping() {
    let dir = Scratch::new("share");
    let daemon = Daemon::start(&dir.path("control.sock"), DaemonOptions::default());
    let events = subscribe(&daemon.socket);
    load(
        &daemon.socket,
        json!({ "path": gemma_model(), "name": "a" }),
    );
    until_settled(&events, "a");
    let before = get(&daemon.socket, "/v1/status").json()["host_memory"]["rss_bytes"]
        .as_u64()
        .unwrap();
    let b = load(
        &daemon.socket,
        json!({ "path": gemma_model(), "name": "b" }),
    );
    assert_eq!(b["shares_mapping_with"], "a");
    until_settled(&events, "b");
    let after = get(&daemon.socket, "/v1/status").json()["host_memory"]["rss_bytes"]
        .as_u64()
        .unwrap();
    let file_bytes = std::fs::metadata(gemma_model()).unwrap().len();
    assert!(
        after < before + file_bytes / 10,
        "rss grew from {before} to {after}"
    );

    // Unloading one leaves the other serving from the shared pages.
    assert_eq!(
        request(&daemon.socket, "DELETE", "/v1/models/a", None).status,
        200
    );
    let unloaded = events.recv_timeout(EVENT_WAIT).unwrap();
    assert_eq!(
        (unloaded["type"].as_str(), unloaded["model"].as_str()),
        (Some("model_unloaded"), Some("a"))
    );
    let b = get(&daemon.socket, "/v1/models/b").json();
    assert_eq!(b["state"], "ready");
    assert!(b["residency"]["resident_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn sighup_reloads_the_allow_list() {
    let dir = Scratch::new("hup");
    let model = gemma_model();
    let config = dir.path("config.toml");
    std::fs::write(&config, "model_dirs = [\"/nonexistent\"]\n").unwrap();
    let daemon = Daemon::start(
        &dir.path("control.sock"),
        DaemonOptions {
            config: Some(&config),
            ..Default::default()
        },
    );
    let body = json!({ "path": model, "prefault": false });
    assert_eq!(
        request(&daemon.socket, "POST", "/v1/models", Some(&body)).status,
        403
    );

    let allowed = model.parent().unwrap().canonicalize().unwrap();
    std::fs::write(&config, format!("model_dirs = [{allowed:?}]\n")).unwrap();
    daemon.signal(Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = request(&daemon.socket, "POST", "/v1/models", Some(&body));
        if response.status == 201 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not take effect: {}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(daemon.log_text().contains("configuration reloaded"));
}

#[test]
fn the_cli_and_curl_drive_the_daemon() {
    let dir = Scratch::new("cli");
    let daemon = Daemon::start(&dir.path("control.sock"), DaemonOptions::default());
    let socket = daemon.socket.to_str().unwrap();
    let model = gemma_model();

    let out = modelhost(&[
        "load",
        model.to_str().unwrap(),
        "--name",
        "g",
        "--socket",
        socket,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("loaded g (241.4 MiB, 236 tensors, gemma3)"),
        "{stdout}"
    );
    assert!(stdout.contains("241.4 MiB resident"), "{stdout}");

    let ls = modelhost(&["ls", "--json", "--socket", socket]);
    let models: Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(models[0]["name"], "g");
    let table = String::from_utf8(modelhost(&["ls", "--socket", socket]).stdout).unwrap();
    assert!(table.lines().nth(1).unwrap().starts_with("g "), "{table}");

    let status: Value =
        serde_json::from_slice(&modelhost(&["status", "--json", "--socket", socket]).stdout)
            .unwrap();
    assert_eq!(status["models_ready"], 1);
    assert_eq!(status["pid"], daemon.pid());
    let ps = String::from_utf8(modelhost(&["ps", "--socket", socket]).stdout).unwrap();
    assert!(ps.contains("host"), "{ps}");

    for path in [
        "/healthz",
        "/metrics",
        "/v1/status",
        "/v1/models",
        "/v1/models/g",
        "/v1/openapi.json",
    ] {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "--fail",
                "--unix-socket",
                socket,
                &format!("http://localhost{path}"),
            ])
            .output()
            .expect("curl is installed");
        assert!(
            out.status.success(),
            "curl {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let out = modelhost(&["unload", "g", "--socket", socket]);
    assert!(out.status.success());
    let out = modelhost(&["unload", "g", "--socket", socket]);
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("no model named \"g\" (model_not_found, HTTP 404)"));

    let missing = dir.path("nobody-home.sock");
    let out = modelhost(&["status", "--socket", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach modelhost"));
}

/// A daemon that cannot lock memory: as root, one running as nobody (no CAP_IPC_LOCK, the default
/// RLIMIT_MEMLOCK of a few MiB); otherwise this user, whose limit is checked to be too low.
fn unprivileged_daemon(dir: &Scratch) -> Option<(Daemon, std::path::PathBuf)> {
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let model = dir.path("gemma.gguf");
    std::fs::copy(gemma_model(), &model).unwrap();
    let uid = nix::unistd::geteuid().is_root().then_some(65534);
    if uid.is_none() {
        let (soft, _) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK).unwrap();
        if soft >= std::fs::metadata(&model).unwrap().len() {
            return None; // this user may lock the whole model; nothing to refuse
        }
    }
    let daemon = Daemon::start(
        &dir.path("run/control.sock"),
        DaemonOptions {
            uid,
            ..Default::default()
        },
    );
    Some((daemon, model))
}

#[test]
fn mlock_beyond_the_limit_fails_clearly_or_falls_back_when_asked() {
    let dir = Scratch::new("mlock");
    let Some((daemon, model)) = unprivileged_daemon(&dir) else {
        panic!("this user can lock 253 MB; run the tests as root or with a lower RLIMIT_MEMLOCK");
    };
    let events = subscribe(&daemon.socket);

    load(
        &daemon.socket,
        json!({ "path": model, "name": "strict", "mlock": "on", "prefault": false }),
    );
    let settled = until_settled(&events, "strict");
    let last = settled.last().unwrap();
    assert_eq!(last["state"], "failed", "{settled:?}");
    let error = last["error"].as_str().unwrap();
    assert!(
        error.contains("RLIMIT_MEMLOCK") && error.contains("LimitMEMLOCK"),
        "{error}"
    );
    let strict = get(&daemon.socket, "/v1/models/strict").json();
    assert_eq!(strict["state"], "failed");
    assert_eq!(strict["error"], error);

    load(
        &daemon.socket,
        json!({ "path": model, "name": "lenient", "mlock": "try", "prefault": false }),
    );
    let settled = until_settled(&events, "lenient");
    assert_eq!(settled.last().unwrap()["state"], "ready");
    let lenient = get(&daemon.socket, "/v1/models/lenient").json();
    assert_eq!(lenient["residency"]["locked_bytes"], 0);
    assert!(
        lenient["warnings"][0]
            .as_str()
            .unwrap()
            .contains("not locked"),
        "{lenient}"
    );
}

#[test]
fn the_watchdog_is_fed_when_systemd_asks() {
    let dir = Scratch::new("watchdog");
    let notify_path = dir.path("notify.sock");
    let listener = UnixDatagram::bind(&notify_path).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _daemon = Daemon::start(
        &dir.path("control.sock"),
        DaemonOptions {
            env: vec![
                ("NOTIFY_SOCKET", notify_path.display().to_string()),
                ("WATCHDOG_USEC", "200000".into()),
            ],
            ..Default::default()
        },
    );
    let mut buf = [0u8; 512];
    let mut pings = 0;
    while pings < 3 {
        let n = listener.recv(&mut buf).expect("notifications keep coming");
        if &buf[..n] == b"WATCHDOG=1" {
            pings += 1;
        }
    }
}

#[test]
fn loads_are_planned_with_the_same_planner_and_refused_when_nothing_fits() {
    let dir = Scratch::new("planned");
    let daemon = Daemon::start(&dir.path("control.sock"), DaemonOptions::default());
    let socket = &daemon.socket;
    let model = gemma_model();

    let info = load(
        socket,
        json!({ "path": model, "name": "planned", "prefault": false, "devices": ["cuda:0=24GiB"], "placement": { "ctx": 8192 } }),
    );
    let plan = &info["plan"];
    assert_eq!(
        plan["replicas"][0]["devices"][0]["layers"]
            .as_array()
            .unwrap()
            .len(),
        18
    );
    assert_eq!(
        plan["replicas"][0]["devices"][0]["kv_bytes"],
        3 * 8192 * 1024 + 15 * 1024 * 1024
    );
    assert_eq!(
        get(socket, "/v1/models/planned").json()["plan"],
        *plan,
        "the plan shows in the status"
    );

    let too_big = request(
        socket,
        "POST",
        "/v1/models",
        Some(&json!({ "path": model, "name": "big", "devices": ["cpu=64MiB"] })),
    );
    assert_eq!(
        (too_big.status, too_big.error_code().as_str()),
        (422, "plan_failed")
    );
    assert!(too_big.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("bytes short"));

    let bad = request(
        socket,
        "POST",
        "/v1/models",
        Some(&json!({ "path": model, "name": "bad", "devices": ["gpu0"] })),
    );
    assert_eq!(
        (bad.status, bad.error_code().as_str()),
        (400, "invalid_device")
    );

    if !modelhost_worker::devices::cuda_driver_present() {
        let no_gpu = request(
            socket,
            "POST",
            "/v1/models",
            Some(&json!({ "path": model, "name": "gpu", "devices": ["cuda:0"] })),
        );
        assert_eq!(
            (no_gpu.status, no_gpu.error_code().as_str()),
            (422, "device_unavailable")
        );
        assert!(no_gpu.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no CUDA driver"));
        let out = modelhost(&[
            "load",
            model.to_str().unwrap(),
            "--name",
            "gpu",
            "--devices",
            "cuda:0",
            "--socket",
            socket.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr.contains("cuda:0: no CUDA driver on this machine")
                && stderr.contains("device_unavailable"),
            "{stderr}"
        );
    }
    assert!(
        get(socket, "/v1/models/big").status == 404 && get(socket, "/v1/models/gpu").status == 404
    );
    assert_eq!(get(socket, "/v1/models/planned").json()["state"], "ready");
}

/// Status is cached briefly for probes, but never across a change: right after a load, status
/// reports the new model and its mapping.
#[test]
fn status_is_never_stale_across_a_load_or_unload() {
    let dir = Scratch::new("fresh-status");
    let daemon = Daemon::start(&dir.path("control.sock"), DaemonOptions::default());
    let socket = &daemon.socket;
    assert_eq!(get(socket, "/v1/status").json()["models"], 0);
    load(
        socket,
        json!({ "path": gemma_model(), "name": "g", "prefault": false }),
    );
    let status = get(socket, "/v1/status").json();
    assert_eq!(
        (status["models"].as_u64(), status["mapped_bytes"].as_u64()),
        (Some(1), Some(253_113_024))
    );
    assert_eq!(request(socket, "DELETE", "/v1/models/g", None).status, 200);
    assert_eq!(get(socket, "/v1/status").json()["models"], 0);
}
