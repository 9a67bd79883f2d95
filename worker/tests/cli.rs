//! The worker binary's own failure modes, before any host is involved.

use std::process::Command;

fn worker(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_modelhost-worker"))
        .args(args)
        .output()
        .expect("run modelhost-worker");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn without_a_host_it_says_what_to_give() {
    let (code, err) = worker(&[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("give --fd"), "{err}");
}

#[test]
fn an_unreachable_host_socket_is_named() {
    let (code, err) = worker(&["--connect", "/nonexistent/modelhost.sock", "--model", "m"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("/nonexistent/modelhost.sock") && err.contains("No such file"),
        "{err}"
    );
}

#[test]
fn a_descriptor_that_is_not_a_socket_fails_the_handshake_cleanly() {
    // fd 0 is /dev/null here: the handshake reads end-of-file at once.
    let out = Command::new(env!("CARGO_BIN_EXE_modelhost-worker"))
        .args(["--fd", "0"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("handshake"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
