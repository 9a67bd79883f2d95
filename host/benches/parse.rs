//! Parse benchmark: how long the GGUF parser takes on a real model.
//!
//!     cargo bench -p modelhost-host --bench parse -- [MODEL.gguf]
//!
//! Three measurements on the same file, each repeated for about two seconds:
//! - `parse`: `GgufFile::parse` over bytes already in memory (the parser alone);
//! - `parse+hparams+layers`: the same, plus the hyper-parameters and the layer regions, which is
//!   what the host computes when it advertises a model;
//! - `open+mmap+parse`: open the file, map it, parse it, unmap it (page cache warm), which is what
//!   `modelhost inspect` pays before printing.
//!
//! Prints one `name median_us min_us p90_us iterations` line per measurement for scripts/bench.sh.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use modelhost_host::model_file::MappedModel;
use modelhost_protocol::gguf::{GgufFile, GgufModel, HyperParams};
use modelhost_protocol::layers::{layer_regions, PageSize};

fn measure(name: &str, mut f: impl FnMut()) {
    for _ in 0..3 {
        f();
    }
    let mut samples: Vec<Duration> = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) || samples.len() < 10 {
        let t = Instant::now();
        f();
        samples.push(t.elapsed());
    }
    samples.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{name} {:.1} {:.1} {:.1} {}",
        us(samples[samples.len() / 2]),
        us(samples[0]),
        us(samples[samples.len() * 9 / 10]),
        samples.len()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; the model is the first argument that is not a flag.
    let model = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/gemma-3-270m-q4_k_m.gguf")
        });
    let bytes = std::fs::read(&model)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/fetch-models.sh)", model.display()));

    measure("parse", || {
        black_box(GgufFile::parse(black_box(&bytes)).expect("model parses"));
    });
    measure("parse+hparams+layers", || {
        let file = GgufFile::parse(black_box(&bytes)).expect("model parses");
        black_box(HyperParams::from_gguf(&file).expect("hyper-parameters"));
        let model = GgufModel::single("bench", file).expect("single-file model");
        black_box(layer_regions(&model, PageSize::FOUR_KIB));
    });
    measure("open+mmap+parse", || {
        let mapped = MappedModel::open(&model).expect("model opens");
        black_box(mapped.model().expect("model parses"));
    });
}
