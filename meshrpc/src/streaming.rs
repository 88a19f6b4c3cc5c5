//! Streams of messages: [`Streaming<T>`], the one type streaming methods take and return, and
//! [`Body`], what a call carries in each direction on its way through the client and server
//! stacks (one message, or a stream of them).
//!
//! A `Streaming<T>` yields `Result<T, Status>`: `Ok` items, then either the end (`None`: the
//! sender finished) or one `Err` (the sender aborted, or the stream was cut). **An aborted
//! stream never looks finished**: a producer that is dropped before it calls
//! [`StreamSender::finish`], a peer that resets its stream, a connection that is lost, all end
//! the stream with an error, never with `None`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::context::CallContext;
use crate::status::{Code, Status};

/// Items a [`Streaming::channel`] holds before [`StreamSender::send`] waits; the default
/// capacity of the runtime's own stream buffers.
pub const DEFAULT_STREAM_CAPACITY: usize = 16;

/// A stream of `T` or of the [`Status`] that ended it: the parameter and result type of
/// streaming methods (`Stream<T>` in `services.toml`).
///
/// Build one from any stream ([`Streaming::new`]), from items you already have
/// ([`Streaming::iter`]), or as a bounded channel whose sender waits while the consumer is
/// behind ([`Streaming::channel`]). Read it with [`Streaming::message`] or as a
/// [`Stream`].
pub struct Streaming<T> {
    inner: Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>,
    /// How the stream ended, once an `Err` or the end was yielded (nothing follows either):
    /// `ok`, or the error's code.
    end: Option<Code>,
    /// What the runtime attached to a call's stream (nothing on a stream a user built).
    attached: Option<Box<Attached>>,
}

/// What the runtime attaches to a call's stream instead of wrapping it once more: the context
/// its items are produced in, and what must happen when it ends. Every wrapper costs a virtual
/// call per item; these cost nothing until the end, and the context nothing per item when the
/// writer of the stream takes it ([`Streaming::take_context`]) to set it once per batch.
#[derive(Default)]
struct Attached {
    /// The call's context, current while an item is produced.
    context: Option<CallContext>,
    /// Run once, with the code the stream ended with: `ok` at a clean end, the error's code,
    /// `cancelled` when it is dropped before its end.
    on_end: Vec<Box<dyn FnOnce(Code) + Send>>,
}

impl<T> fmt::Debug for Streaming<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streaming")
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> Streaming<T> {
    /// A stream over any stream of results. Its end is a clean finish; to abort, yield an
    /// `Err`.
    pub fn new(stream: impl Stream<Item = Result<T, Status>> + Send + 'static) -> Streaming<T> {
        Streaming {
            inner: Box::pin(stream),
            end: None,
            attached: None,
        }
    }

    /// A stream of these items, then a clean finish.
    pub fn iter<I>(items: I) -> Streaming<T>
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
    {
        Streaming::new(futures_util::stream::iter(items.into_iter().map(Ok)))
    }

    /// A stream that ends at once, cleanly.
    pub fn empty() -> Streaming<T> {
        Streaming::new(futures_util::stream::empty())
    }

    /// A stream that yields `status` and ends.
    pub fn failed(status: Status) -> Streaming<T> {
        Streaming::new(futures_util::stream::iter([Err(status)]))
    }

    /// A bounded channel: the sender's [`send`](StreamSender::send) waits while `capacity`
    /// items are unread, so a producer cannot outrun its consumer. The stream ends cleanly
    /// only after [`StreamSender::finish`]; a sender dropped without it ends the stream with
    /// `cancelled`.
    pub fn channel(capacity: usize) -> (StreamSender<T>, Streaming<T>) {
        let (items, receiver) = mpsc::channel(capacity.max(1));
        let finished = Arc::new(AtomicBool::new(false));
        let sender = StreamSender {
            items,
            finished: finished.clone(),
        };
        let stream = futures_util::stream::unfold(
            (receiver, finished, false),
            |(mut receiver, finished, ended)| async move {
                if ended {
                    return None;
                }
                match receiver.recv().await {
                    Some(item) => {
                        let ended = item.is_err();
                        Some((item, (receiver, finished, ended)))
                    }
                    None if finished.load(Ordering::Acquire) => None,
                    None => Some((
                        Err(Status::cancelled(
                            "the stream's sender was dropped before it finished the stream",
                        )),
                        (receiver, finished, true),
                    )),
                }
            },
        );
        (sender, Streaming::new(stream))
    }

    /// The same stream with each item mapped by `f`; an `Err` from `f` ends the stream with it.
    pub fn try_map<U: Send + 'static>(
        self,
        mut f: impl FnMut(T) -> Result<U, Status> + Send + 'static,
    ) -> Streaming<U> {
        Streaming::new(self.map(move |item| item.and_then(&mut f)))
    }

    /// `wrap(self)` as a stream, with what the runtime attached to `self` moved to the outer
    /// stream, so the context is set and the end is seen once, outside every wrapper.
    pub(crate) fn wrapped<S>(mut self, wrap: impl FnOnce(Streaming<T>) -> S) -> Streaming<T>
    where
        S: Stream<Item = Result<T, Status>> + Send + 'static,
    {
        let attached = self.attached.take();
        let mut outer = Streaming::new(wrap(self));
        outer.attached = attached;
        outer
    }
}

