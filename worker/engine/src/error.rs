//! What can go wrong: at construction (a model the engine cannot run) and per step (a request
//! that does not fit). Step errors concern one sequence; the engine and its other sequences go
//! on.

/// Why the engine cannot run a model. The worker still attaches and shares its pages.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Architecture(String),
    #[error("unsupported tensor type {ty} in {tensor}")]
    UnsupportedType { ty: String, tensor: String },
    #[error("missing tensor {0}")]
    MissingTensor(String),
    #[error("tensor {tensor} has shape {found:?}, but the hyper-parameters need {expected:?}")]
    Shape {
        tensor: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    #[error("tensor {tensor} lies outside its file ({offset} + {size} > {file_len})")]
    OutOfFile {
        tensor: String,
        offset: u64,
        size: u64,
        file_len: u64,
    },
    #[error("KV cache type {0} is not supported by the CPU engine (use f16 or f32)")]
    KvType(String),
    #[error("the KV cache needs {needed} bytes but {given} were allocated")]
    KvTooSmall { needed: u64, given: u64 },
    #[error("{0}")]
    Config(String),
    #[error("starting compute threads: {0}")]
    Threads(String),
}

/// Why one sequence's part of a step was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    #[error("token id {token} is outside the vocabulary of {vocab}")]
    TokenOutOfRange { token: u32, vocab: u32 },
    #[error("sequence slot {slot} does not exist (this engine has {slots})")]
    NoSuchSlot { slot: u32, slots: u32 },
    #[error(
        "sequence slot {slot} holds {len} tokens; {adding} more exceed its context of {context}"
    )]
    ContextFull {
        slot: u32,
        len: u32,
        adding: u32,
        context: u32,
    },
    #[error("{tokens} tokens for slot {slot} in one step exceed its limit of {limit} (split the prompt into chunks)")]
    ChunkTooLarge { slot: u32, tokens: u32, limit: u32 },
    #[error("{tokens} tokens in one step exceed the batch of {batch}")]
    BatchTooLarge { tokens: u32, batch: u32 },
    #[error("slot {slot} appears twice in one step")]
    DuplicateSlot { slot: u32 },
    #[error("{outputs} outputs in one step exceed the {limit} the engine was built for")]
    TooManyOutputs { outputs: u32, limit: u32 },
}
