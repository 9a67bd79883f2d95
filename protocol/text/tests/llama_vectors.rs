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
