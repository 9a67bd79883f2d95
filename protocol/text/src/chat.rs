//! Chat templates: turning a conversation into the prompt text a model was trained on.
//!
//! A GGUF usually carries its template as Jinja (`tokenizer.chat_template`). It is rendered
//! here with minijinja, set up the way Hugging Face transformers sets up Python's jinja2 for
//! `apply_chat_template` (the environment the templates are written for): `trim_blocks` and
//! `lstrip_blocks`, loop controls, `raise_exception`, `strftime_now`, a `tojson` that writes
//! what Python's `json.dumps` writes, Python's string and dict methods, and values printed as
//! Python prints them (`True`, `None`, `{'a': 1}`).
//!
//! A model without a template still chats in its own format where its vocabulary shows which:
//! gemma's turn tokens get llama.cpp's built-in gemma format, and everything else chatml.
//!
//! No I/O: the time that `strftime_now` reports is an argument.

use std::fmt::Write as _;

use std::borrow::Cow;
use std::sync::Arc;

use minijinja::value::{Kwargs, Object, ObjectRepr, Rest, ValueKind};
use minijinja::{filters, Environment, Error, ErrorKind, State, Value};

use crate::vocab::Vocab;

/// How a model's conversations become prompts.
pub struct ChatTemplate {
    kind: TemplateKind,
    /// Why this template: shown by `inspect` and logged at load.
    pub origin: TemplateOrigin,
    /// A Jinja template's source (for rendering it elsewhere, behind limits).
    source: Option<String>,
}

enum TemplateKind {
    Jinja(Box<Environment<'static>>),
    Gemma,
    ChatMl,
}

/// Where a model's template comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateOrigin {
    /// `tokenizer.chat_template` in the file.
    File,
    /// No template in the file; the vocabulary has gemma's `<start_of_turn>`.
    BuiltinGemma,
    /// No template in the file; the vocabulary has `<|im_start|>`, or nothing that names a
    /// format.
    BuiltinChatMl { has_im_start: bool },
}

impl std::fmt::Display for TemplateOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TemplateOrigin::File => f.write_str("the model's own (tokenizer.chat_template)"),
            TemplateOrigin::BuiltinGemma => f.write_str(
                "built-in gemma (no template in the file; the vocabulary has <start_of_turn>)",
            ),
            TemplateOrigin::BuiltinChatMl { has_im_start: true } => f.write_str(
                "built-in chatml (no template in the file; the vocabulary has <|im_start|>)",
            ),
            TemplateOrigin::BuiltinChatMl {
                has_im_start: false,
            } => f.write_str(
                "built-in chatml (no template in the file, and no turn tokens that name a format)",
            ),
        }
    }
}

/// A template that cannot be compiled or rendered: the engine's message, with the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chat template: {0}")]
pub struct TemplateError(pub String);

impl From<Error> for TemplateError {
    fn from(e: Error) -> Self {
        let mut msg = e.to_string();
        if let Some(line) = e.line() {
            if !msg.contains("line ") {
                let _ = write!(msg, " (line {line})");
            }
        }
        TemplateError(msg)
    }
}

/// What a template renders.
pub struct ChatInput<'a> {
    /// `[{"role": ..., "content": ...}, ...]`, as the client sent it.
    pub messages: &'a serde_json::Value,
    /// Tool definitions, or none.
    pub tools: Option<&'a serde_json::Value>,
    pub add_generation_prompt: bool,
    pub bos_token: &'a str,
    pub eos_token: &'a str,
    /// More variables for the template (`chat_template_kwargs`, e.g. `enable_thinking`).
    pub extra: Option<&'a serde_json::Map<String, serde_json::Value>>,
    /// Seconds since the Unix epoch (UTC), for `strftime_now`.
    pub now: i64,
}

/// The most instructions one render may run: a template that loops without end is stopped.
const FUEL: u64 = 20_000_000;

/// The variable through which `strftime_now` finds the render's time.
const NOW_VAR: &str = "__modelhost_now";

