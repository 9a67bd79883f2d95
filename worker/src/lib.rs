//! The modelhost worker library: attaches to the pages the host mapped, through the file
//! descriptor it is passed, and places its assigned layers on its device.
//!
//! - [`attach`]: check the passed descriptors, map them, place the assigned regions, allocate the
//!   KV cache, reporting progress as it goes.
//! - [`backend`]: the device backends behind one trait (the CPU uses the pages in place; CUDA
//!   uploads them through cudarc).
//! - [`serve`]: the serving loop: requests in, tokens out, with continuous batching over the
//!   engine's sequence slots.
//! - [`devices`]: the device inventory a worker reports in its Hello (CUDA here, the CPU from
//!   `modelhost_node`).
//!
//! The worker never parses GGUF: it depends on `modelhost-protocol` for the manifest and wire
//! types, and on `modelhost-node` for the link to the host.

pub mod attach;
pub mod backend;
pub mod bench;
pub mod devices;
pub mod inference;
pub mod serve;
pub mod standalone;
