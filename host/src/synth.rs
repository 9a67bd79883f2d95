//! Synthetic models with random weights, for tests, benchmarks and demos.
//!
//! The shape scales with the requested size: the widest of a few llama-like configurations that
//! fits a realistic depth of 16 blocks (else the narrowest), then as many blocks as fit. Weight
//! matrices take the requested types in turn; norms are f32.
//!
//! Without an architecture, the model is llama-shaped and its quantized tensors hold random
//! bytes: valid to load and map, meaningless to run. With `--arch` (gemma3, llama, qwen2,
//! qwen3), it is runnable, by modelhost's engine and by llama.cpp alike: the architecture's own
//! tensors and keys, weights of sane magnitude in every block format
//! (`modelhost_protocol::random_blocks`), norms near 1, and a SentencePiece-style vocabulary
//! with byte tokens, so that every architecture × type pair can be checked against llama.cpp.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use modelhost_protocol::arch::Architecture;
use modelhost_protocol::gguf::{
    shard_file_name, GgufLayout, GgufWriter, OwnedValue, PlacedTensor, TensorSpec, ValueType,
    WriteError, SPLIT_COUNT_KEY, SPLIT_NO_KEY, SPLIT_TENSORS_COUNT_KEY,
};
use modelhost_protocol::random_blocks::random_weights;
use modelhost_protocol::GgmlType;

