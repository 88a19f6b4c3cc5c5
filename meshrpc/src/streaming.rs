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

mod encoded;

pub use encoded::encoded;
pub(crate) use encoded::{FrameOut, Frames};

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
///
/// Received `Bytes` items (`Stream<Bytes>`) share the memory of the QUIC packets they arrived
/// in, which a batch of packets (up to 64 KiB) shares: copy small items you keep for long
/// (`Bytes::copy_from_slice`). Typed items are decoded out of it.
pub struct Streaming<T> {
    source: Source<T>,
    /// How the stream ended, once an `Err` or the end was yielded (nothing follows either):
    /// `ok`, or the error's code.
    end: Option<Code>,
    /// What the runtime attached to a call's stream (nothing on a stream a user built).
    attached: Option<Box<Attached>>,
}

/// Where the items of a [`Streaming`] come from.
enum Source<T> {
    /// Any stream of items.
    Items(BoxedItems<T>),
    /// Typed items encoded as they are taken, which a writer can have encoded straight into
    /// its frames ([`Streaming::poll_frames`]).
    Encoded(Pin<Box<dyn encoded::EncodedSource<T>>>),
    /// Items read off a call's stream, which can decode `Bytes` items themselves
    /// ([`binary_items`]).
    Received(Pin<Box<dyn ReceivedItems<T>>>),
    /// Nothing more: the source was dropped.
    Done,
}

/// A boxed stream of items, as [`Streaming::wrap_source`] hands it over.
pub(crate) type BoxedItems<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// How a `Bytes` item's MessagePack encoding is decoded when it is not one whole binary:
/// `meshrpc::__generated::decode_binary_item` or `decode_request_binary_item`.
#[doc(hidden)]
pub type DecodeBinary = fn(&str, Bytes) -> Result<Bytes, Status>;

/// The items of a call's stream as they are read off the network (each one encoded message).
pub(crate) trait ReceivedItems<T>: Stream<Item = Result<T, Status>> + Send {
    /// From now on, yields each item decoded as a `Bytes` item of `method`: a whole
    /// MessagePack binary by taking its content (no copy), anything else by `fallback`.
    fn decode_binaries(self: Pin<&mut Self>, method: &'static str, fallback: DecodeBinary);
}

/// The `Bytes` items of a stream of encoded items, decoded: what generated code makes of a
/// `Stream<Bytes>` it receives. A stream read off the network decodes them as it reads them
/// (no layer and no virtual call per item); any other is mapped by `fallback`. Generated
/// code reaches it as `meshrpc::__generated::binary_items`.
#[doc(hidden)]
pub fn binary_items(
    mut items: Streaming<Bytes>,
    method: &'static str,
    fallback: DecodeBinary,
) -> Streaming<Bytes> {
    if let Source::Received(received) = &mut items.source {
        received.as_mut().decode_binaries(method, fallback);
        return items;
    }
    items.try_map(move |item| fallback(method, item))
}

impl<T> Streaming<T> {
    /// A stream of the items read off a call's stream.
    pub(crate) fn received(items: impl ReceivedItems<T> + 'static) -> Streaming<T> {
        Streaming {
            source: Source::Received(Box::pin(items)),
            end: None,
            attached: None,
        }
    }
}

impl<T> Source<T> {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<T, Status>>> {
        match self {
            Source::Items(items) => items.as_mut().poll_next(cx),
            Source::Encoded(items) => items.as_mut().poll_next(cx),
            Source::Received(items) => items.as_mut().poll_next(cx),
            Source::Done => Poll::Ready(None),
        }
    }
}

impl<T: Send + 'static> Source<T> {
    /// The source as a plain stream of items.
    fn into_items(self) -> BoxedItems<T> {
        match self {
            Source::Items(items) => items,
            Source::Encoded(items) => items,
            Source::Received(items) => items,
            Source::Done => Box::pin(futures_util::stream::empty()),
        }
    }
}

/// What the runtime attaches to a call's stream instead of wrapping it once more: the context
/// its items are produced in, how its producer is guarded, and what must happen when it ends.
/// Every wrapper costs a virtual call per item; these cost nothing until the end, and the
/// context nothing per item when the writer of the stream takes it
/// ([`Streaming::take_context`]) to set it once per batch.
#[derive(Default)]
struct Attached {
    /// The call's context, current while an item is produced.
    context: Option<CallContext>,
    /// Set when a panic of the producer must end the stream with `internal` instead of
    /// unwinding: the method, for the log.
    catch_panics: Option<&'static str>,
    /// When the stream is cut off, and the status it then ends with.
    deadline: Option<(Pin<Box<tokio::time::Sleep>>, Status)>,
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
            source: Source::Items(Box::pin(stream)),
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
    ///
    /// The mapping wraps the stream's own source: a mapped stream costs one virtual call per
    /// item however often it was mapped before.
    pub fn try_map<U: Send + 'static>(
        self,
        mut f: impl FnMut(T) -> Result<U, Status> + Send + 'static,
    ) -> Streaming<U> {
        self.wrap_source(move |source| source.map(move |item| item.and_then(&mut f)))
    }

    /// The stream with its source replaced by `wrap(source)`, keeping how it ended and what
    /// the runtime attached: no second `Streaming` (and no second virtual call per item)
    /// around the first. The wrapper is never polled after it yielded an `Err` or its end.
    pub(crate) fn wrap_source<U, S>(mut self, wrap: impl FnOnce(BoxedItems<T>) -> S) -> Streaming<U>
    where
        U: Send + 'static,
        S: Stream<Item = Result<U, Status>> + Send + 'static,
    {
        let source = self.take_source();
        let end = self.end;
        let attached = self.attached.take();
        // Nothing attached is left for `self`'s drop to run.
        Streaming {
            source: Source::Items(Box::pin(wrap(source.into_items()))),
            end,
            attached,
        }
    }
}

