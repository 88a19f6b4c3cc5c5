//! The streaming half of the wire, shared by both sides: reading a run of `DATA` frames as a
//! [`Streaming`] of items, writing one, and the guard that makes an abandoned sending half end
//! with a reset, never with a clean `FIN`.
//!
//! How each way of ending reads on the other side (docs/PROTOCOL.md, section 6):
//!
//! | the sender…                               | wire                        | the receiver sees |
//! |-------------------------------------------|-----------------------------|-------------------|
//! | finished its items (request direction)    | `FIN`                       | the end           |
//! | finished its items (reply direction)      | `STATUS` ok, `FIN`          | the end           |
//! | failed with a status                      | `STATUS` error, `FIN`       | that status       |
//! | was dropped / cancelled                   | `RESET_STREAM` 0x01         | `cancelled`       |
//! | panicked                                  | `RESET_STREAM` 0x06         | `internal`        |
//! | ran out of time                           | `RESET_STREAM` 0x07         | `deadline_exceeded` |
//! | died (its process or connection)          | connection lost             | `unavailable`     |
//! | sent a reply without `STATUS`             | `FIN`                       | `unavailable`     |

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{FutureExt, StreamExt};
use quinn::{RecvStream, SendStream, VarInt};

use super::error_code;
use crate::status::{Code, Status};
use crate::streaming::{DecodeBinary, FrameOut, Frames, ReceivedItems, Streaming};
use crate::wire::items::{ItemAssembler, ItemDecoder, ItemEvent, Violation};
use crate::wire::{FrameBuffer, FrameDecoder, FrameKind, StatusBody, encode_frame};

pub(crate) use crate::wire::items::Direction;

/// The status a reset with `code` stands for.
pub(crate) fn reset_status(code: VarInt, who: &str) -> Status {
    match code {
        error_code::CANCELLED => Status::cancelled(format!("{who} cancelled the stream")),
        error_code::PANICKED => {
            Status::internal(format!("{who} failed while producing the stream"))
        }
        error_code::DEADLINE => Status::deadline_exceeded(format!(
            "{who} ran out of time before it finished the stream"
        )),
        error_code::SHUTDOWN => Status::unavailable(format!("{who} shut down mid-stream")),
        error_code::TOO_LARGE => Status::new(
            Code::ResourceExhausted,
            format!("{who} refused an item over its message limit"),
        ),
        error_code::OVERLOADED => Status::refused(
            Code::ResourceExhausted,
            format!("{who} is serving its limit of calls"),
        ),
        other => Status::unavailable(format!("{who} reset the stream (code {other})")),
    }
}

/// The items arriving on `recv` (after the frames already read into `buffer`), as a stream
/// that ends only when the sender ended cleanly; any other end is an error. Dropping it stops
/// the sender (`STOP_SENDING` 0x01).
pub(crate) fn incoming_items(
    recv: RecvStream,
    decoder: FrameDecoder,
    leftover: FrameBuffer,
    direction: Direction,
    who: String,
) -> Streaming<Bytes> {
    let reader = ItemReader::new(recv, decoder.max_message(), leftover, direction, who);
    items_of(reader)
}

fn items_of(reader: ItemReader) -> Streaming<Bytes> {
    Streaming::received(reader)
}

/// Reads the items of one stream: a [`Stream`](futures_util::Stream) polled directly, each
/// item decoded from the buffered bytes without a future per item.
struct ItemReader {
    recv: RecvStream,
    items: ItemAssembler,
    who: String,
    /// An item read ahead (the first of a reply), yielded before anything else.
    first: Option<Bytes>,
    /// Set once the stream's last event is known: it is yielded after the `FIN` that follows a
    /// final status was read (so the stream is not stopped for nothing).
    closing: Option<Option<Result<Bytes, Status>>>,
    /// Set when the items are `Bytes` items to decode as they are read
    /// ([`ReceivedItems::decode_binaries`]): the method, and how to decode an item that is not
    /// one whole binary.
    binaries: Option<(&'static str, DecodeBinary)>,
}

impl ItemReader {
    fn new(
        recv: RecvStream,
        max_message: usize,
        leftover: FrameBuffer,
        direction: Direction,
        who: String,
    ) -> ItemReader {
        ItemReader {
            recv,
            items: ItemAssembler::resuming(ItemDecoder::new(max_message, direction), leftover),
            who,
            first: None,
            closing: None,
            binaries: None,
        }
    }