impl ChatTemplate {
    /// The template of a model: its own, else the built-in format its vocabulary points to.
    pub fn for_model(
        source: Option<&str>,
        vocab: Option<&Vocab>,
    ) -> Result<ChatTemplate, TemplateError> {
        if let Some(source) = source {
            return ChatTemplate::jinja(source);
        }
        let has = |t: &str| vocab.is_some_and(|v| v.id(t).is_some());
        Ok(if has("<start_of_turn>") {
            ChatTemplate {
                kind: TemplateKind::Gemma,
                origin: TemplateOrigin::BuiltinGemma,
                source: None,
            }
        } else {
            ChatTemplate {
                kind: TemplateKind::ChatMl,
                origin: TemplateOrigin::BuiltinChatMl {
                    has_im_start: has("<|im_start|>"),
                },
                source: None,
            }
        })
    }

    /// A Jinja template, compiled.
    pub fn jinja(source: &str) -> Result<ChatTemplate, TemplateError> {
        let mut env = environment();
        env.add_template_owned("chat_template", without_generation_tags(source))?;
        Ok(ChatTemplate {
            kind: TemplateKind::Jinja(Box::new(env)),
            origin: TemplateOrigin::File,
            source: Some(source.to_owned()),
        })
    }

    /// The Jinja source, for a template from the file; None for a built-in format (which runs
    /// no template code).
    pub fn jinja_source(&self) -> Option<&str> {
        self.source.as_deref()
    }

    /// The built-in format `name` ("gemma" or "chatml").
    pub fn builtin(name: &str) -> Option<ChatTemplate> {
        Some(match name {
            "gemma" => ChatTemplate {
                kind: TemplateKind::Gemma,
                origin: TemplateOrigin::BuiltinGemma,
                source: None,
            },
            "chatml" => ChatTemplate {
                kind: TemplateKind::ChatMl,
                origin: TemplateOrigin::BuiltinChatMl { has_im_start: true },
                source: None,
            },
            _ => return None,
        })
    }

    /// The prompt for a conversation.
    pub fn render(&self, input: &ChatInput<'_>) -> Result<String, TemplateError> {
        let messages = input
            .messages
            .as_array()
            .ok_or_else(|| TemplateError("messages must be an array".into()))?;
        match &self.kind {
            TemplateKind::Jinja(env) => {
                let template = env.get_template("chat_template")?;
                let mut ctx = serde_json::Map::new();
                if let Some(extra) = input.extra {
                    for (k, v) in extra {
                        ctx.insert(k.clone(), v.clone());
                    }
                }
                ctx.insert("messages".into(), input.messages.clone());
                ctx.insert(
                    "tools".into(),
                    input.tools.cloned().unwrap_or(serde_json::Value::Null),
                );
                ctx.insert("documents".into(), serde_json::Value::Null);
                ctx.insert(
                    "add_generation_prompt".into(),
                    input.add_generation_prompt.into(),
                );
                ctx.insert("bos_token".into(), input.bos_token.into());
                ctx.insert("eos_token".into(), input.eos_token.into());
                ctx.insert(NOW_VAR.into(), input.now.into());
                // The absent tools and documents are Python's None, which cannot be iterated.
                let ctx = ctx.into_iter().map(|(k, v)| {
                    let value = if v.is_null() && (k == "tools" || k == "documents") {
                        Value::from_object(PyNone)
                    } else {
                        Value::from_serialize(&v)
                    };
                    (k, value)
                });
                Ok(template.render(Value::from_iter(ctx))?)
            }
            TemplateKind::Gemma => Ok(gemma(messages, input.add_generation_prompt)),
            TemplateKind::ChatMl => Ok(chatml(messages, input.add_generation_prompt)),
        }
    }
}

/// A message's text: its `content` string, or the text parts of a content array.
fn text_of(message: &serde_json::Value) -> String {
    match message.get("content") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
            .collect(),
        _ => String::new(),
    }
}

fn role_of(message: &serde_json::Value) -> &str {
    message.get("role").and_then(|r| r.as_str()).unwrap_or("")
}

/// Trims ASCII white space as C's `isspace` sees it.
fn trim_c(s: &str) -> &str {
    s.trim_matches(|c: char| matches!(c, ' ' | '\t' | '\n' | '\x0B' | '\x0C' | '\r'))
}

