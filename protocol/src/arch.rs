//! What an inference engine needs to know about a model beyond its tensors, read from the GGUF
//! metadata by the host (the only process that parses GGUF) and sent to workers in the manifest.
//! The rules follow llama.cpp's (`src/llama-model.cpp`, `src/models/*.cpp`) for the
//! architectures the engine runs.

use serde::{Deserialize, Serialize};

use crate::gguf::{optional, GgufFile, MetadataError, PerLayer};

/// The architectures the engine computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// Gemma 3: sliding-window and global layers, QK-norm, GeGLU, post-norms, scaled
    /// embeddings, tied output.
    Gemma3,
    /// Llama (1 to 3): GQA, SwiGLU, optional Llama 3 rope frequency factors.
    Llama,
    /// Qwen 2: Llama with biases on Q, K and V.
    Qwen2,
    /// Qwen 3: Llama with QK-norm.
    Qwen3,
}

impl Architecture {
    pub fn from_name(name: &str) -> Option<Architecture> {
        Some(match name {
            "gemma3" => Architecture::Gemma3,
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Architecture::Gemma3 => "gemma3",
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
        }
    }

    /// Whether rope rotates the two halves of a head (NEOX) rather than neighbouring pairs.
    pub fn rope_neox(self) -> bool {
        !matches!(self, Architecture::Llama)
    }
}

/// How positions are scaled before rope.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum RopeScaling {
    None,
    /// Positions divided by the factor (`rope.scaling.type = linear`).
    Linear {
        factor: f32,
    },
}

/// Everything an engine needs besides the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchParams {
    pub architecture: Architecture,
    pub block_count: u32,
    pub embedding_length: u32,
    pub feed_forward_length: u32,
    pub head_count: u32,
    pub head_count_kv: u32,
    pub key_length: u32,
    pub value_length: u32,
    pub vocab_size: u32,
    pub context_length: u32,
    pub rms_epsilon: f32,
    /// Dimensions of each head that rope rotates.
    pub rope_dimensions: u32,
    pub rope_base: f32,
    /// The rope base of sliding-window layers (gemma3's local layers).
    pub rope_base_swa: f32,
    pub rope_scaling: RopeScaling,
    /// The window of sliding-window layers, and which layers have one.
    pub sliding_window: Option<u32>,
    pub swa_layers: Vec<bool>,
    /// Multiplies the query before the dot products.
    pub attention_scale: f32,
    /// Multiplies the token embeddings (gemma: √embedding_length).
    pub embedding_scale: Option<f32>,
    /// Caps logits with `c · tanh(x / c)`.
    pub final_logit_softcap: Option<f32>,
}

/// Why a model cannot be run by the engine; it still loads and shares.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ArchError {
    #[error("unsupported architecture {0:?} (the engine runs gemma3, llama, qwen2 and qwen3)")]
    Unsupported(String),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("{what} varies by layer, which the engine does not support")]
    PerLayer { what: &'static str },
    #[error("{key} = {value:?} is not supported")]
    Value { key: String, value: String },
    #[error("{0}")]
    Shape(String),
}

fn uniform(value: Option<&PerLayer>, what: &'static str) -> Result<Option<u32>, ArchError> {
    match value {
        None => Ok(None),
        Some(PerLayer::Uniform(v)) => Ok(Some(*v)),
        Some(PerLayer::Varying(values)) => match values.split_first() {
            Some((first, rest)) if rest.iter().all(|v| v == first) => Ok(Some(*first)),
            _ => Err(ArchError::PerLayer { what }),
        },
    }
}

