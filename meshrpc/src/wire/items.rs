//! Decoding a run of items — the `DATA` frames of a streaming call's half — and how it ends,
//! free of I/O. [`ItemDecoder`] turns bytes into [`ItemEvent`]s with the rule of
//! docs/PROTOCOL.md section 15: a stream is complete only when its sender said so (a bare `FIN`
//! in the caller's half, `STATUS` code 0 in the callee's); every other end is an error.

use bytes::{Bytes, BytesMut};

use super::frame::{FrameBuffer, FrameDecoder, FrameError, FrameKind};
use super::header::StatusBody;
use crate::status::{Code, Status};

/// Which half of a call the items travel on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The caller's items (a client stream): a bare `FIN` ends them cleanly.
    Request,
    /// The callee's items (a server stream): only `STATUS` code 0 ends them cleanly.
    Reply,
}

/// What the next bytes of a stream of items mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemEvent {
    /// One item (a `DATA` body).
    Item(Bytes),
    /// The sender finished: the stream is complete.
    End,
    /// The stream ended with an error (the sender's, or a broken stream), and whether the
    /// receiver should stop the sending half as a protocol violation (and with which reason).
    Failed(Status, Option<Violation>),
}

/// How a sender broke the protocol, for the code that stops its half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A frame over the receiver's limit.
    TooLarge,
    /// Anything else: malformed bytes, a frame out of place.
    Protocol,
}

/// Decodes a stream of items; after the first [`ItemEvent::End`] or [`ItemEvent::Failed`] it
/// yields nothing more.
#[derive(Debug, Clone)]
pub struct ItemDecoder {
    frames: FrameDecoder,
    direction: Direction,
    ended: bool,
}

impl ItemDecoder {
    /// A decoder of items no longer than `max_message` bytes travelling in `direction`.
    pub fn new(max_message: usize, direction: Direction) -> ItemDecoder {
        ItemDecoder {
            frames: FrameDecoder::new(max_message),
            direction,
            ended: false,
        }
    }

    /// A decoder of a stream that has already ended (it yields nothing).
    pub fn ended() -> ItemDecoder {
        ItemDecoder {
            frames: FrameDecoder::new(0),
            direction: Direction::Request,
            ended: true,
        }
    }

    /// Whether the stream has ended (cleanly or not).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// The next event decoded from the front of `buffer`, or `None` when more bytes are needed.
    pub fn decode(&mut self, buffer: &mut BytesMut) -> Option<ItemEvent> {
        if self.ended {
            return None;
        }
        let frame = self.frames.decode(buffer);
        self.event(frame)
    }

    /// The body of the `DATA` frame at the front of `chunk` if it is whole and within the
    /// limit, taken off `chunk` without a copy; `None` for anything else (a partial frame,
    /// another kind, an oversized one), which [`ItemAssembler::next_event`] then judges.
    pub fn data_at_front(&mut self, chunk: &mut Bytes) -> Option<Bytes> {
        let &[kind, a, b, c, d] = chunk.first_chunk::<5>()?;
        if self.ended || kind != FrameKind::Data as u8 {
            return None;
        }
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        if len > self.frames.max_message() || chunk.len() < 5 + len {
            return None;
        }
        let mut frame = chunk.split_to(5 + len);
        bytes::Buf::advance(&mut frame, 5);
        Some(frame)
    }

    /// The event a decoded frame (or a failure to decode one) stands for.
    fn event(
        &mut self,
        frame: Result<Option<super::frame::Frame>, FrameError>,
    ) -> Option<ItemEvent> {
        let frame = match frame {
            Ok(None) => return None,
            Ok(Some(frame)) => frame,
            Err(error) => return Some(self.fail_frame(&error)),
        };
        Some(match frame.kind {
            FrameKind::Data => ItemEvent::Item(frame.body),
            FrameKind::Status => {
                self.ended = true;
                let status = match StatusBody::decode(&frame.body) {
                    Ok(status) => status,
                    Err(error) => {
                        return Some(ItemEvent::Failed(
                            Status::internal(format!("an undecodable status: {error}")),
                            Some(Violation::Protocol),
                        ));
                    }
                };
                match (status.is_ok(), self.direction) {
                    (true, Direction::Reply) => ItemEvent::End,
                    (true, Direction::Request) => ItemEvent::Failed(
                        Status::invalid_argument(
                            "a request stream ends with FIN, or with a STATUS that carries an \
                             error",
                        ),
                        Some(Violation::Protocol),
                    ),
                    (false, _) => ItemEvent::Failed(status.into_status(), None),
                }
            }
            kind => {
                self.ended = true;
                ItemEvent::Failed(
                    Status::invalid_argument(format!(
                        "the protocol was broken: a {kind:?} frame inside a stream of items"
                    )),
                    Some(Violation::Protocol),
                )
            }
        })
    }

