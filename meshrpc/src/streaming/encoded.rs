//! Streams of typed items that are encoded as they are taken: [`encoded`] builds one, and
//! [`Streaming::poll_frames`] lets the writer of a call's stream have the items encoded
//! straight into its `DATA` frames — no buffer, no virtual call and no copy per item on the
//! way from the producer to QUIC. Read as a plain stream, the same source yields each item's
//! encoded bytes.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

use super::{Source, Streaming};
use crate::status::{Code, Status};
use crate::wire::FrameKind;

/// The bytes of a `DATA` frame's prefix: its kind and its body's length.
const PREFIX_LEN: usize = 5;

/// The most an encoded source read as a plain stream keeps of the buffer it encodes in.
const SCRATCH_LIMIT: usize = 64 * 1024;

/// A source of typed items that can encode them into a writer's frames.
pub(crate) trait EncodedSource<T>: Stream<Item = Result<T, Status>> + Send {
    /// Encodes the items ready now into `out`, each as one `DATA` frame, until `out` is full
    /// or the producer has none ready.
    fn poll_frames(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut FrameOut<'_>) -> Frames;
}

/// How [`Streaming::poll_frames`] stopped.
#[derive(Debug)]
pub(crate) enum Frames {
    /// The producer has nothing ready (it will wake the task).
    Pending,
    /// `out` reached its size: more may be ready.
    Full,
    /// The stream ended: cleanly, or with this status.
    End(Result<(), Status>),
}

/// Where a writer has items encoded: its buffer of whole frames and its limits.
#[derive(Debug)]
pub(crate) struct FrameOut<'a> {
    /// Whole `DATA` frames, and while an item is encoded, its partial frame.
    pub(crate) buf: Vec<u8>,
    /// Where the whole frames in `buf` end.
    pub(crate) whole: usize,
    /// Stop adding items once `buf` holds this many bytes.
    pub(crate) budget: usize,
    /// The largest item (encoded) that may be sent.
    pub(crate) max_item: usize,
    /// `service.method`, for the error naming an item over the limit.
    pub(crate) target: &'a str,
}

/// Typed items encoded by `encode` as they are taken: the form generated code gives the
/// runtime for a stream of typed items. `encode` appends one item's MessagePack encoding to
/// the buffer it is given; an `Err` from it ends the stream with that status. Generated code
/// reaches it as `meshrpc::__generated::encoded`.
#[doc(hidden)]
pub fn encoded<U, F>(items: Streaming<U>, encode: F) -> Streaming<Bytes>
where
    U: Send + 'static,
    F: FnMut(U, &mut Vec<u8>) -> Result<(), Status> + Send + 'static,
{
    Streaming {
        source: Source::Encoded(Box::pin(Encoded {
            items,
            encode,
            scratch: Vec::new(),
        })),
        end: None,
        attached: None,
    }
}

/// The source [`encoded`] builds.
struct Encoded<U, F> {
    items: Streaming<U>,
    encode: F,
    /// Where items are encoded when read as a plain stream, before each is copied out.
    scratch: Vec<u8>,
}

impl<U, F> Unpin for Encoded<U, F> {}

impl<U, F> Stream for Encoded<U, F>
where
    U: Send + 'static,
    F: FnMut(U, &mut Vec<u8>) -> Result<(), Status> + Send,
{
    type Item = Result<Bytes, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let item = match std::task::ready!(Pin::new(&mut this.items).poll_next(cx)) {
            Some(Ok(item)) => item,
            Some(Err(status)) => return Poll::Ready(Some(Err(status))),
            None => return Poll::Ready(None),
        };
        this.scratch.clear();
        let encoded = (this.encode)(item, &mut this.scratch);
        let bytes = Bytes::copy_from_slice(&this.scratch);
        // A buffer that grew for a large item is let go, so an idle stream does not keep it.
        if this.scratch.capacity() > SCRATCH_LIMIT {
            this.scratch = Vec::new();
        }
        Poll::Ready(Some(encoded.map(|()| bytes)))
    }
}

