//! Gemma 3 (llama.cpp `src/models/gemma3.cpp`): the token embeddings scaled by √embedding;
//! QK-norm before rope; the query scaled by the attention scale before the dot products;
//! sliding-window layers with their own rope base beside global ones; an RMS norm after the
//! attention and after the feed-forward, each before its residual add; GeGLU; tied output.

use super::Arch;
use crate::block::Step;
use crate::weights::{Layer, LayerShape};

pub const ARCH: Arch = Arch {
    shape: LayerShape {
        qkv_bias: false,
        qk_norm: true,
        post_norms: true,
    },
    block,
};

fn block(s: &mut Step<'_>, layer: usize, w: &Layer) {
    s.norm_input(&w.attn_norm);
    s.attention(layer, w, true);
    if let Some(norm) = &w.post_attn_norm {
        s.norm_projection(norm);
    }
    s.add_residual();
    s.norm_input(&w.ffn_norm);
    s.feed_forward(w, true);
    if let Some(norm) = &w.post_ffn_norm {
        s.norm_projection(norm);
    }
    s.add_residual();
}