impl<T> Streaming<T> {
    /// Takes the source out, leaving one that ends at once.
    fn take_source(&mut self) -> Source<T> {
        std::mem::replace(&mut self.source, Source::Done)
    }

    /// The same stream, ending with `internal` (and a warning naming `method`) if its
    /// producer panics, instead of unwinding into whoever polls it.
    pub(crate) fn catch_panics(mut self, method: &'static str) -> Streaming<T> {
        self.attached.get_or_insert_default().catch_panics = Some(method);
        self
    }

    /// Polls the source with what is attached: in the call's context, catching a panic when
    /// asked to, and cut off by the deadline when it has nothing ready. `Err` when the stream
    /// must end with that status instead (its source is then dropped).
    fn poll_guarded<R>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Source<T>, &mut Context<'_>) -> Poll<R>,
    ) -> Result<Poll<R>, Status> {
        let Some(attached) = self.attached.as_deref_mut() else {
            return Ok(poll(&mut self.source, cx));
        };
        let source = &mut self.source;
        let polled = || match attached.catch_panics {
            None => Ok(poll(source, cx)),
            Some(method) => {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| poll(source, cx))).map_err(
                    |_| {
                        tracing::warn!(%method, "the handler's reply stream panicked");
                        Status::internal("the handler's reply stream panicked")
                    },
                )
            }
        };
        let outcome = match attached.context.as_ref() {
            Some(context) => context.sync_scope(polled),
            None => polled(),
        };
        let outcome = match outcome {
            Ok(Poll::Pending) => match attached.deadline.as_mut() {
                Some((sleep, expired)) => match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Err(expired.clone()),
                    Poll::Pending => Ok(Poll::Pending),
                },
                None => Ok(Poll::Pending),
            },
            outcome => outcome,
        };
        if outcome.is_err() {
            drop(self.take_source());
        }
        outcome
    }

    /// Records that the stream ended with `code` and runs the end callbacks. Once per stream,
    /// so kept out of line: the path of an item through [`Stream::poll_next`] stays short.
    #[cold]
    #[inline(never)]
    fn end_with(&mut self, code: Code) {
        self.end = Some(code);
        self.ended(code);
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

impl<T> Streaming<T> {
    /// Whether polling must go through [`Self::poll_guarded`]: a context to set, panics to
    /// catch or a deadline to watch.
    fn is_guarded(&self) -> bool {
        self.attached.as_deref().is_some_and(|attached| {
            attached.context.is_some()
                || attached.catch_panics.is_some()
                || attached.deadline.is_some()
        })
    }

    /// The next item of a guarded stream; kept out of line, so the unguarded path through
    /// [`Stream::poll_next`] (every item of a stream read off the network) stays a few
    /// instructions around the source's own poll.
    #[inline(never)]
    fn poll_guarded_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<T, Status>>> {
        self.poll_guarded(cx, |source, cx| source.poll_next(cx))
            .unwrap_or_else(|status| Poll::Ready(Some(Err(status))))
    }
}

impl<T> Stream for Streaming<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.end.is_some() {
            return Poll::Ready(None);
        }
        let item = if this.is_guarded() {
            this.poll_guarded_next(cx)
        } else {
            this.source.poll_next(cx)
        };
        match &item {
            Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
            Poll::Ready(None) => this.end_with(Code::Ok),
            Poll::Ready(Some(Err(status))) => this.end_with(status.code()),
        }
        item
    }
}

/// `stream`, cut off at `deadline` with `expired`: a stream never outlives its call's
/// deadline, and its end then is an error, not a finish.
pub fn until_deadline<T: Send + 'static>(
    mut stream: Streaming<T>,
    deadline: tokio::time::Instant,
    expired: Status,
) -> Streaming<T> {
    let attached = stream.attached.get_or_insert_default();
    // Of two deadlines (the caller's and the callee's), the earlier one holds.
    if attached
        .deadline
        .as_ref()
        .is_none_or(|(sleep, _)| deadline < sleep.deadline())
    {
        attached.deadline = Some((Box::pin(tokio::time::sleep_until(deadline)), expired));
    }
    stream
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
        let mut cut = stream.wrap_source(|inner| {
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
