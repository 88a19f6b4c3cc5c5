//! Serving connections: accept them, accept their streams, route each stream by the kind of its
//! opening frame (a call through the server stack, anything else to its [`StreamHandler`]), and
//! close a connection on shutdown telling the peer which of its streams were never read.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::Either;
use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::answer::answer;
use super::call::{Caller, PeerIdentity};
use super::reply::encode_reply;
use super::request::{Opened, Rules, read_call};
use super::{IncomingCall, Server};
use crate::status::{Code, Status};
use crate::transport::error_code;
use crate::transport::goaway;
use crate::transport::io::{ReadFrameError, read_frame};
use crate::wire::{FrameBuffer, FrameDecoder, FrameKind, StatusBody};

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
            let served = StreamServed(open.clone());
            let reading =
                self.clone()
                    .read_stream(connection.clone(), identity.clone(), send, recv);
            let server = self.clone();
            // The reading phase is boxed and freed before the handler runs, so the task of a
            // held call is only as large as answering needs.
            tokio::spawn(Box::pin(reading).then(move |call| match call {
                Some((call, send)) => Either::Left(answer(server, call, send, served)),
                None => Either::Right(std::future::ready(())),
            }));
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

    /// Reads a stream's opening frame. A call is read and returned, to be answered
    /// (`server/answer.rs`); any other stream kind is served here by its handler.
    async fn read_stream(
        self: Arc<Self>,
        connection: Connection,
        identity: Option<Arc<PeerIdentity>>,
        send: SendStream,
        mut recv: RecvStream,
    ) -> Option<(IncomingCall, SendStream)> {
        let decoder = FrameDecoder::new(self.limits.max_message_size);
        let mut buffer = FrameBuffer::default();
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
                        handler(connection, frame, send, recv, buffer.into_bytes()).await;
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

/// The streams of one connection still being served.
#[derive(Default)]
pub(super) struct OpenStreams {
    count: AtomicU32,
    /// Set once the connection stops accepting streams; from then on the last stream to
    /// finish wakes [`OpenStreams::wait_idle`].
    closing: AtomicBool,
    idle: tokio::sync::Notify,
}

/// Counts a stream of a connection as served while it lives.
pub(super) struct StreamServed(Arc<OpenStreams>);

impl Drop for StreamServed {
    fn drop(&mut self) {
        self.0.finish_one();
    }
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
