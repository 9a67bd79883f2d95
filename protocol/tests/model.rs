//! Typed metadata access, hyper-parameters, split-model assembly, layer regions and writer errors,
//! on files made by the writer.

use modelhost_protocol::gguf::{
    GgufFile, GgufModel, GgufWriter, HyperParams, MetadataError, ModelError, OwnedValue, PerLayer,
    Shard, ValueType, WriteError, SPLIT_COUNT_KEY, SPLIT_NO_KEY, SPLIT_TENSORS_COUNT_KEY,
};
use modelhost_protocol::layers::{layer_regions, Extent, LayerGroup, PageSize};
use modelhost_protocol::GgmlType;

fn build(writer: &GgufWriter) -> Vec<u8> {
    writer.layout().unwrap().to_bytes(|_, _| {})
}

fn llama_metadata(w: &mut GgufWriter) {
    w.add_metadata("general.architecture", OwnedValue::string("llama"))
        .add_metadata("llama.block_count", OwnedValue::U32(2))
        .add_metadata("llama.context_length", OwnedValue::U32(4096))
        .add_metadata("llama.embedding_length", OwnedValue::U32(256))
        .add_metadata("llama.attention.head_count", OwnedValue::U32(4))
        .add_metadata("llama.attention.head_count_kv", OwnedValue::I32(2));
}

#[test]
fn typed_accessors_convert_integers_that_fit() {
    let mut w = GgufWriter::new();
    llama_metadata(&mut w);
    w.add_metadata("x.neg", OwnedValue::I64(-1))
        .add_metadata("x.big", OwnedValue::U64(1 << 40))
        .add_metadata("x.f", OwnedValue::F32(0.5))
        .add_metadata("x.b", OwnedValue::Bool(true))
        .add_metadata("x.bytes", OwnedValue::String(vec![0xff, 0xfe]));
    let bytes = build(&w);
    let f = GgufFile::parse(&bytes).unwrap();

    assert_eq!(f.u32("llama.block_count"), Ok(2));
    assert_eq!(f.u64("llama.attention.head_count_kv"), Ok(2));
    assert_eq!(f.i64("x.neg"), Ok(-1));
    assert_eq!(f.f64("x.f"), Ok(0.5));
    assert_eq!(f.bool("x.b"), Ok(true));
    assert_eq!(f.architecture(), Ok("llama"));

    assert_eq!(
        f.u32("nope"),
        Err(MetadataError::Missing { key: "nope".into() })
    );
    let offset = f.entry("x.neg").unwrap().value_offset;
    assert_eq!(
        f.u32("x.neg"),
        Err(MetadataError::OutOfRange {
            key: "x.neg".into(),
            offset,
            value: -1,
            expected: "u32"
        })
    );
    assert!(
        matches!(f.u32("x.big"), Err(MetadataError::OutOfRange { value, .. }) if value == 1 << 40)
    );
    assert!(matches!(
        f.str("x.f"),
        Err(MetadataError::WrongType {
            found: ValueType::F32,
            expected: "string",
            ..
        })
    ));
    assert!(matches!(
        f.str("x.bytes"),
        Err(MetadataError::NotUtf8 { .. })
    ));
    assert!(matches!(
        f.bool("x.f"),
        Err(MetadataError::WrongType { .. })
    ));
    assert!(matches!(
        f.array("x.f"),
        Err(MetadataError::WrongType { .. })
    ));
    assert!(matches!(f.f64("x.b"), Err(MetadataError::WrongType { .. })));
    let message = f.u32("x.neg").unwrap_err().to_string();
    assert!(
        message.contains("x.neg") && message.contains(&format!("byte {offset}")),
        "{message}"
    );
}

#[test]
fn hyper_params_read_defaults_and_per_layer_arrays() {
    let mut w = GgufWriter::new();
    llama_metadata(&mut w);
    w.add_metadata(
        "llama.feed_forward_length",
        OwnedValue::Array(
            ValueType::U32,
            vec![OwnedValue::U32(512), OwnedValue::U32(768)],
        ),
    );
    let bytes = build(&w);
    let h = HyperParams::from_gguf(&GgufFile::parse(&bytes).unwrap()).unwrap();
    assert_eq!(h.block_count, 2);
    assert_eq!(h.head_count, PerLayer::Uniform(4));
    assert_eq!(h.head_count_kv, PerLayer::Uniform(2));
    assert_eq!(
        (h.key_length, h.value_length),
        (64, 64),
        "defaults to embd / heads"
    );
    assert_eq!(
        h.feed_forward_length,
        Some(PerLayer::Varying(vec![512, 768]))
    );
    assert_eq!(h.sliding_window, None);

    let mut w = GgufWriter::new();
    llama_metadata(&mut w);
    w.add_metadata(
        "llama.feed_forward_length",
        OwnedValue::Array(ValueType::U32, vec![OwnedValue::U32(512)]),
    );
    let bytes = build(&w);
    let err = HyperParams::from_gguf(&GgufFile::parse(&bytes).unwrap()).unwrap_err();
    assert!(
        matches!(
            err,
            MetadataError::WrongLength {
                expected: 2,
                found: 1,
                ..
            }
        ),
        "{err}"
    );
}

