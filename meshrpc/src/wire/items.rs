//! Decoding a run of items — the `DATA` frames of a streaming call's half — and how it ends,
//! free of I/O. [`ItemDecoder`] turns bytes into [`ItemEvent`]s with the rule of
//! docs/PROTOCOL.md section 15: a stream is complete only when its sender said so (a bare `FIN`
//! in the caller's half, `STATUS` code 0 in the callee's); every other end is an error.

use bytes::{Bytes, BytesMut};

use super::frame::{FrameDecoder, FrameError, FrameKind};
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
        let frame = match self.frames.decode(buffer) {
            Ok(None) => return None,
            Ok(Some(frame)) => frame,
            Err(error) => return Some(self.fail_frame(&error)),
        };
        Some(match frame.kind {
            FrameKind::Data => ItemEvent::Item(frame.body),
            FrameKind::Status => {
                self.ended = true;
                let status: StatusBody = match crate::codec::from_slice_bounded(
                    &frame.body,
                    crate::codec::MAX_HEADER_DEPTH,
                ) {
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
}
