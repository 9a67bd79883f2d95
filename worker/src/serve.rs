//! The serving loop of a worker that computes: Submit and Cancel in, Token and Finished out,
//! with continuous batching over the engine's sequence slots.
//!
//! Each step carries one token for every sequence that is decoding and, in what is left of the
//! batch, a chunk of a prompt still being read. New requests join between steps and finished
//! ones leave; no sequence waits for another to end. While others decode, a prompt goes in
//! chunks of at most [`PREFILL_BESIDE_DECODING`] tokens, so that a long prompt slows the streams
//! already running but never stops them for seconds.
//!
//! A slot keeps its KV after its request ends. A new request takes the free slot that already
//! holds the longest prefix of its prompt and computes only the rest (`cached_tokens`).

use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::Duration;

use modelhost_engine::sample::Sampler;
use modelhost_engine::{Chunk, Engine, Logits};
use modelhost_protocol::wire::{FinishReason, Finished, GeneratedToken, Message, Submit};

/// The most prompt tokens in a step that also decodes other sequences. At about 250 prompt
/// tokens/s on two cores (gemma-3-270m), 64 tokens keep such a step near a quarter second.
pub const PREFILL_BESIDE_DECODING: u32 = 64;

/// What one slot is doing.
struct Sequence {
    request: u64,
    submit: Submit,
    sampler: Sampler,
    /// Prompt tokens not yet in the KV cache.
    unread: usize,
    /// The last sampled token, to feed in the next step (None while reading the prompt).
    next: Option<u32>,
    generated: u32,
    cached: u32,
}

struct Slot {
    /// The tokens whose keys and values the slot holds, in order.
    held: Vec<u32>,
    busy: Option<Sequence>,
}

/// The engine and its slots.
pub struct Server {
    engine: Engine,
    slots: Vec<Slot>,
}

