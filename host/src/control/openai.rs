//! OpenAI's generation API: `POST /v1/chat/completions` and `POST /v1/completions`, whole or
//! streamed as server-sent events the way the `openai` clients parse them.
//!
//! A request is read field by field, so that each bad value is a 400 naming its field, and
//! fields this server does not know are ignored with a logged warning (as vLLM does). The chat
//! template is rendered and the prompt tokenized here, the context checked before anything is
//! queued, then the gateway places the request and streams its text.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Request, StatusCode};
use modelhost_protocol::wire::{Sampling, MAX_BIAS_ENTRIES, MAX_TOP_LOGPROBS};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::events::ChannelBody;
use super::routes::{blocking, json_body, text_error};
use super::{json_response, AppState, Response};
use crate::gateway::render::{RenderError, RenderJob};
use crate::gateway::{AdmitError, Event, Finish, Generation, TokenInfo, Usage};
use crate::registry::Serving;

/// How often a stream that waits (in the queue, or on a slow step) sends a comment, so that
/// proxies and clients do not time it out.
const KEEPALIVE: Duration = Duration::from_secs(5);
/// The most stop strings a request may give.
const MAX_STOP_STRINGS: usize = 16;

/// Which endpoint.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
}

/// A request read and checked, ready for the gateway.
pub(super) struct Parsed {
    pub(super) generation: Generation,
    pub(super) stream: bool,
    include_usage: bool,
    /// Chat logprobs (`logprobs: true`), or completions' `logprobs: N`.
    logprobs: bool,
}

fn field_error(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(param, "invalid_value", message)
}

/// Fields a request may carry that this server reads or deliberately ignores.
const KNOWN: &[&str] = &[
    "model",
    "messages",
    "prompt",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "seed",
    "stop",
    "stop_token_ids",
    "ignore_eos",
    "min_tokens",
    "n",
    "stream",
    "stream_options",
    "logprobs",
    "top_logprobs",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "chat_template_kwargs",
    "echo",
    "suffix",
    "best_of",
    "user",
    "metadata",
    "store",
];

struct Fields<'a> {
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        self.get(name)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| field_error(name, format!("{name} must be true or false")))
            })
            .transpose()
    }

    fn number(&self, name: &str, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
        self.get(name)
            .map(|v| match v.as_f64() {
                Some(x) if x.is_finite() && (lo..=hi).contains(&x) => Ok(x),
                _ => Err(field_error(
                    name,
                    format!("{name} must be a number from {lo} to {hi}, not {v}"),
                )),
            })
            .transpose()
    }

    fn integer(&self, name: &str, lo: i64, hi: i64) -> Result<Option<i64>, ApiError> {
        self.get(name)
            .map(|v| match v.as_i64() {
                Some(x) if (lo..=hi).contains(&x) => Ok(x),
                _ => Err(field_error(
                    name,
                    format!("{name} must be an integer from {lo} to {hi}, not {v}"),
                )),
            })
            .transpose()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A seed for a request that gave none: fresh per request, so that unseeded requests differ.
fn fresh_seed(request: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut z = nanos ^ request.rotate_left(32) ^ u64::from(std::process::id());
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A chat message's content as templates expect it: a string. Text parts are joined; other
/// parts (images, audio) are refused by name.
pub fn flatten_messages(messages: &Value) -> Result<Value, ApiError> {
    let list = messages
        .as_array()
        .filter(|l| !l.is_empty())
        .ok_or_else(|| field_error("messages", "messages must be a non-empty array"))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let mut m = m
            .as_object()
            .cloned()
            .ok_or_else(|| field_error("messages", format!("messages[{i}] must be an object")))?;
        if !m.get("role").is_some_and(Value::is_string) {
            return Err(field_error(
                "messages",
                format!("messages[{i}] has no role (a string)"),
            ));
        }
        if let Some(Value::Array(parts)) = m.get("content") {
            let mut text = String::new();
            for part in parts {
                match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text.push_str(t),
                    (kind, _) => {
                        return Err(field_error(
                            "messages",
                            format!(
                                "messages[{i}] has a content part of type {} ; only text parts are supported",
                                kind.unwrap_or("(none)")
                            ),
                        ))
                    }
                }
            }
            m.insert("content".into(), Value::String(text));
        }
        out.push(Value::Object(m));
    }
    Ok(Value::Array(out))
}

