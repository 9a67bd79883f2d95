//! The engine on a model file with no host: for `modelhost-worker --bench`, the reference
//! comparisons and the tests. The serving path never comes here: there the host parses the
//! file and the worker trusts the manifest it is sent. Here, with no host, this process maps the
//! file and parses it with the same validating parser the host uses.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;
use modelhost_engine::weights::ModelFile;
use modelhost_engine::{BuildError, Engine, EngineOptions};
use modelhost_protocol::gguf::{GgufFile, GgufModel};
use modelhost_protocol::layers::{PageSize, RegionTensor};
use modelhost_protocol::manifest::ModelManifest;

/// Why a model file could not be opened for the engine.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// A mapped, parsed single-file model.
pub struct OpenModel {
    pub manifest: ModelManifest,
    pub files: Vec<ModelFile>,
}

impl OpenModel {
    /// Every tensor of the model.
    pub fn tensors(&self) -> Vec<RegionTensor> {
        self.manifest
            .regions
            .iter()
            .flat_map(|r| r.tensors.iter().cloned())
            .collect()
    }

    /// An engine over the model.
    pub fn engine(&self, options: EngineOptions) -> Result<Engine, OpenError> {
        let params = self
            .manifest
            .inference
            .as_ref()
            .map_err(|e| BuildError::Architecture(e.clone()))?;
        Ok(Engine::new(
            params,
            &self.tensors(),
            self.files.clone(),
            options,
            None,
        )?)
    }
}

/// Maps and parses `path`.
pub fn open_model(path: &Path) -> Result<OpenModel, OpenError> {
    let shown = path.display().to_string();
    let io = |source| OpenError::Io {
        path: shown.clone(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    // SAFETY: a read-only private view of a file this process only reads; a file truncated
    // under a benchmark can kill it, which is acceptable for a tool (the serving path checks
    // sizes and populates pages before it reads them).
    let map = unsafe { Mmap::map(&file) }.map_err(io)?;
    modelhost_node::pages::prefer_huge_pages(&map);
    let invalid = |message: String| OpenError::Invalid {
        path: shown.clone(),
        message,
    };
    let manifest = {
        let parsed = GgufFile::parse(&map).map_err(|e| invalid(e.to_string()))?;
        let model = GgufModel::single(shown.clone(), parsed).map_err(|e| invalid(e.to_string()))?;
        let page =
            PageSize::new(modelhost_node::pages::page_size() as u64).unwrap_or(PageSize::FOUR_KIB);
        ModelManifest::from_model(&model, page).map_err(|e| invalid(e.to_string()))?
    };
    Ok(OpenModel {
        manifest,
        files: vec![Arc::new(map)],
    })
}
