//! A GGUF writer: any metadata, any tensor of any ggml type.
//!
//! The writer computes the layout (header bytes, each tensor's offset and padding) up front, then
//! streams tensor data from a caller's closure into any `io::Write`, so multi-GiB synthetic models
//! never sit in memory. Like ggml and gguf-py, it pads every tensor, the last one included, to the
//! alignment.

use std::io::{self, Write};

use super::file::{align_up, ALIGNMENT_KEY, MAGIC};
use super::limits::{DEFAULT_ALIGNMENT, MAX_ALIGNMENT, MAX_DIMS};
use super::value::{OwnedValue, ValueType};
use crate::ggml_type::GgmlType;

/// A writer input that would not produce a valid file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// An array element's type differs from the array's element type.
    #[error("metadata {key:?}: array of {expected} holds a {found}")]
    MixedArray {
        key: String,
        expected: ValueType,
        found: ValueType,
    },
    /// `general.alignment` is not a uint32 power of two within the cap.
    #[error("general.alignment must be a uint32 power of two up to {MAX_ALIGNMENT}")]
    BadAlignment,
    /// Only versions 2 and 3 can be written.
    #[error("cannot write GGUF version {0}; only 2 and 3")]
    UnsupportedVersion(u32),
    /// A tensor has more than four dimensions.
    #[error("tensor {name:?} has {n_dims} dimensions; ggml allows at most {MAX_DIMS}")]
    TooManyDims { name: String, n_dims: usize },
    /// A tensor's first dimension is not a whole number of blocks of its type.
    #[error("tensor {name:?}: first dimension {ne0} is not a multiple of {ty}'s block size")]
    RowNotBlockMultiple {
        name: String,
        ne0: u64,
        ty: GgmlType,
    },
    /// A tensor's size overflows 64 bits.
    #[error("tensor {name:?} is too large")]
    SizeOverflow { name: String },
}

/// A tensor to be written: its name, dimensions (innermost first) and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
}

/// Collects metadata and tensor descriptors, then lays them out.
#[derive(Debug, Clone)]
pub struct GgufWriter {
    version: u32,
    metadata: Vec<(String, OwnedValue)>,
    tensors: Vec<TensorSpec>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        GgufWriter::new()
    }
}

impl GgufWriter {
    /// A writer for GGUF version 3.
    pub fn new() -> GgufWriter {
        GgufWriter {
            version: 3,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Writes this version (2 or 3) instead; both share one little-endian layout.
    pub fn with_version(mut self, version: u32) -> GgufWriter {
        self.version = version;
        self
    }

    /// Appends a metadata entry. Keys are written in the order they are added.
    pub fn add_metadata(&mut self, key: impl Into<String>, value: OwnedValue) -> &mut Self {
        self.metadata.push((key.into(), value));
        self
    }

    /// Appends a tensor descriptor. Data is written in the order tensors are added.
    pub fn add_tensor(&mut self, name: impl Into<String>, dims: &[u64], ty: GgmlType) -> &mut Self {
        self.tensors.push(TensorSpec {
            name: name.into(),
            dims: dims.to_vec(),
            ty,
        });
        self
    }

    /// Computes the file layout and encodes the header.
    pub fn layout(&self) -> Result<GgufLayout, WriteError> {
        if !(2..=3).contains(&self.version) {
            return Err(WriteError::UnsupportedVersion(self.version));
        }
        let alignment = self.alignment()?;
        let mut header = Vec::new();
        header.extend_from_slice(&MAGIC);
        header.extend_from_slice(&self.version.to_le_bytes());
        header.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            encode_str(&mut header, key.as_bytes());
            header.extend_from_slice(&value.value_type().tag().to_le_bytes());
            encode_value(&mut header, key, value)?;
        }

        let mut placed = Vec::with_capacity(self.tensors.len());
        let mut next_offset = 0u64;
        for spec in &self.tensors {
            let size = tensor_size(spec)?;
            let padded = align_up(size, alignment).ok_or_else(|| WriteError::SizeOverflow {
                name: spec.name.clone(),
            })?;
            encode_str(&mut header, spec.name.as_bytes());
            header.extend_from_slice(&(spec.dims.len() as u32).to_le_bytes());
            for d in &spec.dims {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&spec.ty.id().to_le_bytes());
            header.extend_from_slice(&next_offset.to_le_bytes());
            placed.push(PlacedTensor {
                spec: spec.clone(),
                offset: next_offset,
                size,
                padding_after: padded - size,
            });
            next_offset =
                next_offset
                    .checked_add(padded)
                    .ok_or_else(|| WriteError::SizeOverflow {
                        name: spec.name.clone(),
                    })?;
        }
        let data_offset =
            align_up(header.len() as u64, alignment).ok_or(WriteError::BadAlignment)?;
        header.resize(data_offset as usize, 0);
        Ok(GgufLayout {
            header,
            tensors: placed,
            data_offset,
            total_len: data_offset + next_offset,
        })
    }

    fn alignment(&self) -> Result<u64, WriteError> {
        match self.metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
            None => Ok(DEFAULT_ALIGNMENT),
            Some((_, OwnedValue::U32(a)))
                if a.is_power_of_two() && u64::from(*a) <= MAX_ALIGNMENT =>
            {
                Ok(u64::from(*a))
            }
            Some(_) => Err(WriteError::BadAlignment),
        }
    }
}

