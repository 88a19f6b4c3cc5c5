//! Reading frames off a quinn stream, with the limits checked before memory is reserved.

use std::future::Future;

use quinn::RecvStream;

use crate::status::{Code, Status};
use crate::wire::{Frame, FrameBuffer, FrameDecoder, FrameError};

/// Why a frame could not be read.
#[derive(Debug)]
pub(crate) enum ReadFrameError {
    /// The bytes broke the wire format.
    Frame(FrameError),
    /// The stream or connection failed.
    Stream(quinn::ReadError),
}

impl ReadFrameError {
    /// The status that describes this failure to the other side (or to the local caller).
    pub(crate) fn to_status(&self) -> Status {
        match self {
            ReadFrameError::Frame(error @ FrameError::TooLarge { .. }) => {
                Status::new(Code::ResourceExhausted, error.to_string())
            }
            ReadFrameError::Frame(error) => {
                Status::invalid_argument(format!("malformed frame: {error}"))
            }
            ReadFrameError::Stream(quinn::ReadError::Reset(code)) => {
                Status::unavailable(format!("the peer reset the stream (code {code})"))
            }
            ReadFrameError::Stream(error) => Status::unavailable(format!("stream failed: {error}")),
        }
    }
}

/// Reads the next frame, or `None` at a clean end of stream. A frame that arrives whole in one
/// chunk is not copied: its body shares the chunk's memory.
#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` would move its arguments once more into its body: a server's reading state carries this future"
)]
pub(crate) fn read_frame<'a>(
    recv: &'a mut RecvStream,
    decoder: &'a FrameDecoder,
    buffer: &'a mut FrameBuffer,
) -> impl Future<Output = Result<Option<Frame>, ReadFrameError>> + Send + 'a {
    async move {
        loop {
            if let Some(frame) = buffer.decode(decoder).map_err(ReadFrameError::Frame)? {
                return Ok(Some(frame));
            }
            match recv
                .read_chunk(usize::MAX, true)
                .await
                .map_err(ReadFrameError::Stream)?
            {
                Some(chunk) => buffer.push(chunk.bytes),
                None => {
                    buffer.finish(decoder).map_err(ReadFrameError::Frame)?;
                    return Ok(None);
                }
            }
        }
    }
}