/// Reads and checks a request, renders and tokenizes its prompt.
pub(super) async fn parse(
    state: &Arc<AppState>,
    kind: Kind,
    body: Map<String, Value>,
    request_id: u64,
) -> Result<(Parsed, Arc<modelhost_text::ModelText>), ApiError> {
    let f = Fields { map: &body };
    let unknown: Vec<&str> = body
        .keys()
        .map(String::as_str)
        .filter(|k| !KNOWN.contains(k))
        .collect();
    if !unknown.is_empty() {
        tracing::warn!(fields = ?unknown, "ignoring request fields this server does not know");
    }
    let model = f
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid("model", "missing_field", "model (a string) is required"))?
        .to_owned();
    let registry = Arc::clone(state.registry());
    let name = model.clone();
    let serving: Serving = blocking(move || registry.serving(&name))
        .await?
        .map_err(text_error)?;
    let text = Arc::clone(&serving.text);
    let tokenizer = text.tokenizer();
    let vocab = tokenizer.vocab().len() as u32;

    check_unsupported(kind, &f)?;

    // The prompt.
    let (prompt, prompt_param) = match kind {
        Kind::Chat => {
            let messages = flatten_messages(f.get("messages").ok_or_else(|| {
                ApiError::invalid("messages", "missing_field", "messages is required")
            })?)?;
            let tools = f.get("tools").cloned();
            if tools.as_ref().is_some_and(|t| !t.is_array()) {
                return Err(field_error("tools", "tools must be an array"));
            }
            let kwargs = match f.get("chat_template_kwargs") {
                None => None,
                Some(Value::Object(m)) => Some(m.clone()),
                Some(_) => {
                    return Err(field_error(
                        "chat_template_kwargs",
                        "chat_template_kwargs must be an object",
                    ))
                }
            };
            let now = now_secs() as i64;
            let source = text
                .template()
                .ok()
                .and_then(|t| t.jinja_source())
                .map(str::to_owned);
            let prompt = match source {
                // A template from the file is code: rendered in the helper, behind its limits.
                Some(source) => {
                    let (bos, eos) = text.bos_eos_texts();
                    let job = RenderJob {
                        source,
                        messages,
                        tools,
                        add_generation_prompt: true,
                        bos_token: bos.to_owned(),
                        eos_token: eos.to_owned(),
                        extra: kwargs,
                        now,
                    };
                    state
                        .gateway
                        .renderer
                        .render(&job)
                        .await
                        .map_err(|e| match e {
                            RenderError::Template(e) => ApiError::new(
                                StatusCode::BAD_REQUEST,
                                "template_error",
                                format!("the model's chat template failed on these messages: {e}"),
                            ),
                            e @ RenderError::Limit(_) => ApiError::new(
                                StatusCode::UNPROCESSABLE_ENTITY,
                                "template_limit",
                                e.to_string(),
                            ),
                        })?
                }
                // A built-in format (or a template that did not compile, whose error this is).
                None => {
                    let rendering = Arc::clone(&text);
                    blocking(move || {
                        rendering.render(&messages, tools.as_ref(), true, kwargs.as_ref(), now)
                    })
                    .await?
                    .map_err(|e| {
                        ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "template_error",
                            format!("the model's chat template cannot be used: {e}"),
                        )
                    })?
                }
            };
            let encoding = Arc::clone(&text);
            let ids = blocking(move || encoding.encode_prompt(&prompt)).await?;
            (ids, "messages")
        }
        Kind::Completion => {
            let p = f.get("prompt").ok_or_else(|| {
                ApiError::invalid("prompt", "missing_field", "prompt is required")
            })?;
            let one = match p {
                Value::Array(items) if items.len() == 1 && !items[0].is_number() => &items[0],
                other => other,
            };
            let ids = match one {
                Value::String(s) => {
                    let s = s.clone();
                    let encoding = Arc::clone(&text);
                    blocking(move || encoding.tokenizer().encode(&s, true, false)).await?
                }
                Value::Array(items) if !items.is_empty() => items
                    .iter()
                    .map(|v| {
                        v.as_u64()
                            .filter(|&id| id < u64::from(vocab))
                            .map(|id| id as u32)
                            .ok_or_else(|| {
                                field_error(
                                    "prompt",
                                    format!("prompt ids must be integers below the vocabulary's {vocab}, not {v}"),
                                )
                            })
                    })
                    .collect::<Result<Vec<u32>, _>>()?,
                _ => {
                    return Err(field_error(
                        "prompt",
                        "prompt must be a string, or an array of token ids (one prompt per request)",
                    ))
                }
            };
            (ids, "prompt")
        }
    };
    if prompt.is_empty() {
        return Err(field_error(prompt_param, "the prompt is empty"));
    }

    // The context budget: stated per slot, never divided silently.
    let context = serving.context.ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_workers",
            format!("model {model:?} has no placement, so no worker can run it"),
        )
    })?;
    let settings = read_settings(
        kind,
        &body,
        &model,
        vocab,
        &tokenizer.vocab().eog().iter().copied().collect::<Vec<_>>(),
        context,
        prompt.len(),
        prompt_param,
        request_id,
    )?;
    let logprobs = settings.logprobs;
    let generation = Generation {
        model,
        prompt,
        sampling: settings.sampling,
        max_tokens: settings.max_tokens,
        stop_tokens: settings.stop_tokens,
        banned_tokens: settings.banned_tokens,
        min_tokens: settings.min_tokens,
        logprobs,
        stop_strings: settings.stop_strings,
    };
    Ok((
        Parsed {
            generation,
            stream: settings.stream,
            include_usage: settings.include_usage,
            logprobs: logprobs.is_some(),
        },
        text,
    ))
}

