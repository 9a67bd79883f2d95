//! The control server: HTTP/1.1 + JSON over a Unix socket. It checks every peer's credentials,
//! caps connections, header sizes, body sizes and header read time, and shuts down gracefully.

mod error;
mod events;
pub mod listener;
mod metrics;
mod ollama;
mod openai;
mod routes;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

pub use error::ApiError;
pub use openai::{flatten_messages, read_settings, Kind, Settings};
pub use routes::{OPENAPI, ROUTES};

use crate::config::Config;
use crate::gateway::Gateway;
use crate::registry::Registry;

/// A response with any body: a whole JSON document or a stream.
pub type Response = hyper::Response<BoxBody<Bytes, Infallible>>;

/// Counters for /metrics.
#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub refused: AtomicU64,
}

/// What every request handler can reach.
pub struct AppState {
    pub registry: Arc<Registry>,
    /// Generation: admission, routing over the workers, streaming.
    pub gateway: Arc<Gateway>,
    config: RwLock<Arc<Config>>,
    pub started: Instant,
    pub shutdown: watch::Receiver<bool>,
    pub counters: Counters,
    /// `/v1/status` computed at most every 250 ms: probes and dashboards poll it, and its
    /// residency and /proc figures cost milliseconds on big models.
    status_cache: std::sync::Mutex<Option<(Instant, u64, crate::api::Status)>>,
}

impl AppState {
    pub fn new(
        registry: Arc<Registry>,
        config: Config,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<AppState> {
        let limits = crate::gateway::router::QueueLimits {
            max_requests: config.queue_requests,
            max_prompt_tokens: config.queue_prompt_tokens,
        };
        Arc::new(AppState {
            gateway: Gateway::new(Arc::clone(&registry), limits),
            registry,
            config: RwLock::new(Arc::new(config)),
            started: Instant::now(),
            shutdown,
            counters: Counters::default(),
            status_cache: std::sync::Mutex::new(None),
        })
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The cached status, if it is fresh: under 250 ms old, and no model changed since.
    pub(crate) fn cached_status(&self) -> Option<crate::api::Status> {
        let cache = self.status_cache.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.registry.generation();
        cache
            .as_ref()
            .filter(|(at, g, _)| {
                *g == generation && at.elapsed() < std::time::Duration::from_millis(250)
            })
            .map(|(_, _, s)| s.clone())
    }

    /// Caches a status computed when the registry was at `generation`.
    pub(crate) fn cache_status(&self, generation: u64, status: &crate::api::Status) {
        *self.status_cache.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), generation, status.clone()));
    }

    /// Replaces the configuration (SIGHUP).
    pub fn set_config(&self, config: Config) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
    }
}

pub fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    text_response(status, "application/json", body)
}

pub fn text_response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response {
    let mut response = Response::new(Full::new(body.into()).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

fn error_response(e: &ApiError) -> Response {
    json_response(e.status, &e.body())
}

/// Whether a peer may use the control socket: the daemon's own user, root, or (when configured)
/// a member of the allowed group.
fn peer_allowed(stream: &UnixStream, config: &Config) -> Result<(), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("cannot read peer credentials: {e}"))?;
    credentials_allowed(cred.uid(), cred.gid(), cred.pid(), config)
}

/// The peer rule for every socket the host serves: its own uid, root, or the allowed group.
pub fn credentials_allowed(
    uid: u32,
    gid: u32,
    pid: Option<i32>,
    config: &Config,
) -> Result<(), String> {
    let me = nix::unistd::geteuid().as_raw();
    if uid == me || uid == 0 {
        return Ok(());
    }
    if let Some(allowed) = config.allow_gid {
        let in_group =
            gid == allowed || pid.is_some_and(|pid| supplementary_groups(pid).contains(&allowed));
        if in_group {
            return Ok(());
        }
    }
    let gid = config.allow_gid;
    Err(format!(
        "uid {uid} may not use this socket: it accepts uid {me}{}",
        gid.map(|g| format!(" and members of group {g}"))
            .unwrap_or_default()
    ))
}

fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .map(|groups| {
                    groups
                        .split_whitespace()
                        .filter_map(|g| g.parse().ok())
                        .collect()
                })
        })
        .unwrap_or_default()
}

/// Which listener a request came in on: the control socket serves everything; the TCP
/// listener only the generation API (and its bearer key, when one is set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Socket,
    Tcp,
}

