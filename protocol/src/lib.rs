//! The formats the modelhost host and its workers speak. This crate does no I/O: it has no files,
//! sockets, clocks, threads or async runtime among its dependencies. Parsers take `&[u8]` and
//! return views that borrow it; time, when needed, comes in as an argument.
//!
//! - [`arch`]: what an inference engine needs from a model's metadata.
//! - [`gguf`]: the GGUF model format (parser, metadata, split models, writer).
//! - [`ggml_type`]: the ggml tensor type table.
//! - [`layers`]: the page-aligned layer regions the host advertises to workers.
//! - [`manifest`]: the model manifest the planner and the workers receive.
//! - [`placement`]: the placement planner.
//! - [`progress`]: how often progress is reported.
//! - [`random_blocks`]: random weights of sane magnitude in any block format.
//! - [`units`]: byte sizes for people.
//! - [`wire`]: the host↔worker protocol.

pub mod arch;
pub mod ggml_type;
pub mod gguf;
pub mod layers;
pub mod manifest;
pub mod placement;
pub mod progress;
pub mod random_blocks;
pub mod units;
pub mod wire;

pub use ggml_type::GgmlType;
