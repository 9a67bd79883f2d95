//! Scaling a running model with real processes: workers added attach to the pages in RAM and
//! take requests; workers removed hand back what they had not begun, finish what they had, and
//! stop; a model scaled to none refuses at once and comes back when scaled up again.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Instant;

use modelhost_tests::gateway::host;
use modelhost_tests::http::{get, request, SseStream};
use modelhost_tests::models::{gone, wait_for};
use serde_json::{json, Value};

fn scale(socket: &Path, body: Value) -> modelhost_tests::http::Response {
    request(socket, "POST", "/v1/models/gemma/scale", Some(&body))
}

/// A streamed completion of exactly `tokens` tokens (greedy, end of text ignored).
fn open_stream(socket: &Path, prompt: &str, tokens: u32) -> SseStream {
    SseStream::open(
        UnixStream::connect(socket).unwrap(),
        "/v1/completions",
        &json!({
            "model": "gemma", "prompt": prompt, "max_tokens": tokens, "temperature": 0,
            "ignore_eos": true, "stream": true, "stream_options": { "include_usage": true },
        }),
        &[],
    )
}

/// Reads a stream to its end: (finish reason, completion tokens).
fn finish(stream: &mut SseStream) -> (String, u64) {
    assert_eq!(stream.status, 200);
    let chunks = stream.json_chunks();
    let reason = chunks
        .iter()
        .rev()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str())
        .unwrap_or_else(|| panic!("no finish reason in {chunks:?}"))
        .to_owned();
    let usage = chunks.last().unwrap()["usage"]["completion_tokens"]
        .as_u64()
        .unwrap();
    (reason, usage)
}