    /// The next item, the end (`None`), or how the stream failed.
    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Status>>> {
        if let Some(last) = self.closing.take() {
            if self.items.is_drained() {
                let read = std::pin::pin!(self.recv.read_chunk(usize::MAX, true));
                if read.poll(cx).is_pending() {
                    self.closing = Some(last);
                    return Poll::Pending;
                }
            }
            return Poll::Ready(last);
        }
        loop {
            if self.items.is_ended() {
                return Poll::Ready(None);
            }
            if let Some(event) = self.items.next_event() {
                return self.on_event(event, cx);
            }
            let read = {
                let read = std::pin::pin!(self.recv.read_chunk(usize::MAX, true));
                std::task::ready!(read.poll(cx))
            };
            match read {
                Ok(Some(chunk)) => self.items.push(chunk.bytes),
                Ok(None) => {
                    let event = match self.items.finish() {
                        ItemEvent::Failed(status, None) if status.code() == Code::Unavailable => {
                            ItemEvent::Failed(
                                Status::unavailable(format!(
                                    "{} ended the stream without a status",
                                    self.who
                                )),
                                None,
                            )
                        }
                        event => event,
                    };
                    return self.on_event(event, cx);
                }
                Err(quinn::ReadError::Reset(code)) => {
                    self.items.end();
                    return Poll::Ready(Some(Err(reset_status(code, &self.who))));
                }
                Err(quinn::ReadError::ConnectionLost(error)) => {
                    self.items.end();
                    // A peer that closed the connection saying it never read this stream never
                    // ran the call: a refusal, retried elsewhere (docs/PROTOCOL.md, 8.5).
                    if super::goaway::never_read(&error, self.recv.id()) {
                        return Poll::Ready(Some(Err(Status::refused(
                            Code::Unavailable,
                            format!("{} shut down before it read this call", self.who),
                        ))));
                    }
                    return Poll::Ready(Some(Err(Status::unavailable(format!(
                        "the connection to {} was lost mid-stream: {error}",
                        self.who
                    )))));
                }
                Err(error) => {
                    self.items.end();
                    return Poll::Ready(Some(Err(Status::unavailable(format!(
                        "the stream from {} failed: {error}",
                        self.who
                    )))));
                }
            }
        }
    }

    fn on_event(
        &mut self,
        event: ItemEvent,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Status>>> {
        match event {
            ItemEvent::Item(bytes) => Poll::Ready(Some(Ok(bytes))),
            ItemEvent::End => {
                self.closing = Some(None);
                self.poll_item(cx)
            }
            ItemEvent::Failed(status, violation) => match violation {
                Some(Violation::TooLarge) => {
                    let _ = self.recv.stop(error_code::TOO_LARGE);
                    Poll::Ready(Some(Err(status)))
                }
                Some(Violation::Protocol) => {
                    let _ = self.recv.stop(error_code::PROTOCOL);
                    Poll::Ready(Some(Err(status)))
                }
                None => {
                    self.closing = Some(Some(Err(status)));
                    self.poll_item(cx)
                }
            },
        }
    }
}

impl futures_util::Stream for ItemReader {
    type Item = Result<Bytes, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let item = if let Some(first) = this.first.take() {
            first
        } else if let Some(item) = this.items.next_item() {
            // The common case: a whole item at the front of the last chunk read.
            item
        } else {
            // Items already read are taken without waiting; a consumer that keeps up must
            // still leave the thread to the connection's other streams now and then: once
            // per chunk.
            let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
            let polled = this.poll_item(cx);
            if polled.is_ready() {
                coop.made_progress();
            }
            match polled {
                Poll::Ready(Some(Ok(item))) => item,
                other => return other,
            }
        };
        Poll::Ready(Some(match this.binaries {
            None => Ok(item),
            Some((method, fallback)) => {
                crate::codec::whole_binary(item).or_else(|item| fallback(method, item))
            }
        }))
    }
}

impl ReceivedItems<Bytes> for ItemReader {
    fn decode_binaries(self: Pin<&mut Self>, method: &'static str, fallback: DecodeBinary) {
        self.get_mut().binaries = Some((method, fallback));
    }
}

impl Drop for ItemReader {
    fn drop(&mut self) {
        if !self.items.is_ended() {
            let _ = self.recv.stop(error_code::CANCELLED);
        }
    }
}

/// Reads the reply of a call whose callee streams: waits for the first item (or the final
/// status) so that a failure before any item is the call's error — which the retry policy may
/// retry — and returns the stream of items, the first one included.
pub(crate) async fn first_reply_item(
    recv: RecvStream,
    decoder: FrameDecoder,
    who: String,
) -> Result<Streaming<Bytes>, Status> {
    let mut reader = ItemReader::new(
        recv,
        decoder.max_message(),
        FrameBuffer::default(),
        Direction::Reply,
        who,
    );
    match futures_util::future::poll_fn(|cx| reader.poll_item(cx)).await {
        None => Ok(Streaming::empty()),
        Some(Err(status)) => Err(status),
        Some(Ok(first)) => {
            reader.first = Some(first);
            Ok(items_of(reader))
        }
    }
}

/// A sending half that resets with [`error_code::CANCELLED`] when dropped before it finished
/// (quinn would otherwise finish it, and an abandoned stream would look complete).
#[derive(Debug)]
pub(crate) struct SendGuard {
    send: Option<SendStream>,
}

impl SendGuard {
    pub(crate) fn new(send: SendStream) -> SendGuard {
        SendGuard { send: Some(send) }
    }