/// llama.cpp's built-in gemma format: system messages go before the next user turn, the
/// assistant is "model", and every message is trimmed.
fn gemma(messages: &[serde_json::Value], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    let mut system = String::new();
    for m in messages {
        let role = role_of(m);
        let text = text_of(m);
        if role == "system" {
            system.push_str(trim_c(&text));
            continue;
        }
        let role = if role == "assistant" { "model" } else { role };
        let _ = writeln!(out, "<start_of_turn>{role}");
        if !system.is_empty() && role != "model" {
            out.push_str(&system);
            out.push_str("\n\n");
            system.clear();
        }
        out.push_str(trim_c(&text));
        out.push_str("<end_of_turn>\n");
    }
    if add_generation_prompt {
        out.push_str("<start_of_turn>model\n");
    }
    out
}

/// chatml, as llama.cpp writes it.
fn chatml(messages: &[serde_json::Value], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    for m in messages {
        let _ = write!(
            out,
            "<|im_start|>{}\n{}<|im_end|>\n",
            role_of(m),
            text_of(m)
        );
    }
    if add_generation_prompt {
        out.push_str("<|im_start|>assistant\n");
    }
    out
}

/// transformers' `{% generation %}` block (it marks the assistant's text for training) renders
/// its body unchanged; minijinja has no such tag, so it becomes an `if true` block, which keeps
/// the tags' white-space control.
fn without_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find("{%") {
        out.push_str(&rest[..at]);
        let tag = &rest[at..];
        // The tag ends at the first `%}` after its `{%` (`{%}` is not an empty tag).
        let Some(end) = tag[2..].find("%}").map(|e| e + 2) else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (lead, body) = match inner.strip_prefix(['-', '+']) {
            Some(b) => (&inner[..1], b),
            None => ("", inner),
        };
        let (body, trail) = match body.strip_suffix(['-', '+']) {
            Some(b) => (b, &body[b.len()..]),
            None => (body, ""),
        };
        match body.trim() {
            "generation" => {
                let _ = write!(out, "{{%{lead} if true {trail}%}}");
            }
            "endgeneration" => {
                let _ = write!(out, "{{%{lead} endif {trail}%}}");
            }
            _ => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(200);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(|out, _state, value| {
        let mut s = String::new();
        python_str(value, &mut s);
        out.write_str(&s).map_err(Error::from)
    });
    env.add_filter("tojson", tojson);
    // jinja2's `string` is Python's `str()`.
    env.add_filter("string", |v: &Value| {
        let mut s = String::new();
        python_str(v, &mut s);
        s
    });
    // jinja2's `map`, `select`, `reject`, `selectattr` and `rejectattr` pass over None as empty
    // and return generators: they can be listed, joined and iterated, but `tojson` and
    // `length` refuse them.
    env.add_filter("map", |state: &State, value: Value, args: Rest<Value>| {
        filters::map(state, unwrap_none(value), args).map(generator)
    });
    env.add_filter(
        "select",
        |state: &State, value: Value, test: Option<Cow<'_, str>>, args: Rest<Value>| {
            filters::select(state, unwrap_none(value), test, args).map(generator)
        },
    );
    env.add_filter(
        "reject",
        |state: &State, value: Value, test: Option<Cow<'_, str>>, args: Rest<Value>| {
            filters::reject(state, unwrap_none(value), test, args).map(generator)
        },
    );
    env.add_filter(
        "selectattr",
        |state: &State,
         value: Value,
         attr: Cow<'_, str>,
         test: Option<Cow<'_, str>>,
         args: Rest<Value>| {
            filters::selectattr(state, unwrap_none(value), attr, test, args).map(generator)
        },
    );
    env.add_filter(
        "rejectattr",
        |state: &State,
         value: Value,
         attr: Cow<'_, str>,
         test: Option<Cow<'_, str>>,
         args: Rest<Value>| {
            filters::rejectattr(state, unwrap_none(value), attr, test, args).map(generator)
        },
    );
    // None is not iterable in Python (minijinja iterates it as empty).
    env.add_test("iterable", |v: &Value| {
        !is_python_none(v) && v.try_iter().is_ok()
    });
    env.add_test("none", |v: &Value| is_python_none(v));
    env.add_function(
        "raise_exception",
        |message: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        },
    );
    env.add_function(
        "strftime_now",
        |state: &State, format: String| -> Result<String, Error> {
            let now = state.lookup(NOW_VAR).and_then(|v| v.as_i64()).unwrap_or(0);
            Ok(strftime(now, &format))
        },
    );
    env
}