/// Waits for the stream's first text: its request is then answering on a worker.
fn first_text(stream: &mut SseStream) {
    loop {
        let data = stream
            .next_data()
            .expect("the stream ended before any text");
        let chunk: Value = serde_json::from_str(&data).unwrap();
        if chunk["choices"][0]["text"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
        {
            return;
        }
    }
}

fn worker_ids(model: &Value) -> Vec<String> {
    model["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_model_scales_up_and_down_and_removed_workers_drain_first() {
    // One slot per worker, so that where each request runs is known.
    let h = host("scale", 1, 1, 2048, "");
    let socket = &h.daemon.socket;

    // Bad requests are refused by name, and change nothing.
    let r = scale(socket, json!({ "workers": 65 }));
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_scale"));
    let r = scale(socket, json!({ "workers": 2, "threads": 1 }));
    assert_eq!(r.status, 400, "an unknown field");
    let r = request(
        socket,
        "POST",
        "/v1/models/nothing/scale",
        Some(&json!({ "workers": 1 })),
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (404, "model_not_found")
    );
    let r = scale(socket, json!({ "workers": 2, "device": "tpu:0" }));
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_scale"));
    assert_eq!(
        worker_ids(&get(socket, "/v1/models/gemma").json()),
        ["gemma-0"]
    );

    // Up: the new worker attaches to the pages already in RAM and computes.
    let started = Instant::now();
    let r = scale(socket, json!({ "workers": 2 }));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let report = r.json();
    assert_eq!(report["workers_before"], 1);
    assert_eq!(report["added"], json!(["gemma-1"]));
    let model = wait_for(socket, "gemma", "two workers computing", |m| {
        m["serving"]["workers_computing"].as_array().map(Vec::len) == Some(2)
    });
    println!("scale 1 -> 2: computing after {:?}", started.elapsed());
    assert_eq!(model["plan"]["replicas"].as_array().unwrap().len(), 2);
    assert_eq!(
        scale(socket, json!({ "workers": 2 })).json()["added"],
        json!([])
    );

    // Down, while both answer: a decoding stream on gemma-0 (the first free, lowest id), and on
    // gemma-1 a long prompt still in its prefill. The newer of two equally busy workers goes;
    // its request has no token yet, so it is handed back, and runs on gemma-0 afterwards.
    let mut decoding = open_stream(socket, "Once upon a time", 40);
    first_text(&mut decoding);
    let long_prompt = "the quick brown fox jumps over the lazy dog ".repeat(170);
    let mut prefilling = open_stream(socket, &long_prompt, 4);
    wait_for(socket, "gemma", "both workers busy", |m| {
        m["serving"]["running"] == 2
    });
    let r = scale(socket, json!({ "workers": 1 }));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let report = r.json();
    assert_eq!(report["draining"], json!(["gemma-1"]), "{report}");
    assert_eq!(
        report["handed_back"], 1,
        "the long prompt was still in its prefill: {report}"
    );
    assert_eq!(finish(&mut decoding), ("length".into(), 40));
    assert_eq!(finish(&mut prefilling), ("length".into(), 4));
    let model = wait_for(socket, "gemma", "gemma-1 gone", |m| {
        worker_ids(m) == ["gemma-0"]
    });
    assert_eq!(model["plan"]["replicas"].as_array().unwrap().len(), 1);

    // To none, while gemma-0 answers: its stream runs to the end while it drains, and a new
    // request is refused at once rather than queued behind a worker that is leaving.
    let mut answering = open_stream(socket, "The capital of France", 48);
    first_text(&mut answering);
    let pid = get(socket, "/v1/models/gemma").json()["workers"][0]["pid"]
        .as_u64()
        .unwrap();
    let report = scale(socket, json!({ "workers": 0 })).json();
    assert_eq!(report["draining"], json!(["gemma-0"]), "{report}");
    assert_eq!(report["handed_back"], 0);
    let model = get(socket, "/v1/models/gemma").json();
    assert_eq!(model["workers"][0]["draining"], true, "{model:#}");
    let refused = request(
        socket,
        "POST",
        "/v1/completions",
        Some(&json!({ "model": "gemma", "prompt": "Hi", "max_tokens": 1 })),
    );
    assert_eq!(
        refused.status,
        503,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    assert_eq!(finish(&mut answering), ("length".into(), 48));
    wait_for(socket, "gemma", "no workers", |m| worker_ids(m).is_empty());
    assert!(gone(pid), "the drained worker's process has exited");

    // And up again: the new worker has an id no earlier process had, and serves.
    let report = scale(socket, json!({ "workers": 1 })).json();
    assert_eq!(report["added"], json!(["gemma-2"]), "{report}");
    wait_for(socket, "gemma", "gemma-2 computing", |m| {
        m["serving"]["workers_computing"] == json!(["gemma-2"])
    });
    let r = request(
        socket,
        "POST",
        "/v1/completions",
        Some(&json!({ "model": "gemma", "prompt": "Hi", "max_tokens": 2 })),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let worker = r
        .headers
        .iter()
        .find(|(k, _)| k == "x-modelhost-worker")
        .map(|(_, v)| v.clone());
    assert_eq!(worker.as_deref(), Some("gemma-2"));
}

/// The worker's resident set: its private memory and the model pages it has mapped in.
fn worker_rss(socket: &Path) -> u64 {
    let model = get(socket, "/v1/models/gemma").json();
    model["workers"][0]["memory"]["rss_bytes"].as_u64().unwrap()
}

#[test]
fn workers_started_during_a_load_leave_the_pages_to_the_host_and_serve() {
    let dir = modelhost_tests::Scratch::new("serve-while-loading");
    let daemon = modelhost_tests::daemon::Daemon::start(
        &dir.path("c.sock"),
        modelhost_tests::daemon::DaemonOptions::default(),
    );
    let socket = &daemon.socket;
    let file_bytes = std::fs::metadata(modelhost_tests::gemma_model())
        .unwrap()
        .len();
    // Started during the load (the default): Ready without faulting the model in, so its
    // resident set is its own memory, far below the file; the first request faults in what
    // it reads.
    modelhost_tests::models::load(
        socket,
        &json!({ "path": modelhost_tests::gemma_model(), "name": "gemma", "spawn_workers": true,
                 "devices": ["cpu"], "placement": { "ctx": 256 }, "worker_options": { "threads": 1 } }),
    );
    let model = wait_for(socket, "gemma", "the worker computing", |m| {
        m["serving"]["workers_computing"].as_array().map(Vec::len) == Some(1)
    });
    let lazy = worker_rss(socket);
    assert!(
        lazy < file_bytes / 2,
        "{lazy} bytes resident in a lazy worker: {model:#}"
    );
    let r = request(
        socket,
        "POST",
        "/v1/completions",
        Some(&json!({ "model": "gemma", "prompt": "Hi", "max_tokens": 1 })),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let after = worker_rss(socket);
    assert!(
        after > file_bytes / 2,
        "a forward pass reads nearly every weight: {after}"
    );
    let model = wait_for(socket, "gemma", "the load complete", |m| {
        m["state"] == "ready"
    });
    assert_eq!(model["serving_while_loading"], false);

    // Started after the load: the worker faults every page in before Ready, as before.
    request(socket, "DELETE", "/v1/models/gemma?force=true", None);
    modelhost_tests::models::load(
        socket,
        &json!({ "path": modelhost_tests::gemma_model(), "name": "gemma", "spawn_workers": true,
                 "devices": ["cpu"], "placement": { "ctx": 256 }, "worker_options": { "threads": 1 },
                 "serve_while_loading": false }),
    );
    wait_for(socket, "gemma", "the worker computing", |m| {
        m["serving"]["workers_computing"].as_array().map(Vec::len) == Some(1)
    });
    let eager = worker_rss(socket);
    assert!(
        eager > file_bytes * 9 / 10,
        "{eager} bytes resident in an eager worker"
    );
}