/// What to generate.
#[derive(Debug, Clone)]
pub struct SynthSpec {
    /// Approximate total size in bytes; the result is within one block of it.
    pub size: u64,
    /// Types for the weight matrices, used in turn.
    pub types: Vec<GgmlType>,
    pub seed: u64,
    /// Number of shard files (1 writes a single file).
    pub split: u16,
    pub context_length: u32,
    /// Also write one `modelhost.values.*` key of every metadata value type, arrays of each
    /// scalar type and nested arrays: a fixture for checking readers against each other.
    pub every_value_type: bool,
    /// Vocabulary size; by default the chosen shape's (4096 for small models, else 32000).
    pub vocab: Option<u64>,
    /// Write a runnable model of this architecture (see the module's documentation).
    pub arch: Option<Architecture>,
    /// The number of blocks, instead of as many as the size holds.
    pub blocks: Option<u64>,
    /// Written as `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

/// What was written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SynthReport {
    pub files: Vec<PathBuf>,
    pub total_bytes: u64,
    pub block_count: u32,
    pub embedding_length: u32,
    pub tensor_count: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("at least one tensor type is needed")]
    NoTypes,
    #[error("--split must be at least 1")]
    ZeroSplit,
    #[error("cannot split {tensors} tensors into {split} shards")]
    TooManyShards { tensors: usize, split: u16 },
    #[error("{path}: the output name must end in .gguf")]
    NotGgufName { path: PathBuf },
    #[error("a runnable {arch} model cannot hold {ty} weights: the engine computes with f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0 and q2_K to q6_K")]
    NotRunnable {
        arch: &'static str,
        ty: &'static str,
    },
    #[error("a runnable model needs a vocabulary of at least 512 tokens (it has 259 special and byte tokens), not {0}")]
    SmallVocab(u64),
    #[error(transparent)]
    Layout(#[from] WriteError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A llama-like configuration: residual width, feed-forward width, heads, KV heads, vocabulary.
#[derive(Debug, Clone, Copy)]
struct Shape {
    embd: u64,
    ff: u64,
    heads: u64,
    kv_heads: u64,
    vocab: u64,
}

/// From narrow to wide; every width is a multiple of 256, the largest ggml block.
const SHAPES: [Shape; 4] = [
    Shape {
        embd: 256,
        ff: 768,
        heads: 4,
        kv_heads: 2,
        vocab: 4096,
    },
    Shape {
        embd: 1024,
        ff: 2816,
        heads: 16,
        kv_heads: 4,
        vocab: 32000,
    },
    Shape {
        embd: 2048,
        ff: 5632,
        heads: 32,
        kv_heads: 8,
        vocab: 32000,
    },
    Shape {
        embd: 4096,
        ff: 11008,
        heads: 32,
        kv_heads: 8,
        vocab: 32000,
    },
];

/// The weight matrices of one block, as (name, dims).
fn block_matrices(s: Shape) -> [(&'static str, [u64; 2]); 7] {
    let kv = s.embd / s.heads * s.kv_heads;
    [
        ("attn_q", [s.embd, s.embd]),
        ("attn_k", [s.embd, kv]),
        ("attn_v", [s.embd, kv]),
        ("attn_output", [s.embd, s.embd]),
        ("ffn_gate", [s.embd, s.ff]),
        ("ffn_up", [s.embd, s.ff]),
        ("ffn_down", [s.ff, s.embd]),
    ]
}

fn bytes(ty: GgmlType, dims: &[u64]) -> u64 {
    ty.bytes_for(dims.iter().product()).unwrap_or(u64::MAX)
}

/// The type of weight matrix `role` of block `block`: types cycle over all matrices in file
/// order, so a long type list is covered even though a block has only seven matrices.
fn matrix_type(types: &[GgmlType], block: u64, role: usize) -> GgmlType {
    let index = block as usize * 7 + role;
    types[index % types.len()]
}

fn block_bytes(s: Shape, types: &[GgmlType], block: u64) -> u64 {
    let norms = 2 * bytes(GgmlType::F32, &[s.embd]);
    block_matrices(s)
        .iter()
        .enumerate()
        .map(|(role, (_, dims))| bytes(matrix_type(types, block, role), dims))
        .sum::<u64>()
        + norms
}

fn edge_bytes(s: Shape, types: &[GgmlType]) -> u64 {
    let embd = bytes(types[0], &[s.embd, s.vocab]);
    let out = bytes(types[types.len() - 1], &[s.embd, s.vocab]);
    embd + out + bytes(GgmlType::F32, &[s.embd])
}

/// How many blocks fit in `budget` bytes.
fn blocks_within(s: Shape, types: &[GgmlType], budget: u64) -> u64 {
    let mut used = 0u64;
    let mut blocks = 0u64;
    loop {
        used = used.saturating_add(block_bytes(s, types, blocks));
        if used > budget {
            return blocks;
        }
        blocks += 1;
    }
}

/// Blocks a shape must fit to be chosen: a shallow, very wide model is not llama-shaped.
const MIN_BLOCKS: u64 = 16;

/// Picks the widest shape that fits MIN_BLOCKS blocks, and the block count that fills the size.
fn plan(spec: &SynthSpec) -> (Shape, u64) {
    let shapes = SHAPES.map(|s| Shape {
        vocab: spec.vocab.unwrap_or(s.vocab),
        ..s
    });
    let budget = |s: &Shape| spec.size.saturating_sub(edge_bytes(*s, &spec.types));
    let shape = shapes
        .iter()
        .rev()
        .find(|s| blocks_within(**s, &spec.types, budget(s)) >= MIN_BLOCKS)
        .copied()
        .unwrap_or(shapes[0]);
    let blocks = spec
        .blocks
        .unwrap_or_else(|| blocks_within(shape, &spec.types, budget(&shape)))
        .max(1);
    (shape, blocks)
}

/// The vectors of one block besides its attention and feed-forward norms: the architecture's
/// extras (name, length).
fn block_vectors(arch: Option<Architecture>, s: Shape) -> Vec<(&'static str, u64)> {
    let head = s.embd / s.heads;
    let kv = head * s.kv_heads;
    match arch {
        Some(Architecture::Gemma3) => vec![
            ("attn_q_norm", head),
            ("attn_k_norm", head),
            ("post_attention_norm", s.embd),
            ("post_ffw_norm", s.embd),
        ],
        Some(Architecture::Qwen2) => vec![
            ("attn_q.bias", s.embd),
            ("attn_k.bias", kv),
            ("attn_v.bias", kv),
        ],
        Some(Architecture::Qwen3) => vec![("attn_q_norm", head), ("attn_k_norm", head)],
        _ => Vec::new(),
    }
}

fn model_tensors(
    arch: Option<Architecture>,
    shape: Shape,
    blocks: u64,
    types: &[GgmlType],
) -> Vec<TensorSpec> {
    let spec = |name: String, dims: &[u64], ty| TensorSpec {
        name,
        dims: dims.to_vec(),
        ty,
    };
    let mut tensors = vec![spec(
        "token_embd.weight".into(),
        &[shape.embd, shape.vocab],
        types[0],
    )];
    for b in 0..blocks {
        tensors.push(spec(
            format!("blk.{b}.attn_norm.weight"),
            &[shape.embd],
            GgmlType::F32,
        ));
        for (role, (name, dims)) in block_matrices(shape).iter().enumerate() {
            let ty = matrix_type(types, b, role);
            tensors.push(spec(format!("blk.{b}.{name}.weight"), dims, ty));
        }
        tensors.push(spec(
            format!("blk.{b}.ffn_norm.weight"),
            &[shape.embd],
            GgmlType::F32,
        ));
        for (name, len) in block_vectors(arch, shape) {
            let name = if name.contains('.') {
                format!("blk.{b}.{name}")
            } else {
                format!("blk.{b}.{name}.weight")
            };
            tensors.push(spec(name, &[len], GgmlType::F32));
        }
    }
    tensors.push(spec(
        "output_norm.weight".into(),
        &[shape.embd],
        GgmlType::F32,
    ));
    // Gemma ties its output to the token embedding.
    if arch != Some(Architecture::Gemma3) {
        tensors.push(spec(
            "output.weight".into(),
            &[shape.embd, shape.vocab],
            types[types.len() - 1],
        ));
    }
    if arch == Some(Architecture::Llama) {
        // Llama 3's rope frequency factors, which llama.cpp reads from this tensor.
        let pairs = shape.embd / shape.heads / 2;
        tensors.push(spec("rope_freqs.weight".into(), &[pairs], GgmlType::F32));
    }
    tensors
}

/// Gemma 3's sliding window in a synthetic model: short, so that a test prompt of a few dozen
/// tokens crosses it.
pub const SYNTH_WINDOW: u32 = 16;

/// A SentencePiece-style vocabulary: `<unk>`, `<s>`, `</s>` (control), the 256 byte tokens,
/// then plain pieces; with scores and token types, as llama.cpp expects of an SPM vocabulary.
fn vocabulary(size: u64) -> Vec<(String, OwnedValue)> {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types: Vec<OwnedValue> =
        vec![OwnedValue::I32(2), OwnedValue::I32(3), OwnedValue::I32(3)];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(OwnedValue::I32(6));
    }
    let mut i = 0;
    while (tokens.len() as u64) < size {
        tokens.push(format!("\u{2581}t{i}"));
        types.push(OwnedValue::I32(1));
        i += 1;
    }
    let scores = (0..size).map(|i| OwnedValue::F32(-(i as f32))).collect();
    vec![
        ("tokenizer.ggml.model".into(), OwnedValue::string("llama")),
        ("tokenizer.ggml.tokens".into(), OwnedValue::strings(tokens)),
        (
            "tokenizer.ggml.scores".into(),
            OwnedValue::Array(ValueType::F32, scores),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            OwnedValue::Array(ValueType::I32, types),
        ),
        ("tokenizer.ggml.unknown_token_id".into(), OwnedValue::U32(0)),
        ("tokenizer.ggml.bos_token_id".into(), OwnedValue::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), OwnedValue::U32(2)),
    ]
}

