//! The wire protocol: every violation from literal bytes, and round trips through the decoder.

use modelhost_protocol::wire::{
    check_preamble, decode_payload, encode, preamble, FrameDecoder, Message, Progress, ReadyStats, WireError, WorkerPhase,
    MAX_FRAME_LEN,
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
        (check_preamble(b"HTTP\x01\x00\x00\x00").unwrap_err(), "BadMagic"),
        (check_preamble(b"MHWK\x02\x00\x00\x00").unwrap_err(), "VersionMismatch"),
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
    assert_eq!(check_preamble(b"HTTP\x01\x00\x00\x00").unwrap_err(), WireError::BadMagic { found: u32::from_le_bytes(*b"HTTP") });
    assert_eq!(check_preamble(b"MHWK\x02\x00\x00\x00").unwrap_err(), WireError::VersionMismatch { theirs: 2 });
    assert_eq!(frame_error(b"\x01\x00\x00\x01"), WireError::FrameTooLarge { len: 0x0100_0001, max: MAX_FRAME_LEN });
    assert!(check_preamble(&preamble()).is_ok());
    // The last variant still decodes: LAST_VARIANT is right.
    assert_eq!(decode_payload(b"\x08"), Ok(Message::Detach));
}

#[test]
fn a_huge_length_is_refused_before_its_bytes_arrive() {
    let mut decoder = FrameDecoder::new();
    decoder.push(&u32::MAX.to_le_bytes());
    assert!(matches!(decoder.next_message(), Err(WireError::FrameTooLarge { .. })));
    assert_eq!(decoder.pending(), 4, "nothing was allocated for the frame's body");
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
    assert_eq!(decoder.next_message(), Ok(Some(Message::Heartbeat { seq: 300 })));
    assert_eq!(decoder.pending(), 0);
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        any::<u64>().prop_map(|seq| Message::Heartbeat { seq }),
        any::<u32>().prop_map(|layer| Message::LayerReady { layer }),
        ".{0,40}".prop_map(|error| Message::Failed { error }),
        Just(Message::Shutdown),
        Just(Message::Detach),
        (any::<u64>(), any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(d, t, l, lt)| Message::Progress(Progress {
            phase: WorkerPhase::Upload,
            done_bytes: d,
            total_bytes: t,
            layers_done: l,
            layers_total: lt,
        })),
        (any::<u64>(), any::<u64>()).prop_map(|(w, k)| Message::Ready(ReadyStats { weights_bytes: w, kv_bytes: k, scratch_bytes: 1, elapsed_ms: 2 })),
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
