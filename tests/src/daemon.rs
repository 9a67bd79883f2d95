//! A real `modelhost serve` process for a test, killed when dropped.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::binary;

/// How long a daemon may take to come up; generous for a loaded CI machine.
const STARTUP: Duration = Duration::from_secs(20);

pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

/// Options for starting a daemon.
#[derive(Default)]
pub struct DaemonOptions<'a> {
    pub config: Option<&'a Path>,
    pub env: Vec<(&'a str, String)>,
    /// Run as this uid (the test must be root).
    pub uid: Option<u32>,
}

impl Daemon {
    /// Starts `modelhost serve` on `socket` and waits until it accepts connections.
    pub fn start(socket: &Path, options: DaemonOptions<'_>) -> Daemon {
        // Beside the socket, or beside its directory when the daemon is to create that itself.
        let socket_dir = socket.parent().unwrap_or(Path::new("/tmp"));
        let log_dir = if socket_dir.exists() {
            socket_dir
        } else {
            socket_dir.parent().unwrap_or(Path::new("/tmp"))
        };
        let log = log_dir.join(format!(
            "{}.log",
            socket
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("daemon")
        ));
        let log_file = std::fs::File::create(&log).expect("create daemon log");
        let mut command = Command::new(binary("modelhost"));
        command
            .arg("serve")
            .arg("--socket")
            .arg(socket)
            .arg("--log-level")
            .arg("debug")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup log"))
            .stderr(log_file)
            .env_remove("NOTIFY_SOCKET");
        if let Some(config) = options.config {
            command.arg("--config").arg(config);
        }
        for (key, value) in options.env {
            command.env(key, value);
        }
        if let Some(uid) = options.uid {
            command.uid(uid).gid(uid);
        }
        let child = command.spawn().expect("spawn modelhost serve");
        let mut daemon = Daemon {
            child,
            socket: socket.to_owned(),
            log,
        };
        daemon.wait_until_serving();
        daemon
    }

    fn wait_until_serving(&mut self) {
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("modelhost serve exited with {status}:\n{}", self.log_text());
            }
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "modelhost serve did not start within {STARTUP:?}:\n{}",
            self.log_text()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("signal the daemon");
    }

    /// Waits up to `limit` for the daemon to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