async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
    refused: Option<Arc<str>>,
    listener: Listener,
) -> Result<Response, Infallible> {
    state.counters.requests.fetch_add(1, Ordering::Relaxed);
    let request_id = state.gateway.request_id();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let result = match refused {
        Some(reason) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "peer_not_allowed",
            reason.to_string(),
        )),
        None => routes::dispatch(Arc::clone(&state), req, listener, request_id).await,
    };
    let mut response = match result {
        Ok(response) => {
            tracing::debug!(%method, %path, status = response.status().as_u16(), "request");
            response
        }
        Err(e) => {
            state.counters.errors.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%method, %path, status = e.status.as_u16(), code = e.code, message = %e.message, "request refused");
            let mut response = if path.starts_with("/api/") {
                json_response(e.status, &ollama::error_body(&e))
            } else {
                error_response(&e)
            };
            if e.status == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    hyper::header::HeaderValue::from_static("Bearer"),
                );
            }
            response
        }
    };
    openai::retry_after(&mut response);
    if let Ok(id) = format!("req-{request_id}").parse() {
        response.headers_mut().insert("x-request-id", id);
    }
    Ok(response)
}

async fn serve_connection<S>(
    stream: S,
    state: Arc<AppState>,
    refused: Option<Arc<str>>,
    listener: Listener,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let config = state.config();
    let mut shutdown = state.shutdown.clone();
    let service_state = Arc::clone(&state);
    let service =
        service_fn(move |req| handle(Arc::clone(&service_state), req, refused.clone(), listener));
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(config.request_timeout)
        .max_buf_size(16 * 1024)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "control connection ended with an error");
            }
        }
        _ = shutdown.changed() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// A listening socket the server accepts on: the owner-only unix socket, or the TCP listener.
trait Accepting {
    type Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    const KIND: Listener;
    async fn accept_one(&self) -> std::io::Result<Self::Stream>;
    /// Why a new connection's peer may not use this listener, if it may not.
    fn refusal(&self, stream: &Self::Stream, state: &AppState) -> Option<Arc<str>>;
}

impl Accepting for UnixListener {
    type Stream = UnixStream;
    const KIND: Listener = Listener::Socket;

    async fn accept_one(&self) -> std::io::Result<UnixStream> {
        self.accept().await.map(|(s, _)| s)
    }

    fn refusal(&self, stream: &UnixStream, state: &AppState) -> Option<Arc<str>> {
        peer_allowed(stream, &state.config()).err().map(|reason| {
            state.counters.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(reason = %reason, "control connection refused");
            Arc::from(reason)
        })
    }
}

/// There are no peer credentials on TCP: the listener is on loopback by default, and with
/// `api_key` set every request must carry it as a bearer token (`routes::tcp_allowed`).
impl Accepting for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    const KIND: Listener = Listener::Tcp;

    async fn accept_one(&self) -> std::io::Result<tokio::net::TcpStream> {
        let (stream, _) = self.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    fn refusal(&self, _: &tokio::net::TcpStream, _: &AppState) -> Option<Arc<str>> {
        None
    }
}

/// Serves the control API and the generation API on the control socket until shutdown.
pub async fn serve(listener: UnixListener, state: Arc<AppState>) {
    accept_until_shutdown(listener, state).await;
}

/// Serves the generation API on TCP (`http_listen`) until shutdown.
pub async fn serve_tcp(listener: tokio::net::TcpListener, state: Arc<AppState>) {
    accept_until_shutdown(listener, state).await;
}

/// Accepts connections until `shutdown` turns true, then waits up to the shutdown timeout for
/// open connections to finish and aborts the rest.
async fn accept_until_shutdown<L: Accepting>(listener: L, state: Arc<AppState>) {
    let config = state.config();
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let mut connections = JoinSet::new();
    let mut shutdown = state.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept_one() => accepted,
            _ = shutdown.changed() => break,
            // Reap finished connections as we go, so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let stream = match accepted {
            Ok(stream) => stream,
            Err(e) => {
                // EMFILE and friends: back off briefly rather than spin.
                tracing::warn!(error = %e, listener = ?L::KIND, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(
                limit = config.max_connections,
                listener = ?L::KIND,
                "connection limit reached; dropping a connection"
            );
            continue;
        };
        let refused = listener.refusal(&stream, &state);
        let state = Arc::clone(&state);
        connections.spawn(async move {
            serve_connection(stream, state, refused, L::KIND).await;
            drop(permit);
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(config.shutdown_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "closing connections still open at the shutdown deadline"
        );
        connections.shutdown().await;
    }
}
