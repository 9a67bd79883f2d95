//! Properties over arbitrary text, on real vocabularies from llama.cpp's test set (fetched by
//! `scripts/fetch-llama-vendor.sh`): what goes in comes back out, streaming gives the same text
//! as decoding at once, and request text cannot become a control token unless asked.

use std::path::PathBuf;
use std::sync::OnceLock;

use modelhost_protocol::gguf::GgufFile;
use modelhost_text::{clean_spaces, StreamDecoder, Tokenizer};
use proptest::prelude::*;

fn load(name: &str) -> Tokenizer {
    let dir = std::env::var_os("MODELHOST_LLAMA_VENDOR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/llama-vendor"),
        PathBuf::from,
    );
    let path = dir.join("models").join(format!("{name}.gguf"));
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}: run scripts/fetch-llama-vendor.sh", path.display()));
    Tokenizer::from_gguf(&GgufFile::parse(&bytes).unwrap()).unwrap()
}

/// Byte-level BPE (llama 3's pre-tokenizer) and SentencePiece with byte fallback: both can
/// spell any text.
fn tokenizers() -> &'static [(&'static str, Tokenizer)] {
    static ALL: OnceLock<Vec<(&'static str, Tokenizer)>> = OnceLock::new();
    ALL.get_or_init(|| {
        [
            "ggml-vocab-llama-bpe",
            "ggml-vocab-llama-spm",
            "ggml-vocab-qwen2",
        ]
        .into_iter()
        .map(|n| (n, load(n)))
        .collect()
    })
}

/// Text that stresses the pre-tokenizers: letters of several scripts, digits, white space
/// runs, punctuation, emoji with joiners, combining marks, and control-token look-alikes.
fn text() -> impl Strategy<Value = String> {
    let pieces = prop_oneof![
        "[a-zA-Z]{1,8}",
        "[0-9]{1,6}",
        "[ \t\n\r]{1,4}",
        "[.,;:!?'\"()<>{}\\[\\]/\\\\|#@$%^&*_=+~`-]{1,3}",
        "\\PC{1,4}",
        Just("\u{1f469}\u{200d}\u{1f4bb}".to_owned()),
        Just("e\u{301}".to_owned()),
        Just("<|begin_of_text|>".to_owned()),
        Just("<s>".to_owned()),
        Just("</s>".to_owned()),
        Just("<|im_start|>".to_owned()),
        Just("<|endoftext|>".to_owned()),
        Just("'s".to_owned()),
    ];
    proptest::collection::vec(pieces, 0..12).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn text_comes_back_unchanged(s in text()) {
        for (name, tok) in tokenizers() {
            let ids = tok.encode(&s, false, false);
            let back = tok.decode(&ids, false, false).unwrap();
            // Where the vocabulary asks for it, the detokenizer takes the spaces out of " 's"
            // and " ." (as llama.cpp's does); nothing else changes.
            let mut want = s.clone().into_bytes();
            if tok.vocab().flags().clean_spaces {
                clean_spaces(&mut want);
            }
            prop_assert_eq!(back, want, "{}", name);
        }
    }

    #[test]
    fn streaming_gives_the_text_decoding_gives(s in text()) {
        for (name, tok) in tokenizers() {
            let ids = tok.encode(&s, false, false);
            let mut stream = StreamDecoder::new(tok, false, true);
            let mut streamed = String::new();
            for &id in &ids {
                let part = stream.push(id).unwrap();
                prop_assert!(!part.contains('\u{fffd}') || s.contains('\u{fffd}'), "{}", name);
                streamed.push_str(&part);
            }
            streamed.push_str(&stream.finish());
            prop_assert_eq!(&streamed, &s, "{}", name);
        }
    }

    #[test]
    fn request_text_never_becomes_a_control_token(s in text()) {
        for (name, tok) in tokenizers() {
            for id in tok.encode(&s, false, false) {
                prop_assert!(!tok.vocab().is_control(id), "{}: {} from {:?}", name, id, s);
            }
            // Asked for, the look-alikes are parsed as the control tokens they name.
            if s.contains("<|begin_of_text|>") && *name == "ggml-vocab-llama-bpe" {
                let bos = tok.vocab().id("<|begin_of_text|>").unwrap();
                prop_assert!(tok.encode(&s, false, true).contains(&bos));
            }
        }
    }
}