impl Server {
    pub fn new(engine: Engine) -> Server {
        let slots = (0..engine.options().slots)
            .map(|_| Slot {
                held: Vec::new(),
                busy: None,
            })
            .collect();
        Server { engine, slots }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Whether any sequence is running.
    pub fn busy(&self) -> bool {
        self.slots.iter().any(|s| s.busy.is_some())
    }

    /// Takes a message from the host; returns what to send back.
    pub fn handle(&mut self, message: Message, out: &mut Vec<Message>) {
        match message {
            Message::Submit(submit) => self.submit(*submit, out),
            Message::Cancel { request } => {
                if let Some(i) = self.slot_of(request) {
                    self.finish(i, FinishReason::Cancelled, out);
                }
                // A request that already finished: its Finished is on its way.
            }
            _ => {}
        }
    }

    fn slot_of(&self, request: u64) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.busy.as_ref().is_some_and(|q| q.request == request))
    }

    fn submit(&mut self, submit: Submit, out: &mut Vec<Message>) {
        let request = submit.request;
        let refuse = |reason: String, out: &mut Vec<Message>| {
            out.push(Message::Finished(Finished {
                request,
                reason: FinishReason::Error(reason),
                prompt_tokens: submit.prompt.len() as u32,
                cached_tokens: 0,
                completion_tokens: 0,
            }));
        };
        let context = self.engine.options().context;
        if let Err(reason) = submit.check(self.engine.vocab_size() as u32, context) {
            return refuse(reason, out);
        }
        if self.slot_of(request).is_some() {
            return refuse(format!("request {request} is already running"), out);
        }
        // The free slot holding the longest prefix of the prompt. At least the prompt's last
        // token is computed again: its logits are what the first token is drawn from.
        let usable = submit.prompt.len() - 1;
        let best = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.busy.is_none())
            .map(|(i, s)| (i, common_prefix(&s.held, &submit.prompt[..usable])))
            .max_by_key(|&(i, common)| (common, std::cmp::Reverse(i)));
        let Some((slot, common)) = best else {
            return refuse(
                format!(
                    "all {} sequence slots are busy (the host sends no more than that)",
                    self.slots.len()
                ),
                out,
            );
        };
        let kept = match self.engine.keep_prefix(slot as u32, common as u32) {
            Ok(kept) => kept as usize,
            Err(e) => return refuse(e.to_string(), out),
        };
        let s = &mut self.slots[slot];
        s.held.truncate(kept);
        s.busy = Some(Sequence {
            request,
            sampler: Sampler::new(submit.sampling.clone(), &submit.prompt),
            unread: submit.prompt.len() - kept,
            next: None,
            generated: 0,
            cached: kept as u32,
            submit,
        });
    }

    fn finish(&mut self, slot: usize, reason: FinishReason, out: &mut Vec<Message>) {
        let Some(q) = self.slots[slot].busy.take() else {
            return;
        };
        if matches!(reason, FinishReason::Error(_)) {
            // What the failed step left in the cache is not known to be whole.
            let _ = self.engine.clear(slot as u32);
            self.slots[slot].held.clear();
        }
        out.push(Message::Finished(Finished {
            request: q.request,
            reason,
            prompt_tokens: q.submit.prompt.len() as u32,
            cached_tokens: q.cached,
            completion_tokens: q.generated,
        }));
    }

    /// One engine step over every running sequence; returns whether there was work.
    pub fn step(&mut self, out: &mut Vec<Message>) -> bool {
        let options = self.engine.options();
        let (batch, chunk_limit) = (options.batch, self.engine.chunk_limit());
        let decoding = self
            .slots
            .iter()
            .filter(|s| s.busy.as_ref().is_some_and(|q| q.next.is_some()))
            .count() as u32;
        let mut prefill_budget = batch.saturating_sub(decoding);
        if decoding > 0 {
            prefill_budget = prefill_budget.min(PREFILL_BESIDE_DECODING);
        }
        // (slot, tokens, whether the chunk ends in a token to sample after)
        let mut plan: Vec<(usize, Vec<u32>, bool)> = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            let Some(q) = &s.busy else { continue };
            if let Some(t) = q.next {
                plan.push((i, vec![t], true));
            } else if q.unread > 0 && prefill_budget > 0 {
                let start = q.submit.prompt.len() - q.unread;
                let n = q.unread.min(prefill_budget.min(chunk_limit) as usize);
                prefill_budget -= n as u32;
                plan.push((i, q.submit.prompt[start..start + n].to_vec(), n == q.unread));
            }
        }
        if plan.is_empty() {
            return false;
        }
        let chunks: Vec<Chunk<'_>> = plan
            .iter()
            .map(|(slot, tokens, last)| Chunk {
                slot: *slot as u32,
                tokens,
                logits: if *last { Logits::Last } else { Logits::None },
            })
            .collect();
        let results = self.engine.step(&chunks);
        let vocab = self.engine.vocab_size();
        let context = self.engine.options().context as usize;
        for ((slot, tokens, wants), result) in plan.into_iter().zip(results) {
            let rows = match result {
                Ok(rows) => rows,
                Err(e) => {
                    self.finish(slot, FinishReason::Error(e.to_string()), out);
                    continue;
                }
            };
            let s = &mut self.slots[slot];
            s.held.extend_from_slice(&tokens);
            let Some(q) = s.busy.as_mut() else { continue };
            if q.next.take().is_none() {
                q.unread -= tokens.len();
            }
            if !wants {
                continue;
            }
            let logits = &self.engine.logits()[rows.start * vocab..rows.start * vocab + vocab];
            let before_min = q.generated < q.submit.min_tokens;
            let mut banned = q.submit.banned_tokens.clone();
            if before_min {
                banned.extend_from_slice(&q.submit.stop_tokens);
            }
            let choice = q.sampler.sample(logits, &banned, q.submit.logprobs);
            let reason = if q.submit.stop_tokens.contains(&choice.token) {
                Some(FinishReason::Stop)
            } else {
                q.generated += 1;
                q.sampler.accept(choice.token);
                out.push(Message::Token(GeneratedToken {
                    request: q.request,
                    token: choice.token,
                    logprob: choice.logprob,
                    top: choice.top,
                }));
                // The token goes into the cache in the next step; a full slot cannot take it.
                if q.generated >= q.submit.max_tokens || s.held.len() + 1 >= context {
                    Some(FinishReason::Length)
                } else {
                    q.next = Some(choice.token);
                    None
                }
            };
            if let Some(reason) = reason {
                self.finish(slot, reason, out);
            }
        }
        true
    }

    /// Serves until the inbox closes: messages are handled between steps, and the loop sleeps
    /// on the inbox only while no sequence runs and no idle work is left. `idle` is work that
    /// waits for the worker to have nothing to do: it does one short step and returns whether
    /// more is left. It runs only while no sequence is busy and no message waits, and the inbox
    /// is looked at between its steps.
    pub fn run(
        &mut self,
        inbox: &Receiver<Message>,
        send: &mut dyn FnMut(&Message),
        idle: &mut dyn FnMut() -> bool,
    ) {
        let mut out = Vec::new();
        let mut idle_left = true;
        loop {
            if !self.busy() {
                let next = if idle_left {
                    match inbox.try_recv() {
                        Ok(m) => Ok(m),
                        Err(TryRecvError::Empty) => {
                            idle_left = idle();
                            continue;
                        }
                        Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
                    }
                } else {
                    inbox.recv_timeout(Duration::from_secs(1))
                };
                match next {
                    Ok(m) => self.handle(m, &mut out),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            loop {
                match inbox.try_recv() {
                    Ok(m) => self.handle(m, &mut out),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            self.step(&mut out);
            for m in out.drain(..) {
                send(&m);
            }
        }
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
