//! Serving connections: accept them, accept their streams, route each stream by the kind of its
//! opening frame (a call through the server stack, anything else to its [`StreamHandler`]), and
//! close a connection on shutdown telling the peer which of its streams were never read.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::Either;
use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::answer::answer;
use super::call::Caller;
use super::reply::encode_reply;
use super::request::{
    AcceptedCall, ReadTimer, Rules, accept_call, read_first_message, request_items,
};
use super::stream_limit::StreamLimit;
use super::{IncomingCall, Server};
use crate::context::CallContext;
use crate::status::{Code, Status};
use crate::transport::error_code;
use crate::transport::goaway;
use crate::transport::io::{ReadFrameError, read_frame};
use crate::wire::{Frame, FrameBuffer, FrameDecoder, FrameKind, StatusBody};

/// How long a stopping node waits for the streams it accepted to be answered before it
/// closes their connection anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How long a draining node waits for the peer to acknowledge an answer (so closing the
/// connection cannot discard it).
const DELIVERY_WAIT: Duration = Duration::from_secs(1);

impl Server {
    /// Accepts connections on `endpoint` until [`Server::stop_accepting`].
    pub async fn accept_loop(self: Arc<Self>, endpoint: quinn::Endpoint) {
        let mut shutdown = self.shutdown.subscribe();
        loop {
            let incoming = tokio::select! {
                incoming = endpoint.accept() => incoming,
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
            let Some(incoming) = incoming else { return };
            let server = self.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(connection) => {
                        if let Some(hook) = &server.connection_hook {
                            hook(&connection);
                        }
                        server.serve_connection(connection).await;
                    }
                    // Wrong CA, no client certificate, wrong cluster, wrong ALPN: refused here.
                    Err(error) => warn!(
                        %error,
                        "refused an incoming connection (a peer of another CA or cluster?)"
                    ),
                }
            });
        }
    }

    /// Serves every stream the peer opens on `connection` (accepted or opened by this node:
    /// a connection carries calls both ways) until it closes.
    pub async fn serve_connection(self: Arc<Self>, connection: Connection) {
        self.connections.send_modify(|open| *open += 1);
        let _served = ServedConnection(&self.connections);
        // Who calls: the same for every call of the connection, so shared by them.
        let caller = Arc::new(Caller {
            addr: connection.remote_address(),
            identity: crate::tls::peer_identity(&connection, &self.cluster).map(Arc::new),
        });
        // The stream limit starts small (quinn reserves state for each allowed stream, so an
        // idle or hostile connection costs little) and grows as the peer uses it.
        let mut limit = StreamLimit::new(
            crate::transport::endpoint::initial_stream_limit(&self.limits),
            self.limits.max_concurrent_streams,
            Instant::now(),
        );
        let open = Arc::new(OpenStreams::new(self.clone(), connection.clone(), caller));
        let mut shutdown = self.shutdown.subscribe();
        // One watch for the connection's life, registered once rather than once per stream.
        let stopping = shutdown.wait_for(|stop| *stop);
        let mut stopping = std::pin::pin!(stopping);
        // Streams arrive in the order of their index: all below this one were read.
        let mut first_unread = 0;
        loop {
            let accepted = tokio::select! {
                biased;
                _ = &mut stopping => break,
                accepted = connection.accept_bi() => accepted,
            };
            let (send, recv) = match accepted {
                Ok(streams) => streams,
                Err(error) => {
                    debug!(peer = %connection.remote_address(), %error, "connection ended");
                    return;
                }
            };
            first_unread = recv.id().index() + 1;
            let now_open = open.count.fetch_add(1, Ordering::SeqCst) + 1;
            if let Some(limit) = limit.opened(now_open, Instant::now) {
                connection.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(limit));
            }
            let served = StreamServed(open.clone());
            let task = stream_task(served, send, recv);
            tokio::spawn(task);
        }
        if !open.wait_idle(CLOSE_GRACE).await {
            warn!(
                peer = %connection.remote_address(),
                "closing a connection with streams still unanswered"
            );
        }
        let reason = goaway::close_reason(first_unread);
        connection.close(error_code::SHUTDOWN, reason.as_bytes());
    }

    /// Serves a stream that is not a call to answer: refuses it, or hands it to the handler
    /// of the frame kind it opened with.
    async fn serve_not_a_call(&self, stream: NotACall) {
        match stream {
            NotACall::Nothing => {}
            NotACall::Refused(send, recv, status) => self.reject(send, recv, &status).await,
            NotACall::Broken(send, recv, error) => {
                self.reject_read_error(send, recv, &error).await;
            }
            NotACall::OtherKind(other) => {
                let OtherKind {
                    connection,
                    frame,
                    send,
                    recv,
                    buffer,
                } = *other;
                let kind = frame.kind;
                match self.stream_handlers.get(&(kind as u8)) {
                    Some(handler) => {
                        handler(connection, frame, send, recv, buffer.into_bytes()).await;
                    }
                    None => {
                        let status = Status::invalid_argument(format!(
                            "a stream must open with a CALL frame; {kind:?} is not served here"
                        ));
                        self.reject(send, recv, &status).await;
                    }
                }
            }
        }
    }

    /// Answers a stream with `status` and discards whatever else the peer sends on it.
    async fn reject(&self, send: SendStream, recv: RecvStream, status: &Status) {
        let code = if status.code() == Code::ResourceExhausted {
            error_code::TOO_LARGE
        } else {
            error_code::PROTOCOL
        };
        debug!(%status, "rejected a stream");
        let mut send = send;
        let mut recv = recv;
        let mut reply = encode_reply(None, &StatusBody::from(status));
        let _ = recv.stop(code);
        if send.write_all_chunks(reply.as_mut_slice()).await.is_ok() {
            let _ = send.finish();
            self.await_delivery(&send).await;
        }
    }

    async fn reject_read_error(&self, send: SendStream, recv: RecvStream, error: &ReadFrameError) {
        if let ReadFrameError::Stream(_) = error {
            // The stream itself is gone; there is nobody to answer.
            return;
        }
        self.reject(send, recv, &error.to_status()).await;
    }

    /// While draining, waits (at most [`DELIVERY_WAIT`]) until the peer has acknowledged all of
    /// a finished stream's data, so closing the connection next cannot discard the answer.
    pub(super) async fn await_delivery(&self, send: &SendStream) {
        if self.is_draining() {
            let _ = tokio::time::timeout(DELIVERY_WAIT, send.stopped()).await;
        }
    }
}

