//! Parse errors. Every error names the byte offset and the field where parsing stopped.

use core::fmt;
use std::error::Error;

use super::value::ValueType;

/// A GGUF file failed to parse or validate.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufError {
    /// Byte offset in the file where the offending field starts.
    pub offset: u64,
    /// The field being read or checked.
    pub field: Field,
    /// What was wrong with it.
    pub kind: ErrorKind,
}

impl GgufError {
    pub(crate) fn new(offset: u64, field: Field, kind: ErrorKind) -> Self {
        GgufError {
            offset,
            field,
            kind,
        }
    }
}

impl fmt::Display for GgufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}: {}", self.field, self.offset, self.kind)
    }
}

impl Error for GgufError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.kind.source()
    }
}

/// Where in the file structure an error was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Magic,
    Version,
    TensorCount,
    MetadataCount,
    /// The key of the metadata entry with this index.
    MetadataKey {
        index: u64,
    },
    /// The value-type tag of a metadata entry.
    MetadataType {
        key: String,
    },
    /// The value of a metadata entry (or an element inside it).
    MetadataValue {
        key: String,
    },
    /// The name of the tensor descriptor with this index.
    TensorName {
        index: u64,
    },
    TensorDims {
        tensor: String,
    },
    TensorType {
        tensor: String,
    },
    TensorOffset {
        tensor: String,
    },
    /// The padding between the tensor descriptors and the data section.
    DataSection,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Magic => f.write_str("header.magic"),
            Field::Version => f.write_str("header.version"),
            Field::TensorCount => f.write_str("header.tensor_count"),
            Field::MetadataCount => f.write_str("header.metadata_kv_count"),
            Field::MetadataKey { index } => write!(f, "metadata[{index}].key"),
            Field::MetadataType { key } => write!(f, "metadata[{key:?}].type"),
            Field::MetadataValue { key } => write!(f, "metadata[{key:?}].value"),
            Field::TensorName { index } => write!(f, "tensor[{index}].name"),
            Field::TensorDims { tensor } => write!(f, "tensor[{tensor:?}].dims"),
            Field::TensorType { tensor } => write!(f, "tensor[{tensor:?}].type"),
            Field::TensorOffset { tensor } => write!(f, "tensor[{tensor:?}].offset"),
            Field::DataSection => f.write_str("data_section"),
        }
    }
}

