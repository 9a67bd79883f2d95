//! The modelhost worker library: attaches to the pages the host mapped, through the file
//! descriptor it is passed, and uploads its assigned layers to its device.
//!
//! Built so far: [`devices`], the device inventory (CUDA through cudarc with dynamic loading, CPU
//! and NUMA nodes), which the host's planner uses and which a worker will report in its Hello.
//! The attach path, the device backends and the `modelhost-worker` binary are the subject of the
//! workers issue. The worker never parses GGUF: it depends on `modelhost-protocol` only for the
//! manifest and wire types.

pub mod attach;
pub mod backend;
pub mod channel;
pub mod devices;
