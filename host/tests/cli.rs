//! The `modelhost` binary, run as a user runs it: `synth`, then `inspect` in both output forms,
//! on single files, split models and broken files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn modelhost(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_modelhost"))
        .args(args)
        .output()
        .expect("run modelhost")
}

fn ok_stdout(args: &[&str]) -> String {
    let out = modelhost(args);
    assert!(
        out.status.success(),
        "modelhost {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Runs a command that must fail cleanly: exit code 1, one message on stderr, no panic.
fn failure(args: &[&str]) -> String {
    let out = modelhost(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "modelhost {args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.starts_with("modelhost: "), "{stderr}");
    stderr
}

fn inspect_json(path: &Path) -> Value {
    let text = ok_stdout(&["inspect", path.to_str().unwrap(), "--json", "--tensors"]);
    serde_json::from_str(&text).expect("inspect --json prints JSON")
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("modelhost-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn synth_then_inspect_reports_the_model_it_wrote() {
    let dir = TempDir::new("synth");
    let path = dir.path("m.gguf");
    let p = path.to_str().unwrap();
    ok_stdout(&[
        "synth",
        "--out",
        p,
        "--size",
        "8MiB",
        "--types",
        "q8_0,f16,q4_k",
        "--ctx",
        "2048",
    ]);
    let report = inspect_json(&path);

    let blocks = report["hyper_params"]["block_count"].as_u64().unwrap();
    assert!(blocks >= 1);
    assert_eq!(report["architecture"], "llama");
    assert_eq!(report["context_length"], 2048);
    assert_eq!(report["vocab_size"], 4096);
    let types: Vec<&str> = report["tensor_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["f32", "f16", "q8_0", "q4_K"]);
    // token_embd, the blocks, output_norm, output.
    assert_eq!(
        report["layers"].as_array().unwrap().len() as u64,
        blocks + 3
    );
    let file_len = std::fs::metadata(&path).unwrap().len();
    assert_eq!(report["file_bytes"], file_len);
    let size_error = (file_len as f64 - 8.0 * 1024.0 * 1024.0).abs() / (8.0 * 1024.0 * 1024.0);
    assert!(size_error < 0.1, "asked for 8 MiB, wrote {file_len} bytes");

    // The same seed writes the same bytes.
    let again = dir.path("again.gguf");
    ok_stdout(&[
        "synth",
        "--out",
        again.to_str().unwrap(),
        "--size",
        "8MiB",
        "--types",
        "q8_0,f16,q4_k",
        "--ctx",
        "2048",
    ]);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(&again).unwrap()
    );

    let text = ok_stdout(&["inspect", p]);
    for expected in [
        "llama",
        "context       2048 tokens",
        "vocabulary    4096 tokens",
        "blk.0",
        "q4_K",
        "single file",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn every_tensor_type_and_value_type_survives_synth_and_inspect() {
    let dir = TempDir::new("all");
    let path = dir.path("all.gguf");
    ok_stdout(&[
        "synth",
        "--out",
        path.to_str().unwrap(),
        "--size",
        "40MiB",
        "--types",
        "all",
        "--every-value-type",
    ]);
    let report = inspect_json(&path);
    let types = report["tensor_types"].as_array().unwrap();
    assert_eq!(types.len(), 35, "every live ggml type");
    let text = ok_stdout(&["inspect", path.to_str().unwrap(), "--json", "--metadata"]);
    let meta: Value = serde_json::from_str(&text).unwrap();
    let value_types: std::collections::BTreeSet<&str> = meta["metadata"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["type"].as_str().unwrap())
        .collect();
    assert_eq!(value_types.len(), 13, "{value_types:?}");
}

#[test]
fn split_models_open_from_any_shard_and_missing_shards_are_named() {
    let dir = TempDir::new("split");
    let path = dir.path("s.gguf");
    ok_stdout(&[
        "synth",
        "--out",
        path.to_str().unwrap(),
        "--size",
        "6MiB",
        "--split",
        "3",
    ]);
    let shard2 = dir.path("s-00002-of-00003.gguf");
    let report = inspect_json(&shard2);
    assert_eq!(report["split"]["count"], 3);
    let per_shard: u64 = report["split"]["tensors_per_shard"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(report["tensor_count"], per_shard);
    assert_eq!(report["files"].as_array().unwrap().len(), 3);
    let shards: std::collections::BTreeSet<u64> = report["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["shard"].as_u64().unwrap())
        .collect();
    assert_eq!(shards.len(), 3);

    std::fs::remove_file(dir.path("s-00003-of-00003.gguf")).unwrap();
    let err = failure(&[
        "inspect",
        dir.path("s-00001-of-00003.gguf").to_str().unwrap(),
    ]);
    assert!(
        err.contains("s-00003-of-00003.gguf") && err.contains("No such file"),
        "{err}"
    );

    std::fs::copy(&shard2, dir.path("renamed.gguf")).unwrap();
    let err = failure(&["inspect", dir.path("renamed.gguf").to_str().unwrap()]);
    assert!(
        err.contains("is shard 1 of 3") && err.contains("-NNNNN-of-NNNNN"),
        "{err}"
    );
}

#[test]
fn bad_files_get_clear_errors() {
    let dir = TempDir::new("bad");
    let err = failure(&["inspect", dir.path("missing.gguf").to_str().unwrap()]);
    assert!(
        err.contains("missing.gguf") && err.contains("No such file"),
        "{err}"
    );

    let err = failure(&["inspect", dir.0.to_str().unwrap()]);
    assert!(err.contains("not a regular file"), "{err}");

    let text = dir.path("notes.txt");
    std::fs::write(&text, "these are not weights\n").unwrap();
    let err = failure(&["inspect", text.to_str().unwrap()]);
    assert!(
        err.contains("not a GGUF file") && err.contains("header.magic at byte 0"),
        "{err}"
    );

    let empty = dir.path("empty.gguf");
    std::fs::write(&empty, "").unwrap();
    let err = failure(&["inspect", empty.to_str().unwrap()]);
    assert!(err.contains("file ends early"), "{err}");

    // A real model cut short inside its data section names the tensor that runs past the end.
    let good = dir.path("good.gguf");
    ok_stdout(&["synth", "--out", good.to_str().unwrap(), "--size", "2MiB"]);
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = failure(&["inspect", cut.to_str().unwrap()]);
    assert!(
        err.contains("run past the end of the") && err.contains(".offset at byte"),
        "{err}"
    );

    let err = failure(&[
        "synth",
        "--out",
        dir.path("x.gguf").to_str().unwrap(),
        "--types",
        "q4_2",
    ]);
    assert!(err.contains("unknown ggml type \"q4_2\""), "{err}");
    let err = failure(&["inspect", good.to_str().unwrap(), "--page-size", "1000"]);
    assert!(err.contains("--page-size 1000"), "{err}");
}