/// Fields that ask for what this server does not do: refused by name.
fn check_unsupported(kind: Kind, f: &Fields<'_>) -> Result<(), ApiError> {
    if f.integer("n", 1, 1)
        .map_err(|_| field_error("n", "only n=1 is supported"))?
        .is_some_and(|n| n != 1)
    {
        return Err(field_error("n", "only n=1 is supported"));
    }
    if let Some(format) = f.get("response_format") {
        match format.get("type").and_then(Value::as_str) {
            Some("text") => {}
            other => {
                return Err(ApiError::invalid(
                    "response_format",
                    "unsupported_value",
                    format!(
                        "response_format {} is not supported (constrained decoding is not built); only {{\"type\": \"text\"}}",
                        other.unwrap_or("(no type)")
                    ),
                ))
            }
        }
    }
    if kind == Kind::Completion {
        if f.bool("echo")? == Some(true) {
            return Err(ApiError::invalid(
                "echo",
                "unsupported_value",
                "echo is not supported",
            ));
        }
        if f.get("suffix").is_some() {
            return Err(ApiError::invalid(
                "suffix",
                "unsupported_value",
                "suffix is not supported",
            ));
        }
        if f.integer("best_of", 1, 1)
            .map_err(|_| field_error("best_of", "only best_of=1 is supported"))?
            .is_some_and(|n| n != 1)
        {
            return Err(field_error("best_of", "only best_of=1 is supported"));
        }
    }

    Ok(())
}

/// A request's generation settings, checked: everything but the prompt (which needs the
/// model's template and tokenizer). Pure, so that it can be fuzzed
/// (`fuzz/fuzz_targets/openai_request.rs`).
pub struct Settings {
    pub max_tokens: u32,
    pub sampling: Sampling,
    pub stop_tokens: Vec<u32>,
    pub banned_tokens: Vec<u32>,
    pub min_tokens: u32,
    pub logprobs: Option<u8>,
    pub stop_strings: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
}