/// A shard of a split model with `tensors` one-block q8_0 tensors named `{prefix}{i}`.
fn shard(no: u16, count: u16, total: i32, prefix: &str, tensors: usize) -> Vec<u8> {
    let mut w = GgufWriter::new();
    if no == 0 {
        llama_metadata(&mut w);
    }
    w.add_metadata(SPLIT_NO_KEY, OwnedValue::U16(no))
        .add_metadata(SPLIT_COUNT_KEY, OwnedValue::U16(count))
        .add_metadata(SPLIT_TENSORS_COUNT_KEY, OwnedValue::I32(total));
    for i in 0..tensors {
        w.add_tensor(format!("{prefix}{i}.weight"), &[32], GgmlType::Q8_0);
    }
    build(&w)
}

fn assemble(files: &[(&str, &[u8])]) -> Result<usize, ModelError> {
    let shards = files
        .iter()
        .map(|(label, bytes)| Shard {
            label: (*label).to_owned(),
            file: GgufFile::parse(bytes).unwrap(),
        })
        .collect();
    GgufModel::from_shards(shards).map(|m| m.tensor_count() as usize)
}

#[test]
fn split_models_assemble_in_any_order() {
    let (a, b, c) = (
        shard(0, 3, 5, "blk.0.", 2),
        shard(1, 3, 5, "blk.1.", 2),
        shard(2, 3, 5, "output", 1),
    );
    assert_eq!(assemble(&[("c", &c), ("a", &a), ("b", &b)]), Ok(5));
    let shards = [("a", &a), ("b", &b), ("c", &c)]
        .iter()
        .map(|(l, bytes)| Shard {
            label: (*l).into(),
            file: GgufFile::parse(bytes).unwrap(),
        })
        .collect();
    let model = GgufModel::from_shards(shards).unwrap();
    assert_eq!(model.metadata().architecture(), Ok("llama"));
    assert_eq!(
        model.split_summary().unwrap().tensors_per_shard,
        vec![2, 2, 1]
    );
    let shards_of_blocks: Vec<_> = model.tensors().map(|(s, _)| s).collect();
    assert_eq!(shards_of_blocks, vec![0, 0, 1, 1, 2]);
}

#[test]
fn split_model_errors_are_named() {
    let a = shard(0, 2, 2, "a", 1);
    let b = shard(1, 2, 2, "b", 1);
    let plain = build(&GgufWriter::new());

    assert_eq!(
        assemble(&[("a", &a)]),
        Err(ModelError::MissingShard { no: 1, count: 2 })
    );
    assert_eq!(
        assemble(&[("a", &a), ("a2", &a)]),
        Err(ModelError::DuplicateShard {
            no: 0,
            first: "a".into(),
            second: "a2".into()
        })
    );
    assert_eq!(
        assemble(&[("a", &a), ("p", &plain)]),
        Err(ModelError::NotAShard { shard: "p".into() })
    );
    assert_eq!(
        assemble(&[("a", &a), ("b3", &shard(1, 3, 2, "b", 1))]),
        Err(ModelError::ShardsDisagree {
            shard: "b3".into(),
            key: SPLIT_COUNT_KEY,
            expected: 2,
            found: 3
        })
    );
    assert_eq!(
        assemble(&[("a", &a), ("b", &shard(1, 2, 9, "b", 1))]),
        Err(ModelError::ShardsDisagree {
            shard: "b".into(),
            key: SPLIT_TENSORS_COUNT_KEY,
            expected: 2,
            found: 9
        })
    );
    assert_eq!(
        assemble(&[("a", &a), ("b", &shard(2, 2, 2, "b", 1))]),
        Err(ModelError::ShardNumberOutOfRange {
            shard: "b".into(),
            no: 2,
            count: 2
        })
    );
    assert_eq!(
        assemble(&[("z", &shard(0, 0, 0, "a", 0))]),
        Err(ModelError::ZeroShardCount { shard: "z".into() })
    );
    assert_eq!(
        assemble(&[
            ("a", &shard(0, 2, 3, "a", 1)),
            ("b", &shard(1, 2, 3, "b", 1))
        ]),
        Err(ModelError::TensorCountMismatch {
            declared: 3,
            found: 2
        })
    );
    assert_eq!(
        assemble(&[("a", &a), ("b", &shard(1, 2, 2, "a", 1))]),
        Err(ModelError::DuplicateTensor {
            name: "a0.weight".into(),
            first: "a".into(),
            second: "b".into()
        })
    );

    let f = GgufFile::parse(&b).unwrap();
    assert_eq!(
        GgufModel::single("b", f).unwrap_err(),
        ModelError::NeedsAllShards {
            shard: "b".into(),
            no: 1,
            count: 2
        }
    );
    let mut w = GgufWriter::new();
    w.add_metadata(SPLIT_COUNT_KEY, OwnedValue::string("two"));
    let bad_key = build(&w);
    let err = GgufModel::single("k", GgufFile::parse(&bad_key).unwrap()).unwrap_err();
    assert!(matches!(err, ModelError::SplitKey { .. }), "{err}");
}

