//! One file per architecture: which optional tensors its blocks have, and how a block is
//! assembled from the shared building blocks of `block.rs`. llama.cpp's `src/models/*.cpp` are
//! the reference for each.

mod gemma3;
mod llama;
mod qwen2;
mod qwen3;

use modelhost_protocol::arch::Architecture;

use crate::block::Step;
use crate::weights::{Layer, LayerShape};

/// An architecture's blocks.
pub struct Arch {
    /// The optional tensors its blocks carry.
    pub shape: LayerShape,
    /// Runs block `layer` over a step.
    pub block: fn(&mut Step<'_>, usize, &Layer),
}

/// The blocks of `architecture`.
pub fn arch(architecture: Architecture) -> Arch {
    match architecture {
        Architecture::Gemma3 => gemma3::ARCH,
        Architecture::Llama => llama::ARCH,
        Architecture::Qwen2 => qwen2::ARCH,
        Architecture::Qwen3 => qwen3::ARCH,
    }
}