    /// What the end of the stream (`FIN`) means once `buffer` holds what was left undecoded.
    pub fn finish(&mut self, buffer: &BytesMut) -> ItemEvent {
        if self.ended {
            return ItemEvent::Failed(
                Status::internal("the stream of items had already ended"),
                None,
            );
        }
        if let Err(error) = self.frames.finish(buffer) {
            return self.fail_frame(&error);
        }
        self.ended = true;
        match self.direction {
            Direction::Request => ItemEvent::End,
            Direction::Reply => ItemEvent::Failed(
                Status::unavailable("the stream ended without a status"),
                None,
            ),
        }
    }

    fn fail_frame(&mut self, error: &FrameError) -> ItemEvent {
        self.ended = true;
        match error {
            FrameError::TooLarge { .. } => ItemEvent::Failed(
                Status::new(Code::ResourceExhausted, error.to_string()),
                Some(Violation::TooLarge),
            ),
            _ => ItemEvent::Failed(
                Status::invalid_argument(format!("malformed frame: {error}")),
                Some(Violation::Protocol),
            ),
        }
    }
}

/// Turns the chunks a stream delivers into [`ItemEvent`]s: a whole frame at the front of a
/// chunk is taken without a copy (its body shares the chunk's memory); a frame split across
/// chunks is gathered in a buffer, taking from each chunk only that frame's bytes (a
/// [`FrameBuffer`]).
#[derive(Debug)]
pub struct ItemAssembler {
    decoder: ItemDecoder,
    frames: FrameBuffer,
}

impl ItemAssembler {
    /// An assembler decoding with `decoder`, starting with the bytes in `buffer`.
    pub fn new(decoder: ItemDecoder, buffer: BytesMut) -> ItemAssembler {
        ItemAssembler::resuming(decoder, FrameBuffer::starting_with(buffer))
    }

    /// An assembler decoding with `decoder`, starting with the bytes a [`FrameBuffer`] had
    /// not yet decoded.
    pub fn resuming(decoder: ItemDecoder, leftover: FrameBuffer) -> ItemAssembler {
        ItemAssembler {
            decoder,
            frames: leftover,
        }
    }

    /// Whether the stream has ended (cleanly or not).
    pub fn is_ended(&self) -> bool {
        self.decoder.is_ended()
    }

    /// Marks the stream ended after a failure the decoder did not see.
    pub fn end(&mut self) {
        self.decoder = ItemDecoder::ended();
    }

    /// Whether every byte given so far has been decoded.
    pub fn is_drained(&self) -> bool {
        self.frames.is_empty()
    }

    /// The next item, when it is a whole `DATA` frame at the front of the chunk: the common
    /// case, decided in a few instructions. `None` says nothing: ask [`Self::next_event`].
    pub fn next_item(&mut self) -> Option<Bytes> {
        let chunk = self.frames.ungathered_chunk()?;
        self.decoder.data_at_front(chunk)
    }

    /// The next event decoded from the bytes given so far, or `None` when more are needed
    /// (or the stream has ended).
    pub fn next_event(&mut self) -> Option<ItemEvent> {
        if self.decoder.is_ended() {
            return None;
        }
        let frame = self.frames.decode(&self.decoder.frames);
        self.decoder.event(frame)
    }

    /// Gives the next chunk of the stream; call it once [`Self::next_event`] needs more.
    pub fn push(&mut self, chunk: Bytes) {
        self.frames.push(chunk);
    }

