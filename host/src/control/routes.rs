//! The routing table and the handlers: one entry per route, dispatched by method and path.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};

use super::error::ApiError;
use super::events::event_stream;
use super::metrics::render_metrics;
use super::{json_response, text_response, AppState, Listener, Response};
use super::{ollama, openai};
use crate::api::{
    DetokenizeRequest, ListedModel, LoadRequest, ModelList, ScaleRequest, Status, TokenizeRequest,
};
use crate::pages;
use crate::registry::TextError;

/// Every route: method and path template. The OpenAPI document must describe exactly these.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/v1/status"),
    ("GET", "/v1/models"),
    ("POST", "/v1/models"),
    ("GET", "/v1/models/{name}"),
    ("DELETE", "/v1/models/{name}"),
    ("POST", "/v1/models/{name}/scale"),
    ("GET", "/v1/events"),
    ("POST", "/v1/tokenize"),
    ("POST", "/v1/detokenize"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("GET", "/v1/openapi.json"),
    ("POST", "/api/chat"),
    ("POST", "/api/generate"),
    ("GET", "/api/tags"),
    ("GET", "/api/ps"),
    ("GET", "/api/version"),
];

/// The routes the TCP listener serves: the generation API, never the control API.
const TCP_ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{name}"),
    ("POST", "/v1/tokenize"),
    ("POST", "/v1/detokenize"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/api/chat"),
    ("POST", "/api/generate"),
    ("GET", "/api/tags"),
    ("GET", "/api/ps"),
    ("GET", "/api/version"),
];

/// Whether a TCP request may reach this route, and carries the key when one is set.
fn tcp_allowed(
    state: &AppState,
    req: &Request<Incoming>,
    segments: &[&str],
) -> Result<(), ApiError> {
    let method = req.method().as_str();
    let allowed = TCP_ROUTES.iter().any(|(m, template)| {
        let parts: Vec<&str> = template.trim_start_matches('/').split('/').collect();
        *m == method
            && parts.len() == segments.len()
            && parts
                .iter()
                .zip(segments)
                .all(|(t, s)| t.starts_with('{') || t == s)
    });
    if !allowed {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "{method} /{} is not served on the TCP listener (the control API is on the unix socket)",
                segments.join("/")
            ),
        ));
    }
    if let Some(key) = state.config().api_key.as_deref() {
        let given = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "this listener needs the API key as a bearer token (Authorization: Bearer KEY)",
            ));
        }
    }
    Ok(())
}

