//! The host↔worker messages. A worker says Hello; the host answers Attach (with the model's file
//! descriptors alongside); the worker reports Progress, LayerReady in layer order, then Ready or
//! Failed, and Heartbeats until it is told to Shutdown or Detach.
//!
//! A ready worker that computes serves generation: the host Submits a request (prompt ids and
//! how to sample), the worker answers with a Token per generated token and one Finished, and
//! the host may Cancel a request at any time. Text never crosses the wire, nor do logits.

use serde::{Deserialize, Serialize};

use crate::manifest::ModelManifest;
pub use crate::placement::Assignment;
use crate::placement::{DeviceId, DeviceSpec};

/// Every message, in both directions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Worker → host, first: who the worker is and what its device has.
    Hello(Hello),
    /// Host → worker: what to attach and what to do with it. One descriptor per model file
    /// travels with this message (SCM_RIGHTS).
    Attach(Box<Attach>),
    /// Worker → host: at least every 100 ms during long work.
    Progress(Progress),
    /// Worker → host: this block is on the device (or resident, for the CPU), in layer order.
    LayerReady { layer: u32 },
    /// Worker → host: every assigned layer and the KV cache are in place.
    Ready(ReadyStats),
    /// Worker → host: the attach failed; the worker exits after sending this.
    Failed { error: String },
    /// Either way: I am alive.
    Heartbeat { seq: u64 },
    /// Host → worker: release everything and exit.
    Shutdown,
    /// Host → worker: the model is being unloaded; release it and exit.
    Detach,
    /// Host → worker: generate for this request.
    Submit(Box<Submit>),
    /// Worker → host: the next token of a request.
    Token(GeneratedToken),
    /// Worker → host: a request is over, whether it ended or was refused; no Token follows.
    Finished(Finished),
    /// Host → worker: stop generating for this request (its client has gone). The worker
    /// answers with Finished (`Cancelled`), unless the request had already finished.
    Cancel { request: u64 },
}

/// The most prompt ids a Submit may carry: a frame of 16 MiB holds four million ids, and no
/// slot's context comes near; the host refuses a longer prompt before it sends.
pub const MAX_PROMPT_TOKENS: usize = 1 << 21;
/// The most alternatives a token's logprobs may list (OpenAI's `top_logprobs` cap).
pub const MAX_TOP_LOGPROBS: u8 = 20;
/// The most `logit_bias` entries and stop ids a request may carry (OpenAI caps logit_bias at
/// 300 entries); the same cap holds for stop and banned ids.
pub const MAX_BIAS_ENTRIES: usize = 1024;

/// How to choose each token. The defaults are greedy decoding with no penalty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// 0 is greedy (the most likely token, ties to the lowest id).
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 keeps all.
    pub top_k: u32,
    /// Keep the most likely tokens whose probabilities add up to p; 1 keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than min_p times the most likely one; 0 keeps all.
    pub min_p: f32,
    /// llama.cpp's and vLLM's repetition penalty over the prompt and the output: a seen
    /// token's positive logit is divided by it, a negative one multiplied. 1 is none.
    pub repetition_penalty: f32,
    /// OpenAI's: subtracted once from the logit of every token the output holds.
    pub presence_penalty: f32,
    /// OpenAI's: subtracted from a token's logit once per time the output holds it.
    pub frequency_penalty: f32,
    /// Added to these tokens' logits (-100 bans, +100 forces, as OpenAI's).
    pub logit_bias: Vec<(u32, f32)>,
    /// The random stream. The host always sets one, so a request samples the same tokens on
    /// any worker.
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: 0,
        }
    }
}

/// A generation request, as the host tokenized it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submit {
    /// Unique among the requests the host has in flight on this worker.
    pub request: u64,
    pub prompt: Vec<u32>,
    pub sampling: Sampling,
    /// The most tokens to generate; the worker also stops where the slot's context is full.
    pub max_tokens: u32,
    /// Ids that end the generation: the model's end-of-generation ids (unless the client asked
    /// to ignore them) and the client's stop ids. The stop id is not part of the output. The
    /// worker knows no vocabulary; the host decides.
    pub stop_tokens: Vec<u32>,
    /// Ids never sampled (end-of-generation ids when the client ignores them).
    pub banned_tokens: Vec<u32>,
    /// Generate at least this many tokens: until then the stop ids are not sampled.
    pub min_tokens: u32,
    /// Return each token's logprob and this many alternatives (0 to 20); None returns none.
    pub logprobs: Option<u8>,
}

