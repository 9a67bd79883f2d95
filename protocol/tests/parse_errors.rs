//! One case per parse error, each built from literal bytes, each checking the exact byte offset,
//! field and error. `every_error_kind_has_a_case` fails to compile when a variant is added to
//! `ErrorKind` without a case here.

use modelhost_protocol::gguf::limits::{MAX_ALIGNMENT, MAX_METADATA_ENTRIES};
use modelhost_protocol::gguf::{ErrorKind, Field, GgufError, GgufFile, ValueType};
use std::collections::BTreeSet;

fn le32(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}
fn le64(v: u64) -> [u8; 8] {
    v.to_le_bytes()
}
/// A GGUF string: u64 length, then the bytes.
fn gstr(s: &[u8]) -> Vec<u8> {
    [&le64(s.len() as u64)[..], s].concat()
}
/// Header: magic, version 3, tensor count, metadata count (24 bytes).
fn header(tensors: u64, kvs: u64) -> Vec<u8> {
    [&b"GGUF\x03\x00\x00\x00"[..], &le64(tensors), &le64(kvs)].concat()
}
/// A tensor descriptor.
fn tensor(name: &str, dims: &[u64], ty: u32, offset: u64) -> Vec<u8> {
    let mut out = gstr(name.as_bytes());
    out.extend_from_slice(&le32(dims.len() as u32));
    for d in dims {
        out.extend_from_slice(&le64(*d));
    }
    out.extend_from_slice(&le32(ty));
    out.extend_from_slice(&le64(offset));
    out
}

/// The error std reports for these bytes (built at run time: a literal would be linted).
fn utf8_error_of(bytes: Vec<u8>) -> std::str::Utf8Error {
    String::from_utf8(bytes).unwrap_err().utf8_error()
}

fn key(k: &str) -> Field {
    Field::MetadataValue { key: k.into() }
}
fn tname(t: &str) -> String {
    t.to_owned()
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    offset: u64,
    field: Field,
    kind: ErrorKind,
}