impl<U, F> EncodedSource<Bytes> for Encoded<U, F>
where
    U: Send + 'static,
    F: FnMut(U, &mut Vec<u8>) -> Result<(), Status> + Send,
{
    fn poll_frames(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut FrameOut<'_>) -> Frames {
        let this = self.get_mut();
        loop {
            if out.buf.len() >= out.budget {
                return Frames::Full;
            }
            let item = match Pin::new(&mut this.items).poll_next(cx) {
                Poll::Pending => return Frames::Pending,
                Poll::Ready(None) => return Frames::End(Ok(())),
                Poll::Ready(Some(Err(status))) => return Frames::End(Err(status)),
                Poll::Ready(Some(Ok(item))) => item,
            };
            let start = out.buf.len();
            out.buf
                .extend_from_slice(&[FrameKind::Data as u8, 0, 0, 0, 0][..PREFIX_LEN]);
            if let Err(status) = (this.encode)(item, &mut out.buf) {
                out.buf.truncate(start);
                return Frames::End(Err(status));
            }
            let len = out.buf.len() - start - PREFIX_LEN;
            if len > out.max_item {
                out.buf.truncate(start);
                return Frames::End(Err(crate::transport::streams::item_too_large(
                    len,
                    out.max_item,
                    out.target,
                )));
            }
            // `len` is at most `max_item`, which fits a frame's length.
            let len = u32::try_from(len).unwrap_or(u32::MAX);
            out.buf[start + 1..start + PREFIX_LEN].copy_from_slice(&len.to_be_bytes());
            out.whole = out.buf.len();
        }
    }
}

impl Streaming<Bytes> {
    /// For a stream of typed items built by [`encoded`]: encodes the items ready now into
    /// `out` as `DATA` frames (see [`Frames`]), with what is attached applied as
    /// [`Stream::poll_next`] applies it. `None` for any other stream: poll it item by item.
    pub(crate) fn poll_frames(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut FrameOut<'_>,
    ) -> Option<Frames> {
        if self.end.is_some() {
            return Some(Frames::End(Ok(())));
        }
        if !matches!(self.source, Source::Encoded(_)) {
            return None;
        }
        out.whole = out.buf.len();
        let polled = self.poll_guarded(cx, |source, cx| {
            let Source::Encoded(source) = source else {
                return Poll::Ready(Frames::End(Ok(())));
            };
            match source.as_mut().poll_frames(cx, out) {
                Frames::Pending => Poll::Pending,
                frames => Poll::Ready(frames),
            }
        });
        let frames = match polled {
            Ok(Poll::Pending) => Frames::Pending,
            Ok(Poll::Ready(frames)) => frames,
            Err(status) => {
                // What a panic left of an item is cut off at the last whole frame.
                out.buf.truncate(out.whole);
                Frames::End(Err(status))
            }
        };
        if let Frames::End(end) = &frames {
            let code = end.as_ref().map_or_else(Status::code, |()| Code::Ok);
            self.end_with(code);
        }
        Some(frames)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use futures_util::StreamExt;

    use super::*;
    use crate::codec::{decode_binary_item, encode_binary_into};

    fn binaries(items: Streaming<Bytes>) -> Streaming<Bytes> {
        encoded(items, |item, out| encode_binary_into(&item, out))
    }

    fn out(budget: usize, max_item: usize) -> FrameOut<'static> {
        FrameOut {
            buf: Vec::new(),
            whole: 0,
            budget,
            max_item,
            target: "s.m",
        }
    }

