//! The GGUF format: a strict parser over `&[u8]`, typed metadata access, split models, and a writer.
//!
//! Spec: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>. The parser validates
//! everything once, in [`GgufFile::parse`]; afterwards every offset and size it hands out is known
//! to lie inside the bytes it borrows.

mod cursor;
mod error;
mod file;
mod hparams;
pub mod limits;
mod metadata;
mod model;
mod split;
mod value;
mod writer;

pub use error::{ErrorKind, Field, GgufError};
pub use file::{GgufFile, MetadataEntry, TensorInfo, ALIGNMENT_KEY, MAGIC};
pub use hparams::{HyperParams, PerLayer};
pub use metadata::{optional, MetadataError};
pub use model::{GgufModel, ModelError, Shard, SplitSummary};
pub use split::{
    shard_file_name, shard_prefix, split_info, SplitInfo, SPLIT_COUNT_KEY, SPLIT_NO_KEY,
    SPLIT_TENSORS_COUNT_KEY,
};
pub use value::{ArrayIter, ArrayView, GgufStr, OwnedValue, Value, ValueType};
pub use writer::{GgufLayout, GgufWriter, PlacedTensor, TensorSpec, WriteError};
