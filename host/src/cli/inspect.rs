//! `modelhost inspect`: what a GGUF model holds, for people (tables) and scripts (`--json`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;
use modelhost_protocol::gguf::{GgufModel, HyperParams, PerLayer, SplitSummary, Value};
use modelhost_protocol::layers::{layer_regions, Extent, LayerGroup, PageSize};
use modelhost_text::{ModelText, TextSummary};
use serde::Serialize;
use serde_json::json;

use super::CliError;
use crate::model_file::MappedModel;
use crate::units::format_bytes;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The GGUF file; for a split model, any one of its shards.
    file: PathBuf,
    /// List every tensor: name, type, shape, shard, offset and size.
    #[arg(long)]
    tensors: bool,
    /// List every metadata key with its type and value (arrays in full with --json).
    #[arg(long)]
    metadata: bool,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Page size for the layer regions, in bytes (default: this machine's).
    #[arg(long)]
    page_size: Option<u64>,
}

#[derive(Serialize)]
struct Report {
    files: Vec<FileReport>,
    architecture: Option<String>,
    name: Option<String>,
    context_length: Option<u32>,
    hyper_params: Option<HyperParams>,
    /// Why the hyper-parameters could not be read, when they could not.
    hyper_params_error: Option<String>,
    vocab_size: Option<u64>,
    tensor_count: u64,
    tensor_bytes: u64,
    file_bytes: u64,
    tensor_types: Vec<TypeCount>,
    page_size: u64,
    layers: Vec<LayerReport>,
    split: Option<SplitSummary>,
    /// The tokenizer and chat template, or why the vocabulary cannot be used.
    text: Result<TextSummary, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tensors: Option<Vec<TensorRow>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Vec<MetadataRow>>,
}

#[derive(Serialize)]
struct FileReport {
    path: String,
    bytes: u64,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata_count: usize,
    tensor_count: usize,
}

#[derive(Serialize)]
struct TypeCount {
    #[serde(rename = "type")]
    name: &'static str,
    type_id: u32,
    count: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct LayerReport {
    group: LayerGroup,
    name: String,
    tensor_count: usize,
    tensor_bytes: u64,
    mapped_bytes: u64,
    extents: Vec<Extent>,
}

#[derive(Serialize)]
struct TensorRow {
    name: String,
    #[serde(rename = "type")]
    type_name: &'static str,
    type_id: u32,
    dims: Vec<u64>,
    shard: u16,
    /// Offset relative to the data section, as stored in the file.
    data_offset: u64,
    /// Absolute offset in the shard file.
    file_offset: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct MetadataRow {
    key: String,
    #[serde(rename = "type")]
    type_name: &'static str,
    value: serde_json::Value,
}

pub fn run(args: InspectArgs) -> Result<(), CliError> {
    let mapped = MappedModel::open(&args.file)?;
    let model = mapped.model()?;
    let page_size = match args.page_size {
        Some(p) => PageSize::new(p)
            .ok_or_else(|| CliError(format!("--page-size {p} is not a power of two >= 512")))?,
        None => system_page_size(),
    };
    let report = build_report(&model, page_size, &args);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
        if args.metadata {
            print!("{}", metadata_table(&model));
        }
    }
    Ok(())
}

fn system_page_size() -> PageSize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| PageSize::new(p as u64))
        .unwrap_or(PageSize::FOUR_KIB)
}

