//! `modelhost serve`: the daemon's life from start to exit.
//!
//! Start: read the config, bind the control socket, load the configured models, notify READY=1.
//! SIGHUP: re-read the config (allow-list, allowed group, limits, models to load).
//! SIGTERM/SIGINT: notify STOPPING=1, stop accepting, let open requests finish within the
//! shutdown timeout, release the models, remove the socket, exit 0.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::config::{Config, ConfigError, LogFormat, Overrides};
use crate::control::listener::{self, bind, BindError};
use crate::control::{credentials_allowed, serve, AppState};
use crate::events::EventBus;
use crate::notify::Notifier;
use crate::registry::{Policy, Registry};
use crate::supervisor;
use modelhost_protocol::wire::Message;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("starting the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("installing signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("binding the HTTP listener {addr}: {source}")]
    HttpListen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Sets up logging on stderr: human-readable lines, or JSON objects.
pub fn init_logging(format: LogFormat, level: tracing::Level) {
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_max_level(level)
        .with_target(false);
    // A second call (tests, SIGHUP) keeps the first subscriber.
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Raises the soft descriptor limit to the hard one: every connection, worker and model file
/// holds descriptors, and a flood of connections must not starve the rest.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
            tracing::debug!(from = soft, to = hard, "raised the descriptor limit");
        }
    }
}

fn policy(config: &Config) -> Policy {
    Policy {
        model_dirs: config.model_dirs.clone(),
        device_query_timeout: config.device_query_timeout,
        worker_start_timeout: config.worker_start_timeout,
        worker_heartbeat_timeout: config.worker_heartbeat_timeout,
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(
    config_path: Option<PathBuf>,
    overrides: Overrides,
    level: tracing::Level,
) -> Result<(), DaemonError> {
    let config = Config::load(config_path.as_deref(), &overrides)?;
    init_logging(config.log_format, level);
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("modelhost-io")
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    runtime.block_on(run_async(config, config_path, overrides))
}

async fn run_async(
    config: Config,
    config_path: Option<PathBuf>,
    overrides: Overrides,
) -> Result<(), DaemonError> {
    let notifier = Notifier::from_env();
    let mut terminate = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;

    let socket = config.socket.clone();
    // The worker socket is bound before the control socket: a client's connect succeeds as soon
    // as the control socket is bound, and by then the worker socket must be there. The control
    // socket's path is checked first, so that its problems are the ones reported.
    listener::prepare(&socket)?;
    let worker_socket = config.worker_socket.clone();
    let worker_listener = bind(&worker_socket, config.allow_gid)?;
    let listener = match bind(&socket, config.allow_gid) {
        Ok(listener) => listener,
        Err(e) => {
            let _ = std::fs::remove_file(&worker_socket);
            return Err(e.into());
        }
    };
    let http = match config.http_listen {
        None => None,
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(source) => {
                let _ = std::fs::remove_file(&worker_socket);
                let _ = std::fs::remove_file(&socket);
                return Err(DaemonError::HttpListen { addr, source });
            }
        },
    };
    if let (Some(addr), None) = (config.http_listen, &config.api_key) {
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "the generation API listens beyond loopback with no api_key");
        }
    }
    let events = Arc::new(EventBus::new());
    let registry = Registry::new(events, policy(&config));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let preload = config.models.clone();
    let state = AppState::new(Arc::clone(&registry), config, shutdown_rx);
    let server = tokio::spawn(serve(listener, Arc::clone(&state)));
    state.gateway.spawn_ticker();
    let http_server = http.map(|l| {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "serving the generation API over TCP");
        }
        tokio::spawn(crate::control::serve_tcp(l, Arc::clone(&state)))
    });
    let workers = tokio::spawn(accept_workers(worker_listener, Arc::clone(&state)));
    tracing::info!(socket = %socket.display(), pid = std::process::id(), "modelhost serving");

    load_configured(&registry, preload).await;
    notifier.notify(&format!("READY=1\nSTATUS=serving on {}", socket.display()));

    let watchdog = notifier.watchdog_interval().map(|every| {
        let notifier = Notifier::from_env();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                notifier.notify("WATCHDOG=1");
            }
        })
    });

    loop {
        tokio::select! {
            _ = terminate.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = interrupt.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = hangup.recv() => reload(&state, config_path.as_deref(), &overrides, &notifier).await,
        }
    }

    notifier.notify("STOPPING=1\nSTATUS=shutting down");
    let _ = shutdown_tx.send(true);
    if let Some(w) = watchdog {
        w.abort();
    }
    // serve() bounds its own wait by the shutdown timeout.
    let _ = server.await;
    if let Some(h) = http_server {
        let _ = h.await;
    }
    let _ = workers.await;
    registry.unload_all();
    let _ = std::fs::remove_file(&worker_socket);
    if let Err(e) = std::fs::remove_file(&socket) {
        tracing::warn!(error = %e, socket = %socket.display(), "could not remove the control socket");
    }
    tracing::info!("modelhost stopped");
    Ok(())
}

