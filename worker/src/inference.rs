//! The inference engine of a CPU worker, built after the attach from the shared mapping and the
//! KV cache the backend allocated. A worker whose model the engine cannot run (an architecture
//! or tensor type it does not know) still attaches and shares, and says why in its Ready.

use std::sync::Arc;

use memmap2::Mmap;
use modelhost_engine::weights::ModelFile;
use modelhost_engine::{Engine, EngineOptions, KvType};
use modelhost_protocol::layers::RegionTensor;
use modelhost_protocol::placement::DeviceKind;
use modelhost_protocol::wire::{Attach, Inference};

/// Builds the engine for an attach, or says why there is none.
pub fn build(attach: &Attach, maps: &[Arc<Mmap>], kv: Vec<u64>) -> Result<Engine, String> {
    let a = &attach.assignment;
    if a.device.kind != DeviceKind::Cpu {
        return Err(format!(
            "inference on {} is not built yet; its layers are uploaded and it reports progress, \
             but only CPU workers compute",
            a.device
        ));
    }
    let params = attach.manifest.inference.as_ref().map_err(Clone::clone)?;
    let blocks = params.block_count;
    if a.layers.len() != blocks as usize || !a.output {
        return Err(format!(
            "the engine runs a whole model; this worker holds {} of {blocks} blocks{}",
            a.layers.len(),
            if a.output {
                ""
            } else {
                " and not the output stage"
            }
        ));
    }
    let spec = &attach.engine;
    let kv_type = KvType::from_name(spec.kv_type.name()).map_err(|e| e.to_string())?;
    let tensors: Vec<RegionTensor> = attach
        .manifest
        .regions
        .iter()
        .flat_map(|r| r.tensors.iter().cloned())
        .collect();
    let files: Vec<ModelFile> = maps.iter().map(|m| Arc::clone(m) as ModelFile).collect();
    let threads = if spec.threads == 0 {
        modelhost_node::cpu::usable_cpus()
    } else {
        spec.threads as usize
    };
    Engine::new(
        params,
        &tensors,
        files,
        EngineOptions {
            context: spec.context,
            slots: spec.slots,
            batch: spec.batch,
            outputs: spec.slots,
            threads,
            kv_type,
            swa_full: spec.swa_full,
        },
        Some(kv),
    )
    .map_err(|e| e.to_string())
}

/// What Ready says of an engine (or its absence).
pub fn status(engine: &Result<Engine, String>) -> Inference {
    match engine {
        Ok(e) => Inference::Ready {
            kernels: modelhost_engine::simd::kernels().to_owned(),
            threads: e.options().threads as u32,
            slots: e.options().slots,
        },
        Err(reason) => Inference::Unavailable {
            reason: reason.clone(),
        },
    }
}