    /// The stream.
    pub(crate) fn get(&mut self) -> &mut SendStream {
        self.send.as_mut().expect("present until finished or reset")
    }

    /// Ends the stream cleanly (`FIN`); the guard then does nothing.
    pub(crate) fn finish(mut self) -> Option<SendStream> {
        let mut send = self.send.take()?;
        let _ = send.finish();
        Some(send)
    }

    /// Resets the stream with `code`.
    pub(crate) fn reset(mut self, code: VarInt) {
        self.reset_in_place(code);
    }

    /// Resets the stream with `code`, leaving the guard empty.
    pub(crate) fn reset_in_place(&mut self, code: VarInt) {
        if let Some(mut send) = self.send.take() {
            let _ = send.reset(code);
        }
    }
}

impl Drop for SendGuard {
    fn drop(&mut self) {
        if let Some(mut send) = self.send.take() {
            let _ = send.reset(error_code::CANCELLED);
        }
    }
}

/// Up to `N` chunks to write in one go (no allocation to hold them).
pub(crate) struct Chunks<const N: usize> {
    chunks: [Bytes; N],
    used: usize,
}

impl<const N: usize> Chunks<N> {
    /// The first `used` of `chunks`.
    pub(crate) fn new(chunks: [Bytes; N], used: usize) -> Chunks<N> {
        Chunks {
            chunks,
            used: used.min(N),
        }
    }

    /// The chunks to write.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [Bytes] {
        &mut self.chunks[..self.used]
    }
}

/// The chunks of one `DATA` frame carrying `item`: its prefix and the item itself (not copied).
pub(crate) fn data_frame(item: Bytes) -> [Bytes; 2] {
    let mut prefix = BytesMut::with_capacity(5);
    prefix.put_u8(FrameKind::Data as u8);
    prefix.put_u32(u32::try_from(item.len()).unwrap_or(u32::MAX));
    [prefix.freeze(), item]
}

/// One encoded `STATUS` frame.
pub(crate) fn status_frame(status: &StatusBody) -> Bytes {
    let body = rmp_serde::to_vec_named(status).unwrap_or_else(|_| b"\x81\xa4code\x0d".to_vec());
    let mut frame = BytesMut::with_capacity(body.len() + 5);
    encode_frame(FrameKind::Status, &body, &mut frame);
    frame.freeze()
}

/// Items smaller than this are copied into a batch with the items ready after them, so a
/// stream of small items costs one write (and one buffer in QUIC) per batch, not per item.
pub(crate) const COALESCE_BELOW: usize = 4 * 1024;

/// How many bytes a stream's writer writes between two yields to its thread's other tasks
/// (16 full batches, 1 MiB): often enough that a producer which is always ready does not hold
/// up the connection's other streams (a few milliseconds of writing), seldom enough that the
/// connection sends full transmits. At each yield the connection sends what is queued, and
/// its last transmit is a partial one: for a stream of 64 B messages, yielding every 256 KiB
/// made 19 % more `sendmsg` calls per byte than bare quinn (whose writer yields only when
/// tokio's budget says so), every 1 MiB 2 % more.
const YIELD_AFTER_BYTES: usize = 16 * BATCH_BYTES;

/// A stream writer's share of its thread: a producer that is always ready and a peer that
/// always has room would otherwise keep the writer's task running (tokio's budget lets a task
/// run 128 batches, megabytes) and delay the connection's other streams by seconds on a busy
/// thread. Yielding after every batch instead made the connection send each batch's few
/// packets on their own, in more and smaller transmits.
#[derive(Debug, Default)]
pub(crate) struct FairShare {
    unyielded: usize,
}

impl FairShare {
    /// The bytes of a batch, counted before it is written (writing empties its chunks).
    pub(crate) fn batch_len(chunks: &[Bytes]) -> usize {
        chunks.iter().map(Bytes::len).sum()
    }

    /// Counts `len` bytes just written; yields every [`YIELD_AFTER_BYTES`].
    pub(crate) async fn wrote(&mut self, len: usize) {
        self.unyielded += len;
        if self.unyielded >= YIELD_AFTER_BYTES {
            self.unyielded = 0;
            tokio::task::yield_now().await;
        }
    }
}

