//! Real chat templates rendered by modelhost against Python's jinja2 set up as transformers'
//! `apply_chat_template` sets it up: the 70 templates llama.cpp keeps
//! (`target/llama-vendor/templates`, from `scripts/fetch-llama-vendor.sh`), each over five
//! conversations (a user turn, a system prompt, several turns, Unicode and quotes, tool calls)
//! with `add_generation_prompt` off and on. The reference renders are
//! `tests/fixtures/templates/renders.json`, from `scripts/reference/template_fixture.py`.
//!
//! A template passes when every render is identical, or fails in both. The templates that do
//! not pass are listed in `DIFFERENT` with the reason; the test fails if that list is wrong
//! either way.

use std::path::PathBuf;

use modelhost_text::chat::{ChatInput, ChatTemplate};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture() -> serde_json::Value {
    let text =
        std::fs::read_to_string(root().join("tests/fixtures/templates/renders.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// 2026-11-30T14:05:09, the time the reference renders saw.
const NOW: i64 = 1_796_047_509;

/// Templates whose renders differ from jinja2's, and why.
const DIFFERENT: &[(&str, &str)] = &[(
    "meetkai-functionary-medium-v3.1.jinja",
    "it adds `\"...\"|safe` to a plain string; in jinja2 a safe string (Markup) escapes what is \
     added to it, so the tool's JSON comes out as `{&#34;name&#34;: ...}`, which the model was \
     surely not trained on; minijinja concatenates, giving the JSON as written",
)];

fn render(
    t: &ChatTemplate,
    conv: &serde_json::Value,
    agp: bool,
    f: &serde_json::Value,
) -> Result<String, String> {
    t.render(&ChatInput {
        messages: &conv["messages"],
        tools: conv.get("tools"),
        add_generation_prompt: agp,
        bos_token: f["bos_token"].as_str().unwrap(),
        eos_token: f["eos_token"].as_str().unwrap(),
        extra: None,
        now: NOW,
    })
    .map_err(|e| e.to_string())
}

#[test]
fn real_templates_render_as_jinja2_renders_them() {
    let f = fixture();
    let dir = std::env::var_os("MODELHOST_LLAMA_VENDOR")
        .map_or_else(|| root().join("target/llama-vendor"), PathBuf::from)
        .join("templates");
    assert!(
        dir.is_dir(),
        "{} is missing: run scripts/fetch-llama-vendor.sh",
        dir.display()
    );
    let templates = f["templates"].as_object().unwrap();
    assert!(templates.len() >= 70);
    let mut differing = Vec::new();
    let mut detail = Vec::new();
    for (name, t) in templates {
        let source = std::fs::read_to_string(dir.join(name)).unwrap();
        let compiled = ChatTemplate::jinja(&source);
        let mut same = true;
        for r in t["renders"].as_array().unwrap() {
            let conv = &f["conversations"][r["conversation"].as_str().unwrap()];
            let agp = r["add_generation_prompt"].as_bool().unwrap();
            let ours = match &compiled {
                Ok(c) => render(c, conv, agp, &f),
                Err(e) => Err(e.to_string()),
            };
            let ok = match (&ours, r.get("output")) {
                (Ok(a), Some(b)) => a == b.as_str().unwrap(),
                (Err(_), None) => true,
                _ => false,
            };
            if !ok && same {
                same = false;
                let theirs = r
                    .get("output")
                    .map_or_else(|| r["error"].to_string(), |o| o.to_string());
                let ours = match &ours {
                    Ok(s) => format!("{s:?}"),
                    Err(e) => format!("error {e}"),
                };
                detail.push(format!(
                    "{name} ({}, add_generation_prompt {agp}):\n  jinja2    {theirs}\n  modelhost {ours}",
                    r["conversation"]
                ));
            }
        }
        if !same {
            differing.push(name.clone());
        }
    }
    let passed = templates.len() - differing.len();
    eprintln!(
        "{passed} of {} templates render identically",
        templates.len()
    );
    eprintln!("{}", detail.join("\n"));
    let expected: Vec<&str> = DIFFERENT.iter().map(|d| d.0).collect();
    assert_eq!(
        differing, expected,
        "the templates that differ are not the ones listed"
    );
    assert!(
        passed * 100 >= templates.len() * 95,
        "{passed} of {}",
        templates.len()
    );
}

#[test]
fn builtin_formats_render_as_llama_cpps() {
    let f = fixture();
    for (name, renders) in f["builtins"].as_object().unwrap() {
        let t = ChatTemplate::builtin(name).unwrap();
        for r in renders.as_array().unwrap() {
            let conv = &f["conversations"][r["conversation"].as_str().unwrap()];
            let agp = r["add_generation_prompt"].as_bool().unwrap();
            assert_eq!(
                render(&t, conv, agp, &f).unwrap(),
                r["output"].as_str().unwrap(),
                "{name} {}",
                r["conversation"]
            );
        }
    }
}
