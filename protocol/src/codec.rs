//! Framing: `[version: u8][bincode payload]`, decoded under a hard size limit.
//!
//! The length prefix itself belongs to the stream transport; this module turns one frame's
//! bytes into a message and back. Decoding never panics and never allocates more than
//! [`FRAME_BYTES_MAX`], whatever the bytes claim.

use bincode::config::{self, Configuration, Limit, LittleEndian, Varint};
use bincode::{Decode, Encode};

/// The largest frame a peer may send (DESIGN §5).
pub const FRAME_BYTES_MAX: usize = 1 << 20;

/// The version byte every frame starts with. 2: POSIX attributes in `Stat` and `OpenArgs`,
/// `SetAttr`, directory renames (a build of version 1 is refused with a clear error).
pub const WIRE_VERSION: u8 = 2;

/// bincode configuration with the allocation limit built in.
pub const WIRE: Configuration<LittleEndian, Varint, Limit<FRAME_BYTES_MAX>> =
    config::standard().with_limit::<FRAME_BYTES_MAX>();

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The frame is longer than [`FRAME_BYTES_MAX`].
    #[error("frame of {0} bytes exceeds the {FRAME_BYTES_MAX}-byte limit")]
    TooLarge(usize),
    /// The frame is empty.
    #[error("empty frame")]
    Empty,
    /// The sender speaks a protocol version this build does not.
    #[error("unknown protocol version {0} (this build speaks {WIRE_VERSION})")]
    UnknownVersion(u8),
    /// The payload is not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The payload decoded but bytes were left over.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
}

/// Why a message could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The message does not fit in one frame.
    #[error("message of {0} bytes exceeds the {FRAME_BYTES_MAX}-byte frame limit")]
    TooLarge(usize),
    /// bincode refused the value.
    #[error("encoding failed: {0}")]
    Bincode(String),
}

/// Encodes `msg` as one frame.
///
/// # Errors
/// [`EncodeError::TooLarge`] if the frame would exceed [`FRAME_BYTES_MAX`] (bincode's
/// encoder ignores the configured limit, so this checks it).
pub fn encode<T: Encode>(msg: &T) -> Result<Vec<u8>, EncodeError> {
    let mut frame = vec![WIRE_VERSION];
    bincode::encode_into_std_write(msg, &mut frame, WIRE)
        .map_err(|e| EncodeError::Bincode(e.to_string()))?;
    if frame.len() > FRAME_BYTES_MAX {
        return Err(EncodeError::TooLarge(frame.len()));
    }
    Ok(frame)
}

/// Decodes one frame produced by [`encode`].
///
/// # Errors
/// Every way the bytes can be wrong is a [`DecodeError`]; none panics.
pub fn decode<T: Decode<()>>(frame: &[u8]) -> Result<T, DecodeError> {
    let payload = payload_of(frame)?;
    let (msg, used) = bincode::decode_from_slice::<T, _>(payload, WIRE)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used != payload.len() {
        return Err(DecodeError::TrailingBytes(payload.len() - used));
    }
    Ok(msg)
}

/// Decodes the leading part of a frame produced by [`encode`] as `T`, ignoring the rest:
/// for reading a few header fields of a large message without decoding all of it.
///
/// # Errors
/// As [`decode`], except that trailing bytes are allowed.
pub fn decode_prefix<T: Decode<()>>(frame: &[u8]) -> Result<T, DecodeError> {
    bincode::decode_from_slice::<T, _>(payload_of(frame)?, WIRE)
        .map(|(msg, _)| msg)
        .map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// The bincode payload of a frame, after the size and version checks.
fn payload_of(frame: &[u8]) -> Result<&[u8], DecodeError> {
    if frame.len() > FRAME_BYTES_MAX {
        return Err(DecodeError::TooLarge(frame.len()));
    }
    let (&version, payload) = frame.split_first().ok_or(DecodeError::Empty)?;
    if version != WIRE_VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ballot, NodeId, PaxosMsg, Slot, Value};
    use proptest::prelude::*;

    fn sample() -> PaxosMsg {
        PaxosMsg::Accept {
            ballot: Ballot {
                round: 7,
                node: NodeId(2),
            },
            slot: Slot(42),
            value: Value::commands(vec![b"hello".to_vec(), vec![]]),
            chosen_through: Slot(41),
            lease_seq: 9,
        }
    }

    #[test]
    fn round_trip() {
        let frame = encode(&sample()).unwrap();
        assert_eq!(decode::<PaxosMsg>(&frame).unwrap(), sample());
    }

    #[test]
    fn rejects_trailing_bytes_unknown_version_and_empty() {
        let mut frame = encode(&sample()).unwrap();
        frame.push(0);
        assert_eq!(
            decode::<PaxosMsg>(&frame),
            Err(DecodeError::TrailingBytes(1))
        );
        let mut frame = encode(&sample()).unwrap();
        frame[0] = 99;
        assert_eq!(
            decode::<PaxosMsg>(&frame),
            Err(DecodeError::UnknownVersion(99))
        );
        assert_eq!(decode::<PaxosMsg>(&[]), Err(DecodeError::Empty));
    }

    #[test]
    fn huge_length_claim_is_refused_without_allocating() {
        // Accept variant (tag 2), ballot (7, 2), slot 42, then a command list whose varint
        // length (253 = u64 follows) claims 2^40 entries.
        let mut frame = vec![WIRE_VERSION, 2, 7, 2, 42, 253];
        frame.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(
            decode::<PaxosMsg>(&frame),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn oversized_messages_do_not_encode() {
        let big = PaxosMsg::Accept {
            ballot: Ballot::ZERO,
            slot: Slot(1),
            value: Value::commands(vec![vec![0u8; FRAME_BYTES_MAX]]),
            chosen_through: Slot::ZERO,
            lease_seq: 0,
        };
        assert!(matches!(encode(&big), Err(EncodeError::TooLarge(_))));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<PaxosMsg>(&bytes);
        }
    }
}
