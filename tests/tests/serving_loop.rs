//! A worker's serving loop on the real model, in process: continuous batching must not change
//! what a request generates, kept prefixes must be reused, and every way a request ends (stop,
//! length, cancel, refusal) must be reported once.

use std::collections::BTreeMap;

use modelhost_engine::{EngineOptions, KvType};
use modelhost_protocol::wire::{FinishReason, Finished, Message, Sampling, Submit};
use modelhost_tests::gemma_model;
use modelhost_worker::serve::Server;
use modelhost_worker::standalone::open_model;

fn server(slots: u32, context: u32) -> Server {
    let model = open_model(&gemma_model()).unwrap();
    let engine = model
        .engine(EngineOptions {
            context,
            slots,
            batch: 128,
            outputs: slots,
            threads: 2,
            kv_type: KvType::F16,
            swa_full: false,
        })
        .unwrap();
    Server::new(engine)
}

/// gemma's ids for "<bos>The capital of France is" and a few other prompts (from the
/// tokenizer fixture's vocabulary; any valid ids would do).
fn prompt(n: u32) -> Vec<u32> {
    let mut p = vec![2, 818, 5279, 529, 7001, 563];
    p.extend((0..n).map(|i| 1000 + i * 37));
    p
}

fn submit(request: u64, prompt: Vec<u32>, max_tokens: u32, sampling: Sampling) -> Message {
    Message::Submit(Box::new(Submit {
        request,
        prompt,
        sampling,
        max_tokens,
        stop_tokens: vec![1, 106],
        banned_tokens: vec![],
        min_tokens: 0,
        logprobs: None,
    }))
}

fn sampled(seed: u64) -> Sampling {
    Sampling {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        seed,
        ..Sampling::default()
    }
}

#[derive(Default, Debug)]
struct Outcome {
    tokens: BTreeMap<u64, Vec<u32>>,
    finished: BTreeMap<u64, Finished>,
}

