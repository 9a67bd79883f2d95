//! The model manifest: what the host tells the planner and the workers about a model, in owned
//! and serializable form. Workers trust it only after checking it against their mapping.

use serde::{Deserialize, Serialize};

use crate::arch::ArchParams;
use crate::gguf::{GgufModel, HyperParams, MetadataError};
use crate::layers::{layer_regions, LayerGroup, LayerRegion, PageSize};

/// A model, described for placement and attachment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelManifest {
    pub hyper_params: HyperParams,
    /// Vocabulary size (logits per token).
    pub vocab_size: u64,
    /// Every region in model order: token embedding, blocks 0..n, output norm, output, others.
    pub regions: Vec<LayerRegion>,
    /// Total bytes of the model's files.
    pub file_bytes: u64,
    /// Whether the output projection is the token embedding (tied weights, as in gemma).
    pub tied_output: bool,
    /// What an engine needs to run the model, or why it cannot (an architecture it does not
    /// know); the model loads and shares either way.
    pub inference: Result<ArchParams, String>,
}

impl ModelManifest {
    /// Builds the manifest of a parsed model.
    pub fn from_model(
        model: &GgufModel<'_>,
        page: PageSize,
    ) -> Result<ModelManifest, MetadataError> {
        let meta = model.metadata();
        let hyper_params = HyperParams::from_gguf(meta)?;
        let regions = layer_regions(model, page);
        let tied_output = !regions.iter().any(|r| r.group == LayerGroup::Output);
        Ok(ModelManifest {
            inference: ArchParams::from_gguf(meta).map_err(|e| e.to_string()),
            vocab_size: meta.vocab_size()?.unwrap_or(0),
            hyper_params,
            regions,
            file_bytes: model.file_bytes(),
            tied_output,
        })
    }

    /// Weight bytes of block `layer`.
    pub fn block_bytes(&self, layer: u32) -> u64 {
        self.region(&LayerGroup::Block(layer))
            .map_or(0, |r| r.tensor_bytes)
    }

    /// Bytes the output stage puts on the device that runs it: the output norm and the output
    /// projection (for tied weights, a copy of the token embedding, as llama.cpp makes).
    pub fn output_bytes(&self) -> u64 {
        let norm = self
            .region(&LayerGroup::OutputNorm)
            .map_or(0, |r| r.tensor_bytes);
        let projection = if self.tied_output {
            self.region(&LayerGroup::TokenEmbedding)
                .map_or(0, |r| r.tensor_bytes)
        } else {
            self.region(&LayerGroup::Output)
                .map_or(0, |r| r.tensor_bytes)
        };
        norm + projection
    }

    pub fn region(&self, group: &LayerGroup) -> Option<&LayerRegion> {
        self.regions.iter().find(|r| &r.group == group)
    }
}
