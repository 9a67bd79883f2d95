//! The host↔worker wire protocol: a handshake preamble, length-prefixed postcard frames, and the
//! messages. Pure data: the sockets and the descriptor passing live in the host and the worker.

mod frame;
mod messages;

pub use frame::{
    check_preamble, decode_payload, encode, preamble, FrameDecoder, WireError, MAGIC,
    MAX_FRAME_LEN, PREAMBLE_LEN, PROTOCOL_VERSION,
};
pub use messages::{
    checksum64, Assignment, Attach, EngineSpec, FileCheck, FinishReason, Finished, GeneratedToken,
    Hello, Inference, Message, Progress, ReadyStats, Sampling, Submit, TokenLogprob, WorkerOptions,
    WorkerPhase, MAX_BIAS_ENTRIES, MAX_PROMPT_TOKENS, MAX_TOP_LOGPROBS,
};