    /// The items in `frames`, each a whole `DATA` frame.
    fn items_in(mut frames: &[u8]) -> Vec<Bytes> {
        let mut items = Vec::new();
        while !frames.is_empty() {
            assert_eq!(frames[0], FrameKind::Data as u8);
            let len = u32::from_be_bytes([frames[1], frames[2], frames[3], frames[4]]) as usize;
            let body = Bytes::copy_from_slice(&frames[PREFIX_LEN..PREFIX_LEN + len]);
            items.push(decode_binary_item("m", body).expect("a binary"));
            frames = &frames[PREFIX_LEN + len..];
        }
        items
    }

    fn poll_frames(stream: &mut Streaming<Bytes>, out: &mut FrameOut<'_>) -> Option<Frames> {
        let waker = futures_util::task::noop_waker();
        stream.poll_frames(&mut Context::from_waker(&waker), out)
    }

    #[test]
    fn ready_items_are_encoded_into_frames_until_the_batch_is_full_then_the_end_is_seen() {
        let items: Vec<Bytes> = (0..5u8).map(|i| Bytes::from(vec![i; 10])).collect();
        let ends = Arc::new(Mutex::new(Vec::new()));
        let seen = ends.clone();
        let mut stream = binaries(Streaming::iter(items.clone()))
            .on_end(move |code| seen.lock().expect("lock").push(code));
        // Each frame is 5 + 2 + 10 bytes: a 40-byte batch is full after three.
        let mut first = out(40, 1024);
        assert!(matches!(
            poll_frames(&mut stream, &mut first),
            Some(Frames::Full)
        ));
        assert_eq!(items_in(&first.buf), items[..3]);
        let mut rest = out(40, 1024);
        assert!(matches!(
            poll_frames(&mut stream, &mut rest),
            Some(Frames::End(Ok(())))
        ));
        assert_eq!(items_in(&rest.buf), items[3..]);
        assert_eq!(*ends.lock().expect("lock"), vec![Code::Ok]);
    }

    #[test]
    fn an_item_over_the_limit_ends_the_stream_after_the_whole_frames_before_it() {
        let items = vec![Bytes::from_static(b"small"), Bytes::from(vec![0u8; 100])];
        let mut stream = binaries(Streaming::iter(items));
        let mut out = out(1 << 16, 50);
        let Some(Frames::End(Err(status))) = poll_frames(&mut stream, &mut out) else {
            panic!("the oversized item ends the stream");
        };
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("s.m"), "{}", status.message());
        assert_eq!(items_in(&out.buf), vec![Bytes::from_static(b"small")]);
    }

    #[test]
    fn a_panicking_producer_ends_with_internal_keeping_the_whole_frames_before_it() {
        let mut produced = 0;
        let items = futures_util::stream::poll_fn(move |_| {
            produced += 1;
            assert!(produced < 3, "the producer broke");
            Poll::Ready(Some(Ok(Bytes::from_static(b"item"))))
        });
        let mut stream = binaries(Streaming::new(items)).catch_panics("m");
        let mut out = out(1 << 16, 1024);
        let Some(Frames::End(Err(status))) = poll_frames(&mut stream, &mut out) else {
            panic!("the panic ends the stream");
        };
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(items_in(&out.buf).len(), 2);
        assert!(matches!(
            poll_frames(&mut stream, &mut out),
            Some(Frames::End(Ok(())))
        ));
    }

    #[tokio::test]
    async fn read_as_a_plain_stream_it_yields_each_items_encoding() {
        let mut stream = binaries(Streaming::iter([
            Bytes::from_static(b"a"),
            Bytes::from_static(b"bc"),
        ]));
        let first = stream.next().await.expect("an item").expect("ok");
        assert_eq!(&first[..], &[0xc4, 1, b'a']);
        let second = stream.next().await.expect("an item").expect("ok");
        assert_eq!(&second[..], &[0xc4, 2, b'b', b'c']);
        assert!(stream.next().await.is_none());
        // Any other stream is written item by item.
        let mut plain = Streaming::iter([Bytes::from_static(b"x")]);
        assert!(poll_frames(&mut plain, &mut out(1024, 1024)).is_none());
    }
}