/// Compares without an early exit, so that the time taken does not tell how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The OpenAPI 3 description of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Routes a request to its handler.
pub async fn dispatch(
    state: Arc<AppState>,
    req: Request<Incoming>,
    listener: Listener,
    request_id: u64,
) -> Result<Response, ApiError> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    if listener == Listener::Tcp {
        tcp_allowed(&state, &req, &segments)?;
    }
    match (&method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => Ok(text_response(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "ok\n",
        )),
        (&Method::GET, ["metrics"]) => {
            let rendering = Arc::clone(&state);
            let text = blocking(move || render_metrics(&rendering)).await?;
            Ok(text_response(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                text,
            ))
        }
        (&Method::GET, ["v1", "status"]) => {
            Ok(json_response(StatusCode::OK, &cached_status(state).await?))
        }
        (&Method::GET, ["v1", "models"]) => {
            let registry = Arc::clone(&state.registry);
            let models = blocking(move || registry.list()).await?;
            Ok(match listener {
                Listener::Socket => json_response(
                    StatusCode::OK,
                    &ModelList {
                        object: "list".into(),
                        data: models.into_iter().map(ListedModel::new).collect(),
                    },
                ),
                Listener::Tcp => json_response(
                    StatusCode::OK,
                    &serde_json::json!({
                        "object": "list",
                        "data": models.iter().map(|m| openai_model(&state, m)).collect::<Vec<_>>(),
                    }),
                ),
            })
        }
        (&Method::POST, ["v1", "chat", "completions"]) => {
            openai::completions(state, req, true, request_id).await
        }
        (&Method::POST, ["v1", "completions"]) => {
            openai::completions(state, req, false, request_id).await
        }
        (&Method::POST, ["api", "chat"]) => ollama::generate(state, req, true, request_id).await,
        (&Method::POST, ["api", "generate"]) => {
            ollama::generate(state, req, false, request_id).await
        }
        (&Method::GET, ["api", "tags"]) => ollama::models(state, false).await,
        (&Method::GET, ["api", "ps"]) => ollama::models(state, true).await,
        (&Method::GET, ["api", "version"]) => Ok(ollama::version()),
        (&Method::POST, ["v1", "models"]) => load(state, req).await,
        (&Method::GET, ["v1", "models", name]) => {
            let (registry, key) = (Arc::clone(&state.registry), name.to_string());
            match blocking(move || registry.get(&key)).await? {
                Some(info) if listener == Listener::Tcp => {
                    Ok(json_response(StatusCode::OK, &openai_model(&state, &info)))
                }
                Some(info) => {
                    let mut body = serde_json::to_value(&info).unwrap_or_default();
                    body["serving"] = serving_json(&state, &info);
                    Ok(json_response(StatusCode::OK, &body))
                }
                None => Err(not_found(name)),
            }
        }
        (&Method::DELETE, ["v1", "models", name]) => {
            let force = req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|kv| kv == "force=true" || kv == "force=1"));
            // Stopping workers waits for them to exit: off the async threads, which carry every
            // other request and stream meanwhile.
            let (registry, key) = (Arc::clone(&state.registry), name.to_string());
            blocking(move || registry.unload(&key, force)).await??;
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({ "unloaded": name }),
            ))
        }
        (&Method::POST, ["v1", "models", name, "scale"]) => {
            let name = name.to_string();
            let request: ScaleRequest = json_body(&state, req).await?;
            // Planning may ask a worker process about GPUs, and starting workers spawns threads.
            let registry = Arc::clone(&state.registry);
            let report = blocking(move || registry.scale(&name, &request)).await??;
            Ok(json_response(StatusCode::OK, &report))
        }
        (&Method::GET, ["v1", "events"]) => Ok(event_stream(&state)),
        (&Method::POST, ["v1", "tokenize"]) => tokenize(state, req).await,
        (&Method::POST, ["v1", "detokenize"]) => detokenize(state, req).await,
        (&Method::GET, ["v1", "openapi.json"]) => {
            Ok(text_response(StatusCode::OK, "application/json", OPENAPI))
        }
        _ => Err(no_route(&method, &segments)),
    }
}

/// What a client of the generation API sees of a model: OpenAI's fields, the context each
/// sequence holds, and the workers that compute.
fn openai_model(state: &AppState, info: &crate::api::ModelInfo) -> serde_json::Value {
    serde_json::json!({
        "id": info.name,
        "object": "model",
        "created": info.loaded_at,
        "owned_by": "modelhost",
        "serving": serving_json(state, info),
    })
}

/// The serving figures of a model: the context budget per sequence (never divided among the
/// slots behind the client's back), slots, the workers that compute, and the queue.
fn serving_json(state: &AppState, info: &crate::api::ModelInfo) -> serde_json::Value {
    let computing: Vec<&str> = info
        .workers
        .iter()
        .filter(|w| w.computes())
        .map(|w| w.id.as_str())
        .collect();
    let queue = state.gateway.router.stats(&info.name);
    serde_json::json!({
        "context_per_sequence": info.plan.as_ref().map(|p| p.context_length),
        "sequences_per_worker": info.plan.as_ref().map(|p| p.parallel),
        "workers_computing": computing,
        "running": queue.running,
        "waiting": queue.waiting,
        "rejected": queue.rejected,
    })
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "model_not_found",
        format!("no model named {name:?}"),
    )
}

/// 405 when the path exists under another method, else 404.
fn no_route(method: &Method, segments: &[&str]) -> ApiError {
    let matches = |template: &str| {
        let parts: Vec<&str> = template.trim_start_matches('/').split('/').collect();
        parts.len() == segments.len()
            && parts
                .iter()
                .zip(segments)
                .all(|(t, s)| t.starts_with('{') || t == s)
    };
    let allowed: Vec<&str> = ROUTES
        .iter()
        .filter(|(_, template)| matches(template))
        .map(|(m, _)| *m)
        .collect();
    if allowed.is_empty() {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_route",
            format!("no route for {method} /{}", segments.join("/")),
        )
    } else {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed here; use {}", allowed.join(" or ")),
        )
    }
}

/// Reads a JSON body of at most `max_body_bytes`, refusing larger ones before reading them.
pub(super) async fn json_body<T: serde::de::DeserializeOwned>(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<T, ApiError> {
    let max = state.config().max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request bodies are limited to {max} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    if let Some(ct) = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        if !ct.starts_with("application/json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("expected application/json, got {ct}"),
            ));
        }
    }
    let bytes: Bytes = match Limited::new(req.into_body(), max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("reading the body: {e}"),
            ))
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("request body: {e}"),
        )
    })
}

