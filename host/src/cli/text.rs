//! `modelhost tokenize`, `detokenize` and `chat-template`: a model's own vocabulary and chat
//! template, applied offline to the file (no host).

use std::io::Write as _;
use std::path::PathBuf;

use clap::Args;
use modelhost_text::{ModelText, StreamDecoder};
use serde_json::json;

use super::CliError;
use crate::model_file::MappedModel;

#[derive(Debug, Args)]
pub struct TokenizeArgs {
    /// The GGUF file.
    model: PathBuf,
    /// The text to tokenize; `-` reads it from standard input (for text longer than a command
    /// line holds).
    text: String,
    /// Parse control tokens written in the text (`<start_of_turn>`) as those tokens.
    #[arg(long)]
    special: bool,
    /// Add the BOS/EOS tokens the vocabulary asks for.
    #[arg(long)]
    add_special: bool,
    /// Print JSON: the ids and each token's text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct DetokenizeArgs {
    /// The GGUF file.
    model: PathBuf,
    /// Token ids.
    #[arg(required = true)]
    ids: Vec<u32>,
    /// Render control tokens (`<end_of_turn>`) as their text.
    #[arg(long)]
    special: bool,
}

#[derive(Debug, Args)]
pub struct ChatTemplateArgs {
    /// The GGUF file.
    model: PathBuf,
    /// A JSON file: the messages (`[{"role": "user", "content": "..."}]`), or an object with
    /// `messages` and optionally `tools`.
    #[arg(long)]
    messages: PathBuf,
    /// Do not end with the assistant's turn.
    #[arg(long)]
    no_generation_prompt: bool,
    /// Print JSON: the template's origin, the prompt and its token ids.
    #[arg(long)]
    json: bool,
}

fn open_text(path: &std::path::Path) -> Result<ModelText, CliError> {
    let mapped = MappedModel::open(path)?;
    let model = mapped.model()?;
    ModelText::from_gguf(model.metadata()).map_err(|e| CliError(format!("{}: {e}", path.display())))
}

pub fn tokenize(args: TokenizeArgs) -> Result<(), CliError> {
    let text = open_text(&args.model)?;
    let tok = text.tokenizer();
    let input = if args.text == "-" {
        let mut input = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)
            .map_err(|e| CliError(format!("standard input: {e}")))?;
        input
    } else {
        args.text
    };
    let ids = tok.encode(&input, args.add_special, args.special);
    // A token that is part of a character (a byte token) shows its bytes: `<0xF0>`.
    let pieces: Vec<String> = ids
        .iter()
        .map(|&id| {
            let piece = tok.piece(id, true).unwrap_or_default();
            match std::str::from_utf8(piece) {
                Ok(s) => s.to_owned(),
                Err(_) => piece.iter().map(|b| format!("<0x{b:02X}>")).collect(),
            }
        })
        .collect();
    if args.json {
        println!(
            "{}",
            json!({ "count": ids.len(), "tokens": ids, "pieces": pieces })
        );
    } else {
        for (id, piece) in ids.iter().zip(&pieces) {
            println!("{id:>8}  {piece:?}");
        }
        println!("{} tokens", ids.len());
    }
    Ok(())
}

pub fn detokenize(args: DetokenizeArgs) -> Result<(), CliError> {
    let text = open_text(&args.model)?;
    let tok = text.tokenizer();
    // Streamed, as a client sees it: a character split over tokens is written whole.
    let mut stream = StreamDecoder::new(tok, args.special, false);
    let mut out = String::new();
    for &id in &args.ids {
        out.push_str(&stream.push(id)?);
    }
    out.push_str(&stream.finish());
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{out}")?;
    Ok(())
}

pub fn chat_template(args: ChatTemplateArgs) -> Result<(), CliError> {
    let text = open_text(&args.model)?;
    let raw = std::fs::read_to_string(&args.messages)
        .map_err(|e| CliError(format!("{}: {e}", args.messages.display())))?;
    let doc: serde_json::Value = serde_json::from_str(&raw)
        .map_err(|e| CliError(format!("{}: {e}", args.messages.display())))?;
    let (messages, tools) = match &doc {
        serde_json::Value::Array(_) => (doc.clone(), None),
        serde_json::Value::Object(o) => (
            o.get("messages")
                .cloned()
                .ok_or_else(|| CliError(format!("{}: no \"messages\"", args.messages.display())))?,
            o.get("tools").cloned(),
        ),
        _ => {
            return Err(CliError(format!(
                "{}: expected an array of messages or an object with \"messages\"",
                args.messages.display()
            )))
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let origin = match text.template() {
        Ok(t) => t.origin.to_string(),
        Err(e) => return Err(CliError(e.to_string())),
    };
    let prompt = text.render(
        &messages,
        tools.as_ref(),
        !args.no_generation_prompt,
        None,
        now,
    )?;
    let ids = text.encode_prompt(&prompt);
    if args.json {
        println!(
            "{}",
            json!({ "template": origin, "prompt": prompt, "tokens": ids })
        );
    } else {
        eprintln!("template: {origin}; {} tokens", ids.len());
        print!("{prompt}");
    }
    Ok(())
}