/// Python's None where jinja2 would fail to iterate it (a value passed as None, such as the
/// tools of a request without tools): false, printed as `None`, `is none`, but not iterable
/// and without a length, as in Python. (minijinja's own none iterates as empty.)
#[derive(Debug)]
struct PyNone;

impl Object for PyNone {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn is_true(self: &Arc<Self>) -> bool {
        false
    }

    fn render(self: &Arc<Self>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("None")
    }
}

/// The template engine's own none in place of [`PyNone`], for filters that accept none.
fn unwrap_none(v: Value) -> Value {
    if v.downcast_object_ref::<PyNone>().is_some() {
        Value::from(())
    } else {
        v
    }
}

/// A sequence as a Python generator would behave in a template.
fn generator(items: Vec<Value>) -> Value {
    Value::make_iterable(move || items.clone().into_iter())
}

fn is_python_none(v: &Value) -> bool {
    v.is_none() || v.downcast_object_ref::<PyNone>().is_some()
}

/// How Python's `str()` prints a value: strings as they are, everything else as `repr`.
fn python_str(v: &Value, out: &mut String) {
    match v.kind() {
        ValueKind::String => out.push_str(v.as_str().unwrap_or_default()),
        ValueKind::Undefined => {}
        _ => python_repr(v, out),
    }
}

/// Python's `repr`, for the values a template meets.
fn python_repr(v: &Value, out: &mut String) {
    if is_python_none(v) {
        out.push_str("None");
        return;
    }
    match v.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if v.is_true() { "True" } else { "False" }),
        ValueKind::String => {
            let s = v.as_str().unwrap_or_default();
            // Single quotes unless the text has one and no double quote.
            let quote = if s.contains('\'') && !s.contains('"') {
                '"'
            } else {
                '\''
            };
            out.push(quote);
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if c == quote => {
                        out.push('\\');
                        out.push(c);
                    }
                    c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                        let _ = write!(out, "\\x{:02x}", c as u32);
                    }
                    c => out.push(c),
                }
            }
            out.push(quote);
        }
        ValueKind::Number => {
            if let Some(f) = float_of(v) {
                python_float(f, out);
            } else {
                let _ = write!(out, "{v}");
            }
        }
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            if let Ok(items) = v.try_iter() {
                for (i, item) in items.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    python_repr(&item, out);
                }
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            if let Ok(keys) = v.try_iter() {
                for (i, k) in keys.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    python_repr(&k, out);
                    out.push_str(": ");
                    python_repr(&v.get_item(&k).unwrap_or_default(), out);
                }
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{v}");
        }
    }
}

/// The value as a float, if it is one (integers are not).
fn float_of(v: &Value) -> Option<f64> {
    if v.as_i64().is_some() || v.is_integer() {
        return None;
    }
    f64::try_from(v.clone()).ok()
}

/// Python's `repr(float)`: the shortest digits that read back, with `.0` on whole numbers,
/// and exponents from 1e16 and below 1e-4.
fn python_float(f: f64, out: &mut String) {
    if f.is_nan() {
        out.push_str("nan");
        return;
    }
    if f.is_infinite() {
        out.push_str(if f > 0.0 { "inf" } else { "-inf" });
        return;
    }
    if f == 0.0 {
        out.push_str(if f.is_sign_negative() { "-0.0" } else { "0.0" });
        return;
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "1.2345e17", "-5e-7".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').expect("an exponent");
    let exp: i32 = exp.parse().expect("an integer exponent");
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    if negative {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
}

/// transformers' `tojson`: Python's `json.dumps` with `ensure_ascii=False`, and its `indent`,
/// `separators` and `sort_keys` options.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_i64() {
            Some(n) => Some(" ".repeat(n.max(0) as usize)),
            None => Some(v.as_str().unwrap_or_default().to_owned()),
        },
    };
    let (item_sep, key_sep) = match separators {
        Some(s) if !s.is_none() => {
            let a = s.get_item(&Value::from(0))?;
            let b = s.get_item(&Value::from(1))?;
            (
                a.as_str().unwrap_or(", ").to_owned(),
                b.as_str().unwrap_or(": ").to_owned(),
            )
        }
        _ => (
            if indent.is_some() { "," } else { ", " }.to_owned(),
            ": ".to_owned(),
        ),
    };
    let opts = JsonOptions {
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    let mut out = String::new();
    json_value(value, &opts, 0, &mut out)?;
    Ok(Value::from(out))
}

