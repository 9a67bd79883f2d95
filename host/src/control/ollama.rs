//! Ollama's API, for the tools that speak only it: `POST /api/chat`, `POST /api/generate`,
//! `GET /api/tags`, `GET /api/ps` and `GET /api/version`.
//!
//! A request is translated into the OpenAI form (`options` to sampling fields, `num_predict` to
//! `max_tokens`) and goes through the same checks, template and gateway; the answer comes back
//! in Ollama's shape, streamed as NDJSON by default, as Ollama does. Errors are Ollama's
//! `{"error": "..."}`.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, StatusCode};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::events::ChannelBody;
use super::openai::{admit_error, parse, Kind};
use super::routes::{blocking, json_body};
use super::{json_response, AppState, Response};
use crate::gateway::{Event, Usage};

/// RFC 3339 in UTC with milliseconds, as Ollama writes `created_at`.
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (y, m, day) = modelhost_text::chat::civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_millis()
    )
}

/// Ollama's error body for an API error.
pub fn error_body(e: &ApiError) -> Value {
    json!({ "error": e.message })
}

/// `options` and the top-level fields, as OpenAI fields.
fn translate(body: &Map<String, Value>, chat: bool) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    let model = body
        .get("model")
        .cloned()
        .ok_or_else(|| ApiError::invalid("model", "missing_field", "model is required"))?;
    out.insert("model".into(), model);
    let options = match body.get("options") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(o)) => o.clone(),
        Some(_) => {
            return Err(ApiError::invalid(
                "options",
                "invalid_value",
                "options must be an object",
            ))
        }
    };
    // Ollama's defaults, where they differ from OpenAI's.
    out.insert("temperature".into(), json!(0.8));
    out.insert("top_k".into(), json!(40));
    out.insert("top_p".into(), json!(0.9));
    for (ours, theirs) in [
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("top_k", "top_k"),
        ("min_p", "min_p"),
        ("seed", "seed"),
        ("stop", "stop"),
        ("repetition_penalty", "repeat_penalty"),
        ("presence_penalty", "presence_penalty"),
        ("frequency_penalty", "frequency_penalty"),
    ] {
        if let Some(v) = options.get(theirs) {
            out.insert(ours.into(), v.clone());
        }
    }
    match options.get("num_predict").and_then(Value::as_i64) {
        Some(n) if n > 0 => {
            out.insert("max_tokens".into(), json!(n));
        }
        _ => {}
    }
    let ignored: Vec<&String> = options
        .keys()
        .filter(|k| {
            !matches!(
                k.as_str(),
                "temperature"
                    | "top_p"
                    | "top_k"
                    | "min_p"
                    | "seed"
                    | "stop"
                    | "repeat_penalty"
                    | "presence_penalty"
                    | "frequency_penalty"
                    | "num_predict"
            )
        })
        .collect();
    if !ignored.is_empty() {
        tracing::warn!(options = ?ignored, "ignoring Ollama options this server does not apply (the context is the model's placement)");
    }
    if let Some(format) = body.get("format").filter(|f| !f.is_null()) {
        return Err(ApiError::invalid(
            "format",
            "unsupported_value",
            format!("format {format} is not supported (constrained decoding is not built)"),
        ));
    }
    if chat {
        out.insert(
            "messages".into(),
            body.get("messages").cloned().unwrap_or(Value::Null),
        );
        if let Some(tools) = body.get("tools") {
            out.insert("tools".into(), tools.clone());
        }
    } else {
        let prompt = body.get("prompt").and_then(Value::as_str).unwrap_or("");
        if body.get("raw").and_then(Value::as_bool) == Some(true) {
            out.insert("prompt".into(), json!(prompt));
        } else {
            let mut messages = Vec::new();
            if let Some(system) = body.get("system").and_then(Value::as_str) {
                messages.push(json!({ "role": "system", "content": system }));
            }
            messages.push(json!({ "role": "user", "content": prompt }));
            out.insert("messages".into(), Value::Array(messages));
        }
    }
    Ok(out)
}

