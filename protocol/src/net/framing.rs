//! Frames on a QUIC stream: `[u32 big-endian length][frame]`, where a frame is what
//! [`crate::codec`] encodes (version byte + bincode).
//!
//! The length is checked against [`FRAME_BYTES_MAX`] before anything is allocated, and the
//! buffer then grows only as bytes really arrive, so a peer that announces 1 MiB and sends
//! nothing costs nothing. Every malformed input is a [`FrameError`] for that stream; none
//! panics.

use crate::codec::{self, DecodeError, EncodeError, FRAME_BYTES_MAX};
use bincode::{Decode, Encode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes of the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// The first allocation for a frame body; it grows as data arrives.
const INITIAL_BUFFER_BYTES: usize = 64 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than [`FRAME_BYTES_MAX`].
    #[error("length prefix {0} exceeds the {FRAME_BYTES_MAX}-byte frame limit")]
    TooLong(u64),
    /// The stream ended inside a length prefix or a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The frame's bytes are not a message.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The message could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The stream failed.
    #[error("stream I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes one length-prefixed frame (a single write, so the prefix never travels alone).
///
/// # Errors
/// [`FrameError::TooLong`] for a frame over the limit, or the stream's error.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> Result<(), FrameError> {
    if frame.len() > FRAME_BYTES_MAX {
        return Err(FrameError::TooLong(frame.len() as u64));
    }
    let len = u32::try_from(frame.len()).map_err(|_| FrameError::TooLong(frame.len() as u64))?;
    let mut buf = Vec::with_capacity(LENGTH_PREFIX_BYTES + frame.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(frame);
    w.write_all(&buf).await?;
    Ok(())
}

/// Reads one length-prefixed frame; `Ok(None)` if the stream ended cleanly before it.
///
/// # Errors
/// [`FrameError::TooLong`] (checked before allocating), [`FrameError::Truncated`], or the
/// stream's error.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Vec<u8>>, FrameError> {
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    let mut filled = 0;
    while filled < LENGTH_PREFIX_BYTES {
        let n = r.read(&mut prefix[filled..]).await?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        filled += n;
    }
    let len = u32::from_be_bytes(prefix);
    let len_usize = usize::try_from(len).map_err(|_| FrameError::TooLong(u64::from(len)))?;
    if len_usize > FRAME_BYTES_MAX {
        return Err(FrameError::TooLong(u64::from(len)));
    }
    let mut frame = Vec::with_capacity(len_usize.min(INITIAL_BUFFER_BYTES));
    r.take(u64::from(len)).read_to_end(&mut frame).await?;
    if frame.len() != len_usize {
        return Err(FrameError::Truncated);
    }
    Ok(Some(frame))
}

/// Encodes `msg` and writes it as one frame.
///
/// # Errors
/// As [`codec::encode`] and [`write_frame`].
pub async fn write_msg<T: Encode, W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &T,
) -> Result<(), FrameError> {
    let frame = codec::encode(msg)?;
    write_frame(w, &frame).await
}

/// Reads and decodes one frame; `Ok(None)` at a clean end of stream.
///
/// # Errors
/// As [`read_frame`] and [`codec::decode`] (unknown version, malformed, trailing bytes).
pub async fn read_msg<T: Decode<()>, R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<T>, FrameError> {
    match read_frame(r).await? {
        Some(frame) => Ok(Some(codec::decode(&frame)?)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ballot, PaxosMsg, Slot};

    fn msg() -> PaxosMsg {
        PaxosMsg::Prepare {
            ballot: Ballot::ZERO,
            from_slot: Slot(3),
        }
    }

    #[tokio::test]
    async fn round_trip_and_clean_end() {
        let mut buf = Vec::new();
        write_msg(&mut buf, &msg()).await.unwrap();
        write_msg(&mut buf, &msg()).await.unwrap();
        let mut r = buf.as_slice();
        assert_eq!(read_msg::<PaxosMsg, _>(&mut r).await.unwrap(), Some(msg()));
        assert_eq!(read_msg::<PaxosMsg, _>(&mut r).await.unwrap(), Some(msg()));
        assert_eq!(read_msg::<PaxosMsg, _>(&mut r).await.unwrap(), None);
    }

    #[tokio::test]
    async fn oversized_prefix_is_refused_before_reading_the_body() {
        let mut r: &[u8] = &u32::MAX.to_be_bytes();
        assert!(matches!(
            read_frame(&mut r).await,
            Err(FrameError::TooLong(n)) if n == u64::from(u32::MAX)
        ));
        let over = u32::try_from(FRAME_BYTES_MAX + 1).unwrap().to_be_bytes();
        let mut r: &[u8] = &over;
        assert!(matches!(
            read_frame(&mut r).await,
            Err(FrameError::TooLong(_))
        ));
    }

    #[tokio::test]
    async fn truncation_and_garbage_are_errors() {
        let mut r: &[u8] = &[0, 0];
        assert!(matches!(
            read_frame(&mut r).await,
            Err(FrameError::Truncated)
        ));
        let mut r: &[u8] = &[0, 0, 0, 5, 1, 2];
        assert!(matches!(
            read_frame(&mut r).await,
            Err(FrameError::Truncated)
        ));
        let mut r: &[u8] = &[0, 0, 0, 3, 99, 1, 2];
        assert!(matches!(
            read_msg::<PaxosMsg, _>(&mut r).await,
            Err(FrameError::Decode(DecodeError::UnknownVersion(99)))
        ));
        let mut r: &[u8] = &[0, 0, 0, 0];
        assert!(matches!(
            read_msg::<PaxosMsg, _>(&mut r).await,
            Err(FrameError::Decode(DecodeError::Empty))
        ));
    }
}
