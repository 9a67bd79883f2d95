//! Property tests: whatever the writer writes, the parser reads back identically, for random
//! metadata of every value type (nested arrays included) and tensors of every ggml type.

use modelhost_protocol::gguf::{GgufFile, GgufWriter, OwnedValue, ValueType};
use modelhost_protocol::GgmlType;
use proptest::collection::vec;
use proptest::prelude::*;

fn float32() -> impl Strategy<Value = f32> {
    prop::num::f32::NORMAL
        | prop::num::f32::ZERO
        | prop::num::f32::SUBNORMAL
        | prop::num::f32::INFINITE
}

fn float64() -> impl Strategy<Value = f64> {
    prop::num::f64::NORMAL | prop::num::f64::ZERO | prop::num::f64::INFINITE
}

fn scalar_of(ty: ValueType) -> BoxedStrategy<OwnedValue> {
    match ty {
        ValueType::U8 => any::<u8>().prop_map(OwnedValue::U8).boxed(),
        ValueType::I8 => any::<i8>().prop_map(OwnedValue::I8).boxed(),
        ValueType::U16 => any::<u16>().prop_map(OwnedValue::U16).boxed(),
        ValueType::I16 => any::<i16>().prop_map(OwnedValue::I16).boxed(),
        ValueType::U32 => any::<u32>().prop_map(OwnedValue::U32).boxed(),
        ValueType::I32 => any::<i32>().prop_map(OwnedValue::I32).boxed(),
        ValueType::U64 => any::<u64>().prop_map(OwnedValue::U64).boxed(),
        ValueType::I64 => any::<i64>().prop_map(OwnedValue::I64).boxed(),
        ValueType::F32 => float32().prop_map(OwnedValue::F32).boxed(),
        ValueType::F64 => float64().prop_map(OwnedValue::F64).boxed(),
        ValueType::Bool => any::<bool>().prop_map(OwnedValue::Bool).boxed(),
        // Arbitrary bytes: string values need not be UTF-8 to round-trip.
        ValueType::String => vec(any::<u8>(), 0..24).prop_map(OwnedValue::String).boxed(),
        ValueType::Array => unreachable!("arrays are built by value_of"),
    }
}

fn scalar_type() -> impl Strategy<Value = ValueType> {
    prop::sample::select(
        ValueType::ALL
            .iter()
            .copied()
            .filter(|t| *t != ValueType::Array)
            .collect::<Vec<_>>(),
    )
}

/// Any value: a scalar, an array of scalars, or an array of arrays (homogeneous at each level).
fn value() -> impl Strategy<Value = OwnedValue> {
    let scalar = scalar_type().prop_flat_map(scalar_of);
    let array = scalar_type().prop_flat_map(|t| {
        vec(scalar_of(t), 0..6).prop_map(move |items| OwnedValue::Array(t, items))
    });
    let nested = scalar_type().prop_flat_map(|t| {
        vec(vec(scalar_of(t), 0..4), 0..4).prop_map(move |rows| {
            OwnedValue::Array(
                ValueType::Array,
                rows.into_iter().map(|r| OwnedValue::Array(t, r)).collect(),
            )
        })
    });
    prop_oneof![4 => scalar, 2 => array, 1 => nested]
}

fn ggml_type() -> impl Strategy<Value = GgmlType> {
    prop::sample::select(GgmlType::all().collect::<Vec<_>>())
}