impl<T> Streaming<T> {
    /// The same stream, its items produced with `context` as the current call context.
    pub(crate) fn in_context(mut self, context: CallContext) -> Streaming<T> {
        self.attached.get_or_insert_default().context = Some(context);
        self
    }

    /// Takes the context the items are produced in, for a consumer that sets it around all
    /// its polls (one task-local swap per batch instead of one per item). The consumer must
    /// then poll the stream only inside that context.
    pub(crate) fn take_context(&mut self) -> Option<CallContext> {
        self.attached.as_mut()?.context.take()
    }

    /// The same stream, running `f` once when it ends: with `ok` at a clean end, the error's
    /// code, or `cancelled` if it is dropped first. Costs nothing per item.
    pub(crate) fn on_end(mut self, f: impl FnOnce(Code) + Send + 'static) -> Streaming<T> {
        if let Some(code) = self.end {
            // Ended already: `f` learns how.
            f(code);
        } else {
            self.attached
                .get_or_insert_default()
                .on_end
                .push(Box::new(f));
        }
        self
    }

    /// Runs the end callbacks with `code`, once.
    fn ended(&mut self, code: Code) {
        if let Some(attached) = self.attached.as_mut() {
            for f in attached.on_end.drain(..) {
                f(code);
            }
        }
    }
}

impl<T> Drop for Streaming<T> {
    fn drop(&mut self) {
        if self.end.is_none() {
            self.ended(Code::Cancelled);
        }
    }
}

impl<T> Streaming<T> {
    /// The next message: `Ok(Some(item))`, `Ok(None)` once the sender finished, or the
    /// `Err` that aborted the stream.
    pub async fn message(&mut self) -> Result<Option<T>, Status> {
        self.next().await.transpose()
    }
}

impl<T> Stream for Streaming<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.end.is_some() {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        let inner = &mut this.inner;
        let item = match this
            .attached
            .as_ref()
            .and_then(|attached| attached.context.as_ref())
        {
            Some(context) => context.sync_scope(|| inner.as_mut().poll_next(cx)),
            None => inner.as_mut().poll_next(cx),
        };
        match &item {
            Poll::Ready(None) => {
                self.end = Some(Code::Ok);
                self.ended(Code::Ok);
            }
            Poll::Ready(Some(Err(status))) => {
                self.end = Some(status.code());
                self.ended(status.code());
            }
            _ => {}
        }
        item
    }
}

/// `stream`, cut off at `deadline` with `expired`: a stream never outlives its call's
/// deadline, and its end then is an error, not a finish.
pub fn until_deadline<T: Send + 'static>(
    stream: Streaming<T>,
    deadline: tokio::time::Instant,
    expired: Status,
) -> Streaming<T> {
    let sleep = Box::pin(tokio::time::sleep_until(deadline));
    stream.wrapped(move |stream| {
        let mut state = Some((stream, sleep, expired));
        futures_util::stream::poll_fn(move |cx| {
            let Some((stream, sleep, _)) = state.as_mut() else {
                return Poll::Ready(None);
            };
            if let Poll::Ready(item) = Pin::new(stream).poll_next(cx) {
                if !matches!(item, Some(Ok(_))) {
                    state = None;
                }
                return Poll::Ready(item);
            }
            if sleep.as_mut().poll(cx).is_ready() {
                let (_, _, expired) = state.take().expect("checked above");
                return Poll::Ready(Some(Err(expired)));
            }
            Poll::Pending
        })
    })
}