/// A stream's task: it reads the call, then answers it. The reading state is kept no larger
/// than answering's, so it lives in the task rather than in a box of its own and a held call's
/// task is only as large as answering needs (tests/allocations.rs pins the heap a held call
/// keeps, and a unit test below the task's size). What both stages need travels from one to
/// the other, so the step between them holds nothing of its own.
fn stream_task(
    served: StreamServed,
    send: SendStream,
    recv: RecvStream,
) -> impl Future<Output = ()> + Send + 'static {
    read_stream(served, send, recv).then(|read| match read {
        Ok((call, send, served)) => Either::Left(answer(call, send, served)),
        Err((NotACall::Nothing, _)) => Either::Right(Either::Left(std::future::ready(()))),
        // Boxed: only a refused or unusual stream needs this state.
        Err((other, served)) => Either::Right(Either::Right(Box::pin(async move {
            served.server().serve_not_a_call(other).await;
            drop(served);
        }))),
    })
}

/// Reads a stream's opening frame and, for a call, its request: the call, to be answered
/// (`server/answer.rs`), or what else the stream needs ([`NotACall`]). Either way the stream's
/// count (`served`, which also leads to the server, the connection and its caller) comes back
/// with it. The reading state lives in the stream's task until the call is answered, so
/// everything but the two reads happens outside it.
#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` would move its arguments once more into its body: twice their size in every stream's task"
)]
fn read_stream(
    served: StreamServed,
    send: SendStream,
    mut recv: RecvStream,
) -> impl Future<Output = StreamRead> + Send + 'static {
    async move {
        let decoder = FrameDecoder::new(served.server().limits.max_message_size);
        let mut buffer = FrameBuffer::default();
        let mut timer = ReadTimer::default();
        // Each step in a block of its own and no future in a named variable: what a step
        // leaves behind is out of scope at the next read, so it takes no room in this state.
        let AcceptedCall {
            method,
            deadline,
            metadata,
            read_by,
        } = {
            let frame = match timer
                .within(
                    served.server().limits.request_read_timeout,
                    read_frame(&mut recv, &decoder, &mut buffer),
                )
                .await
            {
                None => {
                    let status = Status::deadline_exceeded("no call header arrived in time");
                    return Err((NotACall::Refused(send, recv, status), served));
                }
                Some(Err(error)) => return Err((NotACall::Broken(send, recv, error), served)),
                Some(Ok(None)) => return Err((NotACall::Nothing, served)),
                Some(Ok(Some(frame))) => frame,
            };
            if frame.kind != FrameKind::Call {
                let other = Box::new(OtherKind {
                    connection: served.0.connection.clone(),
                    frame,
                    send,
                    recv,
                    buffer,
                });
                return Err((NotACall::OtherKind(other), served));
            }
            let server = served.server();
            let rules = Rules {
                services: &server.services,
                request_read_timeout: server.limits.request_read_timeout,
                draining: server.is_draining(),
            };
            match accept_call(rules, &frame.body) {
                Ok(accepted) => accepted,
                Err(status) => return Err((NotACall::Refused(send, recv, status), served)),
            }
        };
        let client_streams = method.kind.client_streams();
        let request = match timer
            .until(
                read_by,
                read_first_message(&mut recv, &decoder, &mut buffer, !client_streams),
            )
            .await
        {
            Some(Ok(request)) => request,
            Some(Err(status)) => return Err((NotACall::Refused(send, recv, status), served)),
            None => {
                let status =
                    Status::deadline_exceeded("the request did not arrive before the deadline");
                return Err((NotACall::Refused(send, recv, status), served));
            }
        };
        let stream = if client_streams {
            Some(request_items(recv, decoder, buffer, &served.0.caller))
        } else {
            // The request was read to its end: dropping the receiving half sends nothing.
            drop(recv);
            None
        };
        let call = IncomingCall {
            method,
            context: CallContext::for_method(method, deadline, metadata),
            caller: served.0.caller.clone(),
            request,
            stream,
        };
        Ok((call, send, served))
    }
}

