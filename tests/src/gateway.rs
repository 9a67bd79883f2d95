//! A host serving the generation API on gemma, for the serving tests.

use std::net::{SocketAddr, TcpListener};

use serde_json::json;

use crate::daemon::{Daemon, DaemonOptions};
use crate::models::{load, wait_for};
use crate::{gemma_model, Scratch};

/// The TCP listener's bearer key in these tests.
pub const KEY: &str = "sk-test-key";

/// A port free a moment ago (the host binds it next).
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

pub struct Host {
    pub daemon: Daemon,
    /// The generation API's TCP address.
    pub addr: SocketAddr,
    _dir: Scratch,
}

/// A host with the TCP listener (and [`KEY`]), `gemma` loaded on `workers` CPU workers of
/// `parallel` slots, each of `ctx` tokens, one compute thread each; `extra` is added to the
/// config file. Returns once every worker computes.
pub fn host(name: &str, workers: usize, parallel: u32, ctx: u32, extra: &str) -> Host {
    let dir = Scratch::new(name);
    let addr = free_port();
    let config = dir.path("config.toml");
    std::fs::write(
        &config,
        format!("http_listen = \"{addr}\"\napi_key = \"{KEY}\"\n{extra}\n"),
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
            "devices": vec!["cpu"; workers],
            "placement": { "ctx": ctx, "parallel": parallel, "mode": "replicate" },
            "worker_options": { "threads": 1 },
        }),
    );
    wait_for(&daemon.socket, "gemma", "every worker computing", |m| {
        m["serving"]["workers_computing"].as_array().map(Vec::len) == Some(workers)
    });
    Host {
        daemon,
        addr,
        _dir: dir,
    }
}