/// `POST /api/chat` (`chat`) and `POST /api/generate`.
pub async fn generate(
    state: Arc<AppState>,
    req: Request<Incoming>,
    chat: bool,
    request_id: u64,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let body: Value = json_body(&state, req).await?;
    let Value::Object(body) = body else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the body must be a JSON object",
        ));
    };
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(true);
    let translated = translate(&body, chat)?;
    let kind = if translated.contains_key("messages") {
        Kind::Chat
    } else {
        Kind::Completion
    };
    let (parsed, text) = parse(&state, kind, translated, request_id).await?;
    let model = parsed.generation.model.clone();
    let mut events = state
        .gateway
        .start(parsed.generation, text)
        .map_err(admit_error)?;
    let line = move |text: &str, done: Option<(&str, Usage, u128)>| -> Value {
        let mut v = json!({ "model": model, "created_at": rfc3339(SystemTime::now()) });
        if chat {
            v["message"] = json!({ "role": "assistant", "content": text });
        } else {
            v["response"] = json!(text);
        }
        v["done"] = json!(done.is_some());
        if let Some((reason, usage, ns)) = done {
            v["done_reason"] = json!(reason);
            v["total_duration"] = json!(ns);
            v["load_duration"] = json!(0);
            v["prompt_eval_count"] = json!(usage.prompt_tokens);
            v["eval_count"] = json!(usage.completion_tokens);
        }
        v
    };
    if !stream {
        let mut whole = String::new();
        while let Some(event) = events.recv().await {
            match event {
                Event::Placed { .. } => {}
                Event::Text { text, .. } => whole.push_str(&text),
                Event::Failed { message } => {
                    return Err(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "generation_failed",
                        message,
                    ))
                }
                Event::Done { finish, usage, .. } => {
                    let v = line(
                        &whole,
                        Some((finish.as_str(), usage, started.elapsed().as_nanos())),
                    );
                    return Ok(json_response(StatusCode::OK, &v));
                }
            }
        }
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "generation_failed",
            "the request ended without an answer",
        ));
    }
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let ndjson = |v: Value| {
            let mut b = serde_json::to_vec(&v).unwrap_or_default();
            b.push(b'\n');
            Bytes::from(b)
        };
        while let Some(event) = events.recv().await {
            let bytes = match event {
                Event::Placed { .. } => continue,
                Event::Text { text, .. } => ndjson(line(&text, None)),
                Event::Done { finish, usage, .. } => {
                    let _ = tx
                        .send(ndjson(line(
                            "",
                            Some((finish.as_str(), usage, started.elapsed().as_nanos())),
                        )))
                        .await;
                    return;
                }
                Event::Failed { message } => {
                    let _ = tx.send(ndjson(json!({ "error": message }))).await;
                    return;
                }
            };
            if tx.send(bytes).await.is_err() {
                return;
            }
        }
    });
    let mut response = Response::new(ChannelBody(rx).boxed());
    response.headers_mut().insert(
        CONTENT_TYPE,
        "application/x-ndjson".parse().expect("static header"),
    );
    Ok(response)
}

fn details(m: &crate::api::ModelInfo) -> Value {
    json!({
        "format": "gguf",
        "family": m.architecture,
        "families": [m.architecture],
        "parameter_size": "",
        "quantization_level": "",
    })
}

/// `GET /api/tags` (every loaded model) and `GET /api/ps` (those with a worker computing).
pub async fn models(state: Arc<AppState>, running_only: bool) -> Result<Response, ApiError> {
    let registry = Arc::clone(&state.registry);
    let models = blocking(move || registry.list()).await?;
    let list: Vec<Value> = models
        .iter()
        .filter(|m| !running_only || m.workers.iter().any(crate::api::WorkerInfo::computes))
        .map(|m| {
            let loaded = UNIX_EPOCH + std::time::Duration::from_secs(m.loaded_at);
            let mut v = json!({
                "name": m.name,
                "model": m.name,
                "size": m.file_bytes,
                "digest": "",
                "details": details(m),
            });
            if running_only {
                // Loaded until unloaded: no expiry.
                v["expires_at"] = json!("9999-12-31T23:59:59Z");
                v["size_vram"] = json!(0);
            } else {
                v["modified_at"] = json!(rfc3339(loaded));
            }
            v
        })
        .collect();
    Ok(json_response(StatusCode::OK, &json!({ "models": list })))
}

pub fn version() -> Response {
    json_response(
        StatusCode::OK,
        &json!({ "version": env!("CARGO_PKG_VERSION") }),
    )
}