/// What reading a stream's opening found: a call to answer on its sending half, or a stream
/// that is not one; the stream's count with either.
type StreamRead = Result<(IncomingCall, SendStream, StreamServed), (NotACall, StreamServed)>;

/// A stream that is not a call to answer, and what serving it needs.
pub(super) enum NotACall {
    /// The peer ended the stream before its first frame: nothing to do.
    Nothing,
    /// A call refused before it ran, with the status that says why.
    Refused(SendStream, RecvStream, Status),
    /// A stream whose frames could not be read.
    Broken(SendStream, RecvStream, ReadFrameError),
    /// A stream that opened with another kind of frame than `CALL`.
    OtherKind(Box<OtherKind>),
}

/// A stream that opened with a frame other than `CALL`, for the handler of its kind.
pub(super) struct OtherKind {
    connection: Connection,
    frame: Frame,
    send: SendStream,
    recv: RecvStream,
    buffer: FrameBuffer,
}

/// The calls of the whole server whose reply is not yet written.
#[derive(Debug, Default)]
pub(super) struct Answering {
    count: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

impl Answering {
    /// Counts one more call as answering (until [`Answering::finish`]).
    pub(super) fn start(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts a call as answered.
    pub(super) fn finish(&self) {
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Waits until no reply is being written.
    pub(super) async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// The streams of one connection still being served, and what every stream of it shares: the
/// server serving them, the connection and its caller.
pub(super) struct OpenStreams {
    server: Arc<Server>,
    connection: Connection,
    caller: Arc<Caller>,
    count: AtomicU32,
    /// Set once the connection stops accepting streams; from then on the last stream to
    /// finish wakes [`OpenStreams::wait_idle`].
    closing: AtomicBool,
    idle: tokio::sync::Notify,
}

/// Counts a stream of a connection as served while it lives.
pub(super) struct StreamServed(Arc<OpenStreams>);

impl StreamServed {
    /// The server serving the stream.
    pub(super) fn server(&self) -> &Arc<Server> {
        &self.0.server
    }
}

impl Drop for StreamServed {
    fn drop(&mut self) {
        self.0.finish_one();
    }
}

impl OpenStreams {
    fn new(server: Arc<Server>, connection: Connection, caller: Arc<Caller>) -> OpenStreams {
        OpenStreams {
            server,
            connection,
            caller,
            count: AtomicU32::new(0),
            closing: AtomicBool::new(false),
            idle: tokio::sync::Notify::new(),
        }
    }

    fn finish_one(&self) {
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 && self.closing.load(Ordering::SeqCst) {
            self.idle.notify_one();
        }
    }

    /// Waits until no stream is open, or `timeout` passes; returns whether none is.
    async fn wait_idle(&self, timeout: Duration) -> bool {
        self.closing.store(true, Ordering::SeqCst);
        let idle = async {
            while self.count.load(Ordering::SeqCst) != 0 {
                self.idle.notified().await;
            }
        };
        tokio::time::timeout(timeout, idle).await.is_ok()
    }
}

/// Counts a connection as served while it lives.
struct ServedConnection<'a>(&'a watch::Sender<usize>);

impl Drop for ServedConnection<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|open| *open -= 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream's task is its future plus tokio's 104 bytes of bookkeeping, in cells of 128
    /// bytes: a future of at most 408 bytes keeps a held call's task cell at 512 bytes. It is
    /// 400, with or without the `otel` feature. While each of its two stages was 488 bytes, the
    /// cell was 640.
    const TASK_BUDGET: usize = 408;

    /// The size of what `f` returns, without calling it.
    fn returned<A, B, C, R>(_: fn(A, B, C) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    #[test]
    fn a_streams_task_fits_a_512_byte_cell() {
        let task = returned(stream_task);
        assert!(
            task <= TASK_BUDGET,
            "a stream's task future is {task} bytes (budget {TASK_BUDGET}, for a 512-byte cell)"
        );
    }
}
