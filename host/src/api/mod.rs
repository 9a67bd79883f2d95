//! The host's vocabulary: every type that crosses the control API, as JSON, between the daemon
//! and its clients (the CLI, scripts, orchestrators). The daemon's modules and the CLI all speak
//! it; it depends on none of them, which is what keeps the host's module graph free of cycles.
//!
//! "If a type is serializable, then it is part of some IPC boundary": the types here are the
//! control API's; those the workers receive live in `modelhost_protocol::wire`.

mod events;
mod models;
mod workers;

pub use events::{Envelope, Event, Phase};
pub use models::{
    DetokenizeRequest, ErrorBody, ErrorDetail, LayerSummary, ListedModel, LoadRequest, MlockMode,
    ModelInfo, ModelList, ModelState, PlacementOptionError, PlacementRequest, Residency,
    ScaleReport, ScaleRequest, Status, TokenizeRequest,
};
pub use workers::{WorkerInfo, WorkerState};
