//! The model's tensors as the engine uses them: weight matrices borrowed from the mapped files
//! (by file and byte range, checked once here), and the small norm vectors and biases read into
//! f32 (a few KiB per layer).

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;

use modelhost_protocol::arch::ArchParams;
use modelhost_protocol::layers::RegionTensor;

use crate::error::BuildError;
use crate::quant::WeightFormat;

/// A mapped model file: anything that derefs to its bytes (a memory map, or a buffer in tests).
pub type ModelFile = Arc<dyn Deref<Target = [u8]> + Send + Sync>;

/// A weight matrix: `rows` rows of `cols` weights in `format`, at a checked range of a file.
#[derive(Debug, Clone)]
pub struct Matrix {
    pub name: String,
    pub format: WeightFormat,
    pub rows: usize,
    pub cols: usize,
    file: usize,
    offset: usize,
    len: usize,
}

impl Matrix {
    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.format.row_bytes(self.cols)
    }

    /// The matrix's bytes in `files`.
    pub fn bytes<'f>(&self, files: &'f [ModelFile]) -> &'f [u8] {
        &files[self.file][self.offset..self.offset + self.len]
    }

    /// The matrix's size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The tensors of a model, looked up by name and checked against the hyper-parameters.
pub struct TensorSet<'a> {
    by_name: HashMap<&'a str, &'a RegionTensor>,
    files: &'a [ModelFile],
}