pub(super) fn text_error(e: TextError) -> ApiError {
    match e {
        TextError::NotFound(name) => not_found(&name),
        e @ TextError::Unavailable { .. } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "tokenizer_unavailable",
            e.to_string(),
        ),
    }
}

async fn tokenize(state: Arc<AppState>, req: Request<Incoming>) -> Result<Response, ApiError> {
    let request: TokenizeRequest = json_body(&state, req).await?;
    let text = state.registry.text(&request.model).map_err(text_error)?;
    // Tokenizing a large body is CPU work: off the async threads.
    let body = blocking(move || {
        let tok = text.tokenizer();
        let ids = tok.encode(&request.content, request.add_special, request.parse_special);
        let mut body = serde_json::json!({ "tokens": ids });
        if request.with_pieces {
            body["pieces"] = ids
                .iter()
                .map(|&id| {
                    let piece = tok.piece(id, true).unwrap_or_default();
                    match std::str::from_utf8(piece) {
                        Ok(s) => serde_json::json!(s),
                        // Part of a character: its bytes.
                        Err(_) => serde_json::json!(piece),
                    }
                })
                .collect();
        }
        body
    })
    .await?;
    Ok(json_response(StatusCode::OK, &body))
}

async fn detokenize(state: Arc<AppState>, req: Request<Incoming>) -> Result<Response, ApiError> {
    let request: DetokenizeRequest = json_body(&state, req).await?;
    let text = state.registry.text(&request.model).map_err(text_error)?;
    let content = blocking(move || {
        let bytes = text
            .tokenizer()
            .decode(&request.tokens, false, request.special)?;
        Ok::<_, modelhost_text::UnknownToken>(String::from_utf8_lossy(&bytes).into_owned())
    })
    .await?
    .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_token", e.to_string()))?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "content": content }),
    ))
}

async fn load(state: Arc<AppState>, req: Request<Incoming>) -> Result<Response, ApiError> {
    let request: LoadRequest = json_body(&state, req).await?;
    let registry = Arc::clone(&state.registry);
    // Opening, mapping and parsing do blocking I/O; keep them off the async workers.
    let info = blocking(move || registry.load(request)).await??;
    Ok(json_response(StatusCode::CREATED, &info))
}

/// Runs blocking work (mincore, /proc reads, opening files, waiting for workers to stop) off the
/// async threads, which must keep answering.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("task: {e}"),
        )
    })
}

async fn cached_status(state: Arc<AppState>) -> Result<Status, ApiError> {
    if let Some(status) = state.cached_status() {
        return Ok(status);
    }
    // Read the generation first: a change during the computation makes the result stale at once.
    let generation = state.registry.generation();
    let computing = Arc::clone(&state);
    let fresh = blocking(move || status(&computing)).await?;
    state.cache_status(generation, &fresh);
    Ok(fresh)
}