/// Feeds `arrivals` (step number, message) in and steps until nothing runs.
fn drive(server: &mut Server, mut arrivals: Vec<(usize, Message)>) -> Outcome {
    let mut outcome = Outcome::default();
    let mut out = Vec::new();
    arrivals.reverse();
    for step in 0.. {
        while arrivals.last().is_some_and(|(at, _)| *at <= step) {
            let (_, m) = arrivals.pop().unwrap();
            server.handle(m, &mut out);
        }
        let worked = server.step(&mut out);
        for m in out.drain(..) {
            match m {
                Message::Token(t) => outcome.tokens.entry(t.request).or_default().push(t.token),
                Message::Finished(f) => {
                    assert!(
                        outcome.finished.insert(f.request, f.clone()).is_none(),
                        "two Finished for {}",
                        f.request
                    );
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        if !worked && arrivals.is_empty() {
            break;
        }
    }
    outcome
}

#[test]
fn batching_does_not_change_what_a_request_generates() {
    let mut alone = server(4, 512);
    let greedy = drive(
        &mut alone,
        vec![(0, submit(1, prompt(0), 12, Sampling::default()))],
    );
    let mut alone = server(4, 512);
    let drawn = drive(&mut alone, vec![(0, submit(2, prompt(3), 12, sampled(99)))]);

    // The same two requests beside two others, arriving while others run and with prompts
    // being read in chunks beside decoding sequences.
    let mut shared = server(4, 512);
    let together = drive(
        &mut shared,
        vec![
            (0, submit(10, prompt(90), 20, sampled(5))),
            (0, submit(1, prompt(0), 12, Sampling::default())),
            (3, submit(11, prompt(200), 8, Sampling::default())),
            (5, submit(2, prompt(3), 12, sampled(99))),
        ],
    );
    assert_eq!(together.tokens[&1], greedy.tokens[&1]);
    assert_eq!(together.tokens[&2], drawn.tokens[&2]);
    assert_eq!(together.finished.len(), 4);
    for f in together.finished.values() {
        assert!(
            matches!(f.reason, FinishReason::Length | FinishReason::Stop),
            "{f:?}"
        );
        assert_eq!(
            f.completion_tokens as usize,
            together.tokens.get(&f.request).map_or(0, Vec::len)
        );
    }
    // Another seed draws something else.
    let mut other = server(1, 512);
    let reseeded = drive(
        &mut other,
        vec![(0, submit(2, prompt(3), 12, sampled(100)))],
    );
    assert_ne!(reseeded.tokens[&2], drawn.tokens[&2]);
}

#[test]
fn a_kept_prefix_is_reused_and_gives_the_same_tokens() {
    let mut s = server(2, 512);
    let long = prompt(100);
    let first = drive(
        &mut s,
        vec![(0, submit(1, long.clone(), 4, Sampling::default()))],
    );
    assert_eq!(first.finished[&1].cached_tokens, 0);
    // The same prompt again: all but its last token come from the slot.
    let again = drive(
        &mut s,
        vec![(0, submit(2, long.clone(), 4, Sampling::default()))],
    );
    assert_eq!(again.finished[&2].cached_tokens as usize, long.len() - 1);
    assert_eq!(again.tokens[&2], first.tokens[&1]);
    // A longer prompt that starts with it reuses the prompt's part.
    let mut longer = long.clone();
    longer.extend([5000, 5001, 5002]);
    let extended = drive(
        &mut s,
        vec![(0, submit(3, longer.clone(), 4, Sampling::default()))],
    );
    assert_eq!(extended.finished[&3].cached_tokens as usize, long.len());
    let mut fresh = server(1, 512);
    let cold = drive(
        &mut fresh,
        vec![(0, submit(3, longer, 4, Sampling::default()))],
    );
    assert_eq!(extended.tokens[&3], cold.tokens[&3]);
}

#[test]
fn cancel_stop_length_and_refusals_each_end_a_request_once() {
    let mut s = server(2, 64);
    let outcome = drive(
        &mut s,
        vec![
            (0, submit(1, prompt(0), 1000, Sampling::default())),
            (3, Message::Cancel { request: 1 }),
            // Cancelling what is not running does nothing.
            (4, Message::Cancel { request: 77 }),
        ],
    );
    assert_eq!(outcome.finished[&1].reason, FinishReason::Cancelled);
    assert!(outcome.tokens[&1].len() <= 4, "{:?}", outcome.tokens[&1]);
    assert_eq!(outcome.finished.len(), 1);

    // The slot's context (64) ends a long generation: prompt + output fill it.
    let outcome = drive(&mut s, vec![(0, submit(2, prompt(0), 1000, sampled(1)))]);
    let f = &outcome.finished[&2];
    if f.reason == FinishReason::Length {
        assert_eq!(f.prompt_tokens + f.completion_tokens, 64);
    } else {
        assert_eq!(f.reason, FinishReason::Stop);
    }

    // A stop id that the model is sure to produce ends it at once; min_tokens holds it off.
    let greedy = drive(
        &mut s,
        vec![(0, submit(3, prompt(0), 3, Sampling::default()))],
    );
    let first = greedy.tokens[&3][0];
    let mut stop_at_first = submit(4, prompt(0), 3, Sampling::default());
    if let Message::Submit(sub) = &mut stop_at_first {
        sub.stop_tokens = vec![first];
    }
    let stopped = drive(&mut s, vec![(0, stop_at_first)]);
    assert_eq!(stopped.finished[&4].reason, FinishReason::Stop);
    assert!(!stopped.tokens.contains_key(&4));
    let mut held_off = submit(5, prompt(0), 3, Sampling::default());
    if let Message::Submit(sub) = &mut held_off {
        sub.stop_tokens = vec![first];
        sub.min_tokens = 2;
    }
    let held = drive(&mut s, vec![(0, held_off)]);
    assert_ne!(held.tokens[&5][0], first);

    // Refusals, by name.
    let refused = |m: Message| {
        let mut s = server(1, 64);
        let outcome = drive(&mut s, vec![(0, m)]);
        match &outcome.finished.values().next().unwrap().reason {
            FinishReason::Error(e) => e.clone(),
            other => panic!("{other:?}"),
        }
    };
    assert!(refused(submit(6, prompt(100), 4, Sampling::default()))
        .contains("does not fit a context of 64"));
    assert!(refused(submit(7, vec![2, 999_999], 4, Sampling::default()))
        .contains("outside the vocabulary"));
    assert!(refused(submit(8, vec![], 4, Sampling::default())).contains("empty"));
    let mut nan = sampled(1);
    nan.temperature = f32::NAN;
    assert!(refused(submit(9, prompt(0), 4, nan)).contains("temperature"));
    // More requests than slots: the extra one is refused, the other runs.
    let mut one = server(1, 64);
    let outcome = drive(
        &mut one,
        vec![
            (0, submit(10, prompt(0), 4, Sampling::default())),
            (0, submit(11, prompt(0), 4, Sampling::default())),
        ],
    );
    assert_eq!(outcome.finished[&10].reason, FinishReason::Length);
    assert!(matches!(&outcome.finished[&11].reason, FinishReason::Error(e) if e.contains("busy")));
}

/// Work that waits for idle time (a new worker's KV cache being faulted in) runs only when no
/// sequence is busy and no message waits, one step at a time, until it says it is done.
#[test]
fn idle_work_waits_for_the_requests_and_stops_when_done() {
    #[derive(Debug, PartialEq)]
    enum Event {
        Token(u64),
        Finished(u64),
        Idle,
    }
    let mut server = server(2, 256);
    let (sender, inbox) = std::sync::mpsc::channel();
    for m in [
        submit(1, prompt(3), 4, Sampling::default()),
        submit(2, prompt(5), 3, Sampling::default()),
    ] {
        sender.send(m).unwrap();
    }
    let events = std::cell::RefCell::new(Vec::new());
    let mut idle_steps_left = 3;
    // Dropped when the last request ends, which closes the inbox and ends the loop (a worker
    // whose host has gone stops at once, whatever it was doing).
    let sender = std::cell::RefCell::new(Some(sender));
    let mut send = |m: &Message| match m {
        Message::Token(t) => events.borrow_mut().push(Event::Token(t.request)),
        Message::Finished(f) => {
            events.borrow_mut().push(Event::Finished(f.request));
            if f.request == 3 {
                sender.borrow_mut().take();
            }
        }
        other => panic!("unexpected {other:?}"),
    };
    let mut idle = || {
        events.borrow_mut().push(Event::Idle);
        if idle_steps_left == 0 {
            // A request arrives during the last idle step: it is served next.
            let last = submit(3, prompt(2), 2, Sampling::default());
            sender.borrow().as_ref().unwrap().send(last).unwrap();
        }
        idle_steps_left -= 1;
        idle_steps_left >= 0
    };
    server.run(&inbox, &mut send, &mut idle);
    let events = events.into_inner();
    let first_idle = events.iter().position(|e| *e == Event::Idle).unwrap();
    assert!(
        events[..first_idle].contains(&Event::Finished(1))
            && events[..first_idle].contains(&Event::Finished(2)),
        "idle work ran before the waiting requests ended: {events:?}"
    );
    let idles = events.iter().filter(|e| **e == Event::Idle).count();
    assert_eq!(idles, 4, "{events:?}");
    let last_idle = events.iter().rposition(|e| *e == Event::Idle).unwrap();
    assert_eq!(
        events[last_idle + 1..]
            .iter()
            .filter(|e| **e == Event::Token(3))
            .count(),
        2,
        "{events:?}"
    );
    assert_eq!(events.last(), Some(&Event::Finished(3)));
}
