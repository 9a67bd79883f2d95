//! Hostile control-socket clients: a thousand connections at once, a client that trickles its
//! request, malformed HTTP, oversized headers. A well-behaved client is served throughout, and
//! the host's memory stays bounded.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use modelhost_tests::daemon::{Daemon, DaemonOptions};
use modelhost_tests::http::{get, raw};
use modelhost_tests::Scratch;

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap()
}

/// A well-behaved request, answered within a second.
fn served(daemon: &Daemon) -> Duration {
    let started = Instant::now();
    assert_eq!(get(&daemon.socket, "/healthz").body, b"ok\n");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "healthz took {took:?}");
    took
}

fn daemon(dir: &Scratch) -> Daemon {
    let config = dir.path("config.toml");
    std::fs::write(&config, "request_timeout_ms = 1000\n").unwrap();
    Daemon::start(
        &dir.path("control.sock"),
        DaemonOptions {
            config: Some(&config),
            ..Default::default()
        },
    )
}

#[test]
fn a_thousand_idle_connections_lock_nobody_out_and_are_closed() {
    let dir = Scratch::new("flood");
    let daemon = daemon(&dir);
    served(&daemon);
    let rss_before = rss_kb(daemon.pid());
    let flood: Vec<UnixStream> = (0..1000)
        .map(|_| UnixStream::connect(&daemon.socket).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let during = served(&daemon);
    let rss_during = rss_kb(daemon.pid());
    // Idle connections are closed at the header deadline (1 s here).
    std::thread::sleep(Duration::from_millis(2500));
    let mut closed = 0;
    for mut c in flood {
        c.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 256];
        // End-of-file, or a 408 before it: either way the host closed it; a timeout means open.
        if c.read(&mut buf).is_ok() {
            closed += 1;
        }
    }
    served(&daemon);
    let rss_after = rss_kb(daemon.pid());
    println!("1000 idle connections: healthz in {during:?}; {closed} closed by the host; RSS {rss_before} -> {rss_during} -> {rss_after} kB");
    assert_eq!(closed, 1000, "idle connections were not all closed");
    assert!(
        rss_after < rss_before + 32 * 1024,
        "RSS grew from {rss_before} kB to {rss_after} kB"
    );
}

#[test]
fn a_trickling_client_is_cut_off_at_the_deadline() {
    let dir = Scratch::new("trickle");
    let daemon = daemon(&dir);
    let mut slow = UnixStream::connect(&daemon.socket).unwrap();
    let started = Instant::now();
    let request = b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    let mut cut_off = None;
    for (i, byte) in request.iter().chain(b"a".repeat(100).iter()).enumerate() {
        if slow.write_all(&[*byte]).is_err() {
            cut_off = Some(started.elapsed());
            break;
        }
        if i % 10 == 0 {
            served(&daemon);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = cut_off.expect("the trickling client was never cut off");
    println!("trickling client cut off after {took:?}");
    assert!(took < Duration::from_secs(4), "cut off only after {took:?}");
}

#[test]
fn malformed_and_oversized_requests_get_errors_and_change_nothing() {
    let dir = Scratch::new("malformed");
    let daemon = daemon(&dir);
    let rss_before = rss_kb(daemon.pid());

    let garbage = raw(&daemon.socket, b"THIS IS NOT HTTP\r\n\r\n");
    assert_eq!(garbage.status, 400);

    let big_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "b".repeat(100_000)
    );
    let mut c = UnixStream::connect(&daemon.socket).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = c.write_all(big_header.as_bytes());
    let mut response = Vec::new();
    let _ = c.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    assert!(
        text.starts_with("HTTP/1.1 431") || response.is_empty(),
        "oversized headers: {text}"
    );

    let many_headers: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    let r = raw(
        &daemon.socket,
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many_headers}Connection: close\r\n\r\n")
            .as_bytes(),
    );
    assert!(r.status == 431 || r.status == 400, "{}", r.status);

    for _ in 0..200 {
        let _ = raw(
            &daemon.socket,
            b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
    }
    served(&daemon);
    let rss_after = rss_kb(daemon.pid());
    println!("RSS {rss_before} -> {rss_after} kB");
    assert!(rss_after < rss_before + 32 * 1024);
    assert!(!daemon.log_text().contains("panicked"));
}

#[test]
fn the_logs_and_errors_carry_no_file_contents() {
    let dir = Scratch::new("secrets");
    let daemon = daemon(&dir);
    let secret = dir.path("secret.gguf");
    std::fs::write(
        &secret,
        b"TOPSECRET-7f3a9c TOPSECRET-7f3a9c TOPSECRET-7f3a9c\n",
    )
    .unwrap();
    let r = modelhost_tests::http::request(
        &daemon.socket,
        "POST",
        "/v1/models",
        Some(&serde_json::json!({ "path": secret })),
    );
    assert_eq!(r.status, 422);
    let body = String::from_utf8_lossy(&r.body);
    assert!(!body.contains("TOPS") && !body.contains("7f3a9c"), "{body}");
    std::thread::sleep(Duration::from_millis(100));
    let log = daemon.log_text();
    assert!(log.contains("invalid_gguf"), "the refusal is logged");
    assert!(
        !log.contains("TOPS") && !log.contains("7f3a9c") && !log.contains("544f5053"),
        "file bytes in the log"
    );
}

#[test]
fn with_descriptors_nearly_exhausted_the_host_survives_and_recovers() {
    let dir = Scratch::new("nofile");
    let daemon = daemon(&dir);
    let pid = daemon.pid().to_string();
    // Leave the host a handful of spare descriptors.
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = format!("--nofile={}:{}", fds + 8, fds + 8);
    assert!(std::process::Command::new("prlimit")
        .args(["--pid", &pid, &limit])
        .status()
        .unwrap()
        .success());
    let flood: Vec<UnixStream> = (0..64)
        .filter_map(|_| UnixStream::connect(&daemon.socket).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        daemon.log_text().contains("accept failed"),
        "the host noticed it ran out"
    );
    // The idle flood is closed at the deadline; then the host serves again.
    std::thread::sleep(Duration::from_millis(1500));
    drop(flood);
    std::thread::sleep(Duration::from_millis(300));
    served(&daemon);
}