/// The most bytes one batch gathers.
const BATCH_BYTES: usize = 64 * 1024;

/// How a stream of items ended, once its producer said so.
#[derive(Debug)]
pub(crate) enum End {
    /// The producer finished.
    Finished,
    /// The producer failed, or produced an item over the limit.
    Failed(Status),
}

/// The chunks that carry `first` and every item the producer has ready right after it (up to
/// [`BATCH_BYTES`]), and how the stream ended if the producer ended it meanwhile. Small items
/// are copied together into one chunk; a large one goes out as is, never copied.
pub(crate) fn batch_ready(
    first: Bytes,
    items: &mut Streaming<Bytes>,
    max: usize,
    target: &str,
) -> (Vec<Bytes>, Option<End>) {
    let mut chunks = Vec::new();
    let mut small = BytesMut::new();
    let mut size = 0;
    let mut next = Some(first);
    let end = loop {
        let Some(item) = next.take() else {
            break None;
        };
        if item.len() > max {
            break Some(End::Failed(item_too_large(item.len(), max, target)));
        }
        size += item.len() + 5;
        if item.len() < COALESCE_BELOW {
            small.put_u8(FrameKind::Data as u8);
            small.put_u32(item.len() as u32);
            small.put_slice(&item);
        } else {
            if !small.is_empty() {
                chunks.push(small.split().freeze());
            }
            chunks.extend(data_frame(item));
        }
        if size >= BATCH_BYTES {
            break None;
        }
        match items.next().now_or_never() {
            Some(Some(Ok(item))) => next = Some(item),
            Some(Some(Err(status))) => break Some(End::Failed(status)),
            Some(None) => break Some(End::Finished),
            None => break None,
        }
    };
    if !small.is_empty() {
        chunks.push(small.freeze());
    }
    (chunks, end)
}

/// The chunks carrying the items `items` has ready now (up to [`BATCH_BYTES`]), and how the
/// stream ended if it did meanwhile; `Pending` while it has neither. A stream of typed items
/// (see [`crate::streaming::encoded`]) has its items encoded straight into one chunk of
/// frames; any other is gathered item by item as [`batch_ready`] does. `last_size` is the
/// size of the writer's previous batch of encoded frames, which this one starts with room for
/// (a stream that keeps its producer busy fills batches of about the same size, and growing a
/// buffer to 64 KiB copies it over and over); it is updated for the next.
pub(crate) fn poll_batch(
    items: &mut Streaming<Bytes>,
    cx: &mut Context<'_>,
    max: usize,
    target: &str,
    last_size: &mut usize,
) -> Poll<(Vec<Bytes>, Option<End>)> {
    let mut out = FrameOut {
        // An eighth more than the last batch: the item that fills a batch may end it a little
        // further than the last one ended, and growing the buffer then copies the whole batch.
        buf: Vec::with_capacity(*last_size + *last_size / 8),
        whole: 0,
        budget: BATCH_BYTES,
        max_item: max,
        target,
    };
    if let Some(frames) = items.poll_frames(cx, &mut out) {
        let end = match frames {
            Frames::Pending | Frames::Full => None,
            Frames::End(Ok(())) => Some(End::Finished),
            Frames::End(Err(status)) => Some(End::Failed(status)),
        };
        if out.buf.is_empty() {
            return match end {
                None => Poll::Pending,
                end => Poll::Ready((Vec::new(), end)),
            };
        }
        *last_size = out.buf.len();
        return Poll::Ready((vec![Bytes::from(out.buf)], end));
    }
    Poll::Ready(match std::task::ready!(items.poll_next_unpin(cx)) {
        None => (Vec::new(), Some(End::Finished)),
        Some(Err(status)) => (Vec::new(), Some(End::Failed(status))),
        Some(Ok(first)) => batch_ready(first, items, max, target),
    })
}

/// The status for an item over the message limit, before it is sent.
pub(crate) fn item_too_large(len: usize, max: usize, target: &str) -> Status {
    Status::new(
        Code::ResourceExhausted,
        format!(
            "an item of the stream of `{target}` is {len} bytes, over the limit of {max} bytes"
        ),
    )
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;

    use super::*;

    #[tokio::test]
    async fn a_writer_yields_once_every_sixteen_full_batches() {
        let batch = [Bytes::from(vec![0u8; BATCH_BYTES])];
        let mut share = FairShare::default();
        let mut yielded_after = Vec::new();
        for written in 1..=40 {
            let len = FairShare::batch_len(&batch);
            if share.wrote(len).now_or_never().is_none() {
                yielded_after.push(written);
            }
        }
        assert_eq!(yielded_after, [16, 32]);
    }
}
