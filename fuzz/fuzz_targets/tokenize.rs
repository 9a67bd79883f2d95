//! Tokenizing and detokenizing arbitrary bytes with real vocabularies: SentencePiece, byte-level
//! BPE with hand-written and regular-expression pre-tokenizers, and SentencePiece-style BPE.
//! No input may panic, and a decode streamed token by token must equal the whole decode.
//!
//! The vocabularies are llama.cpp's test vocabularies (scripts/fetch-llama-vendor.sh), read
//! once; `$MODELHOST_LLAMA_VENDOR` overrides where.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use modelhost_protocol::gguf::GgufFile;
use modelhost_text::{StreamDecoder, Tokenizer};

const VOCABS: &[&str] = &["llama-spm", "gpt-2", "llama-bpe", "qwen2", "deepseek-llm", "gemma-4"];

fn tokenizers() -> &'static [Tokenizer] {
    static ALL: OnceLock<Vec<Tokenizer>> = OnceLock::new();
    ALL.get_or_init(|| {
        let dir = std::env::var("MODELHOST_LLAMA_VENDOR")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target/llama-vendor").into());
        VOCABS
            .iter()
            .map(|name| {
                let path = format!("{dir}/models/ggml-vocab-{name}.gguf");
                let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                let file = GgufFile::parse(&bytes).unwrap();
                Tokenizer::from_gguf(&file).unwrap()
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let all = tokenizers();
    let tok = &all[mode as usize % all.len()];
    let (add_special, parse_special) = (mode & 0x40 != 0, mode & 0x80 != 0);
    let text = String::from_utf8_lossy(rest);
    let ids = tok.encode(&text, add_special, parse_special);
    // Decoding what was encoded, whole and streamed.
    let whole = tok.decode(&ids, false, parse_special).unwrap();
    if !tok.vocab().flags().clean_spaces {
        let mut stream = StreamDecoder::new(tok, parse_special, true);
        let mut out = String::new();
        for &id in &ids {
            out.push_str(&stream.push(id).unwrap());
        }
        out.push_str(&stream.finish());
        assert_eq!(out, String::from_utf8_lossy(&whole));
    }
    // Arbitrary ids, some outside the vocabulary: an error, never a panic.
    let arbitrary: Vec<u32> = rest
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()) % (tok.vocab().len() as u32 + 8))
        .collect();
    let _ = tok.decode(&arbitrary, mode & 1 != 0, mode & 2 != 0);
});
