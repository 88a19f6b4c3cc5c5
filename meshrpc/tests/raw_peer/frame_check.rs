//! Feeds bytes to [`FrameDecoder`] in arbitrary chunks, decodes every `CALL` and `STATUS` body
//! it yields, and checks what a correct decoder must guarantee. Shared by the deterministic
//! test in `hostile.rs` and the `frame_decoder` fuzz target (`fuzz/`), so it depends on nothing
//! but meshrpc and rmp-serde.
#![allow(dead_code, unreachable_pub)]

use std::hash::Hasher;

use meshrpc::Code;
use meshrpc::bytes::BytesMut;
use meshrpc::spec::Fnv1a;
use meshrpc::wire::{
    CallHeader, Frame, FrameDecoder, FrameError, FrameKind, StatusBody, encode_frame,
};

/// The message limit of the decoder under test: small, so mutated length prefixes often exceed
/// it and both sides of the check get exercised.
pub const MAX_MESSAGE: usize = 4096;

/// How decoding ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every byte formed whole frames.
    Complete { frames: usize },
    /// The input ended inside a frame.
    Truncated { frames: usize },
    /// The decoder refused a prefix.
    Refused { frames: usize, error: FrameError },
}

/// Decodes `input`, delivered in chunks of the sizes `next_cut` returns (zero counts as one),
/// and panics if the decoder breaks one of its guarantees:
/// - the frames it yields, encoded again, are exactly the bytes it consumed;
/// - no body exceeds its kind's limit;
/// - a refusal names the kind byte or the length it refused, and that is really over the limit;
/// - `finish` complains exactly when bytes are left over;
/// - `CALL` and `STATUS` bodies decode (or fail to decode) without panicking, and what decodes
///   encodes back to something that decodes to the same value.
pub fn check(input: &[u8], mut next_cut: impl FnMut() -> usize) -> Outcome {
    let decoder = FrameDecoder::new(MAX_MESSAGE);
    let mut buffer = BytesMut::new();
    let mut reencoded = BytesMut::new();
    let mut frames = 0;
    let mut fed = 0;
    while fed < input.len() {
        let cut = next_cut().max(1).min(input.len() - fed);
        buffer.extend_from_slice(&input[fed..fed + cut]);
        fed += cut;
        loop {
            match decoder.decode(&mut buffer) {
                Ok(Some(frame)) => {
                    check_frame(&frame);
                    encode_frame(frame.kind, &frame.body, &mut reencoded);
                    frames += 1;
                }
                Ok(None) => break,
                Err(error) => {
                    check_refusal(&error, &input[reencoded.len()..]);
                    assert_eq!(&reencoded[..], &input[..reencoded.len()]);
                    return Outcome::Refused { frames, error };
                }
            }
        }
    }
    let consumed = reencoded.len();
    assert_eq!(
        &reencoded[..],
        &input[..consumed],
        "frames re-encode to the input"
    );
    assert_eq!(
        consumed + buffer.len(),
        input.len(),
        "no byte lost or invented"
    );
    assert_eq!(
        &buffer[..],
        &input[consumed..],
        "the left-over is the input's tail"
    );
    match decoder.finish(&buffer) {
        Ok(()) => {
            assert!(buffer.is_empty());
            Outcome::Complete { frames }
        }
        Err(FrameError::Truncated { have, need }) => {
            assert_eq!(have, buffer.len());
            assert!(need > have, "a truncated frame needs more than it has");
            Outcome::Truncated { frames }
        }
        Err(other) => panic!("finish can only report truncation, not {other:?}"),
    }
}

/// The fuzz target's entry: all of `data` is the input, and the chunk sizes (1 to 64 bytes)
/// come from a hash of it, so the seeds are plain streams and every mutation also changes the
/// chunking.
pub fn check_fuzz_input(data: &[u8]) {
    let mut hasher = Fnv1a::default();
    hasher.write(data);
    let hash = hasher.finish();
    let largest = (hash % 64) as usize + 1;
    let mut rng = XorShift::new(hash);
    check(data, || rng.below(largest) + 1);
}

fn check_frame(frame: &Frame) {
    assert!(frame.body.len() <= frame.kind.max_len(MAX_MESSAGE));
    match frame.kind {
        FrameKind::Call => {
            // The server's fast path reads only what the general decoder reads the same way.
            if let Some(fast) = meshrpc::wire::fast::read_call_header(&frame.body) {
                let general: CallHeader = meshrpc::codec::from_slice_bounded(
                    &frame.body,
                    meshrpc::codec::MAX_HEADER_DEPTH,
                )
                .expect("a header the fast path reads, the general decoder reads");
                assert_eq!(fast, general);
            }
            if let Ok(header) = rmp_serde::from_slice::<CallHeader>(&frame.body) {
                let again = rmp_serde::to_vec_named(&header).expect("a decoded header encodes");
                let back: CallHeader =
                    rmp_serde::from_slice(&again).expect("an encoded header decodes");
                assert_eq!(back, header);
            }
        }
        FrameKind::Status => {
            if let Ok(status) = rmp_serde::from_slice::<StatusBody>(&frame.body) {
                let again = rmp_serde::to_vec_named(&status).expect("a decoded status encodes");
                let back: StatusBody =
                    rmp_serde::from_slice(&again).expect("an encoded status decodes");
                assert_eq!(back, status);
                let code = status.code;
                let ok = status.is_ok();
                let status = status.into_status();
                if !ok && code <= 16 {
                    assert_eq!(status.code().as_u32(), code);
                } else if !ok {
                    assert_eq!(status.code(), Code::Unknown);
                }
            }
        }
        FrameKind::Data | FrameKind::Http | FrameKind::Gossip => {}
    }
}

fn check_refusal(error: &FrameError, rest: &[u8]) {
    match *error {
        FrameError::UnknownKind(kind) => {
            assert_eq!(rest.first(), Some(&kind));
            assert!(FrameKind::from_u8(kind).is_none());
        }
        FrameError::TooLarge { kind, len, max } => {
            assert_eq!(rest.first(), Some(&(kind as u8)));
            let announced = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]);
            assert_eq!(len, announced as usize);
            assert_eq!(max, kind.max_len(MAX_MESSAGE));
            assert!(len > max);
        }
        FrameError::Truncated { .. } => panic!("decode never reports truncation"),
    }
}

/// Marsaglia's xorshift64: a deterministic source of pseudo-random numbers with no crate.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> XorShift {
        XorShift((seed ^ 0x9e37_79b9_7f4a_7c15).max(1))
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A byte.
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}