fn cases() -> Vec<Case> {
    // Metadata entries start at byte 24; an entry with the one-byte key "a" has its type tag at 33
    // and its value at 37.
    let one_u8_kv = |k: &[u8]| [gstr(k), le32(0).to_vec(), vec![7u8]].concat();
    // A file with one tensor "t" (descriptor at 24, 33 bytes long) has its data section at 64.
    let one_tensor = |dims: &[u64], ty: u32, off: u64, data: usize| {
        [
            header(1, 0),
            tensor("t", dims, ty, off),
            vec![0; 64 - 57 + data],
        ]
        .concat()
    };
    // Where the offset field of the first tensor "t" with one dimension sits.
    let t_offset_field = 24 + 8 + 1 + 4 + 8 + 4;

    vec![
        Case {
            name: "UnexpectedEof",
            bytes: b"GGUF\x03\x00\x00\x00\x01\x00".to_vec(),
            offset: 8,
            field: Field::TensorCount,
            kind: ErrorKind::UnexpectedEof {
                needed: 8,
                available: 2,
            },
        },
        Case {
            name: "BadMagic",
            bytes: [&b"GGML\x03\x00\x00\x00"[..], &le64(0), &le64(0)].concat(),
            offset: 0,
            field: Field::Magic,
            kind: ErrorKind::BadMagic { found: *b"GGML" },
        },
        Case {
            name: "Version1",
            bytes: [&b"GGUF\x01\x00\x00\x00"[..], &le32(0), &le32(0)].concat(),
            offset: 4,
            field: Field::Version,
            kind: ErrorKind::Version1,
        },
        Case {
            name: "BigEndian",
            bytes: [&b"GGUF\x00\x00\x00\x03"[..], &[0; 16]].concat(),
            offset: 4,
            field: Field::Version,
            kind: ErrorKind::BigEndian { version: 3 },
        },
        Case {
            name: "FutureVersion",
            bytes: [&b"GGUF\x04\x00\x00\x00"[..], &[0; 16]].concat(),
            offset: 4,
            field: Field::Version,
            kind: ErrorKind::FutureVersion(4),
        },
        Case {
            name: "VersionZero",
            bytes: [&b"GGUF\x00\x00\x00\x00"[..], &[0; 16]].concat(),
            offset: 4,
            field: Field::Version,
            kind: ErrorKind::VersionZero,
        },
        Case {
            name: "CountOverCap",
            bytes: header(0, MAX_METADATA_ENTRIES + 1),
            offset: 16,
            field: Field::MetadataCount,
            kind: ErrorKind::CountOverCap {
                what: "metadata entry count",
                count: MAX_METADATA_ENTRIES + 1,
                cap: MAX_METADATA_ENTRIES,
            },
        },
        Case {
            // Two entries cannot fit in the 13 bytes that follow the header.
            name: "CountExceedsFile",
            bytes: [header(0, 2), vec![0; 13]].concat(),
            offset: 16,
            field: Field::MetadataCount,
            kind: ErrorKind::CountExceedsFile {
                what: "metadata entry count",
                count: 2,
                min_bytes_each: 13,
                remaining: 13,
            },
        },
        Case {
            name: "InvalidUtf8",
            bytes: [header(0, 1), one_u8_kv(b"\xff")].concat(),
            offset: 32,
            field: Field::MetadataKey { index: 0 },
            kind: ErrorKind::InvalidUtf8(utf8_error_of(vec![0xff])),
        },
        Case {
            name: "NameTooLong",
            bytes: [header(1, 0), tensor(&"x".repeat(64), &[1], 0, 0)].concat(),
            offset: 24,
            field: Field::TensorName { index: 0 },
            kind: ErrorKind::NameTooLong { len: 64, max: 63 },
        },
        Case {
            name: "DuplicateKey",
            bytes: [header(0, 2), one_u8_kv(b"a"), one_u8_kv(b"a")].concat(),
            offset: 38,
            field: Field::MetadataKey { index: 1 },
            kind: ErrorKind::DuplicateKey {
                key: "a".into(),
                first_offset: 24,
            },
        },
        Case {
            name: "EmptyKey",
            bytes: [header(0, 1), one_u8_kv(b"")].concat(),
            offset: 24,
            field: Field::MetadataKey { index: 0 },
            kind: ErrorKind::EmptyKey,
        },
        Case {
            name: "UnknownValueType",
            bytes: [header(0, 1), gstr(b"a"), le32(13).to_vec(), vec![0; 8]].concat(),
            offset: 33,
            field: Field::MetadataType { key: "a".into() },
            kind: ErrorKind::UnknownValueType(13),
        },
        Case {
            name: "InvalidBool",
            bytes: [header(0, 1), gstr(b"a"), le32(7).to_vec(), vec![2]].concat(),
            offset: 37,
            field: key("a"),
            kind: ErrorKind::InvalidBool(2),
        },
        Case {
            // Eight levels of array-of-array; the ninth array header is refused.
            name: "ArrayTooDeep",
            bytes: [
                header(0, 1),
                gstr(b"a"),
                le32(9).to_vec(),
                [le32(9), le32(1), le32(0)].concat().repeat(8),
                vec![0; 12],
            ]
            .concat(),
            offset: 37 + 8 * 12,
            field: key("a"),
            kind: ErrorKind::ArrayTooDeep { max_depth: 8 },
        },
        Case {
            name: "AlignmentWrongType",
            bytes: [
                header(0, 1),
                gstr(b"general.alignment"),
                le32(10).to_vec(),
                le64(32).to_vec(),
            ]
            .concat(),
            offset: 24 + 8 + 17 + 4,
            field: key("general.alignment"),
            kind: ErrorKind::AlignmentWrongType {
                found: ValueType::U64,
            },
        },
        Case {
            name: "AlignmentZero",
            bytes: [
                header(0, 1),
                gstr(b"general.alignment"),
                le32(4).to_vec(),
                le32(0).to_vec(),
            ]
            .concat(),
            offset: 53,
            field: key("general.alignment"),
            kind: ErrorKind::AlignmentZero,
        },
        Case {
            name: "AlignmentNotPowerOfTwo",
            bytes: [
                header(0, 1),
                gstr(b"general.alignment"),
                le32(4).to_vec(),
                le32(48).to_vec(),
            ]
            .concat(),
            offset: 53,
            field: key("general.alignment"),
            kind: ErrorKind::AlignmentNotPowerOfTwo(48),
        },
        Case {
            name: "AlignmentTooLarge",
            bytes: [
                header(0, 1),
                gstr(b"general.alignment"),
                le32(4).to_vec(),
                le32(1 << 21).to_vec(),
            ]
            .concat(),
            offset: 53,
            field: key("general.alignment"),
            kind: ErrorKind::AlignmentTooLarge {
                value: 1 << 21,
                cap: MAX_ALIGNMENT,
            },
        },
        Case {
            name: "TooManyDims",
            bytes: [header(1, 0), tensor("t", &[1, 1, 1, 1, 1], 0, 0)].concat(),
            offset: 33,
            field: Field::TensorDims { tensor: tname("t") },
            kind: ErrorKind::TooManyDims { n_dims: 5, max: 4 },
        },
        Case {
            name: "DimTooLarge",
            bytes: [header(1, 0), tensor("t", &[1, 1 << 63], 0, 0)].concat(),
            offset: 45,
            field: Field::TensorDims { tensor: tname("t") },
            kind: ErrorKind::DimTooLarge {
                index: 1,
                value: 1 << 63,
            },
        },
        Case {
            name: "SizeOverflow",
            bytes: [header(1, 0), tensor("t", &[1 << 32, 1 << 32], 0, 0)].concat(),
            offset: 33,
            field: Field::TensorDims { tensor: tname("t") },
            kind: ErrorKind::SizeOverflow,
        },
        Case {
            name: "UnknownTensorType",
            bytes: [header(1, 0), tensor("t", &[1], 99, 0)].concat(),
            offset: 45,
            field: Field::TensorType { tensor: tname("t") },
            kind: ErrorKind::UnknownTensorType(99),
        },
        Case {
            name: "RemovedTensorType",
            bytes: [header(1, 0), tensor("t", &[32], 4, 0)].concat(),
            offset: 45,
            field: Field::TensorType { tensor: tname("t") },
            kind: ErrorKind::RemovedTensorType {
                id: 4,
                name: "q4_2",
            },
        },
        Case {
            name: "RowNotBlockMultiple",
            bytes: [header(1, 0), tensor("t", &[16], 8, 0)].concat(),
            offset: 45,
            field: Field::TensorType { tensor: tname("t") },
            kind: ErrorKind::RowNotBlockMultiple {
                ne0: 16,
                ty: "q8_0",
                block_size: 32,
            },
        },
        Case {
            name: "DuplicateTensorName",
            bytes: [
                header(2, 0),
                tensor("t", &[1], 0, 0),
                tensor("t", &[1], 0, 32),
                vec![0; 64],
            ]
            .concat(),
            offset: 57,
            field: Field::TensorName { index: 1 },
            kind: ErrorKind::DuplicateTensorName {
                name: "t".into(),
                first_offset: 24,
            },
        },
        Case {
            name: "MisalignedTensor",
            bytes: one_tensor(&[1], 0, 1, 64),
            offset: t_offset_field,
            field: Field::TensorOffset { tensor: tname("t") },
            kind: ErrorKind::MisalignedTensor {
                offset: 1,
                alignment: 32,
            },
        },
        Case {
            // The descriptors end at byte 57, so the data would start at 64; the file has 57.
            name: "DataSectionPastEnd",
            bytes: [header(1, 0), tensor("t", &[0], 0, 0)].concat(),
            offset: 57,
            field: Field::DataSection,
            kind: ErrorKind::DataSectionPastEnd {
                data_offset: 64,
                file_len: 57,
            },
        },
        Case {
            name: "TensorPastEnd",
            bytes: one_tensor(&[8], 0, 0, 16),
            offset: t_offset_field,
            field: Field::TensorOffset { tensor: tname("t") },
            kind: ErrorKind::TensorPastEnd {
                start: 64,
                end: 96,
                file_len: 80,
            },
        },
        Case {
            // "a" (8 f32, 32 bytes) ends at 32, so "b" must start there; it starts at 64.
            name: "TensorNotPacked",
            bytes: [
                header(2, 0),
                tensor("a", &[8], 0, 0),
                tensor("b", &[8], 0, 64),
                vec![0; 96 - 90 + 96],
            ]
            .concat(),
            offset: 57 + t_offset_field - 24,
            field: Field::TensorOffset { tensor: tname("b") },
            kind: ErrorKind::TensorNotPacked {
                offset: 64,
                expected: 32,
            },
        },
        Case {
            name: "TensorsOverlap",
            bytes: [
                header(2, 0),
                tensor("a", &[16], 0, 0),
                tensor("b", &[8], 0, 32),
                vec![0; 96 - 90 + 64],
            ]
            .concat(),
            offset: 57 + t_offset_field - 24,
            field: Field::TensorOffset { tensor: tname("b") },
            kind: ErrorKind::TensorsOverlap {
                start: 128,
                end: 160,
                other: "a".into(),
                other_start: 96,
                other_end: 160,
            },
        },
    ]
}