impl ArchParams {
    /// Reads the inference parameters from a parsed file's metadata.
    pub fn from_gguf(file: &GgufFile<'_>) -> Result<ArchParams, ArchError> {
        let name = file.architecture()?;
        let architecture =
            Architecture::from_name(name).ok_or_else(|| ArchError::Unsupported(name.to_owned()))?;
        let hp = crate::gguf::HyperParams::from_gguf(file)?;
        let key = |k: &str| format!("{name}.{k}");
        let f32_key = |k: &str| -> Result<Option<f32>, ArchError> {
            Ok(optional(file.f64(&key(k)))?.map(|v| v as f32))
        };
        let head_count = uniform(Some(&hp.head_count), "attention.head_count")?.unwrap_or(0);
        let head_count_kv =
            uniform(Some(&hp.head_count_kv), "attention.head_count_kv")?.unwrap_or(head_count);
        let feed_forward_length = uniform(hp.feed_forward_length.as_ref(), "feed_forward_length")?
            .ok_or_else(|| MetadataError::Missing {
                key: key("feed_forward_length"),
            })?;
        if head_count == 0 || head_count_kv == 0 || head_count % head_count_kv != 0 {
            return Err(ArchError::Shape(format!(
                "{head_count} attention heads cannot share {head_count_kv} key/value heads"
            )));
        }
        let vocab_size = file.vocab_size()?.ok_or_else(|| MetadataError::Missing {
            key: "tokenizer.ggml.tokens".into(),
        })?;
        let vocab_size = u32::try_from(vocab_size).map_err(|_| ArchError::Value {
            key: "tokenizer.ggml.tokens".into(),
            value: vocab_size.to_string(),
        })?;
        let rope_dimensions = file
            .opt_u32(&key("rope.dimension_count"))?
            .unwrap_or(hp.key_length);
        if rope_dimensions > hp.key_length || rope_dimensions % 2 != 0 {
            return Err(ArchError::Shape(format!(
                "rope over {rope_dimensions} dimensions of a {}-wide head",
                hp.key_length
            )));
        }
        let rope_scaling = match optional(file.str(&key("rope.scaling.type")))? {
            None | Some("none") => match f32_key("rope.scale_linear")? {
                Some(f) if f != 1.0 => RopeScaling::Linear { factor: f },
                _ => RopeScaling::None,
            },
            Some("linear") => match f32_key("rope.scaling.factor")? {
                Some(f) if f > 0.0 && f != 1.0 => RopeScaling::Linear { factor: f },
                _ => RopeScaling::None,
            },
            Some(other) => {
                return Err(ArchError::Value {
                    key: key("rope.scaling.type"),
                    value: other.to_owned(),
                })
            }
        };
        let rms_epsilon =
            f32_key("attention.layer_norm_rms_epsilon")?.ok_or_else(|| MetadataError::Missing {
                key: key("attention.layer_norm_rms_epsilon"),
            })?;
        let rope_base = f32_key("rope.freq_base")?.unwrap_or(10_000.0);
        let blocks = hp.block_count as usize;
        let (sliding_window, swa_layers) = match (architecture, hp.sliding_window) {
            (Architecture::Gemma3, Some(window)) if window > 0 => {
                // llama.cpp: every sixth layer is global unless the file gives a pattern.
                let pattern = file
                    .opt_u32(&key("attention.sliding_window_pattern"))?
                    .unwrap_or(6);
                let layers = (0..blocks as u32)
                    .map(|l| pattern == 0 || l % pattern < pattern - 1)
                    .collect();
                (Some(window), layers)
            }
            _ => (None, vec![false; blocks]),
        };
        let attention_scale = match (architecture, f32_key("attention.scale")?) {
            (_, Some(s)) if s != 0.0 => s,
            // Gemma 3 27B scales by the embedding per head, the others by the key length.
            (Architecture::Gemma3, _) if hp.block_count == 62 => {
                1.0 / ((hp.embedding_length / head_count) as f32).sqrt()
            }
            _ => 1.0 / (hp.key_length as f32).sqrt(),
        };
        Ok(ArchParams {
            architecture,
            block_count: hp.block_count,
            embedding_length: hp.embedding_length,
            feed_forward_length,
            head_count,
            head_count_kv,
            key_length: hp.key_length,
            value_length: hp.value_length,
            vocab_size,
            context_length: hp.context_length,
            rms_epsilon,
            rope_dimensions,
            rope_base,
            rope_base_swa: match architecture {
                Architecture::Gemma3 => f32_key("rope.freq_base_swa")?.unwrap_or(10_000.0),
                _ => rope_base,
            },
            rope_scaling,
            sliding_window,
            swa_layers,
            attention_scale,
            embedding_scale: (architecture == Architecture::Gemma3)
                .then(|| (hp.embedding_length as f32).sqrt()),
            final_logit_softcap: f32_key("final_logit_softcapping")?.filter(|c| *c > 0.0),
        })
    }
}
