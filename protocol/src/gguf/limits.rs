//! Named caps on every count and size read from a file. A count must pass its cap *and* fit in the
//! bytes that remain before anything is allocated or looped over on its say-so.

/// The most metadata entries a file may declare. Real models carry fewer than 100.
pub const MAX_METADATA_ENTRIES: u64 = 1 << 16;
/// The most tensors a file may declare. The largest published models have a few thousand.
pub const MAX_TENSORS: u64 = 1 << 20;
/// The longest string value or key, in bytes. Chat templates reach tens of KiB.
pub const MAX_STRING_LEN: u64 = 64 << 20;
/// The most elements in one array. Vocabularies and merge lists reach about a million.
pub const MAX_ARRAY_LEN: u64 = 1 << 26;
/// How deeply arrays may nest; the parser recurses once per level.
pub const MAX_ARRAY_DEPTH: u32 = 8;
/// ggml's GGML_MAX_DIMS.
pub const MAX_DIMS: u32 = 4;
/// ggml's GGML_MAX_NAME is 64 including the terminating NUL.
pub const MAX_TENSOR_NAME_LEN: u64 = 63;
/// The largest `general.alignment` accepted: bigger than any page size in use.
pub const MAX_ALIGNMENT: u64 = 1 << 20;
/// The alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
