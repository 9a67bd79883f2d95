//! llama.cpp's own tokenizer test vectors: for each `ggml-vocab-*.gguf` in the llama-cpp-python
//! 0.3.36 sdist, the inputs (`.inp`, separated by `__ggml_vocab_test__`) and the ids llama.cpp
//! gives them (`.out`), tokenized without special tokens as its test does. Every SentencePiece
//! and BPE vocabulary must pass every vector; the others must be refused by name.
//!
//! The files come from `scripts/fetch-llama-vendor.sh` (into `target/llama-vendor`, or
//! `$MODELHOST_LLAMA_VENDOR`); the test fails, rather than passing vacuously, without them.

use std::path::PathBuf;

use modelhost_protocol::gguf::GgufFile;
use modelhost_text::{Kind, Tokenizer, VocabError};

fn vendor() -> PathBuf {
    let dir = std::env::var_os("MODELHOST_LLAMA_VENDOR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/llama-vendor"),
        PathBuf::from,
    );
    assert!(
        dir.join("models").is_dir(),
        "{} is missing: run scripts/fetch-llama-vendor.sh",
        dir.display()
    );
    dir
}

struct Case {
    text: String,
    ids: Vec<u32>,
}

fn cases(inp: &str, out: &str) -> Vec<Case> {
    let sep = "\n__ggml_vocab_test__\n";
    let mut texts: Vec<&str> = inp.split(sep).collect();
    if inp.ends_with(sep) {
        texts.pop();
    }
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        texts.len(),
        lines.len(),
        "inputs and outputs differ in number"
    );
    texts
        .into_iter()
        .zip(lines)
        .map(|(t, l)| Case {
            text: t.to_owned(),
            ids: l
                .split_whitespace()
                .map(|x| x.parse().expect("an id"))
                .collect(),
        })
        .collect()
}

#[test]
fn every_spm_and_bpe_vocabulary_passes_llama_cpps_vectors() {
    let models = vendor().join("models");
    let mut names: Vec<_> = std::fs::read_dir(&models)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".gguf.inp").map(str::to_owned)
        })
        .collect();
    names.sort();
    assert!(
        names.len() >= 15,
        "only {} vocabularies with vectors",
        names.len()
    );
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for name in &names {
        let bytes = std::fs::read(models.join(format!("{name}.gguf"))).unwrap();
        let file = GgufFile::parse(&bytes).unwrap();
        let inp = std::fs::read_to_string(models.join(format!("{name}.gguf.inp"))).unwrap();
        let out = std::fs::read_to_string(models.join(format!("{name}.gguf.out"))).unwrap();
        let cases = cases(&inp, &out);
        let tok = match Tokenizer::from_gguf(&file) {
            Ok(t) => t,
            Err(VocabError::Unsupported(model)) => {
                report.push(format!("{name}: {model}: unsupported, refused by name"));
                assert!(
                    matches!(model.as_str(), "bert" | "t5"),
                    "{name}: {model} refused"
                );
                continue;
            }
            Err(e) => panic!("{name}: {e}"),
        };
        let mut passed = 0;
        for c in &cases {
            let got = tok.encode(&c.text, false, false);
            if got == c.ids {
                passed += 1;
            } else if failures.len() < 40 {
                failures.push(format!(
                    "{name}: {:?}\n    llama.cpp {:?}\n    modelhost {:?}",
                    c.text, c.ids, got
                ));
            }
        }
        let kind = match tok.vocab().kind() {
            Kind::Spm => "SPM".to_owned(),
            Kind::Bpe => format!("BPE {}", tok.vocab().pre_tokenizer().unwrap_or("")),
        };
        report.push(format!("{name}: {kind}: {passed}/{}", cases.len()));
        if passed != cases.len() {
            failures.push(format!("{name}: {passed} of {} passed", cases.len()));
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Inputs built to be slow: long runs of one character, of white space, of digits, of a
/// control token's look-alike, a single word with no merges between its halves. Each finishes
/// (the work per byte is bounded: no quadratic merge loop) and every vocabulary that can spell
/// the text gives it back unchanged.
#[test]
fn pathological_inputs_finish_and_round_trip() {
    let models = vendor().join("models");
    let patterns = [
        "a",
        " ",
        "\n",
        "1",
        "\u{4e2d}",
        "\u{1f600}",
        "<",
        "ab",
        "<start_of_turn>",
    ];
    let len = 32 << 10;
    let mut report = Vec::new();
    for name in [
        "ggml-vocab-llama-spm",
        "ggml-vocab-llama-bpe",
        "ggml-vocab-qwen2",
        "ggml-vocab-gpt-2",
        "ggml-vocab-command-r",
    ] {
        let bytes = std::fs::read(models.join(format!("{name}.gguf"))).unwrap();
        let file = GgufFile::parse(&bytes).unwrap();
        let tok = Tokenizer::from_gguf(&file).unwrap();
        for p in patterns {
            let text = p.repeat(len / p.len());
            let ids = tok.encode(&text, false, false);
            // At most a token per byte, and SentencePiece's leading space.
            assert!(
                !ids.is_empty() && ids.len() <= text.len() + 1,
                "{name} {p:?}"
            );
            let back = tok.decode(&ids, false, false).unwrap();
            let back = String::from_utf8(back).unwrap();
            // SentencePiece writes a space before the text and its detokenizer takes it off
            // again; both sides agree, so the text comes back exactly.
            assert_eq!(back.len(), text.len(), "{name} {p:?}");
            assert!(back == text, "{name} {p:?}: the text did not come back");
            report.push(format!("{name} {p:?}: {} ids", ids.len()));
        }
    }
    eprintln!("{}", report.join("\n"));
}
