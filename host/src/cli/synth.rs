//! `modelhost synth`: write a synthetic model.

use std::path::PathBuf;

use clap::Args;
use modelhost_protocol::arch::Architecture;
use modelhost_protocol::GgmlType;

use super::CliError;
use crate::synth::{write_synthetic, SynthSpec};
use crate::units::{format_bytes, parse_size};

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Output file (with --split N, the shards are named FILE-0000k-of-0000N.gguf).
    #[arg(long, short)]
    out: PathBuf,
    /// Approximate total size, such as 64MiB or 2GiB.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    size: u64,
    /// Types for the weight matrices, used in turn: ggml type names (q8_0, f16, q4_k, ...), or
    /// `all` for every type ggml has.
    #[arg(long, default_value = "q8_0", value_delimiter = ',')]
    types: Vec<String>,
    /// Also write a `modelhost.values.*` key of every metadata value type, nested arrays included.
    #[arg(long)]
    every_value_type: bool,
    /// Seed for the random weights; the same seed writes the same bytes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the model as this many shard files.
    #[arg(long, default_value_t = 1)]
    split: u16,
    /// Vocabulary size (default: 4096 for models under about 300 MiB, else 32000).
    #[arg(long)]
    vocab: Option<u64>,
    /// The context length to record in the metadata.
    #[arg(long, default_value_t = 4096)]
    ctx: u32,
    /// Write a runnable model of this architecture (gemma3, llama, qwen2 or qwen3): its own
    /// tensors and keys, weights of sane magnitude, a vocabulary llama.cpp accepts.
    #[arg(long, value_parser = parse_arch)]
    arch: Option<Architecture>,
    /// The number of blocks (default: as many as --size holds).
    #[arg(long)]
    blocks: Option<u64>,
    /// A file whose text becomes the model's `tokenizer.chat_template`.
    #[arg(long)]
    chat_template: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_arch(name: &str) -> Result<Architecture, String> {
    Architecture::from_name(name).ok_or_else(|| {
        format!("{name:?}: the engine's architectures are gemma3, llama, qwen2 and qwen3")
    })
}

fn parse_types(names: &[String]) -> Result<Vec<GgmlType>, CliError> {
    let mut types = Vec::new();
    for name in names {
        if name.eq_ignore_ascii_case("all") {
            types.extend(GgmlType::all());
            continue;
        }
        let ty = GgmlType::from_name(name).ok_or_else(|| {
            let known: Vec<_> = GgmlType::all().map(|t| t.name()).collect();
            CliError(format!(
                "unknown ggml type {name:?} in --types; known types: all, {}",
                known.join(", ")
            ))
        })?;
        types.push(ty);
    }
    Ok(types)
}

pub fn run(args: SynthArgs) -> Result<(), CliError> {
    let spec = SynthSpec {
        size: args.size,
        types: parse_types(&args.types)?,
        seed: args.seed,
        split: args.split,
        context_length: args.ctx,
        every_value_type: args.every_value_type,
        vocab: args.vocab,
        arch: args.arch,
        blocks: args.blocks,
        chat_template: args
            .chat_template
            .as_ref()
            .map(|p| {
                std::fs::read_to_string(p).map_err(|e| CliError(format!("{}: {e}", p.display())))
            })
            .transpose()?,
    };
    let report = write_synthetic(&spec, &args.out)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "wrote {} ({} blocks, width {}, {} tensors) to:",
            format_bytes(report.total_bytes),
            report.block_count,
            report.embedding_length,
            report.tensor_count
        );
        for f in &report.files {
            println!("  {}", f.display());
        }
    }
    Ok(())
}