impl Submit {
    /// Checks what crossed the socket against the worker's vocabulary and slot context: a
    /// request the worker cannot run is refused by name (as Finished with an error), never a
    /// panic or a silent clamp.
    pub fn check(&self, vocab: u32, context: u32) -> Result<(), String> {
        let s = &self.sampling;
        if self.prompt.is_empty() {
            return Err("the prompt is empty".into());
        }
        if self.prompt.len() > MAX_PROMPT_TOKENS || self.prompt.len() >= context as usize {
            return Err(format!(
                "a prompt of {} tokens does not fit a context of {context} (it must leave room \
                 for one generated token)",
                self.prompt.len()
            ));
        }
        let ids = self
            .prompt
            .iter()
            .chain(&self.stop_tokens)
            .chain(&self.banned_tokens)
            .chain(s.logit_bias.iter().map(|(t, _)| t));
        if let Some(&bad) = ids.into_iter().find(|&&t| t >= vocab) {
            return Err(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            ));
        }
        for (name, len) in [
            ("logit_bias", s.logit_bias.len()),
            ("stop ids", self.stop_tokens.len()),
            ("banned ids", self.banned_tokens.len()),
        ] {
            if len > MAX_BIAS_ENTRIES {
                return Err(format!(
                    "{len} {name} exceed the limit of {MAX_BIAS_ENTRIES}"
                ));
            }
        }
        let finite = |name: &str, v: f32, lo: f32, hi: f32| {
            if v.is_finite() && (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} {v} is outside [{lo}, {hi}]"))
            }
        };
        finite("temperature", s.temperature, 0.0, 100.0)?;
        finite("top_p", s.top_p, f32::MIN_POSITIVE, 1.0)?;
        finite("min_p", s.min_p, 0.0, 1.0)?;
        finite("repetition_penalty", s.repetition_penalty, 0.01, 100.0)?;
        finite("presence_penalty", s.presence_penalty, -2.0, 2.0)?;
        finite("frequency_penalty", s.frequency_penalty, -2.0, 2.0)?;
        for &(_, bias) in &s.logit_bias {
            finite("a logit_bias value", bias, -100.0, 100.0)?;
        }
        if self.logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
            return Err(format!("more than {MAX_TOP_LOGPROBS} top logprobs"));
        }
        Ok(())
    }
}

/// One token's log-probability, under the model's distribution before any sampling setting.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
}

/// A generated token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratedToken {
    pub request: u64,
    pub token: u32,
    /// With `logprobs`: the chosen token's, then the most likely alternatives, best first.
    pub logprob: Option<f32>,
    pub top: Vec<TokenLogprob>,
}

/// Why a request ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    /// An end-of-generation or stop id (not sent as a Token).
    Stop,
    /// `max_tokens` generated, or the slot's context full.
    Length,
    /// The host cancelled it.
    Cancelled,
    /// The worker could not run it (a prompt longer than its context, an engine error).
    Error(String),
}

/// The end of a request, with what it used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    pub request: u64,
    pub reason: FinishReason,
    pub prompt_tokens: u32,
    /// Prompt tokens whose KV the slot already held from an earlier request (not computed).
    pub cached_tokens: u32,
    pub completion_tokens: u32,
}

/// What a worker reports about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// A name for logs: the worker's slot in the host, or what a process manager called it.
    pub worker_id: String,
    pub pid: u32,
    /// The device this worker drives.
    pub device: DeviceId,
    /// Its inventory of that device.
    pub inventory: Vec<DeviceSpec>,
    /// For a worker started by a process manager: the model it wants to serve.
    pub model: Option<String>,
}

/// One model file as the host validated it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCheck {
    /// The file's size; the worker's mapping must have exactly this many bytes.
    pub len: u64,
    /// How many leading bytes (header, metadata, descriptors) `header_hash` covers.
    pub header_len: u64,
    /// `checksum64` of those bytes.
    pub header_hash: u64,
}

