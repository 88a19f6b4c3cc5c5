//! Frames: `kind: u8`, `length: u32` big-endian, then `length` bytes of body.
//!
//! The decoder checks the kind and the length against the limit *before* it reserves memory
//! for the body, so a hostile length prefix costs nothing.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes in a frame's prefix: one kind byte and a four-byte length.
pub const PREFIX_LEN: usize = 5;

/// The largest header-like frame (`CALL`, `HTTP`) accepted, whatever the message limit.
pub const MAX_HEADER_LEN: usize = 64 * 1024;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Opens a call: a MessagePack [`CallHeader`](super::CallHeader).
    Call = 0x01,
    /// A MessagePack payload (request or response).
    Data = 0x02,
    /// Ends a reply: a MessagePack [`StatusBody`](super::StatusBody).
    Status = 0x03,
    /// Opens an HTTP tunnel: a MessagePack [`HttpHeader`](super::HttpHeader); raw HTTP/1.1
    /// follows in both directions.
    Http = 0x04,
    /// Opens a membership exchange (gossip state sync).
    Gossip = 0x05,
}

impl FrameKind {
    /// The kind for a byte read off the wire.
    pub fn from_u8(byte: u8) -> Option<FrameKind> {
        Some(match byte {
            0x01 => FrameKind::Call,
            0x02 => FrameKind::Data,
            0x03 => FrameKind::Status,
            0x04 => FrameKind::Http,
            0x05 => FrameKind::Gossip,
            _ => return None,
        })
    }

    /// The most body bytes a frame of this kind may carry under `max_message`.
    pub fn max_len(self, max_message: usize) -> usize {
        match self {
            FrameKind::Call | FrameKind::Http => MAX_HEADER_LEN,
            FrameKind::Data | FrameKind::Status | FrameKind::Gossip => max_message,
        }
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The kind.
    pub kind: FrameKind,
    /// The body.
    pub body: Bytes,
}

/// Why bytes could not be decoded as frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The kind byte is not one this version knows.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    /// The length prefix exceeds the limit for that kind.
    #[error("{kind:?} frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The frame's kind.
        kind: FrameKind,
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({have} of {need} bytes)")]
    Truncated {
        /// Bytes received.
        have: usize,
        /// Bytes the frame needed.
        need: usize,
    },
}

/// Appends one frame to `out`.
///
/// # Panics
/// Never for bodies up to 4 GiB; larger bodies are a caller bug (the message limit is far lower).
pub fn encode_frame(kind: FrameKind, body: &[u8], out: &mut BytesMut) {
    out.reserve(PREFIX_LEN + body.len());
    out.put_u8(kind as u8);
    out.put_u32(u32::try_from(body.len()).unwrap_or(u32::MAX));
    out.put_slice(body);
}

