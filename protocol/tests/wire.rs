//! The wire protocol: every violation from literal bytes, and round trips through the decoder.

use modelhost_protocol::wire::{
    check_preamble, decode_payload, encode, preamble, FinishReason, Finished, FrameDecoder,
    GeneratedToken, Inference, Message, Progress, ReadyStats, Sampling, Submit, TokenLogprob,
    WireError, WorkerPhase, MAX_FRAME_LEN,
};
use proptest::prelude::*;

/// Names every variant; a new variant without a case here fails to compile.
fn variant(e: &WireError) -> &'static str {
    match e {
        WireError::BadMagic { .. } => "BadMagic",
        WireError::VersionMismatch { .. } => "VersionMismatch",
        WireError::FrameTooLarge { .. } => "FrameTooLarge",
        WireError::UnknownMessage { .. } => "UnknownMessage",
        WireError::Malformed { .. } => "Malformed",
        WireError::TrailingBytes { .. } => "TrailingBytes",
    }
}

fn frame_error(bytes: &[u8]) -> WireError {
    let mut decoder = FrameDecoder::new();
    decoder.push(bytes);
    decoder.next_message().expect_err("a violation")
}

#[test]
fn every_violation_from_literal_bytes() {
    let cases: Vec<(WireError, &str)> = vec![
        (
            check_preamble(b"HTTP\x01\x00\x00\x00").unwrap_err(),
            "BadMagic",
        ),
        (
            check_preamble(b"MHWK\x01\x00\x00\x00").unwrap_err(),
            "VersionMismatch",
        ),
        (frame_error(b"\x01\x00\x00\x01"), "FrameTooLarge"),
        // Variant index 0x7f: no such message.
        (frame_error(b"\x01\x00\x00\x00\x7f"), "UnknownMessage"),
        // Failed { error } whose string claims 10 bytes and has 2.
        (frame_error(b"\x04\x00\x00\x00\x05\x0aab"), "Malformed"),
        // Shutdown (variant 7) then a stray byte.
        (frame_error(b"\x02\x00\x00\x00\x07\x00"), "TrailingBytes"),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (err, name) in &cases {
        assert_eq!(variant(err), *name, "{err}");
        seen.insert(*name);
    }
    assert_eq!(seen.len(), 6);
    assert_eq!(
        check_preamble(b"HTTP\x01\x00\x00\x00").unwrap_err(),
        WireError::BadMagic {
            found: u32::from_le_bytes(*b"HTTP")
        }
    );
    assert_eq!(
        check_preamble(b"MHWK\x01\x00\x00\x00").unwrap_err(),
        WireError::VersionMismatch { theirs: 1 }
    );
    assert_eq!(
        frame_error(b"\x01\x00\x00\x01"),
        WireError::FrameTooLarge {
            len: 0x0100_0001,
            max: MAX_FRAME_LEN
        }
    );
    assert!(check_preamble(&preamble()).is_ok());
}

/// An Attach with a real manifest crosses the wire intact (postcard needs every type in it to be
/// self-describing-free: no untagged or flattened serde forms).
#[test]
fn an_attach_with_a_manifest_round_trips() {
    let attach = sample_attach();
    let mut decoder = FrameDecoder::new();
    decoder.push(&encode(&attach));
    assert_eq!(decoder.next_message(), Ok(Some(attach)));
}

/// The wire index of each message: its place in the enum, which postcard writes as the frame's
/// first byte. A new variant fails to compile here until it is given its index, and then
/// `every_message_kind_decodes` fails until it has a sample that the decoder accepts.
fn wire_index(message: &Message) -> u8 {
    match message {
        Message::Hello(_) => 0,
        Message::Attach(_) => 1,
        Message::Progress(_) => 2,
        Message::LayerReady { .. } => 3,
        Message::Ready(_) => 4,
        Message::Failed { .. } => 5,
        Message::Heartbeat { .. } => 6,
        Message::Shutdown => 7,
        Message::Detach => 8,
        Message::Submit(_) => 9,
        Message::Token(_) => 10,
        Message::Finished(_) => 11,
        Message::Cancel { .. } => 12,
    }
}

/// One message of every kind.
fn every_kind() -> Vec<Message> {
    use modelhost_protocol::placement::{DeviceId, DeviceSpec};
    use modelhost_protocol::wire::Hello;
    vec![
        Message::Hello(Hello {
            worker_id: "w".into(),
            pid: 7,
            device: DeviceId::cuda(0),
            inventory: vec![DeviceSpec {
                id: DeviceId::cuda(0),
                name: "gpu".into(),
                total_bytes: 8,
                free_bytes: 4,
                limit_bytes: None,
            }],
            model: Some("m".into()),
        }),
        sample_attach(),
        Message::Progress(Progress {
            phase: WorkerPhase::Kv,
            done_bytes: 1,
            total_bytes: 2,
            layers_done: 3,
            layers_total: 4,
        }),
        Message::LayerReady { layer: 3 },
        Message::Ready(ReadyStats::default()),
        Message::Failed { error: "no".into() },
        Message::Heartbeat { seq: 1 },
        Message::Shutdown,
        Message::Detach,
        Message::Submit(Box::new(Submit {
            request: 1,
            prompt: vec![2, 9259, 236764],
            sampling: Sampling {
                temperature: 0.7,
                logit_bias: vec![(5, -100.0)],
                seed: 42,
                ..Sampling::default()
            },
            max_tokens: 16,
            stop_tokens: vec![1, 106],
            banned_tokens: vec![],
            min_tokens: 0,
            logprobs: Some(2),
        })),
        Message::Token(GeneratedToken {
            request: 1,
            token: 1902,
            logprob: Some(-0.25),
            top: vec![TokenLogprob {
                token: 1902,
                logprob: -0.25,
            }],
        }),
        Message::Finished(Finished {
            request: 1,
            reason: FinishReason::Error("prompt of 9 tokens exceeds the context".into()),
            prompt_tokens: 3,
            cached_tokens: 1,
            completion_tokens: 1,
        }),
        Message::Cancel { request: 1 },
    ]
}

/// The decoder names an unknown message by comparing the frame's variant index with the last
/// one it knows. That bound must follow the enum: every kind decodes, and the next index is
/// unknown.
#[test]
fn every_message_kind_decodes() {
    let messages = every_kind();
    let mut indices: Vec<u8> = messages.iter().map(wire_index).collect();
    for message in &messages {
        let frame = encode(message);
        assert_eq!(frame[4], wire_index(message), "{message:?}");
        assert_eq!(decode_payload(&frame[4..]).as_ref(), Ok(message));
    }
    indices.sort_unstable();
    let last = *indices.last().unwrap();
    assert_eq!(
        indices,
        (0..=last).collect::<Vec<_>>(),
        "a sample of every kind"
    );
    assert!(matches!(
        decode_payload(&[last + 1]),
        Err(WireError::UnknownMessage { .. })
    ));
}

fn sample_attach() -> Message {
    use modelhost_protocol::gguf::{GgufFile, GgufModel, GgufWriter, OwnedValue, ValueType};
    use modelhost_protocol::layers::PageSize;
    use modelhost_protocol::manifest::ModelManifest;
    use modelhost_protocol::placement::DeviceId;
    use modelhost_protocol::wire::{Assignment, Attach, EngineSpec, FileCheck, WorkerOptions};
    use modelhost_protocol::GgmlType;

    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", OwnedValue::string("llama"))
        .add_metadata("llama.block_count", OwnedValue::U32(2))
        .add_metadata("llama.context_length", OwnedValue::U32(64))
        .add_metadata("llama.embedding_length", OwnedValue::U32(32))
        .add_metadata(
            "llama.attention.head_count",
            OwnedValue::Array(ValueType::U32, vec![OwnedValue::U32(4), OwnedValue::U32(2)]),
        )
        .add_metadata("llama.attention.head_count_kv", OwnedValue::U32(1))
        .add_tensor("blk.0.w", &[32], GgmlType::Q8_0)
        .add_tensor("blk.1.w", &[32], GgmlType::Q8_0);
    let bytes = w.layout().unwrap().to_bytes(|_, _| {});
    let model = GgufModel::single("m", GgufFile::parse(&bytes).unwrap()).unwrap();
    let manifest = ModelManifest::from_model(&model, PageSize::FOUR_KIB).unwrap();
    Message::Attach(Box::new(Attach {
        model: "m".into(),
        manifest,
        files: vec![FileCheck {
            len: bytes.len() as u64,
            header_len: 10,
            header_hash: 7,
        }],
        assignment: Assignment {
            device: DeviceId::cuda(1),
            layers: vec![0, 1],
            output: true,
            kv_bytes: 5,
            scratch_bytes: 6,
        },
        options: WorkerOptions::default(),
        heartbeat_ms: 500,
        engine: EngineSpec {
            context: 64,
            slots: 2,
            batch: 32,
            kv_type: GgmlType::F16,
            swa_full: false,
            threads: 2,
        },
    }))
}

#[test]
fn a_huge_length_is_refused_before_its_bytes_arrive() {
    let mut decoder = FrameDecoder::new();
    decoder.push(&u32::MAX.to_le_bytes());
    assert!(matches!(
        decoder.next_message(),
        Err(WireError::FrameTooLarge { .. })
    ));
    assert_eq!(
        decoder.pending(),
        4,
        "nothing was allocated for the frame's body"
    );
}

#[test]
fn partial_frames_wait_for_more_bytes() {
    let frame = encode(&Message::Heartbeat { seq: 300 });
    let mut decoder = FrameDecoder::new();
    for byte in &frame[..frame.len() - 1] {
        decoder.push(&[*byte]);
        assert_eq!(decoder.next_message(), Ok(None));
    }
    decoder.push(&frame[frame.len() - 1..]);
    assert_eq!(
        decoder.next_message(),
        Ok(Some(Message::Heartbeat { seq: 300 }))
    );
    assert_eq!(decoder.pending(), 0);
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        any::<u64>().prop_map(|seq| Message::Heartbeat { seq }),
        any::<u32>().prop_map(|layer| Message::LayerReady { layer }),
        ".{0,40}".prop_map(|error| Message::Failed { error }),
        Just(Message::Shutdown),
        Just(Message::Detach),
        any::<u64>().prop_map(|request| Message::Cancel { request }),
        (
            any::<u64>(),
            prop::collection::vec(any::<u32>(), 0..40),
            any::<u64>(),
            any::<u32>()
        )
            .prop_map(
                |(request, prompt, seed, max_tokens)| Message::Submit(Box::new(Submit {
                    request,
                    prompt,
                    sampling: Sampling {
                        seed,
                        temperature: 1.0,
                        ..Sampling::default()
                    },
                    max_tokens,
                    stop_tokens: vec![1, 2],
                    banned_tokens: if seed % 2 == 0 { vec![3] } else { vec![] },
                    min_tokens: 1,
                    logprobs: None,
                }))
            ),
        (any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(request, token, n)| {
            Message::Finished(Finished {
                request,
                reason: FinishReason::Length,
                prompt_tokens: n,
                cached_tokens: n / 2,
                completion_tokens: token,
            })
        }),
        (any::<u64>(), any::<u32>()).prop_map(|(request, token)| Message::Token(GeneratedToken {
            request,
            token,
            logprob: None,
            top: Vec::new(),
        })),
        (any::<u64>(), any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(d, t, l, lt)| {
            Message::Progress(Progress {
                phase: WorkerPhase::Upload,
                done_bytes: d,
                total_bytes: t,
                layers_done: l,
                layers_total: lt,
            })
        }),
        (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(w, k, ready)| Message::Ready(
            ReadyStats {
                weights_bytes: w,
                kv_bytes: k,
                scratch_bytes: 1,
                elapsed_ms: 2,
                inference: if ready {
                    Inference::Ready {
                        kernels: "avx2".into(),
                        threads: 2,
                        slots: 4,
                    }
                } else {
                    Inference::Unavailable {
                        reason: "unsupported tensor type iq2_xxs in blk.0.ffn_down.weight".into(),
                    }
                },
            }
        )),
    ]
}

proptest! {
    #[test]
    fn messages_round_trip_through_any_chunking(messages in prop::collection::vec(message(), 1..8), chunk in 1usize..13) {
        let stream: Vec<u8> = messages.iter().flat_map(encode).collect();
        let mut decoder = FrameDecoder::new();
        let mut decoded = Vec::new();
        for piece in stream.chunks(chunk) {
            decoder.push(piece);
            while let Some(m) = decoder.next_message().unwrap() {
                decoded.push(m);
            }
        }
        prop_assert_eq!(decoded, messages);
    }

    #[test]
    fn arbitrary_payloads_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_payload(&bytes);
    }
}