    /// What the end of the stream (`FIN`) means, given what is left undecoded.
    pub fn finish(&mut self) -> ItemEvent {
        let rest = self.frames.gather_rest();
        self.decoder.finish(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::encode_frame;

    fn events(direction: Direction, bytes: &[u8]) -> Vec<ItemEvent> {
        let mut decoder = ItemDecoder::new(64, direction);
        let mut buffer = BytesMut::from(bytes);
        let mut events = Vec::new();
        while let Some(event) = decoder.decode(&mut buffer) {
            events.push(event);
        }
        if !decoder.is_ended() {
            events.push(decoder.finish(&buffer));
        }
        events
    }

    fn data(body: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_frame(FrameKind::Data, body, &mut out);
        out.to_vec()
    }

    fn status(code: u32) -> Vec<u8> {
        let body = StatusBody {
            code,
            ..StatusBody::ok()
        };
        let mut out = BytesMut::new();
        encode_frame(
            FrameKind::Status,
            &rmp_serde::to_vec_named(&body).expect("encodes"),
            &mut out,
        );
        out.to_vec()
    }

    #[test]
    fn only_the_senders_own_word_ends_a_stream_cleanly() {
        let items = [data(b"\x01"), data(b"\x02")].concat();
        let request = events(Direction::Request, &items);
        assert_eq!(request.last(), Some(&ItemEvent::End));
        let reply = events(Direction::Reply, &items);
        assert!(
            matches!(reply.last(), Some(ItemEvent::Failed(s, None)) if s.code() == Code::Unavailable)
        );
        let finished = events(Direction::Reply, &[items.clone(), status(0)].concat());
        assert_eq!(finished.last(), Some(&ItemEvent::End));
        let aborted = events(Direction::Request, &[items, status(1)].concat());
        assert!(
            matches!(aborted.last(), Some(ItemEvent::Failed(s, None)) if s.code() == Code::Cancelled)
        );
    }

    #[test]
    fn a_stream_cut_inside_a_frame_is_an_error_in_either_direction() {
        let cut = &data(b"\x01\x02\x03")[..6];
        for direction in [Direction::Request, Direction::Reply] {
            let events = events(direction, cut);
            assert!(
                matches!(events.last(), Some(ItemEvent::Failed(s, Some(Violation::Protocol))) if s.code() == Code::InvalidArgument),
                "{direction:?}: {events:?}"
            );
        }
    }

    /// The events an assembler yields for `bytes` delivered in chunks cut at `cuts`, taking
    /// whole items by the fast path when `fast` says so.
    fn assembled(direction: Direction, bytes: &[u8], cuts: &[usize], fast: bool) -> Vec<ItemEvent> {
        let mut assembler = ItemAssembler::new(ItemDecoder::new(64, direction), BytesMut::new());
        let mut events = Vec::new();
        let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut % (bytes.len() + 1)).collect();
        cuts.push(bytes.len());
        cuts.sort_unstable();
        let mut start = 0;
        for cut in cuts {
            if assembler.is_ended() {
                break;
            }
            assembler.push(Bytes::copy_from_slice(&bytes[start..cut]));
            start = cut;
            loop {
                if fast {
                    if let Some(item) = assembler.next_item() {
                        events.push(ItemEvent::Item(item));
                        continue;
                    }
                }
                match assembler.next_event() {
                    Some(event) => events.push(event),
                    None => break,
                }
            }
        }
        if !assembler.is_ended() {
            events.push(assembler.finish());
        }
        events
    }

    #[test]
    fn a_frame_split_across_chunks_is_gathered_and_whole_ones_are_shared() {
        let mut bytes = data(b"one");
        bytes.extend(data(b"two"));
        bytes.extend(status(0));
        // Cut inside the first frame's prefix and inside the second one's body.
        let events = assembled(Direction::Reply, &bytes, &[2, 11], true);
        assert_eq!(events, self::events(Direction::Reply, &bytes));
        assert_eq!(events.len(), 3);
        // Whole frames at the front of a chunk are not copied out of it.
        let chunk = Bytes::from(data(b"shared"));
        let mut assembler =
            ItemAssembler::new(ItemDecoder::new(64, Direction::Reply), BytesMut::new());
        assembler.push(chunk.clone());
        let item = assembler.next_item().expect("a whole frame");
        assert_eq!(item.as_ptr(), chunk[5..].as_ptr());
        assert!(assembler.is_drained());
    }

    proptest::proptest! {
        /// However a stream is cut into chunks, and whichever way items are taken, the
        /// assembler yields what decoding the whole stream at once yields: the same items,
        /// the same end, the same errors (oversized frames and garbage included).
        #[test]
        fn any_chunking_yields_what_the_whole_stream_yields(
            frames in proptest::collection::vec(
                (0u8..4, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..90)),
                0..6,
            ),
            cuts in proptest::collection::vec(proptest::prelude::any::<usize>(), 0..8),
            request in proptest::prelude::any::<bool>(),
            fast in proptest::prelude::any::<bool>(),
        ) {
            let mut bytes = Vec::new();
            for (kind, body) in &frames {
                match kind {
                    0 | 1 => bytes.extend(data(body)),
                    2 => bytes.extend(status(u32::from(body.first().copied().unwrap_or(0) % 3))),
                    _ => bytes.extend(body.iter().take(3)),
                }
            }
            let direction = if request { Direction::Request } else { Direction::Reply };
            proptest::prop_assert_eq!(
                assembled(direction, &bytes, &cuts, fast),
                events(direction, &bytes)
            );
        }
    }
}
