//! The client side of a message stream as the streaming scenario reads it: every message ready
//! at one poll is counted into one [`Received`] step, as a reader takes whatever has arrived.
//! Bare quinn's reader counts the frames of each chunk it reads; counting the RPC systems'
//! messages one step each would add the reader's own work per message (a virtual call and a
//! pass of its loop) to theirs. An error, or the end of the items, ends the counted stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt as _};

use super::{Error, MessageStream, Received, Result};

/// The most messages counted into one step.
const AT_MOST: u64 = 1024;

/// A step ends once it holds this many payload bytes (about what one chunk of bare quinn's
/// holds): a reader of large messages, such as the slow consumer, still takes them one by one.
const STEP_BYTES: u64 = 64 * 1024;

/// `items` counted into [`Received`] steps; `len` is an item's payload size.
pub(crate) fn counted<S, T, E>(items: S, len: fn(&T) -> usize) -> MessageStream
where
    S: Stream<Item = std::result::Result<T, E>> + Send + Unpin + 'static,
    T: 'static,
    E: Into<Error>,
{
    Counted {
        items,
        len,
        end: None,
    }
    .boxed()
}

struct Counted<S, T> {
    items: S,
    len: fn(&T) -> usize,
    /// How the stream ended (an error or the end of its items; nothing is read after either),
    /// held back while the step before it is handed over; `Some(None)` once handed over.
    end: Option<Option<Error>>,
}

impl<S, T, E> Stream for Counted<S, T>
where
    S: Stream<Item = std::result::Result<T, E>> + Unpin,
    E: Into<Error>,
{
    type Item = Result<Received>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(end) = this.end.take() {
            // Ended for good: the end is handed over once, then nothing.
            this.end = Some(None);
            return Poll::Ready(end.map(Err));
        }
        let mut step = Received::default();
        while step.messages < AT_MOST && step.bytes < STEP_BYTES {
            match this.items.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(item))) => {
                    step.messages += 1;
                    step.bytes += (this.len)(&item) as u64;
                }
                Poll::Ready(Some(Err(error))) if step.messages == 0 => {
                    this.end = Some(None);
                    return Poll::Ready(Some(Err(error.into())));
                }
                Poll::Ready(Some(Err(error))) => {
                    this.end = Some(Some(error.into()));
                    break;
                }
                Poll::Ready(None) if step.messages == 0 => {
                    this.end = Some(None);
                    return Poll::Ready(None);
                }
                Poll::Ready(None) => {
                    this.end = Some(None);
                    break;
                }
                Poll::Pending if step.messages == 0 => return Poll::Pending,
                Poll::Pending => break,
            }
        }
        Poll::Ready(Some(Ok(step)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(items: Vec<std::result::Result<Vec<u8>, &'static str>>) -> Vec<String> {
        let stream = counted(futures::stream::iter(items), Vec::len);
        futures::executor::block_on(stream.collect::<Vec<_>>())
            .into_iter()
            .map(|step| match step {
                Ok(received) => format!("{} messages, {} bytes", received.messages, received.bytes),
                Err(error) => format!("error: {error}"),
            })
            .collect()
    }

    #[test]
    fn ready_messages_are_counted_together_and_an_error_follows_the_step_before_it() {
        assert_eq!(
            steps(vec![
                Ok(vec![0; 3]),
                Ok(vec![0; 4]),
                Err("cut"),
                Ok(vec![0; 5])
            ]),
            ["2 messages, 7 bytes", "error: cut"]
        );
        assert_eq!(steps(vec![Err("cut"), Ok(vec![0; 5])]), ["error: cut"]);
        assert_eq!(steps(vec![Ok(vec![0; 2])]), ["1 messages, 2 bytes"]);
        assert!(steps(Vec::new()).is_empty());
    }

    #[test]
    fn large_messages_are_counted_one_step_each() {
        let items = (0..3).map(|_| Ok(vec![0u8; 64 * 1024])).collect();
        assert_eq!(steps(items), ["1 messages, 65536 bytes"; 3]);
    }

    #[test]
    fn a_step_counts_at_most_its_share_of_a_long_ready_run() {
        let items = (0..AT_MOST + 1).map(|_| Ok(vec![0u8; 1])).collect();
        assert_eq!(
            steps(items),
            ["1024 messages, 1024 bytes", "1 messages, 1 bytes"]
        );
    }
}