fn model_metadata(spec: &SynthSpec, shape: Shape, blocks: u64) -> Vec<(String, OwnedValue)> {
    let arch = spec.arch.map_or("llama", Architecture::name);
    let k = |name: &str| format!("{arch}.{name}");
    let u32v = |v: u64| OwnedValue::U32(v as u32);
    let type_names: Vec<&str> = spec.types.iter().map(|t| t.name()).collect();
    if spec.arch.is_some() {
        let head = shape.embd / shape.heads;
        let mut m = vec![
            ("general.architecture".into(), OwnedValue::string(arch)),
            (
                "general.name".into(),
                OwnedValue::string(format!(
                    "modelhost synthetic {arch} {}",
                    type_names.join("+")
                )),
            ),
            (k("block_count"), u32v(blocks)),
            (k("context_length"), OwnedValue::U32(spec.context_length)),
            (k("embedding_length"), u32v(shape.embd)),
            (k("feed_forward_length"), u32v(shape.ff)),
            (k("attention.head_count"), u32v(shape.heads)),
            (k("attention.head_count_kv"), u32v(shape.kv_heads)),
            (k("attention.key_length"), u32v(head)),
            (k("attention.value_length"), u32v(head)),
            (k("attention.layer_norm_rms_epsilon"), OwnedValue::F32(1e-6)),
            (
                "modelhost.synthetic.seed".into(),
                OwnedValue::U64(spec.seed),
            ),
        ];
        if spec.arch == Some(Architecture::Gemma3) {
            // Gemma's global layers' base; its windowed layers keep the default 10000.
            m.push((k("rope.freq_base"), OwnedValue::F32(1_000_000.0)));
            m.push((k("attention.sliding_window"), OwnedValue::U32(SYNTH_WINDOW)));
        } else {
            m.push((k("rope.freq_base"), OwnedValue::F32(10_000.0)));
        }
        m.extend(vocabulary(shape.vocab));
        return m;
    }
    vec![
        ("general.architecture".into(), OwnedValue::string(arch)),
        (
            "general.name".into(),
            OwnedValue::string(format!("modelhost synthetic {}", type_names.join("+"))),
        ),
        (k("block_count"), u32v(blocks)),
        (k("context_length"), OwnedValue::U32(spec.context_length)),
        (k("embedding_length"), u32v(shape.embd)),
        (k("feed_forward_length"), u32v(shape.ff)),
        (k("attention.head_count"), u32v(shape.heads)),
        (k("attention.head_count_kv"), u32v(shape.kv_heads)),
        (k("rope.dimension_count"), u32v(shape.embd / shape.heads)),
        (k("attention.layer_norm_rms_epsilon"), OwnedValue::F32(1e-5)),
        ("tokenizer.ggml.model".into(), OwnedValue::string("llama")),
        (
            "tokenizer.ggml.tokens".into(),
            OwnedValue::strings((0..shape.vocab).map(|i| format!("<tok{i}>"))),
        ),
        (
            "tokenizer.ggml.scores".into(),
            OwnedValue::Array(
                ValueType::F32,
                (0..shape.vocab)
                    .map(|i| OwnedValue::F32(-(i as f32)))
                    .collect(),
            ),
        ),
        (
            "modelhost.synthetic.seed".into(),
            OwnedValue::U64(spec.seed),
        ),
    ]
}

