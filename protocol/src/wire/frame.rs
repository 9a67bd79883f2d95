//! Framing: an 8-byte handshake preamble, then length-prefixed postcard frames.
//!
//! ```text
//! preamble: magic u32 LE ("MHWK") | version u16 LE | reserved u16 (0)
//! frame:    length u32 LE (≤ MAX_FRAME_LEN) | postcard-encoded Message
//! ```
//!
//! Decoding checks before it parses: a frame's length is checked against the cap as soon as its
//! four length bytes arrive, and nothing is allocated for it until then.

use super::messages::Message;

/// The preamble's magic number: "MHWK" read as little-endian.
pub const MAGIC: u32 = u32::from_le_bytes(*b"MHWK");
/// The protocol version this build speaks. A peer with another version is refused by name.
/// Version 3 added generation (Submit, Token, Finished, Cancel).
pub const PROTOCOL_VERSION: u16 = 4;
/// The largest frame accepted: an Attach for a model with tens of thousands of tensors fits.
pub const MAX_FRAME_LEN: u32 = 16 << 20;
pub const PREAMBLE_LEN: usize = 8;

/// A wire violation, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error(
        "bad magic {found:#010x} in the handshake (expected {MAGIC:#010x}): not a modelhost peer"
    )]
    BadMagic { found: u32 },
    #[error("protocol version {theirs} is not this build's version {PROTOCOL_VERSION}")]
    VersionMismatch { theirs: u16 },
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge { len: u32, max: u32 },
    #[error("unknown message type in a frame of {len} bytes")]
    UnknownMessage { len: u32 },
    #[error("malformed {len}-byte frame: {reason}")]
    Malformed { len: u32, reason: String },
    #[error("{extra} unexpected bytes after the message in a {len}-byte frame")]
    TrailingBytes { len: u32, extra: usize },
}

/// The preamble this build sends.
pub fn preamble() -> [u8; PREAMBLE_LEN] {
    let mut out = [0u8; PREAMBLE_LEN];
    out[..4].copy_from_slice(&MAGIC.to_le_bytes());
    out[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out
}

/// Checks a peer's preamble.
pub fn check_preamble(bytes: &[u8; PREAMBLE_LEN]) -> Result<(), WireError> {
    let magic = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if magic != MAGIC {
        return Err(WireError::BadMagic { found: magic });
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != PROTOCOL_VERSION {
        return Err(WireError::VersionMismatch { theirs: version });
    }
    Ok(())
}

/// Encodes one message as a frame.
pub fn encode(message: &Message) -> Vec<u8> {
    // Serializing plain data into a Vec cannot fail.
    let payload = postcard::to_allocvec(message).unwrap_or_default();
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&payload);
    frame
}

/// Decodes one frame's payload.
pub fn decode_payload(payload: &[u8]) -> Result<Message, WireError> {
    let len = payload.len() as u32;
    // The variant index leads the payload as a varint; name an unknown one before decoding.
    if postcard::take_from_bytes::<u32>(payload).is_ok_and(|(index, _)| index > LAST_VARIANT) {
        return Err(WireError::UnknownMessage { len });
    }
    match postcard::take_from_bytes::<Message>(payload) {
        Ok((message, [])) => Ok(message),
        Ok((_, rest)) => Err(WireError::TrailingBytes {
            len,
            extra: rest.len(),
        }),
        Err(e) => Err(WireError::Malformed {
            len,
            reason: e.to_string(),
        }),
    }
}

/// The index of `Message`'s last variant (`Cancel`). `tests/wire.rs` holds it to the enum: every
/// message kind must decode, and the next index must be unknown.
const LAST_VARIANT: u32 = 12;

/// Accumulates bytes from a stream and yields whole frames.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buffer: Vec<u8>,
}

impl FrameDecoder {
    pub fn new() -> FrameDecoder {
        FrameDecoder::default()
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` when more bytes are needed, or the violation.
    pub fn next_message(&mut self) -> Result<Option<Message>, WireError> {
        let Some(header) = self.buffer.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        if len > MAX_FRAME_LEN {
            return Err(WireError::FrameTooLarge {
                len,
                max: MAX_FRAME_LEN,
            });
        }
        let end = 4 + len as usize;
        if self.buffer.len() < end {
            return Ok(None);
        }
        let message = decode_payload(&self.buffer[4..end]);
        self.buffer.drain(..end);
        message.map(Some)
    }

    /// Bytes held that do not yet form a frame.
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }
}