/// Reads [`Settings`] from a request body, for a model of `vocab` tokens whose sequences hold
/// `context`, and a prompt of `prompt_len` tokens.
#[allow(clippy::too_many_arguments)]
pub fn read_settings(
    kind: Kind,
    body: &Map<String, Value>,
    model: &str,
    vocab: u32,
    eog: &[u32],
    context: u32,
    prompt_len: usize,
    prompt_param: &str,
    request_id: u64,
) -> Result<Settings, ApiError> {
    let f = Fields { map: body };
    check_unsupported(kind, &f)?;
    let max_tokens = match (
        f.integer("max_completion_tokens", 1, i64::from(u32::MAX))?,
        f.integer("max_tokens", 1, i64::from(u32::MAX))?,
    ) {
        (Some(n), _) | (None, Some(n)) => Some(n as u64),
        (None, None) => None,
    };
    let prompt_len = prompt_len as u64;
    if prompt_len >= u64::from(context) {
        return Err(ApiError::invalid(
            prompt_param,
            "context_length_exceeded",
            format!(
                "the prompt is {prompt_len} tokens; model {model:?} holds {context} tokens per sequence (prompt and output together), so at most {} prompt tokens",
                context - 1
            ),
        ));
    }
    let room = u64::from(context) - prompt_len;
    if let Some(n) = max_tokens.filter(|&n| n > room) {
        return Err(ApiError::invalid(
            "max_tokens",
            "context_length_exceeded",
            format!(
                "the prompt is {prompt_len} tokens and max_tokens asks for {n} more; model {model:?} holds {context} tokens per sequence, so at most {room} can be generated"
            ),
        ));
    }
    let max_tokens = max_tokens.unwrap_or(room) as u32;

    // Sampling.
    let temperature = f.number("temperature", 0.0, 2.0)?.unwrap_or(1.0) as f32;
    let top_p = f.number("top_p", 0.0, 1.0)?.unwrap_or(1.0) as f32;
    if top_p <= 0.0 {
        return Err(field_error("top_p", "top_p must be above 0"));
    }
    let top_k = f
        .integer("top_k", -1, i64::from(u32::MAX))?
        .unwrap_or(0)
        .max(0) as u32;
    let min_p = f.number("min_p", 0.0, 1.0)?.unwrap_or(0.0) as f32;
    let repetition_penalty = f.number("repetition_penalty", 0.01, 100.0)?.unwrap_or(1.0) as f32;
    let presence_penalty = f.number("presence_penalty", -2.0, 2.0)?.unwrap_or(0.0) as f32;
    let frequency_penalty = f.number("frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0) as f32;
    let mut logit_bias = Vec::new();
    if let Some(bias) = f.get("logit_bias") {
        let map = bias
            .as_object()
            .ok_or_else(|| field_error("logit_bias", "logit_bias must map token ids to numbers"))?;
        if map.len() > MAX_BIAS_ENTRIES {
            return Err(field_error(
                "logit_bias",
                format!("logit_bias has more than {MAX_BIAS_ENTRIES} entries"),
            ));
        }
        for (id, v) in map {
            let token = id
                .parse::<u32>()
                .ok()
                .filter(|&t| t < vocab)
                .ok_or_else(|| {
                    field_error(
                        "logit_bias",
                        format!("logit_bias key {id:?} is not a token id below {vocab}"),
                    )
                })?;
            let value = v
                .as_f64()
                .filter(|x| (-100.0..=100.0).contains(x))
                .ok_or_else(|| {
                    field_error(
                        "logit_bias",
                        format!("logit_bias values must be from -100 to 100, not {v}"),
                    )
                })?;
            logit_bias.push((token, value as f32));
        }
    }
    let seed = match f.get("seed") {
        None => fresh_seed(request_id),
        Some(v) => match (v.as_u64(), v.as_i64()) {
            (Some(s), _) => s,
            (None, Some(s)) => s as u64,
            _ => return Err(field_error("seed", "seed must be an integer")),
        },
    };

    // Stops.
    let stop_strings: Vec<String> = match f.get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_owned).ok_or_else(|| {
                    field_error("stop", "stop must be a string or an array of strings")
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(field_error(
                "stop",
                "stop must be a string or an array of strings",
            ))
        }
    };
    if stop_strings.len() > MAX_STOP_STRINGS {
        return Err(field_error(
            "stop",
            format!("at most {MAX_STOP_STRINGS} stop strings"),
        ));
    }
    let mut stop_tokens: Vec<u32> = match f.get("stop_token_ids") {
        None => Vec::new(),
        Some(Value::Array(items)) if items.len() <= MAX_BIAS_ENTRIES => items
            .iter()
            .map(|v| {
                v.as_u64()
                    .filter(|&t| t < u64::from(vocab))
                    .map(|t| t as u32)
                    .ok_or_else(|| {
                        field_error(
                            "stop_token_ids",
                            format!("stop_token_ids must be token ids below {vocab}"),
                        )
                    })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(field_error(
                "stop_token_ids",
                "stop_token_ids must be an array of token ids",
            ))
        }
    };
    let eog: Vec<u32> = eog.to_vec();
    let ignore_eos = f.bool("ignore_eos")?.unwrap_or(false);
    let banned_tokens = if ignore_eos {
        eog
    } else {
        stop_tokens.extend(eog);
        Vec::new()
    };
    stop_tokens.sort_unstable();
    stop_tokens.dedup();
    let min_tokens = f
        .integer("min_tokens", 0, i64::from(u32::MAX))?
        .unwrap_or(0) as u32;

    // Output options.
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(o) => o
            .get("include_usage")
            .map(|v| {
                v.as_bool().ok_or_else(|| {
                    field_error(
                        "stream_options",
                        "stream_options.include_usage must be true or false",
                    )
                })
            })
            .transpose()?
            .unwrap_or(false),
    };
    let top_max = i64::from(MAX_TOP_LOGPROBS);
    let logprobs = match kind {
        Kind::Chat => {
            let on = f.bool("logprobs")?.unwrap_or(false);
            let top = f.integer("top_logprobs", 0, top_max)?;
            if top.is_some() && !on {
                return Err(field_error(
                    "top_logprobs",
                    "top_logprobs needs logprobs: true",
                ));
            }
            on.then(|| top.unwrap_or(0) as u8)
        }
        Kind::Completion => f.integer("logprobs", 0, top_max)?.map(|n| n as u8),
    };

    Ok(Settings {
        max_tokens,
        sampling: Sampling {
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty,
            presence_penalty,
            frequency_penalty,
            logit_bias,
            seed,
        },
        stop_tokens,
        banned_tokens,
        min_tokens,
        logprobs,
        stop_strings,
        stream,
        include_usage,
    })
}