/// The sending half of [`Streaming::channel`].
#[derive(Debug)]
pub struct StreamSender<T> {
    items: mpsc::Sender<Result<T, Status>>,
    finished: Arc<AtomicBool>,
}

impl<T> StreamSender<T> {
    /// Sends one item, waiting while the consumer is `capacity` items behind. Fails with
    /// `cancelled` once the consumer is gone (the caller cancelled, or the call ended): stop
    /// producing then.
    pub async fn send(&self, item: T) -> Result<(), Status> {
        self.items
            .send(Ok(item))
            .await
            .map_err(|_| Status::cancelled("the stream's consumer is gone"))
    }

    /// Ends the stream cleanly: the consumer sees its end after the items already sent.
    pub fn finish(self) {
        self.finished.store(true, Ordering::Release);
    }

    /// Ends the stream with `status` (an error the consumer receives after the items already
    /// sent). A status whose code is `ok` is taken as `unknown`: an abort is never a finish.
    pub async fn abort(self, status: Status) {
        let status = if status.code() == Code::Ok {
            Status::new(Code::Unknown, status.message().to_owned())
        } else {
            status
        };
        let _ = self.items.send(Err(status)).await;
    }

    /// Waits until the consumer is gone.
    pub async fn closed(&self) {
        self.items.closed().await;
    }

    /// Whether the consumer is gone.
    pub fn is_closed(&self) -> bool {
        self.items.is_closed()
    }
}

/// What a call carries in one direction through the stacks: one encoded message, or a stream
/// of them. Unary requests and replies are `Message`; streaming ones are `Stream`.
pub enum Body {
    /// One MessagePack-encoded message.
    Message(Bytes),
    /// A stream of MessagePack-encoded messages.
    Stream(Streaming<Bytes>),
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Message(bytes) => f.debug_tuple("Message").field(&bytes.len()).finish(),
            Body::Stream(_) => f.debug_tuple("Stream").finish_non_exhaustive(),
        }
    }
}

impl Body {
    /// The single message, or an `internal` error naming `target` if this is a stream.
    pub fn into_message(self, target: &str) -> Result<Bytes, Status> {
        match self {
            Body::Message(bytes) => Ok(bytes),
            Body::Stream(_) => Err(Status::internal(format!(
                "`{target}` answered with a stream where one message was expected"
            ))),
        }
    }

