//! The modelhost inference engine: token ids in, logits out.
//!
//! Weights are borrowed from the shared mapping in their ggml blocks and computed with in place;
//! nothing is copied or repacked. The engine knows nothing of HTTP, text or sockets.

mod arch;
mod attention;
mod block;
mod engine;
pub mod error;
pub mod f16;
pub mod kv;
mod matmul;
pub mod ops;
pub mod pool;
pub mod quant;
pub mod sample;
pub mod simd;
pub mod weights;

pub use engine::{Chunk, ChunkResult, Engine, EngineOptions, Logits};
pub use error::{BuildError, StepError};
pub use kv::KvType;
