//! Writing a call's reply: one `DATA` frame and `STATUS` for a message, a `DATA` frame per item
//! and then `STATUS` for a stream, `STATUS` alone for a failure. A stream is pulled one item at
//! a time, only once the previous one was handed to QUIC, so a slow reader suspends the
//! producer (QUIC flow control bounds what is buffered), and a reader that goes away stops it.

use std::future::Future;

use bytes::{BufMut, Bytes, BytesMut};
use quinn::SendStream;
use tracing::debug;

use crate::status::{Code, Status};
use crate::streaming::{Body, Streaming};
use crate::transport::streams::{
    COALESCE_BELOW, Chunks, End, FairShare, SendGuard, poll_batch, status_frame,
};
use crate::wire::{FrameKind, StatusBody};

/// The `STATUS` frame of every successful reply.
pub(crate) const OK_STATUS_FRAME: &[u8] = b"\x03\x00\x00\x00\x07\x81\xa4code\x00";

/// How a reply ended, for the caller of [`write_reply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// Every frame was handed to QUIC and the stream finished.
    Finished,
    /// The caller went away (stopped the stream, or the connection closed) first.
    Abandoned,
}

/// A reply's chunks: `[DATA frame and STATUS frame]` in one buffer for a small payload (copied:
/// one chunk for QUIC and one allocation), `[DATA prefix, payload, STATUS frame]` for a large
/// one (never copied), or `[STATUS frame]` alone.
pub(crate) type ReplyChunks = Chunks<3>;

/// Encodes a reply of `payload` (if any) ended by `status`.
pub(crate) fn encode_reply(payload: Option<&Bytes>, status: &StatusBody) -> ReplyChunks {
    let status_frame = if status.is_ok() {
        Bytes::from_static(OK_STATUS_FRAME)
    } else {
        status_frame(status)
    };
    let Some(payload) = payload else {
        return Chunks::new([status_frame, Bytes::new(), Bytes::new()], 1);
    };
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    if payload.len() < COALESCE_BELOW {
        let mut reply = BytesMut::with_capacity(5 + payload.len() + status_frame.len());
        reply.put_u8(FrameKind::Data as u8);
        reply.put_u32(len);
        reply.put_slice(payload);
        reply.put_slice(&status_frame);
        return Chunks::new([reply.freeze(), Bytes::new(), Bytes::new()], 1);
    }
    let mut prefix = BytesMut::with_capacity(5);
    prefix.put_u8(FrameKind::Data as u8);
    prefix.put_u32(len);
    Chunks::new([prefix.freeze(), payload.clone(), status_frame], 3)
}

/// Writes a reply of one message (or a failure's status) on `send` and finishes it.
///
/// The reply is encoded before the future is made, so the future holds the encoded reply
/// alone, not the outcome beside it.
#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` would keep the outcome in its state beside the reply it becomes"
)]
pub(crate) fn write_reply(
    send: &mut SendStream,
    outcome: Result<Body, Status>,
) -> impl Future<Output = Written> + Send + '_ {
    let mut reply = match outcome {
        Ok(Body::Message(payload)) => encode_reply(Some(&payload), &StatusBody::ok()),
        Err(status) => encode_reply(None, &StatusBody::from(&status)),
        Ok(Body::Stream(_)) => encode_reply(
            None,
            &StatusBody::from(&Status::internal(
                "a stream reply reached the message writer",
            )),
        ),
    };
    async move {
        if send.write_all_chunks(reply.as_mut_slice()).await.is_err() {
            return Written::Abandoned;
        }
        let _ = send.finish();
        Written::Finished
    }
}

/// Writes a stream of items on `send`, item by item until it ends, the caller stops reading,
/// or `ending` resolves (the node shuts down: the stream then ends with `unavailable`, never
/// cleanly), then its `STATUS`, and finishes it. Items over `max_message` end the stream with
/// `resource_exhausted` instead of being sent.
pub(crate) async fn write_stream(
    send: SendStream,
    mut items: Streaming<Bytes>,
    max_message: usize,
    target: &str,
    ending: impl Future<Output = ()>,
) -> (Written, Option<SendStream>) {
    let mut send = SendGuard::new(send);
    // The items' context is set once per poll of the writer (a batch of items), not once per
    // item by the stream itself.
    let written = match items.take_context() {
        Some(context) => {
            context
                .scope(write_items(&mut send, items, max_message, target, ending))
                .await
        }
        None => write_items(&mut send, items, max_message, target, ending).await,
    };
    let last = match written {
        Ok(last) => last,
        Err(()) => return (Written::Abandoned, None),
    };
    if send.get().write_chunk(last).await.is_err() {
        return (Written::Abandoned, None);
    }
    (Written::Finished, send.finish())
}

/// Writes each item of `stream` (the items ready together in one write); returns the `STATUS`
/// frame that ends it, or `Err` if the caller went away.
async fn write_items(
    send: &mut SendGuard,
    mut stream: Streaming<Bytes>,
    max_message: usize,
    target: &str,
    ending: impl Future<Output = ()>,
) -> Result<Bytes, ()> {
    let mut ending = std::pin::pin!(ending);
    let shut_down = || {
        let status = Status::unavailable(format!(
            "this node shut down before the stream of `{target}` finished"
        ));
        status_frame(&StatusBody::from(&status))
    };
    let mut last_size = 0;
    let mut share = FairShare::default();
    loop {
        let (mut chunks, end) = tokio::select! {
            biased;
            () = &mut ending => return Ok(shut_down()),
            _ = send.get().stopped() => {
                debug!(%target, "the caller stopped reading the stream; producer dropped");
                return Err(());
            }
            batch = std::future::poll_fn(|cx| {
                poll_batch(&mut stream, cx, max_message, target, &mut last_size)
            }) => batch,
        };
        if !chunks.is_empty() {
            let len = FairShare::batch_len(&chunks);
            let write = send.get().write_all_chunks(&mut chunks);
            let written = tokio::select! {
                biased;
                written = write => written.is_ok(),
                () = &mut ending => {
                    // Part of a frame may be out: a status cannot follow it, a reset can.
                    send.reset_in_place(crate::transport::error_code::SHUTDOWN);
                    return Err(());
                }
            };
            if !written {
                return Err(());
            }
            share.wrote(len).await;
        }
        match end {
            None => {}
            Some(End::Finished) => return Ok(Bytes::from_static(OK_STATUS_FRAME)),
            Some(End::Failed(status)) => return Ok(end_frame(status)),
        }
    }
}

/// The `STATUS` frame that ends a stream with `status`: an error is never sent as `ok`,
/// whatever the producer put in it.
fn end_frame(status: Status) -> Bytes {
    let status = if status.code() == Code::Ok {
        Status::new(Code::Unknown, status.message().to_owned())
    } else {
        status
    };
    status_frame(&StatusBody::from(&status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::encode_frame;

    #[test]
    fn the_precomputed_ok_status_frame_is_the_encoded_ok_status() {
        let body = rmp_serde::to_vec_named(&StatusBody::ok()).expect("encodes");
        let mut frame = BytesMut::new();
        encode_frame(FrameKind::Status, &body, &mut frame);
        assert_eq!(&frame[..], OK_STATUS_FRAME);
    }
}
