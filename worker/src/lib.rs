//! The modelhost worker: attaches to the pages the host mapped, through the file descriptor it is
//! passed, and uploads its assigned layers to its device.
//!
//! Not built yet: the attach path, the device backends and the `modelhost-worker` binary are the
//! subject of the workers issue. This crate exists so the workspace has its final shape and the
//! invariant "the worker never parses GGUF" has a home: it depends on `modelhost-protocol` only
//! for the manifest and wire types.
