//! Compiling and rendering arbitrary chat templates: an error or a prompt, never a panic, and
//! in bounded time (the renderer's fuel stops a template that loops).
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelhost_text::chat::{ChatInput, ChatTemplate};
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    let source = String::from_utf8_lossy(data);
    let Ok(template) = ChatTemplate::jinja(&source) else { return };
    let messages = json!([
        { "role": "system", "content": "Be brief." },
        { "role": "user", "content": "Hello <b>\"x\"</b> \u{1F999}", "extra": [1, 2.5, null, true] },
        { "role": "assistant", "content": null, "tool_calls": [{ "function": { "name": "f", "arguments": { "a": 1 } } }] },
    ]);
    let tools = json!([{ "type": "function", "function": { "name": "f", "parameters": {} } }]);
    for tools in [None, Some(&tools)] {
        let _ = template.render(&ChatInput {
            messages: &messages,
            tools,
            add_generation_prompt: true,
            bos_token: "<s>",
            eos_token: "</s>",
            extra: None,
            now: 1_796_047_509,
        });
    }
});