    /// The stream; a single message becomes a stream of one.
    pub fn into_stream(self) -> Streaming<Bytes> {
        match self {
            Body::Message(bytes) => Streaming::iter([bytes]),
            Body::Stream(stream) => stream,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_finished_channel_ends_cleanly_after_its_items() {
        let (sender, mut stream) = Streaming::channel(4);
        sender.send(1).await.expect("room");
        sender.send(2).await.expect("room");
        sender.finish();
        assert_eq!(stream.message().await.expect("ok"), Some(1));
        assert_eq!(stream.message().await.expect("ok"), Some(2));
        assert_eq!(stream.message().await.expect("clean end"), None);
    }

    #[tokio::test]
    async fn a_sender_dropped_without_finishing_aborts_the_stream() {
        let (sender, mut stream) = Streaming::channel(4);
        sender.send(1).await.expect("room");
        drop(sender);
        assert_eq!(stream.message().await.expect("ok"), Some(1));
        let error = stream.message().await.expect_err("not a clean end");
        assert_eq!(error.code(), Code::Cancelled);
        assert_eq!(stream.message().await.expect("nothing after"), None);
    }

    #[tokio::test]
    async fn an_abort_is_never_an_ok_status() {
        let (sender, mut stream) = Streaming::<u8>::channel(1);
        sender.abort(Status::new(Code::Ok, "done?")).await;
        let error = stream.message().await.expect_err("aborted");
        assert_eq!(error.code(), Code::Unknown);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_channel_suspends_the_sender_until_the_consumer_reads() {
        let (sender, mut stream) = Streaming::channel(2);
        sender.send(1).await.expect("room");
        sender.send(2).await.expect("room");
        let third = sender.send(3);
        tokio::pin!(third);
        assert!(futures_util::FutureExt::now_or_never(third.as_mut()).is_none());
        assert_eq!(stream.message().await.expect("ok"), Some(1));
        third.await.expect("room again");
    }

    /// A stream of `codes` recording, through `on_end`, how it ended.
    fn recorded(stream: Streaming<u8>) -> (Streaming<u8>, Arc<std::sync::Mutex<Vec<Code>>>) {
        let ends = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = ends.clone();
        let stream = stream.on_end(move |code| seen.lock().expect("lock").push(code));
        (stream, ends)
    }

    #[tokio::test]
    async fn on_end_runs_once_with_how_the_stream_ended() {
        let (mut finished, ends) = recorded(Streaming::iter([1, 2]));
        while finished.next().await.is_some() {}
        drop(finished);
        assert_eq!(*ends.lock().expect("lock"), vec![Code::Ok]);

        let (mut failed, ends) = recorded(Streaming::new(futures_util::stream::iter([
            Ok(1),
            Err(Status::internal("broke")),
        ])));
        while failed.next().await.is_some() {}
        drop(failed);
        assert_eq!(*ends.lock().expect("lock"), vec![Code::Internal]);

        // Attached after the end, a callback learns how it ended.
        let mut ended = Streaming::<u8>::failed(Status::internal("broke"));
        while ended.next().await.is_some() {}
        let (_, ends) = recorded(ended);
        assert_eq!(*ends.lock().expect("lock"), vec![Code::Internal]);

        let (mut dropped, ends) = recorded(Streaming::iter([1, 2]));
        assert_eq!(dropped.message().await.expect("ok"), Some(1));
        drop(dropped);
        assert_eq!(*ends.lock().expect("lock"), vec![Code::Cancelled]);
    }

    #[tokio::test]
    async fn a_wrapper_carries_the_end_callbacks_and_its_own_end_is_what_they_see() {
        let (stream, ends) = recorded(Streaming::iter([1, 2, 3]));
        // A wrapper that cuts the stream off with an error after its first item.
        let mut cut = stream.wrapped(|inner| {
            inner
                .take(1)
                .chain(futures_util::stream::iter([Err(Status::deadline_passed(
                    "s", "m",
                ))]))
        });
        while cut.next().await.is_some() {}
        assert_eq!(*ends.lock().expect("lock"), vec![Code::DeadlineExceeded]);
    }

    #[tokio::test]
    async fn items_are_produced_in_the_attached_context_or_the_takers() {
        let context = CallContext::new("s", "m", None, crate::Metadata::new());
        let service_seen = || {
            futures_util::stream::poll_fn(|_| {
                let service = CallContext::current().map(|c| c.service().to_owned());
                Poll::Ready(Some(Ok(service)))
            })
        };
        // Polled directly: the stream sets the context itself.
        let mut direct = Streaming::new(service_seen()).in_context(context.clone());
        assert_eq!(direct.message().await.expect("ok"), Some(Some("s".into())));
        // Taken by a consumer that polls inside the context: the stream no longer sets it.
        let mut taken = Streaming::new(service_seen()).in_context(context);
        let context = taken.take_context().expect("attached");
        assert_eq!(taken.message().await.expect("ok"), Some(None));
        let inside = context.scope(async { taken.message().await }).await;
        assert_eq!(inside.expect("ok"), Some(Some("s".into())));
    }

    #[tokio::test]
    async fn the_sender_learns_that_the_consumer_is_gone() {
        let (sender, stream) = Streaming::<u8>::channel(1);
        drop(stream);
        let error = sender.send(1).await.expect_err("nobody reads");
        assert_eq!(error.code(), Code::Cancelled);
        assert!(sender.is_closed());
    }
}