struct JsonOptions {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

fn json_value(v: &Value, o: &JsonOptions, depth: usize, out: &mut String) -> Result<(), Error> {
    if depth > 200 {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: nesting too deep",
        ));
    }
    if is_python_none(v) {
        out.push_str("null");
        return Ok(());
    }
    match v.kind() {
        ValueKind::Undefined => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: Object of type Undefined is not JSON serializable",
            ))
        }
        // What `map` and `select` return: a generator in Python, which json.dumps refuses.
        ValueKind::Iterable => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: Object of type generator is not JSON serializable",
            ))
        }
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => match float_of(v) {
            Some(f) if f.is_nan() => out.push_str("NaN"),
            Some(f) if f.is_infinite() => {
                out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" })
            }
            Some(f) => python_float(f, out),
            None => {
                let _ = write!(out, "{v}");
            }
        },
        ValueKind::String => json_string(v.as_str().unwrap_or_default(), o.ensure_ascii, out),
        ValueKind::Seq => {
            let items: Vec<Value> = v.try_iter()?.collect();
            json_container(out, o, depth, '[', ']', items.len(), |i, out| {
                json_value(&items[i], o, depth + 1, out)
            })?;
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if o.sort_keys {
                keys.sort_by_key(|k| k.to_string());
            }
            json_container(out, o, depth, '{', '}', keys.len(), |i, out| {
                let k = &keys[i];
                match k.as_str() {
                    Some(s) => json_string(s, o.ensure_ascii, out),
                    None => json_string(&k.to_string(), o.ensure_ascii, out),
                }
                out.push_str(&o.key_sep);
                json_value(&v.get_item(k)?, o, depth + 1, out)
            })?;
        }
        _ => json_string(&v.to_string(), o.ensure_ascii, out),
    }
    Ok(())
}

fn json_container(
    out: &mut String,
    o: &JsonOptions,
    depth: usize,
    open: char,
    close: char,
    n: usize,
    mut item: impl FnMut(usize, &mut String) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if n == 0 {
        out.push(close);
        return Ok(());
    }
    for i in 0..n {
        if i > 0 {
            out.push_str(&o.item_sep);
        }
        if let Some(ind) = &o.indent {
            out.push('\n');
            for _ in 0..=depth {
                out.push_str(ind);
            }
        }
        item(i, out)?;
    }
    if let Some(ind) = &o.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(ind);
        }
    }
    out.push(close);
    Ok(())
}