/// Names every variant; adding a variant without extending this match fails to compile.
fn variant_name(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::UnexpectedEof { .. } => "UnexpectedEof",
        ErrorKind::BadMagic { .. } => "BadMagic",
        ErrorKind::Version1 => "Version1",
        ErrorKind::BigEndian { .. } => "BigEndian",
        ErrorKind::FutureVersion(_) => "FutureVersion",
        ErrorKind::VersionZero => "VersionZero",
        ErrorKind::CountOverCap { .. } => "CountOverCap",
        ErrorKind::CountExceedsFile { .. } => "CountExceedsFile",
        ErrorKind::InvalidUtf8(_) => "InvalidUtf8",
        ErrorKind::NameTooLong { .. } => "NameTooLong",
        ErrorKind::DuplicateKey { .. } => "DuplicateKey",
        ErrorKind::EmptyKey => "EmptyKey",
        ErrorKind::UnknownValueType(_) => "UnknownValueType",
        ErrorKind::InvalidBool(_) => "InvalidBool",
        ErrorKind::ArrayTooDeep { .. } => "ArrayTooDeep",
        ErrorKind::AlignmentWrongType { .. } => "AlignmentWrongType",
        ErrorKind::AlignmentZero => "AlignmentZero",
        ErrorKind::AlignmentNotPowerOfTwo(_) => "AlignmentNotPowerOfTwo",
        ErrorKind::AlignmentTooLarge { .. } => "AlignmentTooLarge",
        ErrorKind::TooManyDims { .. } => "TooManyDims",
        ErrorKind::DimTooLarge { .. } => "DimTooLarge",
        ErrorKind::SizeOverflow => "SizeOverflow",
        ErrorKind::UnknownTensorType(_) => "UnknownTensorType",
        ErrorKind::RemovedTensorType { .. } => "RemovedTensorType",
        ErrorKind::RowNotBlockMultiple { .. } => "RowNotBlockMultiple",
        ErrorKind::DuplicateTensorName { .. } => "DuplicateTensorName",
        ErrorKind::MisalignedTensor { .. } => "MisalignedTensor",
        ErrorKind::DataSectionPastEnd { .. } => "DataSectionPastEnd",
        ErrorKind::TensorPastEnd { .. } => "TensorPastEnd",
        ErrorKind::TensorNotPacked { .. } => "TensorNotPacked",
        ErrorKind::TensorsOverlap { .. } => "TensorsOverlap",
    }
}