/// One key per value type, extreme values included, then arrays and nested arrays.
fn every_value_type() -> Vec<(String, OwnedValue)> {
    use OwnedValue as V;
    let scalars = vec![
        ("u8", V::U8(u8::MAX)),
        ("i8", V::I8(i8::MIN)),
        ("u16", V::U16(u16::MAX)),
        ("i16", V::I16(i16::MIN)),
        ("u32", V::U32(u32::MAX)),
        ("i32", V::I32(i32::MIN)),
        ("f32", V::F32(-1.5e-7)),
        ("bool", V::Bool(true)),
        ("string", V::string("grüße, 世界 🦀")),
        ("u64", V::U64(u64::MAX)),
        ("i64", V::I64(i64::MIN)),
        ("f64", V::F64(std::f64::consts::PI)),
    ];
    let mut out: Vec<(String, OwnedValue)> = Vec::new();
    for (name, value) in &scalars {
        out.push((format!("modelhost.values.{name}"), value.clone()));
        let ty = value.value_type();
        out.push((
            format!("modelhost.values.array_of_{name}"),
            V::Array(ty, vec![value.clone(); 3]),
        ));
    }
    out.push((
        "modelhost.values.array_of_arrays".into(),
        V::Array(
            ValueType::Array,
            vec![
                V::Array(ValueType::I32, vec![V::I32(1), V::I32(-2)]),
                V::Array(ValueType::I32, vec![V::I32(3)]),
            ],
        ),
    ));
    out.push((
        "modelhost.values.array_of_arrays_of_strings".into(),
        V::Array(
            ValueType::Array,
            vec![V::strings(["a", "bc"]), V::strings(["", "d"])],
        ),
    ));
    out.push((
        "modelhost.values.empty_array".into(),
        V::Array(ValueType::U32, vec![]),
    ));
    out.push(("modelhost.values.empty_string".into(), V::string("")));
    out
}