/// A tensor: a type, 1 to 4 dimensions with the first a whole number of blocks.
fn tensor() -> impl Strategy<Value = (GgmlType, Vec<u64>)> {
    (ggml_type(), 1u64..4, vec(1u64..4, 0..3)).prop_map(|(ty, blocks, rest)| {
        let mut dims = vec![blocks * u64::from(ty.block_size())];
        dims.extend(rest);
        (ty, dims)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn written_files_parse_back_identically(
        entries in vec(value(), 0..12),
        tensors in vec(tensor(), 0..10),
        version in 2u32..=3,
        alignment in prop::option::of(prop::sample::select(vec![1u32, 8, 32, 64, 4096])),
    ) {
        let mut writer = GgufWriter::new().with_version(version);
        let mut expected_meta = Vec::new();
        if let Some(a) = alignment {
            writer.add_metadata("general.alignment", OwnedValue::U32(a));
            expected_meta.push(("general.alignment".to_owned(), OwnedValue::U32(a)));
        }
        for (i, v) in entries.iter().enumerate() {
            let key = format!("test.key_{i}");
            writer.add_metadata(key.clone(), v.clone());
            expected_meta.push((key, v.clone()));
        }
        for (i, (ty, dims)) in tensors.iter().enumerate() {
            writer.add_tensor(format!("blk.{i}.w"), dims, *ty);
        }
        let layout = writer.layout().unwrap();
        // Each tensor's bytes are its index, so misplaced data would show.
        let bytes = layout.to_bytes(|t, data| {
            let index: u8 = t.spec.name[4..].split('.').next().unwrap().parse().unwrap();
            data.fill(index);
        });

        let file = GgufFile::parse(&bytes).unwrap();
        prop_assert_eq!(file.version(), version);
        prop_assert_eq!(file.alignment(), u64::from(alignment.unwrap_or(32)));
        prop_assert_eq!(file.data_offset(), layout.data_offset);
        let parsed_meta: Vec<_> = file
            .metadata()
            .iter()
            .map(|e| (e.key.to_owned(), e.value.to_owned_value()))
            .collect();
        prop_assert_eq!(parsed_meta, expected_meta);
        prop_assert_eq!(file.tensors().len(), tensors.len());
        for (i, (t, (ty, dims))) in file.tensors().iter().zip(&tensors).enumerate() {
            prop_assert_eq!(t.ggml_type(), *ty);
            prop_assert_eq!(t.dims(), dims.as_slice());
            prop_assert_eq!(t.relative_offset(), layout.tensors[i].offset);
            prop_assert_eq!(t.size(), ty.bytes_for(dims.iter().product()).unwrap());
            prop_assert!(file.tensor_data(t).iter().all(|&b| b == i as u8));
            prop_assert_eq!(file.tensor(t.name()), Some(t));
        }
    }

    #[test]
    fn streamed_and_in_memory_writes_agree(tensors in vec(tensor(), 1..6)) {
        let mut writer = GgufWriter::new();
        writer.add_metadata("general.architecture", OwnedValue::string("llama"));
        for (i, (ty, dims)) in tensors.iter().enumerate() {
            writer.add_tensor(format!("t{i}"), dims, *ty);
        }
        let layout = writer.layout().unwrap();
        let in_memory = layout.to_bytes(|t, data| data.fill(t.spec.name.len() as u8));
        let mut streamed = Vec::new();
        layout
            .write(&mut streamed, |t, sink| sink.write_all(&vec![t.spec.name.len() as u8; t.size as usize]))
            .unwrap();
        prop_assert_eq!(streamed.len() as u64, layout.total_len);
        prop_assert_eq!(streamed, in_memory);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        let _ = GgufFile::parse(&bytes);
    }

    #[test]
    fn corrupting_any_header_byte_never_panics(
        entries in vec(value(), 0..4),
        position in any::<prop::sample::Index>(),
        replacement in any::<u8>(),
    ) {
        let mut writer = GgufWriter::new();
        for (i, v) in entries.iter().enumerate() {
            writer.add_metadata(format!("k{i}"), v.clone());
        }
        writer.add_tensor("t", &[64], GgmlType::Q8_0);
        let layout = writer.layout().unwrap();
        let mut bytes = layout.to_bytes(|_, _| {});
        let i = position.index(layout.data_offset as usize);
        bytes[i] = replacement;
        if let Err(e) = GgufFile::parse(&bytes) {
            prop_assert!(e.offset <= bytes.len() as u64);
        }
    }
}