#[test]
fn layer_regions_group_tensors_and_align_extents_to_pages() {
    let mut w = GgufWriter::new();
    llama_metadata(&mut w);
    // 4352 bytes each (256 x 16 q8_0 rows of 272 bytes), so groups straddle page boundaries.
    for name in [
        "token_embd.weight",
        "blk.0.attn_q.weight",
        "blk.0.ffn_up.weight",
        "blk.1.attn_q.weight",
        "output_norm.weight",
        "rope_freqs.weight",
    ] {
        w.add_tensor(name, &[256, 16], GgmlType::Q8_0);
    }
    // Interleave: blk.0 has a tensor after blk.1's, far enough to need a second extent.
    w.add_tensor("blk.1.big.weight", &[256, 64], GgmlType::Q8_0);
    w.add_tensor("blk.0.late.weight", &[256, 16], GgmlType::Q8_0);
    let bytes = build(&w);
    let file = GgufFile::parse(&bytes).unwrap();
    let model = GgufModel::single("m", file).unwrap();
    let regions = layer_regions(&model, PageSize::FOUR_KIB);

    let groups: Vec<_> = regions.iter().map(|r| r.group.clone()).collect();
    assert_eq!(
        groups,
        vec![
            LayerGroup::TokenEmbedding,
            LayerGroup::Block(0),
            LayerGroup::Block(1),
            LayerGroup::OutputNorm,
            LayerGroup::Other("rope_freqs".into())
        ]
    );
    let total: u64 = regions.iter().map(|r| r.tensor_bytes).sum();
    assert_eq!(total, model.tensor_bytes());
    for r in &regions {
        for e in &r.extents {
            assert_eq!(e.start % 4096, 0);
            assert_eq!(e.end % 4096, 0);
        }
        for t in &r.tensors {
            assert!(
                r.extents
                    .iter()
                    .any(|e| e.start <= t.offset && t.offset + t.size <= e.end),
                "{} not covered",
                t.name
            );
        }
    }
    let blk0 = &regions[1];
    assert_eq!(blk0.tensors.len(), 3);
    assert_eq!(blk0.extents.len(), 2, "{:?}", blk0.extents);
    assert_eq!(
        regions[0].extents,
        vec![Extent {
            shard: 0,
            start: 0,
            end: 8192
        }]
    );
}

#[test]
fn writer_refuses_what_would_not_parse() {
    let mut w = GgufWriter::new();
    w.add_metadata(
        "a",
        OwnedValue::Array(ValueType::U8, vec![OwnedValue::U16(1)]),
    );
    assert_eq!(
        w.layout().unwrap_err(),
        WriteError::MixedArray {
            key: "a".into(),
            expected: ValueType::U8,
            found: ValueType::U16
        }
    );

    let mut w = GgufWriter::new();
    w.add_metadata("general.alignment", OwnedValue::U32(48));
    assert_eq!(w.layout().unwrap_err(), WriteError::BadAlignment);

    assert_eq!(
        GgufWriter::new().with_version(1).layout().unwrap_err(),
        WriteError::UnsupportedVersion(1)
    );

    let mut w = GgufWriter::new();
    w.add_tensor("t", &[1, 1, 1, 1, 1], GgmlType::F32);
    assert!(matches!(
        w.layout().unwrap_err(),
        WriteError::TooManyDims { n_dims: 5, .. }
    ));

    let mut w = GgufWriter::new();
    w.add_tensor("t", &[16], GgmlType::Q4_K);
    assert!(matches!(
        w.layout().unwrap_err(),
        WriteError::RowNotBlockMultiple { ne0: 16, .. }
    ));

    let mut w = GgufWriter::new();
    w.add_tensor("t", &[1 << 40, 1 << 40], GgmlType::F32);
    assert!(matches!(
        w.layout().unwrap_err(),
        WriteError::SizeOverflow { .. }
    ));

    let mut w = GgufWriter::new();
    w.add_tensor("t", &[8], GgmlType::F32);
    let err = w
        .layout()
        .unwrap()
        .write(&mut Vec::new(), |_, sink| sink.write_all(&[1, 2, 3]))
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
}