const ALL_VARIANTS: usize = 31;

#[test]
fn each_case_fails_with_its_offset_field_and_kind() {
    for case in cases() {
        let err = GgufFile::parse(&case.bytes).expect_err(case.name);
        let expected = GgufError {
            offset: case.offset,
            field: case.field.clone(),
            kind: case.kind.clone(),
        };
        assert_eq!(err, expected, "case {}", case.name);
        assert_eq!(variant_name(&err.kind), case.name, "case is misnamed");
    }
}

#[test]
fn every_error_kind_has_a_case() {
    let named: BTreeSet<_> = cases().iter().map(|c| variant_name(&c.kind)).collect();
    assert_eq!(named.len(), ALL_VARIANTS, "covered: {named:?}");
}

#[test]
fn every_truncation_of_a_valid_file_is_an_error_not_a_panic() {
    let valid = [
        header(1, 2),
        gstr(b"general.architecture"),
        le32(8).to_vec(),
        gstr(b"llama"),
        gstr(b"tokens"),
        le32(9).to_vec(),
        le32(8).to_vec(),
        le64(2).to_vec(),
        gstr(b"ab"),
        gstr(b"c"),
        tensor("t", &[8], 0, 0),
    ]
    .concat();
    let data_start = valid.len().next_multiple_of(32);
    let mut padded = valid;
    padded.resize(data_start + 32, 0);
    assert!(GgufFile::parse(&padded).is_ok());
    for len in 0..data_start + 32 {
        let err = GgufFile::parse(&padded[..len]).expect_err("truncated file parsed");
        assert!(
            err.offset <= len as u64,
            "offset {} past end {len}",
            err.offset
        );
    }
}