fn build_report(model: &GgufModel<'_>, page: PageSize, args: &InspectArgs) -> Report {
    let meta = model.metadata();
    let (hyper_params, hyper_params_error) = match HyperParams::from_gguf(meta) {
        Ok(h) => (Some(h), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let mut types: BTreeMap<u32, TypeCount> = BTreeMap::new();
    for (_, t) in model.tensors() {
        let entry = types.entry(t.ggml_type().id()).or_insert(TypeCount {
            name: t.ggml_type().name(),
            type_id: t.ggml_type().id(),
            count: 0,
            bytes: 0,
        });
        entry.count += 1;
        entry.bytes += t.size();
    }
    let layers = layer_regions(model, page)
        .into_iter()
        .map(|r| LayerReport {
            name: r.group.to_string(),
            tensor_count: r.tensors.len(),
            tensor_bytes: r.tensor_bytes,
            mapped_bytes: r.mapped_bytes(),
            extents: r.extents,
            group: r.group,
        })
        .collect();
    Report {
        files: model
            .shards()
            .iter()
            .map(|s| FileReport {
                path: s.label.clone(),
                bytes: s.file.file_len(),
                version: s.file.version(),
                alignment: s.file.alignment(),
                data_offset: s.file.data_offset(),
                metadata_count: s.file.metadata().len(),
                tensor_count: s.file.tensors().len(),
            })
            .collect(),
        architecture: meta.architecture().ok().map(str::to_owned),
        name: meta.str("general.name").ok().map(str::to_owned),
        context_length: hyper_params.as_ref().map(|h| h.context_length),
        hyper_params,
        hyper_params_error,
        vocab_size: meta.vocab_size().ok().flatten(),
        tensor_count: model.tensor_count(),
        tensor_bytes: model.tensor_bytes(),
        file_bytes: model.file_bytes(),
        tensor_types: types.into_values().collect(),
        page_size: page.get(),
        layers,
        split: model.split_summary(),
        text: ModelText::from_gguf(meta)
            .map(|t| t.summary())
            .map_err(|e| e.to_string()),
        tensors: args.tensors.then(|| {
            model
                .tensors()
                .map(|(shard, t)| TensorRow {
                    name: t.name().to_owned(),
                    type_name: t.ggml_type().name(),
                    type_id: t.ggml_type().id(),
                    dims: t.dims().to_vec(),
                    shard,
                    data_offset: t.relative_offset(),
                    file_offset: t.absolute_offset(),
                    bytes: t.size(),
                })
                .collect()
        }),
        metadata: (args.metadata && args.json).then(|| {
            meta.metadata()
                .iter()
                .map(|e| MetadataRow {
                    key: e.key.to_owned(),
                    type_name: e.value.value_type().name(),
                    value: json_value(&e.value),
                })
                .collect()
        }),
    }
}

/// A metadata value as JSON. Arrays carry their element type; strings that are not UTF-8 become
/// arrays of byte values; non-finite floats become the strings "nan", "inf" and "-inf".
fn json_value(value: &Value<'_>) -> serde_json::Value {
    fn float(v: f64) -> serde_json::Value {
        match v {
            v if v.is_nan() => json!("nan"),
            v if v.is_infinite() => json!(if v > 0.0 { "inf" } else { "-inf" }),
            v => json!(v),
        }
    }
    match *value {
        Value::U8(v) => json!(v),
        Value::I8(v) => json!(v),
        Value::U16(v) => json!(v),
        Value::I16(v) => json!(v),
        Value::U32(v) => json!(v),
        Value::I32(v) => json!(v),
        Value::U64(v) => json!(v),
        Value::I64(v) => json!(v),
        // Widened exactly to f64, so a reader recovers the same f32 bits.
        Value::F32(v) => float(f64::from(v)),
        Value::F64(v) => float(v),
        Value::Bool(v) => json!(v),
        Value::String(s) => match s.to_str() {
            Ok(text) => json!(text),
            Err(_) => json!(s.as_bytes()),
        },
        Value::Array(a) => json!({
            "elem_type": a.elem_type().name(),
            "items": a.iter().map(|v| json_value(&v)).collect::<Vec<_>>(),
        }),
    }
}

/// A short text form of a value: arrays show their type, length and first few items.
fn brief_value(value: &Value<'_>) -> String {
    const SHOWN: usize = 4;
    const MAX_TEXT: usize = 60;
    match value {
        Value::Array(a) => {
            let mut items: Vec<String> = a.iter().take(SHOWN).map(|v| brief_value(&v)).collect();
            if a.len() > SHOWN as u64 {
                items.push("...".into());
            }
            format!("[{} × {}] {}", a.elem_type(), a.len(), items.join(", "))
        }
        // Rust prints an f32 as the shortest decimal that reads back as the same f32.
        Value::F32(v) => v.to_string(),
        other => {
            let text = json_value(other).to_string();
            if text.chars().count() > MAX_TEXT {
                let cut: String = text.chars().take(MAX_TEXT).collect();
                format!("{cut}... ({} chars)", text.chars().count())
            } else {
                text
            }
        }
    }
}

fn per_layer(v: &PerLayer) -> String {
    match v {
        PerLayer::Uniform(n) => n.to_string(),
        PerLayer::Varying(values) => format!(
            "{}..{} (per layer)",
            values.iter().min().unwrap_or(&0),
            values.iter().max().unwrap_or(&0)
        ),
    }
}

fn render(r: &Report) -> String {
    let mut out = String::new();
    let o = &mut out;
    for f in &r.files {
        let _ = writeln!(
            o,
            "file          {} ({}, GGUF v{}, alignment {}, data at byte {})",
            f.path,
            format_bytes(f.bytes),
            f.version,
            f.alignment,
            f.data_offset
        );
    }
    let _ = writeln!(
        o,
        "model         {} {}",
        r.architecture
            .as_deref()
            .unwrap_or("(no general.architecture)"),
        r.name
            .as_deref()
            .map(|n| format!("{n:?}"))
            .unwrap_or_default()
    );
    match (&r.hyper_params, &r.hyper_params_error) {
        (Some(h), _) => {
            let _ = writeln!(o, "context       {} tokens", h.context_length);
            let _ = writeln!(
                o,
                "hyper-params  blocks {}, embedding {}, heads {}, kv heads {}, key {}, value {}{}{}",
                h.block_count,
                h.embedding_length,
                per_layer(&h.head_count),
                per_layer(&h.head_count_kv),
                h.key_length,
                h.value_length,
                h.feed_forward_length
                    .as_ref()
                    .map(|f| format!(", feed-forward {}", per_layer(f)))
                    .unwrap_or_default(),
                h.sliding_window
                    .map(|w| format!(", sliding window {w}"))
                    .unwrap_or_default()
            );
        }
        (None, Some(e)) => {
            let _ = writeln!(o, "hyper-params  unavailable: {e}");
        }
        (None, None) => {}
    }
    let vocab = r
        .vocab_size
        .map_or("unknown".into(), |v| format!("{v} tokens"));
    let _ = writeln!(o, "vocabulary    {vocab}");
    match &r.text {
        Ok(t) => {
            let _ = writeln!(
                o,
                "tokenizer     {}{}, BOS {}{}, EOS {}, end of generation {:?}",
                t.vocabulary,
                t.pre_tokenizer
                    .as_deref()
                    .map(|p| format!(" (pre-tokenizer {p})"))
                    .unwrap_or_default(),
                t.bos.map_or("none".into(), |b| b.to_string()),
                if t.add_bos { " (added)" } else { "" },
                t.eos.map_or("none".into(), |e| e.to_string()),
                t.end_of_generation
            );
            let _ = writeln!(o, "chat template {}", t.chat_template);
        }
        Err(e) => {
            let _ = writeln!(o, "tokenizer     unavailable: {e}");
        }
    }
    let split = match &r.split {
        None => "single file".to_owned(),
        Some(s) => format!(
            "{} shards, {} tensors ({} per shard)",
            s.count,
            s.tensors_count,
            s.tensors_per_shard
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" + ")
        ),
    };
    let _ = writeln!(o, "split         {split}");
    let _ = writeln!(
        o,
        "tensors       {} tensors, {} of data in {} of files",
        r.tensor_count,
        format_bytes(r.tensor_bytes),
        format_bytes(r.file_bytes)
    );
    let _ = writeln!(o, "\n  {:<10} {:>7} {:>12}", "type", "tensors", "bytes");
    for t in &r.tensor_types {
        let _ = writeln!(
            o,
            "  {:<10} {:>7} {:>12}",
            t.name,
            t.count,
            format_bytes(t.bytes)
        );
    }
    let _ = writeln!(
        o,
        "\nlayers        {} regions, page size {}\n\n  {:<22} {:>7} {:>12} {:>12} {:>7}",
        r.layers.len(),
        r.page_size,
        "layer",
        "tensors",
        "bytes",
        "mapped",
        "extents"
    );
    for l in &r.layers {
        let _ = writeln!(
            o,
            "  {:<22} {:>7} {:>12} {:>12} {:>7}",
            l.name,
            l.tensor_count,
            format_bytes(l.tensor_bytes),
            format_bytes(l.mapped_bytes),
            l.extents.len()
        );
    }
    if let Some(tensors) = &r.tensors {
        let _ = writeln!(
            o,
            "\n  {:<40} {:<8} {:<24} {:>5} {:>12} {:>12}",
            "tensor", "type", "shape", "shard", "offset", "bytes"
        );
        for t in tensors {
            let shape = t
                .dims
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" x ");
            let _ = writeln!(
                o,
                "  {:<40} {:<8} {:<24} {:>5} {:>12} {:>12}",
                t.name, t.type_name, shape, t.shard, t.file_offset, t.bytes
            );
        }
    }
    out
}

/// Every metadata key with a brief value: arrays show their length and first items.
fn metadata_table(model: &GgufModel<'_>) -> String {
    let mut out = format!("\n  {:<44} {:<8} value\n", "key", "type");
    for e in model.metadata().metadata() {
        let _ = writeln!(
            out,
            "  {:<44} {:<8} {}",
            e.key,
            e.value.value_type().name(),
            brief_value(&e.value)
        );
    }
    out
}