impl<'a> TensorSet<'a> {
    pub fn new(
        tensors: impl IntoIterator<Item = &'a RegionTensor>,
        files: &'a [ModelFile],
    ) -> Self {
        TensorSet {
            by_name: tensors.into_iter().map(|t| (t.name.as_str(), t)).collect(),
            files,
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    fn get(&self, name: &str) -> Result<&'a RegionTensor, BuildError> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| BuildError::MissingTensor(name.to_owned()))
    }

    fn check_shape(t: &RegionTensor, expected: &[u64]) -> Result<(), BuildError> {
        // Trailing dimensions of 1 are the same shape.
        let trim = |d: &[u64]| {
            let mut d = d.to_vec();
            while d.len() > 1 && d.last() == Some(&1) {
                d.pop();
            }
            d
        };
        if trim(&t.dims) != trim(expected) {
            return Err(BuildError::Shape {
                tensor: t.name.clone(),
                expected: expected.to_vec(),
                found: t.dims.clone(),
            });
        }
        Ok(())
    }

    fn range(&self, t: &RegionTensor) -> Result<(usize, usize, usize), BuildError> {
        let out = || BuildError::OutOfFile {
            tensor: t.name.clone(),
            offset: t.offset,
            size: t.size,
            file_len: self
                .files
                .get(usize::from(t.shard))
                .map_or(0, |f| f.len() as u64),
        };
        let file = self.files.get(usize::from(t.shard)).ok_or_else(out)?;
        let end = t.offset.checked_add(t.size).ok_or_else(out)?;
        if end > file.len() as u64 {
            return Err(out());
        }
        Ok((usize::from(t.shard), t.offset as usize, t.size as usize))
    }

    /// The matrix `name`, which must be `cols` wide and `rows` tall in a supported format.
    pub fn matrix(&self, name: &str, cols: u32, rows: u32) -> Result<Matrix, BuildError> {
        let t = self.get(name)?;
        Self::check_shape(t, &[u64::from(cols), u64::from(rows)])?;
        let format =
            WeightFormat::from_ggml(t.ggml_type).ok_or_else(|| BuildError::UnsupportedType {
                ty: t.ggml_type.name().to_owned(),
                tensor: t.name.clone(),
            })?;
        let (file, offset, len) = self.range(t)?;
        let expected = format.row_bytes(cols as usize) * rows as usize;
        if len < expected {
            return Err(BuildError::Shape {
                tensor: t.name.clone(),
                expected: vec![u64::from(cols), u64::from(rows)],
                found: t.dims.clone(),
            });
        }
        Ok(Matrix {
            name: t.name.clone(),
            format,
            rows: rows as usize,
            cols: cols as usize,
            file,
            offset,
            len: expected,
        })
    }

    /// The vector `name` of `len` values, read into f32.
    pub fn vector(&self, name: &str, len: u32) -> Result<Vec<f32>, BuildError> {
        let m = self.matrix(name, len, 1)?;
        let mut out = vec![0f32; len as usize];
        m.format.dequantize_row(m.bytes(self.files), &mut out);
        Ok(out)
    }

    /// The vector `name` if the model has it.
    pub fn optional_vector(&self, name: &str, len: u32) -> Result<Option<Vec<f32>>, BuildError> {
        if self.has(name) {
            self.vector(name, len).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// One transformer block's weights.
pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub wq: Matrix,
    pub wk: Matrix,
    pub wv: Matrix,
    pub wo: Matrix,
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub post_attn_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub gate: Matrix,
    pub up: Matrix,
    pub down: Matrix,
    pub post_ffn_norm: Option<Vec<f32>>,
}

/// Which optional tensors an architecture requires.
pub struct LayerShape {
    pub qkv_bias: bool,
    pub qk_norm: bool,
    pub post_norms: bool,
}

/// Every weight the engine computes with.
pub struct Weights {
    pub token_embd: Matrix,
    pub output_norm: Vec<f32>,
    /// The output projection: `output.weight`, or the token embedding when tied.
    pub output: Matrix,
    pub layers: Vec<Layer>,
    /// Llama 3 rope frequency factors (`rope_freqs.weight`), one per rotated pair.
    pub rope_freqs: Option<Vec<f32>>,
}

impl Weights {
    /// Finds and checks every tensor the architecture needs.
    pub fn load(
        p: &ArchParams,
        shape: &LayerShape,
        t: &TensorSet<'_>,
    ) -> Result<Weights, BuildError> {
        let e = p.embedding_length;
        let (hq, hkv) = (p.head_count, p.head_count_kv);
        let (dk, dv) = (p.key_length, p.value_length);
        let token_embd = t.matrix("token_embd.weight", e, p.vocab_size)?;
        let output = if t.has("output.weight") {
            t.matrix("output.weight", e, p.vocab_size)?
        } else {
            token_embd.clone()
        };
        let mut layers = Vec::with_capacity(p.block_count as usize);
        for l in 0..p.block_count {
            let n = |s: &str| format!("blk.{l}.{s}");
            let required = |s: &str, len| t.vector(&n(s), len);
            let when = |yes: bool, s: &str, len| -> Result<Option<Vec<f32>>, BuildError> {
                if yes {
                    t.vector(&n(s), len).map(Some)
                } else {
                    Ok(None)
                }
            };
            layers.push(Layer {
                attn_norm: required("attn_norm.weight", e)?,
                wq: t.matrix(&n("attn_q.weight"), e, hq * dk)?,
                wk: t.matrix(&n("attn_k.weight"), e, hkv * dk)?,
                wv: t.matrix(&n("attn_v.weight"), e, hkv * dv)?,
                wo: t.matrix(&n("attn_output.weight"), hq * dv, e)?,
                bq: when(shape.qkv_bias, "attn_q.bias", hq * dk)?,
                bk: when(shape.qkv_bias, "attn_k.bias", hkv * dk)?,
                bv: when(shape.qkv_bias, "attn_v.bias", hkv * dv)?,
                q_norm: when(shape.qk_norm, "attn_q_norm.weight", dk)?,
                k_norm: when(shape.qk_norm, "attn_k_norm.weight", dk)?,
                post_attn_norm: when(shape.post_norms, "post_attention_norm.weight", e)?,
                ffn_norm: required("ffn_norm.weight", e)?,
                gate: t.matrix(&n("ffn_gate.weight"), e, p.feed_forward_length)?,
                up: t.matrix(&n("ffn_up.weight"), e, p.feed_forward_length)?,
                down: t.matrix(&n("ffn_down.weight"), p.feed_forward_length, e)?,
                post_ffn_norm: when(shape.post_norms, "post_ffw_norm.weight", e)?,
            });
        }
        Ok(Weights {
            token_embd,
            output_norm: t.vector("output_norm.weight", e)?,
            output,
            layers,
            rope_freqs: t.optional_vector("rope_freqs.weight", p.rope_dimensions / 2)?,
        })
    }

    /// Bytes of weight matrices read per token (each once).
    pub fn bytes_per_token(&self) -> u64 {
        let mut sum = self.output.len() as u64;
        for l in &self.layers {
            for m in [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down] {
                sum += m.len() as u64;
            }
        }
        sum
    }
}
