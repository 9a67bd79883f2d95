//! Qwen 2 (llama.cpp `src/models/qwen2.cpp`): Llama's block with biases on the Q, K and V
//! projections, and rope over the two halves of each head (NEOX).

use super::Arch;
use crate::weights::LayerShape;

pub const ARCH: Arch = Arch {
    shape: LayerShape {
        qkv_bias: true,
        qk_norm: false,
        post_norms: false,
    },
    block: super::llama::block,
};