/// What went wrong; one variant per distinct failure.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ErrorKind {
    /// The file ends inside a field.
    #[error("file ends early: field needs {needed} bytes, {available} remain")]
    UnexpectedEof { needed: u64, available: u64 },
    /// The first four bytes are not `GGUF`. The message does not echo them: a daemon reporting
    /// this to a client must not reveal the contents of files the client could not read.
    #[error("not a GGUF file: the first 4 bytes are not \"GGUF\"")]
    BadMagic { found: [u8; 4] },
    /// GGUF version 1 used 32-bit counts and is not supported.
    #[error("GGUF version 1 is not supported (it predates 64-bit counts); re-convert the model")]
    Version1,
    /// The version field reads as a byte-swapped small number: a big-endian file.
    #[error("big-endian GGUF (version {version} byte-swapped) is not supported")]
    BigEndian { version: u32 },
    /// A version newer than this parser knows.
    #[error("GGUF version {0} is newer than the supported versions 2 and 3")]
    FutureVersion(u32),
    /// Version 0 was never a GGUF version.
    #[error("GGUF version 0 is not a valid version")]
    VersionZero,
    /// A count exceeds the named cap this parser enforces.
    #[error("{what} is {count}, above the limit of {cap}")]
    CountOverCap {
        what: &'static str,
        count: u64,
        cap: u64,
    },
    /// A count promises more items than the remaining bytes could hold.
    #[error("{what} is {count}, but each takes at least {min_bytes_each} bytes and only {remaining} bytes remain")]
    CountExceedsFile {
        what: &'static str,
        count: u64,
        min_bytes_each: u64,
        remaining: u64,
    },
    /// A key or tensor name is not valid UTF-8.
    #[error("not valid UTF-8")]
    InvalidUtf8(#[source] core::str::Utf8Error),
    /// A tensor name is longer than ggml accepts (GGML_MAX_NAME - 1 bytes).
    #[error("name is {len} bytes, longer than ggml's limit of {max}")]
    NameTooLong { len: u64, max: u64 },
    /// A metadata key appears twice.
    #[error("duplicate key {key:?} (first defined at byte {first_offset})")]
    DuplicateKey { key: String, first_offset: u64 },
    /// A metadata key of no bytes (llama.cpp refuses these; no lookup could find the value).
    #[error("the metadata key is empty")]
    EmptyKey,
    /// A metadata value-type tag this parser does not know.
    #[error("unknown value type {0}")]
    UnknownValueType(u32),
    /// A bool value other than 0 or 1.
    #[error("bool value is {0}, expected 0 or 1")]
    InvalidBool(u8),
    /// Arrays nest deeper than the cap.
    #[error("arrays nest deeper than {max_depth} levels")]
    ArrayTooDeep { max_depth: u32 },
    /// `general.alignment` has a type other than uint32.
    #[error("general.alignment must be uint32, found {found}")]
    AlignmentWrongType { found: ValueType },
    /// `general.alignment` is zero.
    #[error("general.alignment is 0")]
    AlignmentZero,
    /// `general.alignment` is not a power of two.
    #[error("general.alignment {0} is not a power of two")]
    AlignmentNotPowerOfTwo(u64),
    /// `general.alignment` is above the cap.
    #[error("general.alignment {value} is above the limit of {cap}")]
    AlignmentTooLarge { value: u64, cap: u64 },
    /// A tensor has more dimensions than ggml supports.
    #[error("{n_dims} dimensions, ggml supports at most {max}")]
    TooManyDims { n_dims: u32, max: u32 },
    /// A dimension does not fit ggml's signed 64-bit element counts.
    #[error("dimension {index} is {value}, above i64::MAX")]
    DimTooLarge { index: u32, value: u64 },
    /// The product of the dimensions, or the byte size, overflows.
    #[error("element count or byte size overflows 64 bits")]
    SizeOverflow,
    /// A tensor type id ggml has never had.
    #[error("unknown tensor type id {0}")]
    UnknownTensorType(u32),
    /// A tensor type id ggml removed.
    #[error("tensor type {name} (id {id}) was removed from ggml and cannot be loaded")]
    RemovedTensorType { id: u32, name: &'static str },
    /// The first dimension is not a whole number of the type's blocks.
    #[error("first dimension {ne0} is not a multiple of {ty}'s block size {block_size}")]
    RowNotBlockMultiple {
        ne0: u64,
        ty: &'static str,
        block_size: u32,
    },
    /// Two tensors share a name.
    #[error("duplicate tensor name {name:?} (first defined at byte {first_offset})")]
    DuplicateTensorName { name: String, first_offset: u64 },
    /// A tensor's data offset is not a multiple of the file's alignment.
    #[error("data offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedTensor { offset: u64, alignment: u64 },
    /// The data section would start past the end of the file.
    #[error("data section starts at byte {data_offset}, past the end of the {file_len}-byte file")]
    DataSectionPastEnd { data_offset: u64, file_len: u64 },
    /// A tensor's bytes run past the end of the file.
    #[error("data bytes {start}..{end} (absolute) run past the end of the {file_len}-byte file")]
    TensorPastEnd { start: u64, end: u64, file_len: u64 },
    /// Two tensors' byte ranges overlap.
    /// Tensors must lie in descriptor order, each at the aligned end of the one before, as
    /// llama.cpp requires: a gap or a different order is a file it refuses.
    #[error("data offset {offset} is not where the tensors before it end ({expected}); tensor data must be packed in descriptor order")]
    TensorNotPacked { offset: u64, expected: u64 },
    #[error("data bytes {start}..{end} overlap tensor {other:?} at {other_start}..{other_end}")]
    TensorsOverlap {
        start: u64,
        end: u64,
        other: String,
        other_start: u64,
        other_end: u64,
    },
}
