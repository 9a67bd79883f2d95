//! The official `openai` Python client (from PyPI, unmodified; `scripts/pyenv.sh` installs it
//! into target/pyenv) against a real host over its TCP listener: `scripts/openai_check.py` runs
//! a whole and a streamed chat completion, a completion with logprobs, the model list, three
//! error cases, and a stream closed early, which must free its slot.

use std::process::Command;

use modelhost_tests::gateway::{host, KEY};
use modelhost_tests::workspace_root;

#[test]
fn the_official_openai_client_works_unmodified() {
    let python = workspace_root().join("target/pyenv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/pyenv.sh (scripts/test.sh does)",
        python.display()
    );
    let h = host("openai-client", 2, 2, 1024, "");
    let (daemon, addr) = (&h.daemon, h.addr);
    let out = Command::new(&python)
        .arg(workspace_root().join("scripts/openai_check.py"))
        .args([
            "--base-url",
            &format!("http://{addr}/v1"),
            "--api-key",
            KEY,
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
