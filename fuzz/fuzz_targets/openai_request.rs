//! Any bytes as the JSON body of `POST /v1/chat/completions` or `/v1/completions`: reading the
//! settings and the messages must never panic, and what is accepted must hold the limits the
//! worker checks again (`Submit::check`): ids inside the vocabulary, finite values in range,
//! room in the context.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelhost_host::control::{flatten_messages, read_settings, Kind};
use modelhost_protocol::wire::Submit;

const VOCAB: u32 = 4096;
const CONTEXT: u32 = 512;

fuzz_target!(|bytes: &[u8]| {
    let Some((&prompt_len, json)) = bytes.split_first() else {
        return;
    };
    let Ok(serde_json::Value::Object(body)) = serde_json::from_slice(json) else {
        return;
    };
    if let Some(messages) = body.get("messages") {
        let _ = flatten_messages(messages);
    }
    let prompt_len = usize::from(prompt_len) * 4 + 1;
    for kind in [Kind::Chat, Kind::Completion] {
        let Ok(s) = read_settings(kind, &body, "m", VOCAB, &[1, 2], CONTEXT, prompt_len, "prompt", 7)
        else {
            continue;
        };
        assert!(prompt_len + s.max_tokens as usize <= CONTEXT as usize);
        let submit = Submit {
            request: 1,
            prompt: vec![5; prompt_len],
            sampling: s.sampling,
            max_tokens: s.max_tokens,
            stop_tokens: s.stop_tokens,
            banned_tokens: s.banned_tokens,
            min_tokens: s.min_tokens,
            logprobs: s.logprobs,
        };
        if let Err(e) = submit.check(VOCAB, CONTEXT) {
            panic!("accepted by the host, refused by the worker: {e}");
        }
    }
});
