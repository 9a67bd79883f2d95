//! Llama (llama.cpp `src/models/llama.cpp`): pre-norm blocks with grouped-query attention,
//! rope on neighbouring pairs (with Llama 3's per-pair frequency factors when the file has
//! `rope_freqs.weight`), the scores scaled by 1/√head, and SwiGLU. Qwen 2 and Qwen 3 reuse
//! its block.

use super::Arch;
use crate::block::Step;
use crate::weights::{Layer, LayerShape};

pub const ARCH: Arch = Arch {
    shape: LayerShape {
        qkv_bias: false,
        qk_norm: false,
        post_norms: false,
    },
    block,
};

/// A pre-norm block: attention and SwiGLU feed-forward, each added to the residual stream.
pub fn block(s: &mut Step<'_>, layer: usize, w: &Layer) {
    s.norm_input(&w.attn_norm);
    s.attention(layer, w, false);
    s.add_residual();
    s.norm_input(&w.ffn_norm);
    s.feed_forward(w, false);
    s.add_residual();
}
