//! The host under a real process manager (supervisord, from Debian's `supervisor` package):
//! `kill -9` on the host is followed by a restart, and its configured model and workers come
//! back Ready.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use modelhost_tests::http::try_get_json;
use modelhost_tests::{binary, gemma_model, Scratch};

/// The tool must be there in CI (`.ci/run` installs it); elsewhere its absence skips, loudly.
fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("MODELHOST_REQUIRE_DEPLOY_TOOLS").as_deref() != Ok("1"),
            "{tool} is required (apt-get install supervisor)"
        );
        eprintln!("SKIPPED: {tool} is not installed (apt-get install supervisor)");
    }
    found
}

struct Supervisord(Child);

impl Drop for Supervisord {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The model "g" with its two workers ready, as the host now serving reports it; and that host's pid.
fn ready(socket: &Path) -> Option<(u64, Vec<u64>)> {
    if !socket.exists() {
        return None;
    }
    let status = try_get_json(socket, "/v1/status")?;
    let model = try_get_json(socket, "/v1/models/g")?;
    let workers = model["workers"].as_array()?;
    let all_ready = model["state"] == "ready"
        && workers.len() == 2
        && workers.iter().all(|w| w["state"] == "ready");
    all_ready.then(|| {
        (
            status["pid"].as_u64().unwrap_or(0),
            workers.iter().filter_map(|w| w["pid"].as_u64()).collect(),
        )
    })
}

fn wait_ready(socket: &Path, what: &str, until: impl Fn(u64) -> bool) -> (u64, Vec<u64>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((host, workers)) = ready(socket).filter(|(host, _)| until(*host)) {
            return (host, workers);
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn supervisord_restarts_a_killed_host_and_its_model_and_workers_come_back() {
    if !have("supervisord") {
        return;
    }
    let dir = Scratch::new("supervisord");
    let socket = dir.path("control.sock");
    std::fs::write(
        dir.path("config.toml"),
        format!(
            "[[models]]\npath = {:?}\nname = \"g\"\ndevices = [\"cpu\", \"cpu\"]\nspawn_workers = true\nplacement = {{ ctx = 4096, mode = \"replicate\" }}\n",
            gemma_model()
        ),
    )
    .unwrap();
    let d = dir.0.display();
    let conf = dir.path("supervisord.conf");
    std::fs::write(
        &conf,
        format!(
            "[supervisord]\nnodaemon=true\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\nchildlogdir={d}\n\
             [unix_http_server]\nfile={d}/supervisor.sock\n\
             [rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\
             [supervisorctl]\nserverurl=unix://{d}/supervisor.sock\n\
             [program:modelhost]\ncommand={} serve --socket {} --config {d}/config.toml\n\
             autorestart=true\nstartsecs=1\nstartretries=10\nstopsignal=TERM\nstopwaitsecs=10\n\
             redirect_stderr=true\nstdout_logfile={d}/modelhost.log\n",
            binary("modelhost").display(),
            socket.display()
        ),
    )
    .unwrap();
    let supervisord = Supervisord(
        Command::new("supervisord")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let (host, workers) = wait_ready(&socket, "the first host, its model and workers", |_| true);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(host as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed = Instant::now();
    let (new_host, new_workers) = wait_ready(&socket, "the restarted host", |pid| pid != host);
    println!(
        "host {host} killed; host {new_host} serving the model with 2 ready workers {:?} later",
        killed.elapsed()
    );
    assert!(
        workers.iter().all(|w| !new_workers.contains(w)),
        "the old workers were replaced"
    );
    for pid in workers {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        });
        assert!(!alive, "old worker {pid} outlived its host");
    }

    drop(supervisord);
    assert!(
        !socket.exists(),
        "stopping supervisord stops the host cleanly"
    );
}