fn json_string(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && !c.is_ascii() => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `strftime` for a UTC time, with the directives templates use.
fn strftime(now: i64, format: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = now.div_euclid(86_400);
    let secs = now.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday.
    let yday = days - days_from_civil(y, 1, 1) + 1;
    let (hh, mm, ss) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(d2) = chars.next() else {
            out.push('%');
            break;
        };
        let _ = match d2 {
            'Y' => write!(out, "{y}"),
            'y' => write!(out, "{:02}", y.rem_euclid(100)),
            'm' => write!(out, "{m:02}"),
            'd' => write!(out, "{d:02}"),
            'e' => write!(out, "{d:2}"),
            'B' => write!(out, "{}", MONTHS[m as usize - 1]),
            'b' | 'h' => write!(out, "{}", &MONTHS[m as usize - 1][..3]),
            'A' => write!(out, "{}", DAYS[weekday]),
            'a' => write!(out, "{}", &DAYS[weekday][..3]),
            'H' => write!(out, "{hh:02}"),
            'I' => write!(out, "{:02}", if hh % 12 == 0 { 12 } else { hh % 12 }),
            'p' => write!(out, "{}", if hh < 12 { "AM" } else { "PM" }),
            'M' => write!(out, "{mm:02}"),
            'S' => write!(out, "{ss:02}"),
            'j' => write!(out, "{yday:03}"),
            'w' => write!(out, "{}", (weekday + 1) % 7),
            'u' => write!(out, "{}", weekday + 1),
            'Z' => write!(out, "UTC"),
            'z' => write!(out, "+0000"),
            'F' => write!(out, "{y}-{m:02}-{d:02}"),
            'T' => write!(out, "{hh:02}:{mm:02}:{ss:02}"),
            'D' => write!(out, "{m:02}/{d:02}/{:02}", y.rem_euclid(100)),
            '%' => write!(out, "%"),
            other => write!(out, "%{other}"),
        };
    }
    out
}

/// The proleptic Gregorian date of a day count from 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_python_prints_them() {
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1e16, "1e+16"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (123456789.125, "123456789.125"),
            (1e15, "1000000000000000.0"),
        ];
        for (f, want) in cases {
            let mut s = String::new();
            python_float(f, &mut s);
            assert_eq!(s, want, "{f}");
        }
    }

    #[test]
    fn strftime_of_a_known_day() {
        // 2026-11-30 14:05:09 UTC, a Monday.
        let t = days_from_civil(2026, 11, 30) * 86_400 + 14 * 3600 + 5 * 60 + 9;
        assert_eq!(
            strftime(t, "%d %b %Y %A %H:%M:%S %j"),
            "30 Nov 2026 Monday 14:05:09 334"
        );
        assert_eq!(civil_from_days(days_from_civil(2000, 2, 29)), (2000, 2, 29));
    }

    #[test]
    fn generation_tags_become_blocks_that_keep_their_trimming() {
        assert_eq!(
            without_generation_tags("a{%- generation %}b{% endgeneration -%} c{{ x }}"),
            "a{%- if true %}b{% endif -%} c{{ x }}"
        );
        // Found by the fuzzer: `{%}` overlaps its own end marker.
        assert_eq!(without_generation_tags("{%}x"), "{%}x");
        assert_eq!(
            without_generation_tags("{%} generation %}"),
            "{%} generation %}"
        );
    }
}

#[cfg(test)]
mod bounds {
    use super::*;

    fn render(src: &str) -> Result<String, TemplateError> {
        let t = ChatTemplate::jinja(src)?;
        let messages = serde_json::json!([{"role": "user", "content": "hi"}]);
        t.render(&ChatInput {
            messages: &messages,
            tools: None,
            add_generation_prompt: true,
            bos_token: "<s>",
            eos_token: "</s>",
            extra: None,
            now: 0,
        })
    }

    /// A template is code from the file: loops without end, runaway recursion and huge ranges or
    /// repetitions are errors, not a hung or exhausted host. (Growth by repeated concatenation is
    /// not bounded by minijinja; see ARCHITECTURE.md.)
    #[test]
    fn runaway_templates_are_stopped_with_a_named_error() {
        let cases = [
            (
                "{% for a in range(1000) %}{% for b in range(1000) %}\
                 {% for c in range(1000) %}x{% endfor %}{% endfor %}{% endfor %}",
                "out of fuel",
            ),
            (
                "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
                "recursion limit",
            ),
            ("{{ 'x' * 4000000000 }}", "too large"),
            ("{{ range(100000000) | length }}", "too many elements"),
            ("{{ raise_exception('no tools here') }}", "no tools here"),
        ];
        for (src, want) in cases {
            let err = render(src).expect_err(src);
            assert!(err.0.contains(want), "{src}: {err}");
        }
        // Well inside the bounds, the same constructs render.
        let fine = "{% for a in range(100) %}{% for b in range(100) %}.{% endfor %}{% endfor %}";
        assert_eq!(render(fine).unwrap().len(), 10_000);
    }
}
