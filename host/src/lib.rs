//! The modelhost host: the only process that opens model files. Today it holds the model-file
//! opener, the synthetic model writer and the `modelhost` CLI; the daemon, registry, planner and
//! supervisor follow (see ARCHITECTURE.md).

pub mod cli;
pub mod model_file;
pub mod synth;
pub mod units;
