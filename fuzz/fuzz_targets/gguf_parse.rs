//! Any bytes into the GGUF parser, and everything a caller does with a parsed file: decode every
//! metadata value, read the hyper-parameters, assemble the model and compute its layer regions.
//! None of it may panic, and a parsed file's tensors must lie inside the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelhost_protocol::gguf::{GgufFile, GgufModel, HyperParams, Value};
use modelhost_protocol::layers::{layer_regions, PageSize};

fn walk(value: &Value<'_>) -> usize {
    match value {
        Value::Array(a) => a.iter().map(|v| walk(&v)).sum::<usize>() + 1,
        Value::String(s) => s.to_str().map_or(0, str::len),
        _ => 1,
    }
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(file) = GgufFile::parse(bytes) else {
        return;
    };
    for entry in file.metadata() {
        walk(&entry.value);
        // Compare positions, not values: a NaN value is not equal to itself.
        assert_eq!(file.entry(entry.key).map(|e| e.offset), Some(entry.offset));
    }
    for t in file.tensors() {
        assert!(t.byte_range().end <= bytes.len() as u64);
        assert_eq!(file.tensor_data(t).len() as u64, t.size());
    }
    let _ = HyperParams::from_gguf(&file);
    let _ = file.vocab_size();
    if let Ok(model) = GgufModel::single("fuzz", file) {
        let regions = layer_regions(&model, PageSize::FOUR_KIB);
        let covered: u64 = regions.iter().map(|r| r.tensor_bytes).sum();
        assert_eq!(covered, model.tensor_bytes());
    }
});