/// Accepts workers that a process manager started, until shutdown.
async fn accept_workers(listener: tokio::net::UnixListener, state: Arc<AppState>) {
    let mut shutdown = state.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let Ok((stream, _)) = accepted else { continue };
        let cred = match stream.peer_cred() {
            Ok(cred) => cred,
            Err(e) => {
                tracing::warn!(error = %e, "worker connection without credentials dropped");
                continue;
            }
        };
        if let Err(reason) =
            credentials_allowed(cred.uid(), cred.gid(), cred.pid(), &state.config())
        {
            tracing::warn!(%reason, "worker connection refused");
            continue;
        }
        let state = Arc::clone(&state);
        let pid = cred.pid().unwrap_or(0) as u32;
        tokio::task::spawn_blocking(move || adopt_worker(stream, pid, &state));
    }
}

/// Greeting, Hello, plan, attach: then the worker is supervised like a spawned one, except that
/// its process manager, not the host, restarts it.
fn adopt_worker(stream: tokio::net::UnixStream, pid: u32, state: &AppState) {
    let timeout = state.config().worker_handshake_timeout;
    let stream = match stream
        .into_std()
        .and_then(|s| s.set_nonblocking(false).map(|()| s))
    {
        Ok(s) => s,
        Err(e) => return tracing::warn!(error = %e, "worker connection unusable"),
    };
    let (mut channel, hello) = match supervisor::greet_joining(stream, timeout) {
        Ok(greeted) => greeted,
        Err(e) => return tracing::warn!(pid, "worker connection dropped: {e}"),
    };
    let spec = match state.registry.external_spec(&hello) {
        Ok(spec) => spec,
        Err(reason) => {
            tracing::warn!(pid, worker = %hello.worker_id, %reason, "refusing worker");
            let _ = channel.send(&Message::Shutdown);
            return;
        }
    };
    let model = spec.model.clone();
    match supervisor::adopt(
        spec,
        channel,
        pid,
        &hello,
        Arc::clone(state.registry.events()),
    ) {
        Ok(handle) => {
            tracing::info!(pid, worker = %hello.worker_id, %model, device = %hello.device, "worker joined");
            state.registry.add_worker(&model, handle);
        }
        Err(e) => tracing::error!(error = %e, "cannot supervise a joining worker"),
    }
}

/// Loads the models a config file declares that are not loaded yet. Failures are logged: one
/// bad entry does not stop the others or the daemon.
async fn load_configured(registry: &Arc<Registry>, models: Vec<crate::api::LoadRequest>) {
    for request in models {
        let registry = Arc::clone(registry);
        let path = request.path.clone();
        let result = tokio::task::spawn_blocking(move || {
            let name_taken = request
                .name
                .as_deref()
                .is_some_and(|n| registry.contains(n));
            if name_taken {
                return Ok(None);
            }
            registry.load(request).map(Some)
        })
        .await;
        match result {
            Ok(Ok(Some(info))) => tracing::info!(model = %info.name, "configured model registered"),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::error!(path = %path.display(), error = %e, "configured model failed to load")
            }
            Err(e) => tracing::error!(error = %e, "configured model load task failed"),
        }
    }
}

async fn reload(
    state: &Arc<AppState>,
    path: Option<&Path>,
    overrides: &Overrides,
    notifier: &Notifier,
) {
    notifier.notify("RELOADING=1");
    match Config::load(path, overrides) {
        Ok(config) => {
            if config.socket != state.config().socket {
                tracing::warn!("SIGHUP: the socket path changed; that takes a restart");
            }
            state.registry.set_policy(policy(&config));
            let models = config.models.clone();
            state.set_config(config);
            load_configured(&state.registry, models).await;
            tracing::info!("SIGHUP: configuration reloaded");
        }
        Err(e) => tracing::error!(error = %e, "SIGHUP: keeping the old configuration"),
    }
    notifier.notify("READY=1");
}
