//! The real reference model, gemma-3-270m Q4_K_M, through the real `modelhost` binary. The
//! expected figures are the ones design.md gives for this file.

use std::collections::BTreeMap;

use modelhost_tests::{gemma_model, modelhost_ok};
use serde_json::Value;

fn report() -> Value {
    let model = gemma_model();
    let text = modelhost_ok(&[
        "inspect",
        model.to_str().unwrap(),
        "--json",
        "--tensors",
        "--page-size",
        "4096",
    ]);
    serde_json::from_str(&text).expect("inspect --json prints JSON")
}

#[test]
fn gemma_has_the_published_shape() {
    let r = report();
    assert_eq!(r["architecture"], "gemma3");
    assert_eq!(r["file_bytes"], 253_113_024u64);
    assert_eq!(r["tensor_count"], 236);
    assert_eq!(r["vocab_size"], 262_144);
    assert_eq!(r["context_length"], 32_768);
    let h = &r["hyper_params"];
    assert_eq!(h["block_count"], 18);
    assert_eq!(h["embedding_length"], 640);
    assert_eq!(h["head_count"], 4);
    assert_eq!(h["head_count_kv"], 1);
    assert_eq!(h["key_length"], 256);
    assert_eq!(h["sliding_window"], 512);
    assert!(r["split"].is_null());

    let types: BTreeMap<&str, u64> = r["tensor_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["type"].as_str().unwrap(), t["count"].as_u64().unwrap()))
        .collect();
    let expected: BTreeMap<&str, u64> = [
        ("f32", 109),
        ("q5_0", 81),
        ("q8_0", 10),
        ("q4_K", 27),
        ("q6_K", 9),
    ]
    .into();
    assert_eq!(types, expected);
}

#[test]
fn gemma_layers_cover_every_tensor_on_page_boundaries() {
    let r = report();
    let layers = r["layers"].as_array().unwrap();
    let names: Vec<&str> = layers.iter().map(|l| l["name"].as_str().unwrap()).collect();
    let mut expected = vec!["token_embd".to_owned()];
    expected.extend((0..18).map(|i| format!("blk.{i}")));
    expected.push("output_norm".into());
    assert_eq!(names, expected);

    let tensor_bytes: u64 = layers
        .iter()
        .map(|l| l["tensor_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(tensor_bytes, r["tensor_bytes"].as_u64().unwrap());
    let file_bytes = r["file_bytes"].as_u64().unwrap();
    let mut extents: Vec<(u64, u64)> = Vec::new();
    for layer in layers {
        let layer_extents = layer["extents"].as_array().unwrap();
        assert_eq!(
            layer_extents.len(),
            1,
            "gemma stores each layer contiguously: {layer}"
        );
        let (start, end) = (
            layer_extents[0]["start"].as_u64().unwrap(),
            layer_extents[0]["end"].as_u64().unwrap(),
        );
        assert_eq!((start % 4096, end % 4096), (0, 0));
        assert!(end <= file_bytes.next_multiple_of(4096));
        assert!(end - start >= layer["tensor_bytes"].as_u64().unwrap());
        extents.push((start, end));
    }
    // In file order (gemma stores output_norm first), neighbouring layers share at most the one
    // page where one ends and the next begins.
    extents.sort();
    for pair in extents.windows(2) {
        assert!(
            pair[1].0 + 4096 >= pair[0].1,
            "{pair:?} overlap by more than a page"
        );
    }
}

#[test]
fn gemma_tensors_are_aligned_in_bounds_and_disjoint() {
    let r = report();
    let data_offset = r["files"][0]["data_offset"].as_u64().unwrap();
    let file_bytes = r["file_bytes"].as_u64().unwrap();
    let mut ranges: Vec<(u64, u64)> = r["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let start = t["file_offset"].as_u64().unwrap();
            assert_eq!((start - data_offset) % 32, 0, "{t}");
            (start, start + t["bytes"].as_u64().unwrap())
        })
        .collect();
    ranges.sort();
    for pair in ranges.windows(2) {
        assert!(pair[0].1 <= pair[1].0);
    }
    assert!(ranges.last().unwrap().1 <= file_bytes);
}