fn status(state: &AppState) -> Status {
    let (models, models_ready, mapped_bytes, resident_bytes) = state.registry.totals();
    Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        uptime_s: state.started.elapsed().as_secs(),
        socket: state.config().socket.clone(),
        models,
        models_ready,
        mapped_bytes,
        resident_bytes,
        host_memory: pages::process_memory(None).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;
    use crate::api::{Envelope, Event, Phase};
    use crate::api::{ErrorBody, ErrorDetail, MlockMode, ModelInfo, ModelState, Residency};

    fn openapi() -> Value {
        serde_json::from_str(OPENAPI).expect("openapi.json is JSON")
    }

    fn keys(v: &Value) -> BTreeSet<String> {
        v.as_object().expect("an object").keys().cloned().collect()
    }

    fn schema_properties(name: &str) -> BTreeSet<String> {
        keys(&openapi()["components"]["schemas"][name]["properties"])
    }

    #[test]
    fn openapi_describes_exactly_the_routing_table() {
        let doc = openapi();
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "parameters")
            {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
        let routed: BTreeSet<_> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        assert_eq!(documented, routed);
    }

    #[test]
    fn openapi_schemas_match_the_serialized_types() {
        let load = LoadRequest {
            path: "/m.gguf".into(),
            name: Some("m".into()),
            prefault: true,
            mlock: MlockMode::Try,
            copy: false,
            devices: vec!["cpu".into()],
            placement: Default::default(),
            spawn_workers: false,
            serve_while_loading: true,
            worker_options: Default::default(),
        };
        assert_eq!(
            keys(&serde_json::to_value(&load).unwrap()),
            schema_properties("LoadRequest")
        );

        let status = Status {
            version: "0".into(),
            pid: 1,
            uptime_s: 0,
            socket: "/s".into(),
            models: 0,
            models_ready: 0,
            mapped_bytes: 0,
            resident_bytes: 0,
            host_memory: Default::default(),
        };
        let status = serde_json::to_value(&status).unwrap();
        assert_eq!(keys(&status), schema_properties("Status"));
        assert_eq!(
            keys(&status["host_memory"]),
            keys(
                &openapi()["components"]["schemas"]["Status"]["properties"]["host_memory"]
                    ["properties"]
            )
        );

        let model = ModelInfo {
            name: "m".into(),
            path: "/m".into(),
            files: vec![],
            state: ModelState::Ready,
            serving_while_loading: false,
            error: None,
            warnings: vec![],
            architecture: None,
            hyper_params: None,
            tensor_count: 0,
            file_bytes: 0,
            split: None,
            copy: false,
            prefault: true,
            mlock: MlockMode::Off,
            shares_mapping_with: None,
            residency: Residency::default(),
            workers: vec![],
            loaded_at: 0,
            load_ms: None,
            layers: vec![],
            plan: None,
            text: None,
            text_error: None,
        };
        let model = serde_json::to_value(&model).unwrap();
        assert_eq!(keys(&model), schema_properties("ModelInfo"));
        let required: BTreeSet<String> = openapi()["components"]["schemas"]["ModelInfo"]
            ["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(keys(&model), required);
        assert_eq!(keys(&model["residency"]), schema_properties("Residency"));

        for (schema, request) in [
            (
                "TokenizeRequest",
                serde_json::to_value(TokenizeRequest {
                    model: "m".into(),
                    content: "c".into(),
                    add_special: false,
                    parse_special: false,
                    with_pieces: false,
                })
                .unwrap(),
            ),
            (
                "ScaleRequest",
                serde_json::to_value(ScaleRequest {
                    workers: 2,
                    device: Some("cpu".into()),
                    drain_timeout_ms: Some(1),
                })
                .unwrap(),
            ),
            (
                "DetokenizeRequest",
                serde_json::to_value(DetokenizeRequest {
                    model: "m".into(),
                    tokens: vec![1],
                    special: false,
                })
                .unwrap(),
            ),
        ] {
            assert_eq!(keys(&request), schema_properties(schema), "{schema}");
        }

        let error = ErrorBody {
            error: ErrorDetail {
                message: "m".into(),
                kind: "invalid_request_error".into(),
                param: Some("p".into()),
                code: "c".into(),
            },
        };
        assert_eq!(
            keys(&serde_json::to_value(&error).unwrap()),
            schema_properties("Error")
        );
    }

    #[test]
    fn openapi_event_schema_covers_every_event() {
        let events = [
            Event::ModelState {
                model: "m".into(),
                state: ModelState::Failed,
                error: Some("e".into()),
            },
            Event::Progress {
                model: "m".into(),
                phase: Phase::Prefault,
                done_bytes: 1,
                total_bytes: 2,
            },
            Event::ModelUnloaded { model: "m".into() },
            Event::WorkerState {
                model: "m".into(),
                worker: "m-0".into(),
                device: "cpu".into(),
                state: crate::api::WorkerState::Ready,
                pid: Some(1),
                restarts: 0,
                error: Some("e".into()),
            },
            Event::WorkerLayerReady {
                model: "m".into(),
                worker: "m-0".into(),
                layer: 3,
            },
            Event::WorkerProgress {
                model: "m".into(),
                worker: "m-0".into(),
                done_bytes: 1,
                total_bytes: 2,
                layers_done: 0,
                layers_total: 1,
            },
            Event::ModelScaled {
                model: "m".into(),
                workers: 2,
                added: vec!["m-1".into()],
                draining: vec!["m-0".into()],
            },
            Event::Lagged { missed: 3 },
        ];
        let props = schema_properties("Event");
        let kinds = &openapi()["components"]["schemas"]["Event"]["properties"]["type"]["enum"];
        for event in events {
            let v = serde_json::to_value(Envelope {
                seq: 1,
                time_ms: 2,
                event,
            })
            .unwrap();
            assert!(keys(&v).is_subset(&props), "{v}");
            assert!(kinds.as_array().unwrap().contains(&v["type"]), "{v}");
        }
    }
}
