//! The architecture-prefixed hyper-parameters a loader and a placement planner need.

use serde::{Deserialize, Serialize};

use super::file::GgufFile;
use super::metadata::{optional, MetadataError};
use super::value::Value;

/// A per-layer quantity: one value for every layer, or one value per layer.
///
/// Most models use one head count for all layers; some (OpenELM, hybrid SSM models) store an array.
/// In JSON it is a bare number or array, as in the file; binary formats (postcard, on the wire to
/// workers) cannot guess between the two and get a tagged form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PerLayer {
    Uniform(u32),
    Varying(Vec<u32>),
}

/// The binary form of [`PerLayer`].
#[derive(Serialize, Deserialize)]
enum Tagged {
    Uniform(u32),
    Varying(Vec<u32>),
}

/// The JSON form of [`PerLayer`].
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Bare {
    Uniform(u32),
    Varying(Vec<u32>),
}

impl Serialize for PerLayer {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match (self, serializer.is_human_readable()) {
            (PerLayer::Uniform(v), true) => Bare::Uniform(*v).serialize(serializer),
            (PerLayer::Varying(v), true) => Bare::Varying(v.clone()).serialize(serializer),
            (PerLayer::Uniform(v), false) => Tagged::Uniform(*v).serialize(serializer),
            (PerLayer::Varying(v), false) => Tagged::Varying(v.clone()).serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for PerLayer {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(if deserializer.is_human_readable() {
            match Bare::deserialize(deserializer)? {
                Bare::Uniform(v) => PerLayer::Uniform(v),
                Bare::Varying(v) => PerLayer::Varying(v),
            }
        } else {
            match Tagged::deserialize(deserializer)? {
                Tagged::Uniform(v) => PerLayer::Uniform(v),
                Tagged::Varying(v) => PerLayer::Varying(v),
            }
        })
    }
}

impl PerLayer {
    /// The value for `layer`; for a varying value past its end, the last value.
    pub fn get(&self, layer: u32) -> u32 {
        match self {
            PerLayer::Uniform(v) => *v,
            PerLayer::Varying(values) => values
                .get(layer as usize)
                .or(values.last())
                .copied()
                .unwrap_or(0),
        }
    }

    /// The largest value over all layers.
    pub fn max(&self) -> u32 {
        match self {
            PerLayer::Uniform(v) => *v,
            PerLayer::Varying(values) => values.iter().copied().max().unwrap_or(0),
        }
    }
}

/// The hyper-parameters read from `{arch}.*` keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HyperParams {
    pub architecture: String,
    /// Number of transformer blocks (`{arch}.block_count`).
    pub block_count: u32,
    /// The context length the model was trained for (`{arch}.context_length`).
    pub context_length: u32,
    /// Width of the residual stream (`{arch}.embedding_length`).
    pub embedding_length: u32,
    /// Width of the feed-forward hidden layer, where the model states it.
    pub feed_forward_length: Option<PerLayer>,
    /// Attention (query) heads.
    pub head_count: PerLayer,
    /// Key/value heads; equal to `head_count` unless the model uses grouped-query attention.
    pub head_count_kv: PerLayer,
    /// Size of one key head; `embedding_length / head_count` when unstated.
    pub key_length: u32,
    /// Size of one value head; `embedding_length / head_count` when unstated.
    pub value_length: u32,
    /// Sliding-window attention span, for models that use it on some layers.
    pub sliding_window: Option<u32>,
}

impl HyperParams {
    /// Reads the hyper-parameters of the file's `general.architecture`.
    pub fn from_gguf(file: &GgufFile<'_>) -> Result<HyperParams, MetadataError> {
        let arch = file.architecture()?;
        let key = |name: &str| format!("{arch}.{name}");
        let block_count = file.u32(&key("block_count"))?;
        let embedding_length = file.u32(&key("embedding_length"))?;
        let head_count = per_layer(file, &key("attention.head_count"), block_count)?
            .unwrap_or(PerLayer::Uniform(0));
        let head_count_kv = per_layer(file, &key("attention.head_count_kv"), block_count)?
            .unwrap_or_else(|| head_count.clone());
        let default_head_len = match head_count.get(0) {
            0 => 0,
            heads => embedding_length / heads,
        };
        Ok(HyperParams {
            architecture: arch.to_owned(),
            block_count,
            context_length: file.u32(&key("context_length"))?,
            embedding_length,
            feed_forward_length: per_layer(file, &key("feed_forward_length"), block_count)?,
            head_count,
            head_count_kv,
            key_length: file
                .opt_u32(&key("attention.key_length"))?
                .unwrap_or(default_head_len),
            value_length: file
                .opt_u32(&key("attention.value_length"))?
                .unwrap_or(default_head_len),
            sliding_window: file.opt_u32(&key("attention.sliding_window"))?,
        })
    }
}

/// Reads a key that is either one integer or an array with one integer per layer.
fn per_layer(
    file: &GgufFile<'_>,
    key: &str,
    block_count: u32,
) -> Result<Option<PerLayer>, MetadataError> {
    let Some(entry) = file.entry(key) else {
        return Ok(None);
    };
    let Value::Array(array) = entry.value else {
        return optional(file.u32(key)).map(|v| v.map(PerLayer::Uniform));
    };
    if array.len() != u64::from(block_count) {
        return Err(MetadataError::WrongLength {
            key: key.to_owned(),
            offset: entry.value_offset,
            expected: u64::from(block_count),
            found: array.len(),
        });
    }
    // The length equals block_count, a u32 read from the file whose array was bounds-checked.
    let mut values = Vec::with_capacity(array.len() as usize);
    for element in array.iter() {
        let wrong_type = || MetadataError::WrongType {
            key: key.to_owned(),
            offset: entry.value_offset,
            expected: "array of integers",
            found: element.value_type(),
        };
        let wide = element.as_integer().ok_or_else(wrong_type)?;
        let narrow = u32::try_from(wide).map_err(|_| MetadataError::OutOfRange {
            key: key.to_owned(),
            offset: entry.value_offset,
            value: wide,
            expected: "u32",
        })?;
        values.push(narrow);
    }
    Ok(Some(PerLayer::Varying(values)))
}