/// Writes a synthetic model to `out` (or, with `split > 1`, to `{out without .gguf}-NNNNN-of-NNNNN.gguf`).
pub fn write_synthetic(spec: &SynthSpec, out: &Path) -> Result<SynthReport, SynthError> {
    if spec.types.is_empty() {
        return Err(SynthError::NoTypes);
    }
    if spec.split == 0 {
        return Err(SynthError::ZeroSplit);
    }
    if let Some(arch) = spec.arch {
        if let Some(t) = spec
            .types
            .iter()
            .find(|t| random_weights(**t, 0, 1.0, &mut || 0).is_none())
        {
            return Err(SynthError::NotRunnable {
                arch: arch.name(),
                ty: t.name(),
            });
        }
        if spec.vocab.is_some_and(|v| v < 512) {
            return Err(SynthError::SmallVocab(spec.vocab.unwrap_or(0)));
        }
    }
    let (shape, blocks) = plan(spec);
    let tensors = model_tensors(spec.arch, shape, blocks, &spec.types);
    let mut metadata = model_metadata(spec, shape, blocks);
    if let Some(template) = &spec.chat_template {
        metadata.push((
            "tokenizer.chat_template".into(),
            OwnedValue::string(template),
        ));
    }
    if spec.every_value_type {
        metadata.extend(every_value_type());
    }
    let tensor_count = tensors.len();
    let shards = split_tensors(tensors, spec.split)?;

    let paths: Vec<PathBuf> = if spec.split == 1 {
        vec![out.to_owned()]
    } else {
        let text = out.to_string_lossy();
        let prefix = text
            .strip_suffix(".gguf")
            .ok_or_else(|| SynthError::NotGgufName {
                path: out.to_owned(),
            })?;
        (0..spec.split)
            .map(|no| PathBuf::from(shard_file_name(prefix, no, spec.split)))
            .collect()
    };

    let mut rng = SplitMix64(spec.seed);
    let mut total_bytes = 0;
    for (no, (shard_tensors, path)) in shards.into_iter().zip(&paths).enumerate() {
        let mut writer = GgufWriter::new();
        if no == 0 {
            for (key, value) in &metadata {
                writer.add_metadata(key.clone(), value.clone());
            }
        }
        if spec.split > 1 {
            writer.add_metadata(SPLIT_NO_KEY, OwnedValue::U16(no as u16));
            writer.add_metadata(SPLIT_COUNT_KEY, OwnedValue::U16(spec.split));
            writer.add_metadata(
                SPLIT_TENSORS_COUNT_KEY,
                OwnedValue::I32(tensor_count as i32),
            );
        }
        for t in &shard_tensors {
            writer.add_tensor(t.name.clone(), &t.dims, t.ty);
        }
        let layout = writer.layout()?;
        let runnable = spec.arch.map(|_| shape);
        write_file(&layout, path, &mut rng, runnable).map_err(|source| SynthError::Io {
            path: path.clone(),
            source,
        })?;
        total_bytes += layout.total_len;
    }
    Ok(SynthReport {
        files: paths,
        total_bytes,
        block_count: blocks as u32,
        embedding_length: shape.embd as u32,
        tensor_count,
    })
}

/// Splits tensors, in order, into `split` runs of roughly equal bytes.
fn split_tensors(tensors: Vec<TensorSpec>, split: u16) -> Result<Vec<Vec<TensorSpec>>, SynthError> {
    if tensors.len() < usize::from(split) {
        return Err(SynthError::TooManyShards {
            tensors: tensors.len(),
            split,
        });
    }
    let total: u64 = tensors.iter().map(|t| bytes(t.ty, &t.dims)).sum();
    let per_shard = total.div_ceil(u64::from(split));
    let mut shards: Vec<Vec<TensorSpec>> = vec![Vec::new()];
    let mut in_current = 0u64;
    let count = tensors.len();
    for (i, t) in tensors.into_iter().enumerate() {
        let remaining_tensors = count - i;
        let remaining_shards = usize::from(split) - shards.len();
        let current_nonempty = !shards[shards.len() - 1].is_empty();
        // Start a new shard when this one is full, or when every later shard still needs a tensor.
        if current_nonempty
            && remaining_shards > 0
            && (in_current >= per_shard || remaining_tensors == remaining_shards)
        {
            shards.push(Vec::new());
            in_current = 0;
        }
        in_current += bytes(t.ty, &t.dims);
        if let Some(last) = shards.last_mut() {
            last.push(t);
        }
    }
    Ok(shards)
}

