//! The tokenizer on the reference model's own vocabulary (gemma-3, 262,144 tokens) against
//! llama.cpp: 2,200 strings of many scripts, emoji, white space, code, numbers and control-token
//! look-alikes, tokenized as a request is (no special tokens, no BOS) and, for a quarter, as a
//! rendered chat prompt is (both on). The ids and llama.cpp's detokenization come from
//! `scripts/reference/tokenizer_fixture.py` (llama-cpp-python 0.3.36).

use modelhost_protocol::gguf::GgufFile;
use modelhost_tests::{gemma_model, workspace_root};
use modelhost_text::{StreamDecoder, Tokenizer};

fn gemma() -> (Vec<u8>, serde_json::Value) {
    let bytes = std::fs::read(gemma_model()).unwrap();
    let fixture =
        std::fs::read_to_string(workspace_root().join("tests/fixtures/tokenizer/gemma.json"))
            .unwrap();
    (bytes, serde_json::from_str(&fixture).unwrap())
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn gemma_tokenizes_and_detokenizes_as_llama_cpp() {
    let (bytes, fixture) = gemma();
    let file = GgufFile::parse(&bytes).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    // The special tokens llama.cpp finds, and its end-of-generation set.
    let v = tok.vocab();
    let sp = &fixture["special"];
    let id = |k: &str| sp[k].as_u64().map(|i| i as u32);
    assert_eq!(v.special().bos, id("bos"));
    assert_eq!(v.special().eos, id("eos"));
    assert_eq!(v.special().eot, id("eot"));
    assert_eq!(v.flags().add_bos, sp["add_bos"].as_bool().unwrap());
    assert_eq!(v.flags().add_eos, sp["add_eos"].as_bool().unwrap());
    let eog: Vec<u32> = sp["eog"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(v.eog().iter().copied().collect::<Vec<_>>(), eog);
    let controls = (0..v.len() as u32).filter(|&i| v.is_control(i)).count();
    assert_eq!(controls as u64, sp["control"].as_u64().unwrap());

    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 2000);
    let (mut ids_ok, mut detok_ok, mut round_trips, mut round_trips_expected) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let add = c["add_special"].as_bool().unwrap();
        let parse = c["parse_special"].as_bool().unwrap();
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(text, add, parse);
        if got == want {
            ids_ok += 1;
        } else if failures.len() < 20 {
            failures.push(format!(
                "{text:?} (add {add}, parse {parse})\n  llama.cpp {want:?}\n  modelhost {got:?}"
            ));
        }
        // llama.cpp's detokenization of its ids, byte for byte.
        let expected: Vec<u8> = match (c.get("detok"), c.get("detok_hex")) {
            (Some(d), _) => d.as_str().unwrap().as_bytes().to_vec(),
            (_, Some(h)) => hex(h.as_str().unwrap()),
            _ => text.as_bytes().to_vec(),
        };
        let ours = tok.decode(&want, false, false).unwrap();
        if ours == expected {
            detok_ok += 1;
        } else if failures.len() < 20 {
            failures.push(format!(
                "detokenize {want:?}\n  llama.cpp {:?}\n  modelhost {:?}",
                String::from_utf8_lossy(&expected),
                String::from_utf8_lossy(&ours)
            ));
        }
        // The round trip holds wherever it holds for llama.cpp.
        if !add && !parse && expected == text.as_bytes() {
            round_trips_expected += 1;
            if tok.decode(&got, false, false).unwrap() == text.as_bytes() {
                round_trips += 1;
            }
        }
    }
    eprintln!(
        "{} cases: ids {ids_ok}, detokenization {detok_ok}, round trips {round_trips}/{round_trips_expected}",
        cases.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(round_trips, round_trips_expected);
}

#[test]
fn streamed_text_has_no_replacement_characters_and_equals_the_whole() {
    let (bytes, fixture) = gemma();
    let file = GgufFile::parse(&bytes).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let mut split_chars = 0;
    for c in fixture["cases"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        if c["add_special"].as_bool().unwrap()
            || c.get("detok").is_some()
            || c.get("detok_hex").is_some()
        {
            continue;
        }
        let ids = tok.encode(text, false, false);
        let mut stream = StreamDecoder::new(&tok, false, false);
        let mut out = String::new();
        for &id in &ids {
            let part = stream.push(id).unwrap();
            assert!(
                !part.contains('\u{FFFD}') || text.contains('\u{FFFD}'),
                "{text:?}: {part:?}"
            );
            // A byte token that starts a character yields nothing until the character ends.
            if part.is_empty() && !tok.piece(id, false).unwrap().is_empty() {
                split_chars += 1;
            }
            out.push_str(&part);
        }
        out.push_str(&stream.finish());
        assert_eq!(out, text);
    }
    // The strings include characters spelled in byte tokens, so the hold-back was exercised.
    assert!(split_chars > 100, "only {split_chars} held-back pieces");
}

/// A model whose vocabulary names a pre-tokenizer nobody knows: it loads and is shared, and text
/// requests for it are refused with the reason.
fn model_with_unknown_pre_tokenizer(path: &std::path::Path) {
    use modelhost_protocol::gguf::{GgufWriter, OwnedValue};
    use modelhost_protocol::GgmlType;
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", OwnedValue::string("llama"))
        .add_metadata("tokenizer.ggml.model", OwnedValue::string("gpt2"))
        .add_metadata("tokenizer.ggml.pre", OwnedValue::string("no-such-pre"))
        .add_metadata(
            "tokenizer.ggml.tokens",
            OwnedValue::strings(["a", "b", "ab"]),
        )
        .add_metadata("tokenizer.ggml.merges", OwnedValue::strings(["a b"]))
        .add_tensor("token_embd.weight", &[32, 3], GgmlType::F32);
    let bytes = w.layout().unwrap().to_bytes(|_, _| {});
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn the_host_tokenizes_and_detokenizes_each_model_with_its_own_vocabulary() {
    use modelhost_tests::daemon::{Daemon, DaemonOptions};
    use modelhost_tests::http::request;
    use modelhost_tests::models::wait_for;
    use modelhost_tests::Scratch;
    use serde_json::json;

    let dir = Scratch::new("tokenize-api");
    let daemon = Daemon::start(&dir.path("control.sock"), DaemonOptions::default());
    let s = &daemon.socket;
    modelhost_tests::models::load(s, &json!({ "path": gemma_model(), "name": "gemma" }));
    let odd = dir.path("odd.gguf");
    model_with_unknown_pre_tokenizer(&odd);
    modelhost_tests::models::load(s, &json!({ "path": odd, "name": "odd" }));
    // The tokenizer is built beside the load: the status names it, or why there is none, once
    // it is built.
    let odd_info = wait_for(s, "odd", "the odd model's tokenizer", |m| {
        !m["text"].is_null() || !m["text_error"].is_null()
    });
    assert!(odd_info["text"].is_null());
    assert!(
        odd_info["text_error"]
            .as_str()
            .unwrap()
            .contains("no-such-pre"),
        "{odd_info}"
    );

    let info = wait_for(s, "gemma", "gemma's tokenizer", |m| !m["text"].is_null());
    assert_eq!(info["text"]["vocabulary"], "llama");
    assert_eq!(info["text"]["tokens"], 262144);
    assert_eq!(info["text"]["end_of_generation"], json!([1, 106, 212]));
    assert!(info["text"]["chat_template"]
        .as_str()
        .unwrap()
        .contains("built-in gemma"));

    // The ids llama.cpp gives, from the fixture.
    let (_, fixture) = gemma();
    let case = fixture["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            !c["add_special"].as_bool().unwrap()
                && c["text"].as_str().unwrap().chars().count() > 20
                && c.get("detok").is_none()
                && c.get("detok_hex").is_none()
        })
        .unwrap();
    let reply = request(
        s,
        "POST",
        "/v1/tokenize",
        Some(&json!({ "model": "gemma", "content": case["text"] })),
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["tokens"], case["ids"]);
    let reply = request(
        s,
        "POST",
        "/v1/detokenize",
        Some(&json!({ "model": "gemma", "tokens": case["ids"] })),
    );
    assert_eq!(reply.json()["content"], case["text"]);

    // Control tokens in request text stay text unless the caller asks.
    let turn = |parse: bool| {
        request(
            s,
            "POST",
            "/v1/tokenize",
            Some(&json!({ "model": "gemma", "content": "<start_of_turn>user", "parse_special": parse, "with_pieces": true })),
        )
        .json()
    };
    assert_eq!(turn(true)["tokens"], json!([105, 2364]));
    assert!(turn(false)["tokens"].as_array().unwrap().len() > 2);
    assert_eq!(
        request(
            s,
            "POST",
            "/v1/tokenize",
            Some(&json!({ "model": "gemma", "content": "hi", "add_special": true }))
        )
        .json()["tokens"][0],
        2
    );

    // Refusals, each with its code; the host keeps answering.
    let refused = |path: &str, body: serde_json::Value| {
        let r = request(s, "POST", path, Some(&body));
        (
            r.status,
            r.json()["error"]["code"].as_str().unwrap().to_owned(),
        )
    };
    assert_eq!(
        refused("/v1/tokenize", json!({ "model": "odd", "content": "ab" })),
        (422, "tokenizer_unavailable".into())
    );
    assert_eq!(
        refused("/v1/tokenize", json!({ "model": "nope", "content": "ab" })),
        (404, "model_not_found".into())
    );
    assert_eq!(
        refused("/v1/tokenize", json!({ "model": "gemma" })),
        (400, "invalid_json".into())
    );
    assert_eq!(
        refused(
            "/v1/detokenize",
            json!({ "model": "gemma", "tokens": [1, 262144] })
        ),
        (400, "invalid_token".into())
    );
    assert_eq!(
        request(
            s,
            "POST",
            "/v1/tokenize",
            Some(&json!({ "model": "gemma", "content": "still here" }))
        )
        .status,
        200
    );
}