pub(super) fn admit_error(e: AdmitError) -> ApiError {
    match e {
        AdmitError::Busy(message) => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", message)
        }
        AdmitError::Unavailable(message) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_workers", message)
        }
    }
}

/// `POST /v1/chat/completions` and `POST /v1/completions`.
pub async fn completions(
    state: Arc<AppState>,
    req: Request<Incoming>,
    chat: bool,
    request_id: u64,
) -> Result<Response, ApiError> {
    let kind = if chat { Kind::Chat } else { Kind::Completion };
    let body: Value = json_body(&state, req).await?;
    let Value::Object(body) = body else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the body must be a JSON object",
        ));
    };
    let (parsed, text) = parse(&state, kind, body, request_id).await?;
    let model = parsed.generation.model.clone();
    let events = state
        .gateway
        .start(parsed.generation, text)
        .map_err(admit_error)
        .map_err(|mut e| {
            if e.status == StatusCode::TOO_MANY_REQUESTS {
                e.param = None;
            }
            e
        })?;
    let id = match kind {
        Kind::Chat => format!("chatcmpl-{request_id}"),
        Kind::Completion => format!("cmpl-{request_id}"),
    };
    let shape = Shape {
        kind,
        id,
        model,
        created: now_secs(),
        logprobs: parsed.logprobs,
    };
    if parsed.stream {
        Ok(stream(shape, events, parsed.include_usage))
    } else {
        whole(shape, events).await
    }
}

