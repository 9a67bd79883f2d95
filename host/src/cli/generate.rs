//! `modelhost run MODEL PROMPT` and `modelhost chat MODEL`: generation from the terminal,
//! streamed from the running host (or one these commands start, as `up` does).

use std::io::Write as _;
use std::path::Path;

use clap::Args;
use serde_json::{json, Value};

use super::{block_on, CliError, ConnectArgs};
use crate::api::{ListedModel, ModelList};
use crate::client::Client;
use crate::config::default_socket_path;

#[derive(Debug, Args)]
pub struct SamplingArgs {
    /// The most tokens to generate (default: what the context leaves).
    #[arg(long)]
    max_tokens: Option<u32>,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long)]
    top_k: Option<u32>,
    /// The same seed gives the same answer.
    #[arg(long)]
    seed: Option<u64>,
}

impl SamplingArgs {
    fn apply(&self, body: &mut Value) {
        body["temperature"] = json!(self.temperature);
        if let Some(n) = self.max_tokens {
            body["max_tokens"] = json!(n);
        }
        if let Some(p) = self.top_p {
            body["top_p"] = json!(p);
        }
        if let Some(k) = self.top_k {
            body["top_k"] = json!(k);
        }
        if let Some(s) = self.seed {
            body["seed"] = json!(s);
        }
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A loaded model's name, or a GGUF file: loaded with one worker if no loaded model has
    /// that file, in the running host or one started for it.
    model: String,
    /// The prompt; `-` reads it from standard input.
    prompt: String,
    /// A system message before the prompt.
    #[arg(long)]
    system: Option<String>,
    /// Continue the text as it is, without the chat template.
    #[arg(long)]
    raw: bool,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// A loaded model's name, or a GGUF file (as for `run`).
    model: String,
    /// A system message for the whole conversation.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// The name of the model to talk to: `model` itself, or the loaded model of that file (loading
/// it when none is).
fn resolve(connect: &ConnectArgs, model: &str) -> Result<(Client, String), CliError> {
    let socket = connect.socket_path().unwrap_or_else(default_socket_path);
    let client = Client::new(&socket);
    let path = Path::new(model);
    if !(path.is_file() && model.ends_with(".gguf")) {
        return Ok((client, model.to_owned()));
    }
    let path = std::path::absolute(path)?;
    super::up::ensure_host(&client, &socket)?;
    let list: ModelList<ListedModel> = block_on(client.get("/v1/models"))??;
    if let Some(m) = list.data.iter().find(|m| m.info.path == path) {
        return Ok((client, m.id.clone()));
    }
    let name = super::up::load_quietly(&socket, &path)?;
    Ok((client, name))
}

/// Streams one answer to the terminal; returns its text. Ctrl-C ends it early (closing the
/// stream cancels the request in the worker).
async fn stream_answer(client: &Client, path: &str, body: &Value) -> Result<String, CliError> {
    let mut stream = client.sse(path, body).await?;
    let mut answer = String::new();
    let mut out = std::io::stdout();
    loop {
        let data = tokio::select! {
            data = stream.next() => data?,
            _ = tokio::signal::ctrl_c() => {
                let _ = writeln!(out, "\n[stopped]");
                return Ok(answer);
            }
        };
        let Some(data) = data else {
            return Err(CliError("the stream ended without [DONE]".into()));
        };
        if data == "[DONE]" {
            let _ = writeln!(out);
            return Ok(answer);
        }
        let chunk: Value = serde_json::from_str(&data)?;
        if let Some(error) = chunk.get("error") {
            return Err(CliError(
                error["message"]
                    .as_str()
                    .unwrap_or("generation failed")
                    .to_owned(),
            ));
        }
        let choice = &chunk["choices"][0];
        let text = choice["delta"]["content"]
            .as_str()
            .or_else(|| choice["text"].as_str())
            .unwrap_or("");
        answer.push_str(text);
        let _ = write!(out, "{text}");
        let _ = out.flush();
    }
}

pub fn run(args: RunArgs) -> Result<(), CliError> {
    let prompt = if args.prompt == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        args.prompt.clone()
    };
    let (client, model) = resolve(&args.connect, &args.model)?;
    let (path, mut body) = if args.raw {
        (
            "/v1/completions",
            json!({ "model": model, "prompt": prompt, "stream": true }),
        )
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(json!({ "role": "system", "content": system }));
        }
        messages.push(json!({ "role": "user", "content": prompt }));
        (
            "/v1/chat/completions",
            json!({ "model": model, "messages": messages, "stream": true }),
        )
    };
    args.sampling.apply(&mut body);
    block_on(stream_answer(&client, path, &body))??;
    Ok(())
}

pub fn chat(args: ChatArgs) -> Result<(), CliError> {
    let (client, model) = resolve(&args.connect, &args.model)?;
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(json!({ "role": "system", "content": system }));
    }
    // Lines come from a thread of their own, so that Ctrl-C at the prompt does not leave a
    // second reader waiting on the terminal.
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<Option<String>>();
    std::thread::spawn(move || loop {
        let mut line = String::new();
        match std::io::stdin().read_line(&mut line) {
            Ok(0) | Err(_) => {
                let _ = lines_tx.send(None);
                return;
            }
            Ok(_) => {
                if lines_tx.send(Some(line)).is_err() {
                    return;
                }
            }
        }
    });
    eprintln!("chatting with {model}: Ctrl-C stops an answer, Ctrl-D or /bye quits");
    block_on(async {
        loop {
            print!(">>> ");
            let _ = std::io::stdout().flush();
            let line = tokio::select! {
                line = lines.recv() => line.flatten(),
                _ = tokio::signal::ctrl_c() => {
                    println!("\n(Ctrl-D or /bye quits)");
                    continue;
                }
            };
            let Some(line) = line else {
                println!();
                return Ok(());
            };
            let line = line.trim_end_matches(['\n', '\r']);
            if line.trim() == "/bye" {
                return Ok(());
            }
            if line.trim().is_empty() {
                continue;
            }
            messages.push(json!({ "role": "user", "content": line }));
            let mut body = json!({ "model": model, "messages": messages, "stream": true });
            args.sampling.apply(&mut body);
            match stream_answer(&client, "/v1/chat/completions", &body).await {
                Ok(answer) => messages.push(json!({ "role": "assistant", "content": answer })),
                Err(e) => {
                    // The turn did not happen; the conversation goes on without it.
                    messages.pop();
                    eprintln!("error: {}", e.0);
                }
            }
        }
    })?
}
