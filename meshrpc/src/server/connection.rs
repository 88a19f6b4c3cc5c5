//! Serving connections: accept them, accept their streams, route each stream by the kind of its
//! opening frame (a call through the server stack, anything else to its [`StreamHandler`]), and
//! close a connection on shutdown telling the peer which of its streams were never read.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt;
use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::watch;
use tower::{Service, ServiceExt};
use tracing::{debug, warn};

use super::call::{Caller, PeerIdentity};
use super::reply::{Written, encode_reply, write_reply, write_stream};
use super::request::{Opened, Rules, read_call};
use super::{IncomingCall, Server};
use crate::spec::{MethodKind, MethodSpec};
use crate::status::{Code, Status};
use crate::streaming::Body;
use crate::transport::error_code;
use crate::transport::goaway;
use crate::transport::io::{ReadFrameError, read_frame};
use crate::wire::{FrameDecoder, FrameKind, StatusBody};
use std::future::Future;

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
        let identity = crate::tls::peer_identity(&connection, &self.cluster).map(Arc::new);
        // The stream limit starts small (quinn reserves state for each allowed stream, so an
        // idle or hostile connection costs little) and doubles whenever the peer keeps half of
        // it busy, up to `Limits::max_concurrent_streams`.
        let ceiling = self.limits.max_concurrent_streams;
        let mut limit = crate::transport::endpoint::initial_stream_limit(&self.limits);
        let open = Arc::new(OpenStreams::default());
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
            if now_open * 2 >= limit && limit < ceiling {
                limit = limit.saturating_mul(2).min(ceiling);
                connection.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(limit));
            }
            let server = self.clone();
            let connection = connection.clone();
            let open = open.clone();
            let identity = identity.clone();
            tokio::spawn(async move {
                // The reading phase is boxed and freed before the handler runs, so the task of
                // a held call is only as large as answering needs.
                let call = Box::pin(server.read_stream(connection, identity, send, recv)).await;
                if let Some((call, send)) = call {
                    server.answer(call, send).await;
                }
                open.finish_one();
            });
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

    /// Reads a stream's opening frame. A call is read and returned for [`Server::answer`];
    /// any other stream kind is served here by its handler.
    async fn read_stream(
        &self,
        connection: Connection,
        identity: Option<Arc<PeerIdentity>>,
        send: SendStream,
        mut recv: RecvStream,
    ) -> Option<(IncomingCall, SendStream)> {
        let decoder = FrameDecoder::new(self.limits.max_message_size);
        let mut buffer = BytesMut::new();
        let opening = tokio::time::timeout(
            self.limits.request_read_timeout,
            read_frame(&mut recv, &decoder, &mut buffer),
        )
        .await;
        let frame = match opening {
            Err(_) => {
                let status = Status::deadline_exceeded("no call header arrived in time");
                self.reject(send, recv, &status).await;
                return None;
            }
            Ok(Err(error)) => {
                self.reject_read_error(send, recv, &error).await;
                return None;
            }
            Ok(Ok(None)) => return None,
            Ok(Ok(Some(frame))) => frame,
        };
        match frame.kind {
            FrameKind::Call => {
                let caller = Caller {
                    addr: connection.remote_address(),
                    identity,
                };
                let rules = Rules {
                    services: &self.services,
                    request_read_timeout: self.limits.request_read_timeout,
                    draining: self.is_draining(),
                };
                let opened = Opened {
                    recv,
                    decoder,
                    buffer,
                };
                let read = read_call(rules, &frame.body, caller, opened).await;
                match read {
                    Ok(call) => Some((call, send)),
                    Err((status, recv)) => {
                        self.reject(send, recv, &status).await;
                        None
                    }
                }
            }
            kind => {
                match self.stream_handlers.get(&(kind as u8)) {
                    Some(handler) => {
                        handler(connection, frame, send, recv, buffer.freeze()).await;
                    }
                    None => {
                        let status = Status::invalid_argument(format!(
                            "a stream must open with a CALL frame; {kind:?} is not served here"
                        ));
                        self.reject(send, recv, &status).await;
                    }
                }
                None
            }
        }
    }

    /// Runs a call through the server stack (until the caller stops the stream, or the node
    /// ends its calls) and writes the reply.
    async fn answer(&self, call: IncomingCall, send: SendStream) {
        // Counted until the reply is written, so a drain never closes the connection under
        // an answer that is still on its way.
        let _answering = self.answering.start();
        let method = call.method;
        let mut stack = self.stack.clone();
        let outcome = {
            // In a block of its own, so the handler's state is gone while the reply is written.
            let Ok(stack) = stack.ready().await else {
                return;
            };
            let mut handler = std::pin::pin!(stack.call(call));
            // Most handlers finish on their first poll: they need no cancellation watch (which
            // costs a registration with the connection).
            match (&mut handler).now_or_never() {
                Some(outcome) => outcome,
                None => match self.run_handler(handler, &send, method).await {
                    Some(outcome) => outcome,
                    None => {
                        debug!(method = %method.name, "caller cancelled; handler dropped");
                        return;
                    }
                },
            }
        };
        let written = match outcome {
            Ok(Body::Stream(items)) => {
                let target = format!("{}.{}", method.service, method.name);
                let mut ending = self.ending.subscribe();
                let ending = async move {
                    let _ = ending.wait_for(|end| *end).await;
                };
                // Boxed: a unary call's task does not carry a stream writer's state.
                Box::pin(write_stream(
                    send,
                    items,
                    self.limits.max_message_size,
                    &target,
                    ending,
                ))
                .await
            }
            outcome => write_reply(send, outcome).await,
        };
        if let (Written::Finished, Some(send)) = written {
            self.await_delivery(&send).await;
        }
    }

    /// Polls a handler that did not answer at once until it answers (`Some`) or the caller
    /// stops the stream (`None`). A streaming call also ends when the node ends its calls
    /// after the drain timeout; a unary one is left to the connection's close, so a held unary
    /// call carries no watch of its own.
    async fn run_handler(
        &self,
        mut handler: std::pin::Pin<&mut impl Future<Output = Result<Body, Status>>>,
        send: &SendStream,
        method: &'static MethodSpec,
    ) -> Option<Result<Body, Status>> {
        let mut cancelled = std::pin::pin!(send.stopped());
        if method.kind == MethodKind::Unary {
            return std::future::poll_fn(|cx| {
                if let Poll::Ready(outcome) = handler.as_mut().poll(cx) {
                    return Poll::Ready(Some(outcome));
                }
                cancelled.as_mut().poll(cx).map(|_| None)
            })
            .await;
        }
        // Boxed: a unary call's task does not carry the shutdown watch.
        Box::pin(self.until_ended(handler, cancelled, method)).await
    }

    /// [`Server::run_handler`] for a streaming call: also ends when the node ends its calls.
    async fn until_ended(
        &self,
        mut handler: std::pin::Pin<&mut impl Future<Output = Result<Body, Status>>>,
        mut cancelled: std::pin::Pin<&mut impl Future>,
        method: &'static MethodSpec,
    ) -> Option<Result<Body, Status>> {
        let mut ending = self.ending.subscribe();
        let mut ended = std::pin::pin!(ending.wait_for(|end| *end));
        std::future::poll_fn(|cx| {
            if let Poll::Ready(outcome) = handler.as_mut().poll(cx) {
                return Poll::Ready(Some(outcome));
            }
            if ended.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(Err(Status::unavailable(format!(
                    "this node shut down before `{}.{}` finished",
                    method.service, method.name
                )))));
            }
            cancelled.as_mut().poll(cx).map(|_| None)
        })
        .await
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
        if send.write_all_chunks(&mut reply).await.is_ok() {
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
    async fn await_delivery(&self, send: &SendStream) {
        if self.is_draining() {
            let _ = tokio::time::timeout(DELIVERY_WAIT, send.stopped()).await;
        }
    }
}

/// The calls of the whole server whose reply is not yet written.
#[derive(Debug, Default)]
pub(super) struct Answering {
    count: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// Counts one call as answering while it lives.
pub(super) struct AnsweringGuard<'a>(&'a Answering);

impl Answering {
    fn start(&self) -> AnsweringGuard<'_> {
        self.count.fetch_add(1, Ordering::SeqCst);
        AnsweringGuard(self)
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

impl Drop for AnsweringGuard<'_> {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The streams of one connection still being served.
#[derive(Default)]
struct OpenStreams {
    count: AtomicU32,
    /// Set once the connection stops accepting streams; from then on the last stream to
    /// finish wakes [`OpenStreams::wait_idle`].
    closing: AtomicBool,
    idle: tokio::sync::Notify,
}

impl OpenStreams {
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