fn tensor_size(spec: &TensorSpec) -> Result<u64, WriteError> {
    if spec.dims.len() > MAX_DIMS as usize {
        return Err(WriteError::TooManyDims {
            name: spec.name.clone(),
            n_dims: spec.dims.len(),
        });
    }
    let ne0 = spec.dims.first().copied().unwrap_or(1);
    if ne0 % u64::from(spec.ty.block_size()) != 0 {
        return Err(WriteError::RowNotBlockMultiple {
            name: spec.name.clone(),
            ne0,
            ty: spec.ty,
        });
    }
    spec.dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .and_then(|n| spec.ty.bytes_for(n))
        .ok_or_else(|| WriteError::SizeOverflow {
            name: spec.name.clone(),
        })
}

fn encode_str(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn encode_value(out: &mut Vec<u8>, key: &str, value: &OwnedValue) -> Result<(), WriteError> {
    match value {
        OwnedValue::U8(v) => out.push(*v),
        OwnedValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        OwnedValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        OwnedValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        OwnedValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        OwnedValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        OwnedValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        OwnedValue::Bool(v) => out.push(u8::from(*v)),
        OwnedValue::String(s) => encode_str(out, s),
        OwnedValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        OwnedValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        OwnedValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        OwnedValue::Array(elem_type, items) => {
            out.extend_from_slice(&elem_type.tag().to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                if item.value_type() != *elem_type {
                    return Err(WriteError::MixedArray {
                        key: key.to_owned(),
                        expected: *elem_type,
                        found: item.value_type(),
                    });
                }
                encode_value(out, key, item)?;
            }
        }
    }
    Ok(())
}

/// A tensor with its place in the data section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedTensor {
    pub spec: TensorSpec,
    /// Offset relative to the data section.
    pub offset: u64,
    /// Bytes of data the caller must supply.
    pub size: u64,
    /// Zero bytes written after the data to reach the alignment.
    pub padding_after: u64,
}

/// The complete layout of a file about to be written.
#[derive(Debug, Clone)]
pub struct GgufLayout {
    /// Everything before the data section, padding included.
    pub header: Vec<u8>,
    pub tensors: Vec<PlacedTensor>,
    pub data_offset: u64,
    pub total_len: u64,
}

impl GgufLayout {
    /// Writes the file. `fill` is called once per tensor, in order, and must write exactly that
    /// tensor's `size` bytes; otherwise the write fails with `InvalidData`.
    pub fn write<W: Write>(
        &self,
        out: &mut W,
        mut fill: impl FnMut(&PlacedTensor, &mut dyn Write) -> io::Result<()>,
    ) -> io::Result<()> {
        out.write_all(&self.header)?;
        const ZEROS: [u8; MAX_ALIGNMENT as usize / 1024] = [0; MAX_ALIGNMENT as usize / 1024];
        for tensor in &self.tensors {
            let mut counted = CountingWriter {
                inner: &mut *out,
                written: 0,
            };
            fill(tensor, &mut counted)?;
            if counted.written != tensor.size {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "tensor {:?}: wrote {} bytes, its size is {}",
                        tensor.spec.name, counted.written, tensor.size
                    ),
                ));
            }
            let mut padding = tensor.padding_after;
            while padding > 0 {
                let n = padding.min(ZEROS.len() as u64);
                out.write_all(&ZEROS[..n as usize])?;
                padding -= n;
            }
        }
        Ok(())
    }

    /// Builds the whole file in memory; `fill` sets each tensor's bytes (which start zeroed).
    pub fn to_bytes(&self, mut fill: impl FnMut(&PlacedTensor, &mut [u8])) -> Vec<u8> {
        let mut bytes = self.header.clone();
        bytes.resize(self.total_len as usize, 0);
        for tensor in &self.tensors {
            let start = (self.data_offset + tensor.offset) as usize;
            fill(tensor, &mut bytes[start..start + tensor.size as usize]);
        }
        bytes
    }
}

struct CountingWriter<'w, W: Write + ?Sized> {
    inner: &'w mut W,
    written: u64,
}

impl<W: Write + ?Sized> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