/// Appends one frame whose body `write` produces in place, patching the length afterwards:
/// the body is encoded straight into `out`, with no intermediate buffer.
pub fn encode_frame_with<E>(
    kind: FrameKind,
    out: &mut BytesMut,
    write: impl FnOnce(&mut bytes::buf::Writer<&mut BytesMut>) -> Result<(), E>,
) -> Result<(), E> {
    let start = out.len();
    out.put_u8(kind as u8);
    out.put_u32(0);
    write(&mut (&mut *out).writer())?;
    let len = u32::try_from(out.len() - start - PREFIX_LEN).unwrap_or(u32::MAX);
    out[start + 1..start + PREFIX_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Incremental frame decoder: feed it bytes as they arrive, take frames out as they complete.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_message: usize,
}

impl FrameDecoder {
    /// A decoder that refuses `DATA` frames longer than `max_message` bytes.
    pub fn new(max_message: usize) -> FrameDecoder {
        FrameDecoder { max_message }
    }

    /// The message limit.
    pub fn max_message(&self) -> usize {
        self.max_message
    }

    /// Checks a frame prefix; returns the kind and body length.
    pub fn check_prefix(
        &self,
        prefix: &[u8; PREFIX_LEN],
    ) -> Result<(FrameKind, usize), FrameError> {
        let kind = FrameKind::from_u8(prefix[0]).ok_or(FrameError::UnknownKind(prefix[0]))?;
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        let max = kind.max_len(self.max_message);
        if len > max {
            return Err(FrameError::TooLarge { kind, len, max });
        }
        Ok((kind, len))
    }

    /// Takes the next complete frame off the front of `buffer`, or `None` when more bytes are
    /// needed. Reserves room for a body only once its prefix has been checked.
    pub fn decode(&self, buffer: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if let Some(&kind) = buffer.first() {
            // Judge the kind as soon as its byte arrives.
            if FrameKind::from_u8(kind).is_none() {
                return Err(FrameError::UnknownKind(kind));
            }
        }
        if buffer.len() < PREFIX_LEN {
            return Ok(None);
        }
        let mut prefix = [0u8; PREFIX_LEN];
        prefix.copy_from_slice(&buffer[..PREFIX_LEN]);
        let (kind, len) = self.check_prefix(&prefix)?;
        if buffer.len() < PREFIX_LEN + len {
            buffer.reserve(PREFIX_LEN + len - buffer.len());
            return Ok(None);
        }
        buffer.advance(PREFIX_LEN);
        let body = buffer.split_to(len).freeze();
        Ok(Some(Frame { kind, body }))
    }

    /// Takes the next complete frame off the front of `chunk` without copying it (the body
    /// shares the chunk's memory), or `None` when `chunk` holds only part of a frame (then
    /// `chunk` is left as it was: gather it with the bytes that follow and use
    /// [`FrameDecoder::decode`]). A prefix is judged as soon as it is whole.
    pub fn decode_shared(&self, chunk: &mut Bytes) -> Result<Option<Frame>, FrameError> {
        if let Some(&kind) = chunk.first() {
            if FrameKind::from_u8(kind).is_none() {
                return Err(FrameError::UnknownKind(kind));
            }
        }
        let Some(prefix) = chunk.first_chunk::<PREFIX_LEN>() else {
            return Ok(None);
        };
        let (kind, len) = self.check_prefix(prefix)?;
        if chunk.len() < PREFIX_LEN + len {
            return Ok(None);
        }
        let body = chunk.slice(PREFIX_LEN..PREFIX_LEN + len);
        chunk.advance(PREFIX_LEN + len);
        Ok(Some(Frame { kind, body }))
    }

    /// How many more bytes the partial frame at the front of `buffer` needs to be whole (its
    /// prefix first, then its body), once [`FrameDecoder::decode`] has judged any whole
    /// prefix.
    pub fn missing(&self, buffer: &[u8]) -> usize {
        match buffer.first_chunk::<PREFIX_LEN>() {
            None => PREFIX_LEN - buffer.len(),
            Some(prefix) => {
                let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
                (PREFIX_LEN + len).saturating_sub(buffer.len())
            }
        }
    }

    /// Called when the stream has ended: an error if a partial frame is left over.
    pub fn finish(&self, buffer: &BytesMut) -> Result<(), FrameError> {
        if buffer.is_empty() {
            return Ok(());
        }
        let need = if buffer.len() < PREFIX_LEN {
            PREFIX_LEN
        } else {
            PREFIX_LEN + u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize
        };
        Err(FrameError::Truncated {
            have: buffer.len(),
            need,
        })
    }
}

/// `Bytes` fields smaller than this are copied out of the payload they are decoded from
/// (`codec::shared_bytes`): QUIC receives a batch of packets into one allocation (up to 64 KiB
/// with GRO), and a small value sharing it would keep all of it alive for as long as the value
/// is held. Larger ones share the payload's memory (copying them would cost more than it saves).
pub const DETACH_BELOW: usize = 4 * 1024;

/// The bytes read off a stream and not yet decoded into frames: what is left of the last chunk
/// QUIC delivered, whose whole frames are taken without a copy (a frame's body shares the
/// chunk's memory), and a frame split across chunks, gathered in a buffer from only its own
/// bytes.
#[derive(Debug, Default)]
pub struct FrameBuffer {
    gathered: BytesMut,
    chunk: Bytes,
}

impl FrameBuffer {
    /// The next whole frame, or `None` until more bytes are pushed.
    pub fn decode(&mut self, decoder: &FrameDecoder) -> Result<Option<Frame>, FrameError> {
        loop {
            if !self.gathered.is_empty() {
                if let Some(frame) = decoder.decode(&mut self.gathered)? {
                    return Ok(Some(frame));
                }
                if self.chunk.is_empty() {
                    return Ok(None);
                }
                // A partial frame: complete it from the chunk, taking only its own bytes.
                let take = decoder.missing(&self.gathered).min(self.chunk.len());
                self.gathered.extend_from_slice(&self.chunk[..take]);
                self.chunk.advance(take);
            } else if self.chunk.is_empty() {
                return Ok(None);
            } else {
                if let Some(frame) = decoder.decode_shared(&mut self.chunk)? {
                    return Ok(Some(frame));
                }
                // The chunk ends inside a frame: gather it with the bytes that follow.
                self.gathered.extend_from_slice(&self.chunk);
                self.chunk.clear();
            }
        }
    }

    /// A buffer that starts with `bytes` (read before the frames began).
    pub fn starting_with(bytes: BytesMut) -> FrameBuffer {
        FrameBuffer {
            gathered: bytes,
            chunk: Bytes::new(),
        }
    }

    /// The rest of the last chunk, when no partial frame is gathered before it: the place a
    /// whole frame is taken from without a copy.
    pub(crate) fn ungathered_chunk(&mut self) -> Option<&mut Bytes> {
        self.gathered.is_empty().then_some(&mut self.chunk)
    }

    /// Every byte not yet decoded, gathered in one buffer (at the end of the stream).
    pub(crate) fn gather_rest(&mut self) -> &BytesMut {
        if !self.chunk.is_empty() {
            self.gathered.extend_from_slice(&self.chunk);
            self.chunk.clear();
        }
        &self.gathered
    }

    /// Adds the next chunk read off the stream (once [`FrameBuffer::decode`] needs more).
    pub fn push(&mut self, chunk: Bytes) {
        // A partial frame gathered so far takes only its own bytes from the new chunk (in
        // `decode`); the frames after it are still taken from the chunk without a copy.
        if self.chunk.is_empty() {
            self.chunk = chunk;
        } else {
            self.gathered.extend_from_slice(&self.chunk);
            self.gathered.extend_from_slice(&chunk);
            self.chunk.clear();
        }
    }

    /// Called when the stream has ended: an error if a partial frame is left over.
    pub fn finish(&mut self, decoder: &FrameDecoder) -> Result<(), FrameError> {
        decoder.finish(self.gather_rest())
    }

    /// Whether every byte pushed has been decoded.
    pub fn is_empty(&self) -> bool {
        self.gathered.is_empty() && self.chunk.is_empty()
    }

    /// The bytes not yet decoded: a partial frame gathered so far, and the rest of the last
    /// chunk (which follows it).
    pub fn into_parts(self) -> (BytesMut, Bytes) {
        (self.gathered, self.chunk)
    }

    /// The bytes not yet decoded, in one piece.
    pub fn into_bytes(self) -> Bytes {
        if self.gathered.is_empty() {
            return self.chunk;
        }
        let mut gathered = self.gathered;
        gathered.extend_from_slice(&self.chunk);
        gathered.freeze()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const KINDS: [FrameKind; 5] = [
        FrameKind::Call,
        FrameKind::Data,
        FrameKind::Status,
        FrameKind::Http,
        FrameKind::Gossip,
    ];

    #[test]
    fn a_frame_is_kind_length_body() {
        let mut out = BytesMut::new();
        encode_frame(FrameKind::Data, b"\x80", &mut out);
        assert_eq!(&out[..], b"\x02\x00\x00\x00\x01\x80");
    }

    #[test]
    fn a_frame_written_in_place_matches_one_encoded_from_a_slice() {
        let mut in_place = BytesMut::from(&b"prefix"[..]);
        encode_frame_with(FrameKind::Status, &mut in_place, |out| {
            std::io::Write::write_all(out, b"\x81\xa4code\x00")
        })
        .expect("writes");
        let mut expected = BytesMut::from(&b"prefix"[..]);
        encode_frame(FrameKind::Status, b"\x81\xa4code\x00", &mut expected);
        assert_eq!(in_place, expected);
    }

    #[test]
    fn an_oversize_length_is_refused_before_any_allocation() {
        let decoder = FrameDecoder::new(1024);
        let mut buffer = BytesMut::from(&b"\x02\xff\xff\xff\xff"[..]);
        let capacity = buffer.capacity();
        let error = decoder.decode(&mut buffer).expect_err("too large");
        assert!(matches!(
            error,
            FrameError::TooLarge {
                len: 0xffff_ffff,
                max: 1024,
                ..
            }
        ));
        assert_eq!(buffer.capacity(), capacity);
    }

    #[test]
    fn header_frames_have_their_own_small_limit() {
        let decoder = FrameDecoder::new(16 * 1024 * 1024);
        let prefix = [0x01, 0x00, 0x01, 0x00, 0x01];
        assert!(matches!(
            decoder.check_prefix(&prefix),
            Err(FrameError::TooLarge {
                kind: FrameKind::Call,
                ..
            })
        ));
    }

    #[test]
    fn unknown_kinds_and_truncation_are_errors() {
        let decoder = FrameDecoder::new(1024);
        let mut garbage = BytesMut::from(&b"\x7fhello"[..]);
        assert_eq!(
            decoder.decode(&mut garbage),
            Err(FrameError::UnknownKind(0x7f))
        );
        let mut partial = BytesMut::from(&b"\x02\x00\x00\x00\x09abc"[..]);
        assert_eq!(decoder.decode(&mut partial), Ok(None));
        assert_eq!(
            decoder.finish(&partial),
            Err(FrameError::Truncated { have: 8, need: 14 })
        );
    }

    proptest! {
        #[test]
        fn frames_round_trip_whatever_the_chunking(
            frames in proptest::collection::vec((0usize..5, proptest::collection::vec(any::<u8>(), 0..300)), 0..8),
            cut in 1usize..64,
        ) {
            let mut wire = BytesMut::new();
            for (kind, body) in &frames {
                encode_frame(KINDS[*kind], body, &mut wire);
            }
            let decoder = FrameDecoder::new(4096);
            let mut buffer = BytesMut::new();
            let mut decoded = Vec::new();
            for chunk in wire.chunks(cut) {
                buffer.extend_from_slice(chunk);
                while let Some(frame) = decoder.decode(&mut buffer).expect("valid") {
                    decoded.push(frame);
                }
            }
            decoder.finish(&buffer).expect("nothing left over");
            prop_assert_eq!(decoded.len(), frames.len());
            for (frame, (kind, body)) in decoded.iter().zip(&frames) {
                prop_assert_eq!(frame.kind, KINDS[*kind]);
                prop_assert_eq!(&frame.body[..], &body[..]);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let decoder = FrameDecoder::new(64);
            let mut buffer = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decoder.decode(&mut buffer) {}
            let _ = decoder.finish(&buffer);
        }
    }
}