/// What every chunk and response repeats.
struct Shape {
    kind: Kind,
    id: String,
    model: String,
    created: u64,
    logprobs: bool,
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": { "cached_tokens": u.cached_tokens },
    })
}

/// Chat logprobs entries (`{"token", "logprob", "bytes", "top_logprobs"}`).
fn chat_logprobs(tokens: &[TokenInfo]) -> Value {
    Value::Array(
        tokens
            .iter()
            .map(|t| {
                json!({
                    "token": t.text,
                    "logprob": t.logprob,
                    "bytes": t.bytes,
                    "top_logprobs": t.top.iter().map(|(text, bytes, lp)| json!({
                        "token": text, "logprob": lp, "bytes": bytes,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

/// Completions logprobs (`{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`);
/// `offset` is where these tokens' text begins in the whole output.
fn completion_logprobs(tokens: &[TokenInfo], offset: &mut usize) -> Value {
    let mut text_offset = Vec::new();
    for t in tokens {
        text_offset.push(*offset);
        *offset += t.text.len();
    }
    json!({
        "tokens": tokens.iter().map(|t| &t.text).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": tokens.iter().map(|t| {
            t.top.iter().map(|(text, _, lp)| (text.clone(), json!(lp))).collect::<Map<String, Value>>()
        }).collect::<Vec<_>>(),
        "text_offset": text_offset,
    })
}

async fn whole(shape: Shape, mut events: mpsc::Receiver<Event>) -> Result<Response, ApiError> {
    let mut text = String::new();
    let mut tokens: Vec<TokenInfo> = Vec::new();
    let mut worker = None;
    while let Some(event) = events.recv().await {
        match event {
            Event::Placed { worker: w } => worker = Some(w),
            Event::Text {
                text: t,
                tokens: ts,
            } => {
                text.push_str(&t);
                tokens.extend(ts);
            }
            Event::Failed { message } => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "generation_failed",
                    message,
                ))
            }
            Event::Done {
                finish,
                usage,
                worker: w,
            } => {
                let logprobs = match (shape.logprobs, shape.kind) {
                    (false, _) => Value::Null,
                    (true, Kind::Chat) => json!({ "content": chat_logprobs(&tokens) }),
                    (true, Kind::Completion) => completion_logprobs(&tokens, &mut 0),
                };
                let choice = match shape.kind {
                    Kind::Chat => json!({
                        "index": 0,
                        "message": { "role": "assistant", "content": text },
                        "logprobs": logprobs,
                        "finish_reason": finish.as_str(),
                    }),
                    Kind::Completion => json!({
                        "index": 0,
                        "text": text,
                        "logprobs": logprobs,
                        "finish_reason": finish.as_str(),
                    }),
                };
                let body = json!({
                    "id": shape.id,
                    "object": if shape.kind == Kind::Chat { "chat.completion" } else { "text_completion" },
                    "created": shape.created,
                    "model": shape.model,
                    "choices": [choice],
                    "usage": usage_json(&usage),
                    "system_fingerprint": null,
                });
                let mut response = json_response(StatusCode::OK, &body);
                if let Ok(v) = w.parse() {
                    response.headers_mut().insert("x-modelhost-worker", v);
                }
                return Ok(response);
            }
        }
    }
    Err(ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "generation_failed",
        format!(
            "the request ended without an answer{}",
            worker.map(|w| format!(" (worker {w})")).unwrap_or_default()
        ),
    ))
}

fn sse(value: &Value) -> Bytes {
    let mut line = b"data: ".to_vec();
    line.extend(serde_json::to_vec(value).unwrap_or_default());
    line.extend_from_slice(b"\n\n");
    Bytes::from(line)
}

fn stream(shape: Shape, mut events: mpsc::Receiver<Event>, include_usage: bool) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let object = match shape.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completion => "text_completion",
        };
        let chunk = |choice: Value, usage: Option<Value>| {
            let mut c = json!({
                "id": shape.id,
                "object": object,
                "created": shape.created,
                "model": shape.model,
                "system_fingerprint": null,
                "choices": [choice],
            });
            if include_usage {
                c["usage"] = usage.unwrap_or(Value::Null);
            }
            c
        };
        let choice = |text: Option<&str>, logprobs: Value, finish: Option<Finish>, first: bool| {
            let finish = finish.map(Finish::as_str);
            match shape.kind {
                Kind::Chat => {
                    let mut delta = Map::new();
                    if first {
                        delta.insert("role".into(), json!("assistant"));
                    }
                    if let Some(t) = text {
                        delta.insert("content".into(), json!(t));
                    }
                    json!({ "index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish })
                }
                Kind::Completion => json!({
                    "index": 0,
                    "text": text.unwrap_or(""),
                    "logprobs": logprobs,
                    "finish_reason": finish,
                }),
            }
        };
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.tick().await;
        let mut first = true;
        let mut offset = 0usize;
        loop {
            let event = tokio::select! {
                e = events.recv() => e,
                _ = keepalive.tick() => {
                    if tx.send(Bytes::from_static(b": keepalive\n\n")).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            keepalive.reset();
            let Some(event) = event else {
                let error = json!({ "error": { "message": "the request ended without an answer", "type": "server_error", "param": null, "code": "generation_failed" } });
                let _ = tx.send(sse(&error)).await;
                return;
            };
            let bytes = match event {
                Event::Placed { .. } => {
                    if !first || shape.kind != Kind::Chat {
                        continue;
                    }
                    // The role goes out in the first delta, before any text.
                    first = false;
                    sse(&chunk(choice(Some(""), Value::Null, None, true), None))
                }
                Event::Text { text, tokens } => {
                    let logprobs = match (shape.logprobs, shape.kind) {
                        (false, _) => Value::Null,
                        (true, Kind::Chat) => json!({ "content": chat_logprobs(&tokens) }),
                        (true, Kind::Completion) => completion_logprobs(&tokens, &mut offset),
                    };
                    let was_first = std::mem::take(&mut first);
                    sse(&chunk(
                        choice(
                            Some(&text),
                            logprobs,
                            None,
                            was_first && shape.kind == Kind::Chat,
                        ),
                        None,
                    ))
                }
                Event::Done { finish, usage, .. } => {
                    let mut out = Vec::new();
                    let last = match shape.kind {
                        Kind::Chat => choice(None, Value::Null, Some(finish), first),
                        Kind::Completion => choice(Some(""), Value::Null, Some(finish), false),
                    };
                    out.extend_from_slice(&sse(&chunk(last, None)));
                    if include_usage {
                        let mut u = chunk(Value::Null, Some(usage_json(&usage)));
                        u["choices"] = json!([]);
                        out.extend_from_slice(&sse(&u));
                    }
                    out.extend_from_slice(b"data: [DONE]\n\n");
                    let _ = tx.send(Bytes::from(out)).await;
                    return;
                }
                Event::Failed { message } => {
                    let error = json!({ "error": { "message": message, "type": "server_error", "param": null, "code": "generation_failed" } });
                    let _ = tx.send(sse(&error)).await;
                    return;
                }
            };
            if tx.send(bytes).await.is_err() {
                // The client left: dropping `events` cancels the request.
                return;
            }
        }
    });
    let body = ChannelBody(rx)
        .map_err(|never: Infallible| match never {})
        .boxed();
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        "text/event-stream".parse().expect("static header"),
    );
    headers.insert(CACHE_CONTROL, "no-cache".parse().expect("static header"));
    response
}

/// A 429 carries when to retry.
pub fn retry_after(response: &mut Response) {
    if response.status() == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(RETRY_AFTER, "1".parse().expect("static header"));
    }
}
