//! Tokenizer throughput on a text file, for `scripts/bench_tokenizer.py`, which runs llama.cpp's
//! tokenizer on the same text in the same run and prints the ratios.
//!
//!     cargo bench -p modelhost-text --bench tokenize -- TEXT MODEL.gguf...
//!
//! Per model, one JSON line: the time to read the vocabulary, and the median of 5 passes over
//! the whole text (as a request is tokenized: no special tokens parsed, BOS added). With
//! `$TOKENIZE_IDS_DIR`, the ids of model `i` go to `i.txt` there, comma-separated, for the
//! script to compare with llama.cpp's.

use std::time::Instant;

use modelhost_protocol::gguf::GgufFile;
use modelhost_text::Tokenizer;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let Some((text_path, models)) = args.split_first() else {
        eprintln!("usage: tokenize TEXT MODEL.gguf...");
        std::process::exit(2);
    };
    let text = std::fs::read_to_string(text_path).expect("a UTF-8 text file");
    let ids_dir = std::env::var_os("TOKENIZE_IDS_DIR").map(std::path::PathBuf::from);
    for (i, model) in models.iter().enumerate() {
        let bytes = std::fs::read(model).expect("the model file");
        let file = GgufFile::parse(&bytes).expect("a GGUF file");
        let started = Instant::now();
        let tok = Tokenizer::from_gguf(&file).expect("a vocabulary");
        let load_ms = started.elapsed().as_secs_f64() * 1e3;
        let mut times = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            ids = std::hint::black_box(tok.encode(&text, true, false));
            times.push(t.elapsed().as_secs_f64());
        }
        let count = ids.len();
        if let Some(dir) = &ids_dir {
            let joined: Vec<String> = ids.iter().map(u32::to_string).collect();
            std::fs::write(dir.join(format!("{i}.txt")), joined.join(",")).expect("writing ids");
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!(
            "{{\"model\":{:?},\"bytes\":{},\"tokens\":{},\"seconds\":{:.6},\"mb_s\":{:.3},\"load_ms\":{:.1}}}",
            model,
            text.len(),
            count,
            median,
            text.len() as f64 / median / 1e6,
            load_ms
        );
    }
}