#[test]
fn messages_name_field_and_offset_and_keep_the_source() {
    let bytes = [header(0, 1), gstr(b"\xff"), le32(0).to_vec(), vec![7]].concat();
    let err = GgufFile::parse(&bytes).unwrap_err();
    assert_eq!(
        err.to_string(),
        "metadata[0].key at byte 32: not valid UTF-8"
    );
    assert!(std::error::Error::source(&err).is_some());

    let err = GgufFile::parse(b"GGUF\x00\x00\x00\x02").unwrap_err();
    assert_eq!(
        err.to_string(),
        "header.version at byte 4: big-endian GGUF (version 2 byte-swapped) is not supported"
    );
}

#[test]
fn an_empty_file_reports_the_missing_magic() {
    let err = GgufFile::parse(b"").unwrap_err();
    assert_eq!(err.field, Field::Magic);
    assert_eq!(
        err.kind,
        ErrorKind::UnexpectedEof {
            needed: 4,
            available: 0
        }
    );
}

#[test]
fn zero_sized_tensors_never_overlap() {
    let bytes = [
        header(2, 0),
        tensor("a", &[0], 0, 0),
        tensor("b", &[8], 0, 0),
        vec![0; 96 - 90 + 32],
    ]
    .concat();
    let file = GgufFile::parse(&bytes).unwrap();
    assert_eq!(file.tensors()[1].byte_range(), 96..128);
    assert_eq!(file.tensors()[0].size(), 0);
}

/// Found by the fuzzer (fuzz/artifacts crash-c0f59cd7): a file whose second key holds an f32 NaN.
/// The harness compared looked-up values and NaN != NaN; the parser was right. Lookups must find
/// the very entry that was parsed.
#[test]
fn fuzz_regression_nan_value_is_found_by_key() {
    let bytes: &[u8] = &[
        0x47, 0x47, 0x55, 0x46, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x67, 0x65, 0x6e, 0x65, 0x72, 0x61, 0x6c, 0x2e, 0x61, 0x72, 0x63, 0x68, 0x69,
        0x74, 0x65, 0x63, 0x74, 0x75, 0x72, 0x65, 0x08, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x6c, 0x6c, 0x61, 0x6d, 0x61, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x67, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x06,
        0x00, 0x00, 0x00, 0x71, 0xff, 0xff, 0xff, 0xff, 0x5f, 0x65, 0x6c, 0x68, 0x6f, 0x73, 0x7e,
        0x11,
    ];
    let file = GgufFile::parse(bytes).expect("the fuzzer's input is a valid file");
    assert_eq!(file.metadata().len(), 2);
    for entry in file.metadata() {
        assert_eq!(file.entry(entry.key).map(|e| e.offset), Some(entry.offset));
    }
    let nan = file.metadata().iter().find_map(|e| match e.value {
        modelhost_protocol::gguf::Value::F32(v) => Some(v),
        _ => None,
    });
    assert!(nan.is_some_and(f32::is_nan));
}