/// Options for how a worker attaches.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerOptions {
    /// Lock the assigned pages in RAM (CPU).
    pub mlock: bool,
    /// Read every assigned byte and checksum it, rather than only faulting pages in.
    pub verify: bool,
    /// CUDA: register the shared mapping with the driver and copy from it without staging.
    pub registered_upload: bool,
    /// Compute threads of a CPU worker's engine; by default the cores of its NUMA node (or of
    /// the machine) shared out among the CPU workers placed there, at least 1.
    pub threads: Option<u32>,
    /// Do not fault the assigned pages in before Ready. The host sets it for workers it starts
    /// while it is itself still reading the model's pages (a load in progress): the worker is
    /// ready at once, and a request's own page faults read what it needs first.
    pub lazy_pages: bool,
}

/// How a worker sizes its inference engine: what the plan sized its KV cache and scratch for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineSpec {
    /// Tokens each sequence slot holds.
    pub context: u32,
    /// Sequence slots (the plan's `parallel`).
    pub slots: u32,
    /// The most tokens one step carries.
    pub batch: u32,
    /// The KV cache's type.
    pub kv_type: crate::GgmlType,
    /// Sliding-window layers sized for the whole context.
    pub swa_full: bool,
    /// Compute threads.
    pub threads: u32,
}

/// The attach instructions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attach {
    pub model: String,
    pub manifest: ModelManifest,
    /// One per descriptor sent, in shard order.
    pub files: Vec<FileCheck>,
    pub assignment: Assignment,
    pub options: WorkerOptions,
    /// How often the worker must send a Heartbeat.
    pub heartbeat_ms: u32,
    /// How to size the inference engine.
    pub engine: EngineSpec,
}

/// What a worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerPhase {
    /// Mapping and checking the files.
    Attach,
    /// Placing the assigned layers on the device.
    Upload,
    /// Allocating the KV cache and scratch.
    Kv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub phase: WorkerPhase,
    pub done_bytes: u64,
    pub total_bytes: u64,
    pub layers_done: u32,
    pub layers_total: u32,
}

/// What a ready worker holds.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ReadyStats {
    /// Weight bytes on the device (for the CPU: used in place from the shared pages).
    pub weights_bytes: u64,
    pub kv_bytes: u64,
    /// Scratch the worker holds: for a CPU worker, what its engine allocated.
    pub scratch_bytes: u64,
    /// From receiving Attach to Ready.
    pub elapsed_ms: u64,
    /// Whether the worker can compute, and with what.
    pub inference: Inference,
}

/// A worker's inference engine, as its Ready reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Inference {
    /// It computes: with these kernels (`avx2`, `scalar`) and threads, in these many slots.
    Ready {
        kernels: String,
        threads: u32,
        slots: u32,
    },
    /// It attaches and shares but cannot compute, for this reason (an architecture or tensor
    /// type the engine does not run, a device without an engine yet).
    Unavailable { reason: String },
}

impl Default for Inference {
    fn default() -> Self {
        Inference::Unavailable {
            reason: "no engine".into(),
        }
    }
}

/// A stable 64-bit checksum both sides compute the same way across builds: FNV-1a over
/// little-endian 8-byte words, then the tail bytes. Word-wise it runs several times faster than
/// byte-wise FNV (gemma's 6.5 MB header in under a millisecond); it detects a different or
/// damaged file, and is not meant to resist a forger.
pub fn checksum64(bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        hash = (hash ^ u64::from_le_bytes(w)).wrapping_mul(PRIME);
    }
    for &b in words.remainder() {
        hash = (hash ^ u64::from(b)).wrapping_mul(PRIME);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::checksum64;

    #[test]
    fn the_checksum_sees_every_byte_and_is_stable() {
        let bytes: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let base = checksum64(&bytes);
        for i in [0, 7, 8, 500, 999] {
            let mut changed = bytes.clone();
            changed[i] ^= 1;
            assert_ne!(checksum64(&changed), base, "byte {i}");
        }
        assert_ne!(checksum64(&bytes[..999]), base);
        // Pinned values: host and worker builds must agree across versions, so a change to the
        // algorithm (word order, tail handling, constants) fails here. The empty input is
        // FNV-1a's offset basis; a tail-only input is byte-wise FNV-1a ("a" is its published
        // test vector).
        assert_eq!(checksum64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(checksum64(b"a"), 0xaf63_dc4c_8601_ec8c);
        // One 8-byte word then one tail byte, computed by hand from the definition above.
        assert_eq!(checksum64(b"modelhost"), 0x716f_d03a_0275_c4c4);
    }
}