/// The spread of a runnable model's tensor: the token embedding and output give logits about
/// ten units wide, so that the top token of a random model stands clear of the next and a
/// comparison's top-1 agreement measures the computation rather than rounding on near-ties;
/// block matrices keep activations at about unit scale, norms sit near 1 and biases near 0.
fn runnable_values(tensor: &PlacedTensor, shape: Shape, rng: &mut SplitMix64) -> Vec<u8> {
    let name = tensor.spec.name.as_str();
    let elements: u64 = tensor.spec.dims.iter().product();
    if name == "rope_freqs.weight" {
        return llama3_rope_factors(shape.embd / shape.heads)
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
    }
    let vector = tensor.spec.dims.len() == 1;
    let mut next = || rng.next();
    if vector {
        let (centre, spread) = if name.ends_with(".bias") {
            (0.0, 0.1)
        } else {
            (1.0, 0.1)
        };
        let noise =
            random_weights(GgmlType::F32, elements as usize, spread, &mut next).unwrap_or_default();
        return noise
            .chunks_exact(4)
            .flat_map(|c| (centre + f32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_le_bytes())
            .collect();
    }
    let fan_in = tensor.spec.dims[0] as f32;
    let sigma = if name.starts_with("token_embd") || name.starts_with("output") {
        0.6
    } else {
        0.25 / fan_in.sqrt()
    };
    random_weights(tensor.spec.ty, elements as usize, sigma, &mut next).unwrap_or_default()
}

/// Llama 3.1's rope frequency factors for heads of `head` dimensions (factor 8, low and high
/// frequency factors 1 and 4, original context 8192), as its converter writes them.
fn llama3_rope_factors(head: u64) -> Vec<f32> {
    let (factor, low, high, original) = (8.0f64, 1.0f64, 4.0f64, 8192.0f64);
    let (low_wavelen, high_wavelen) = (original / low, original / high);
    (0..head / 2)
        .map(|i| {
            let freq = 1.0 / 500_000f64.powf(2.0 * i as f64 / head as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let f = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (original / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            f as f32
        })
        .collect()
}

fn write_file(
    layout: &GgufLayout,
    path: &Path,
    rng: &mut SplitMix64,
    runnable: Option<Shape>,
) -> io::Result<()> {
    let file = File::create(path)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut buf = vec![0u8; 1 << 20];
    layout.write(&mut out, |tensor: &PlacedTensor, sink: &mut dyn Write| {
        if let Some(shape) = runnable {
            let values = runnable_values(tensor, shape, rng);
            return sink.write_all(&values);
        }
        let mut left = tensor.size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            fill_random(tensor.spec.ty, &mut buf[..n], rng);
            sink.write_all(&buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    })?;
    out.into_inner().map_err(|e| e.into_error())?.sync_data()
}

/// Fills `buf` with random weights: small finite numbers for float types, random bits otherwise.
fn fill_random(ty: GgmlType, buf: &mut [u8], rng: &mut SplitMix64) {
    let width = match ty.id() {
        0 => 4,      // f32
        1 | 30 => 2, // f16, bf16
        28 => 8,     // f64
        _ => 0,
    };
    for chunk in buf.chunks_mut(8) {
        let r = rng.next();
        match width {
            // Sign, a small exponent and random mantissa bits: finite, below 1 in magnitude.
            4 => {
                for half in chunk.chunks_mut(4) {
                    let bits = 0x3800_0000 | (r as u32 & 0x807f_ffff);
                    half.copy_from_slice(&bits.to_le_bytes()[..half.len()]);
                }
            }
            2 if ty == GgmlType::F16 => {
                for (i, h) in chunk.chunks_mut(2).enumerate() {
                    let bits = 0x2000 | ((r >> (16 * i)) as u16 & 0x83ff);
                    h.copy_from_slice(&bits.to_le_bytes()[..h.len()]);
                }
            }
            2 => {
                for (i, h) in chunk.chunks_mut(2).enumerate() {
                    let bits = 0x3c00 | ((r >> (16 * i)) as u16 & 0x807f);
                    h.copy_from_slice(&bits.to_le_bytes()[..h.len()]);
                }
            }
            8 => {
                let bits = 0x3f00_0000_0000_0000 | (r & 0x800f_ffff_ffff_ffff);
                chunk.copy_from_slice(&bits.to_le_bytes()[..chunk.len()]);
            }
            _ => chunk.copy_from_slice(&r.to_le_bytes()[..chunk.len()]),
        }
    }
}

/// A small, fast, seedable generator (Steele, Lea and Flood's SplitMix64).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
