//! What the modelhost host and its workers both do on this node, and nothing device-specific:
//! the host↔worker link ([`channel`]), faulting shared pages in ([`pages`]), reading memory
//! figures ([`memory`]) and the CPU and NUMA inventory ([`cpu`]).
//!
//! The host links this crate and not `modelhost-worker`, so the worker's device backends (cudarc)
//! and its inference engine never compile into the daemon, the CLI or the fuzz targets.

pub mod channel;
pub mod cpu;
pub mod memory;
pub mod pages;
