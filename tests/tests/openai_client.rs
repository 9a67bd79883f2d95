//! The official `openai` Python client (from PyPI, unmodified; `scripts/pyenv.sh` installs it
//! into target/pyenv) against a real host over its TCP listener: `scripts/openai_check.py` runs
//! a whole and a streamed chat completion, a completion with logprobs, the model list, three
//! error cases, and a stream closed early, which must free its slot.

use std::net::TcpListener;
use std::process::Command;

use modelhost_tests::daemon::{Daemon, DaemonOptions};
use modelhost_tests::models::{load, wait_for};
use modelhost_tests::{gemma_model, workspace_root, Scratch};
use serde_json::json;

#[test]
fn the_official_openai_client_works_unmodified() {
    let python = workspace_root().join("target/pyenv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/pyenv.sh (scripts/test.sh does)",
        python.display()
    );
    let dir = Scratch::new("openai-client");
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = dir.path("config.toml");
    std::fs::write(
        &config,
        format!("http_listen = \"{addr}\"\napi_key = \"sk-local\"\n"),
    )
    .unwrap();
    let daemon = Daemon::start(
        &dir.path("c.sock"),
        DaemonOptions {
            config: Some(&config),
            ..Default::default()
        },
    );
    load(
        &daemon.socket,
        &json!({
            "path": gemma_model(), "name": "gemma", "spawn_workers": true,
            "devices": ["cpu", "cpu"],
            "placement": { "ctx": 1024, "parallel": 2, "mode": "replicate" },
            "worker_options": { "threads": 1 },
        }),
    );
    wait_for(&daemon.socket, "gemma", "both workers computing", |m| {
        m["serving"]["workers_computing"].as_array().map(Vec::len) == Some(2)
    });
    let out = Command::new(&python)
        .arg(workspace_root().join("scripts/openai_check.py"))
        .args([
            "--base-url",
            &format!("http://{addr}/v1"),
            "--api-key",
            "sk-local",
            "--model",
            "gemma",
        ])
        .output()
        .expect("run scripts/openai_check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}\nhost log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.log_text()
    );
    assert!(stdout.contains(": 0 failed"), "{stdout}");
}
