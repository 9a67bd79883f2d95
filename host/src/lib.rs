//! The modelhost host: the only process that opens model files. It holds the daemon (registry,
//! control server, signals, notify), the model-file opener, the synthetic model writer and the
//! `modelhost` CLI. See ARCHITECTURE.md for the map.

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod control;
pub mod daemon;
pub mod events;
pub mod gateway;
pub mod model_file;
pub mod notify;
pub mod pages;
pub mod placement;
pub mod registry;
pub mod supervisor;
pub mod synth;
pub mod units;
