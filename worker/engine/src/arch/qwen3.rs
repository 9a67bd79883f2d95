//! Qwen 3 (llama.cpp `src/models/qwen3.cpp`): Llama's block with an RMS norm on each query and
//! key head before rope (QK-norm), rope over the two halves of each head (NEOX), no biases.

use super::Arch;
use crate::weights::LayerShape;

pub const ARCH: Arch = Arch {
    shape: LayerShape {
        qkv_bias: false,
        qk_norm: true,
        post_norms: false,
    },
    block: super::llama::block,
};
