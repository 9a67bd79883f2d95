//! Helpers for the multi-process integration tests: finding the built binaries and the reference
//! model, and running commands.
//!
//! These tests run the real `modelhost` binaries. `cargo test --workspace` (and `scripts/test.sh`)
//! builds them before it runs any test, because the host and worker packages have integration
//! tests of their own. A lone `cargo test -p modelhost-tests` does not rebuild another package's
//! binaries: it may find none (the helpers then say what to build) or, worse, stale ones. Run
//! `cargo build --workspace --bins` first.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits inside the workspace")
        .to_owned()
}

/// The path of a workspace binary in the same target profile as this test.
pub fn binary(name: &str) -> PathBuf {
    // The test executable lives in target/<profile>/deps/; binaries live in target/<profile>/.
    let exe = std::env::current_exe().expect("current test executable");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable inside target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace --bins` (or `cargo test --workspace`) first",
        path.display()
    );
    path
}

/// The reference model: `$MODELHOST_GEMMA`, else `models/gemma-3-270m-q4_k_m.gguf`.
///
/// Tests that need it fail, rather than skip, when it is absent: a skipped test proves nothing.
pub fn gemma_model() -> PathBuf {
    let path = std::env::var_os("MODELHOST_GEMMA")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("models/gemma-3-270m-q4_k_m.gguf"));
    assert!(
        path.exists(),
        "{} is missing; run scripts/fetch-models.sh",
        path.display()
    );
    path
}

/// Runs `modelhost` with `args` and returns its output, failing the test if it fails.
pub fn modelhost_ok(args: &[&str]) -> String {
    let out = run(Command::new(binary("modelhost")).args(args));
    assert!(
        out.status.success(),
        "modelhost {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn run(command: &mut Command) -> Output {
    command.output().expect("spawn command")
}

pub mod daemon;
pub mod gateway;
pub mod http;
pub mod reference;

/// A scratch directory removed on drop, world-traversable so a daemon running as another user can
/// use it.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("mh-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .expect("chmod scratch dir");
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `modelhost` with `args` and returns its output, whatever the exit status.
pub fn modelhost(args: &[&str]) -> Output {
    run(Command::new(binary("modelhost")).args(args))
}

/// Polling a model through the API, and checking on processes.
pub mod models {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use serde_json::Value;

    use crate::http::get;

    /// POSTs a load and fails the test unless the host answers 201 Created; returns the model.
    pub fn load(socket: &Path, body: &Value) -> Value {
        let response = crate::http::request(socket, "POST", "/v1/models", Some(body));
        assert_eq!(
            response.status,
            201,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        response.json()
    }

    /// Loads `model` as `name` with one spawned worker on `device`, at a 4096-token context in
    /// replicate mode; the fields of `extra` replace or add to the request's.
    pub fn load_on_device(socket: &Path, model: &Path, name: &str, device: &str, extra: Value) {
        let mut body = serde_json::json!({
            "path": model, "name": name, "spawn_workers": true, "devices": [device],
            "placement": { "ctx": 4096, "mode": "replicate" },
        });
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        load(socket, &body);
    }

    /// Polls `GET /v1/models/NAME` until `done` holds, or fails the test after 30 s.
    pub fn wait_for(socket: &Path, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let model = get(socket, &format!("/v1/models/{name}")).json();
            if done(&model) {
                return model;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {model:#}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The model is ready with exactly `n` workers, all ready.
    pub fn ready_with(model: &Value, n: usize) -> bool {
        let workers = model["workers"].as_array().map_or(&[][..], Vec::as_slice);
        model["state"] == "ready"
            && workers.len() == n
            && workers.iter().all(|w| w["state"] == "ready")
    }

    /// The process has exited: gone from /proc, or a zombie waiting for its parent.
    pub fn gone(pid: u64) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        }
    }
}

/// The stand-in libcuda (`tests/fixtures/standin-libcuda.c`), for running modelhost's CUDA path
/// on a machine without a GPU.
pub mod standin_cuda {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use crate::workspace_root;

    /// Builds the stand-in once per test process and returns the folder that holds
    /// `libcuda.so`: put it first in `LD_LIBRARY_PATH` of a new process.
    pub fn library_dir() -> PathBuf {
        static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        BUILT
            .get_or_init(|| {
                let dir = std::env::temp_dir()
                    .join(format!("modelhost-standin-cuda-{}", std::process::id()));
                std::fs::create_dir_all(&dir).expect("create the stand-in's folder");
                let source = workspace_root().join("tests/fixtures/standin-libcuda.c");
                let out = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
                    .args(["-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o"])
                    .arg(dir.join("libcuda.so"))
                    .arg(&source)
                    .output()
                    .expect("run the C compiler (cc) for the stand-in libcuda");
                assert!(
                    out.status.success(),
                    "building the stand-in libcuda failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                dir
            })
            .clone()
    }

    /// The counters the stand-in wrote for process `pid` into the trace folder `dir`.
    pub fn trace(dir: &Path, pid: u64) -> BTreeMap<String, String> {
        let path = dir.join(format!("{pid}.trace"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("no stand-in trace at {}: {e}", path.display()));
        text.lines()
            .filter_map(|line| line.split_once(' '))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// One counter of a trace, as a number.
    pub fn counter(trace: &BTreeMap<String, String>, key: &str) -> u64 {
        trace
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no counter {key} in {trace:?}"))
    }
}
