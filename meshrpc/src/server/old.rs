//! The callee's half: accept connections, serve each stream as one call, answer every failure
//! with a status on that stream, and never let one peer's bad bytes reach anyone else.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::FutureExt;
use futures_util::future::Either;
use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::Limits;
use super::error_code;
use super::io::{ReadFrameError, read_frame};
use crate::context::CallContext;
use crate::metrics::{MethodMetrics, Metrics, Side};
use crate::service::{Dispatch, unknown_method};
use crate::spec::MethodSpec;
use crate::status::{Code, Status};
use crate::streaming::Body;
use crate::wire::{CallHeader, Frame, FrameDecoder, FrameKind, StatusBody, encode_frame};

/// Longest deadline a caller may ask for; longer ones are clamped (a day).
const MAX_DEADLINE: Duration = Duration::from_secs(24 * 60 * 60);

/// How long a stopping node waits for the streams it accepted to be answered before it
/// closes their connection anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How long a draining node waits for the peer to acknowledge an answer (so closing the
/// connection cannot discard it).
const DELIVERY_WAIT: Duration = Duration::from_secs(1);

/// A handler for streams that are not calls (HTTP tunnels, membership exchanges): it receives
/// the opening frame, the stream, and any bytes already read past the opening frame (they
/// come first in what the handler reads).
pub type StreamHandler = Arc<
    dyn Fn(
            Connection,
            Frame,
            SendStream,
            RecvStream,
            Bytes,
        ) -> Pin<Box<dyn Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// Called for every accepted connection.
pub type ConnectionHook = Arc<dyn Fn(&Connection) + Send + Sync>;

/// A call whose request has arrived and which holds a call permit: what answering it needs.
struct Admitted {
    peer: std::net::SocketAddr,
    send: SendStream,
    service: Arc<dyn Dispatch>,
    method: &'static MethodSpec,
    context: CallContext,
    request: Bytes,
    permit: tokio::sync::OwnedSemaphorePermit,
}

/// Admits streams that are not calls (HTTP tunnels) under the rules calls follow; see
/// [`Server::admission`].
#[derive(Debug, Clone)]
pub struct Admission {
    permits: Arc<Semaphore>,
    draining: Arc<AtomicBool>,
}

/// Why [`Admission::admit`] refused a stream; either way it was never served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The node is draining.
    Draining,
    /// The node is serving its limit of calls.
    Overloaded,
}

impl Refusal {
    /// The QUIC error code that resets or stops the refused stream.
    pub fn error_code(self) -> quinn::VarInt {
        match self {
            Refusal::Draining => error_code::SHUTDOWN,
            Refusal::Overloaded => error_code::OVERLOADED,
        }
    }
}

impl Admission {
    /// A permit to serve one stream (hold it until the stream is done), or why not.
    pub fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Refusal> {
        let permit = self.permits.clone().try_acquire_owned();
        // Checked once the permit is held: a drain that began meanwhile has counted it.
        if self.draining.load(Ordering::SeqCst) {
            return Err(Refusal::Draining);
        }
        permit.map_err(|_| Refusal::Overloaded)
    }
}

/// What a node serves: its published services, stream handlers and limits.
pub struct Server {
    services: HashMap<String, Arc<dyn Dispatch>>,
    stream_handlers: HashMap<u8, StreamHandler>,
    connection_hook: Option<ConnectionHook>,
    metrics: Arc<Metrics>,
    method_metrics: HashMap<(&'static str, &'static str), MethodMetrics>,
    limits: Limits,
    draining: Arc<AtomicBool>,
    calls: Arc<Semaphore>,
    shutdown: watch::Sender<bool>,
    /// Connections being served; they close themselves after [`Server::stop_accepting`].
    connections: watch::Sender<usize>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("services", &self.services.keys().collect::<Vec<_>>())
            .field("limits", &self.limits)
            .field("draining", &self.is_draining())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server for `services` under `limits`.
    pub fn new(services: Vec<Arc<dyn Dispatch>>, limits: Limits, metrics: Arc<Metrics>) -> Server {
        let method_metrics = services
            .iter()
            .flat_map(|service| service.spec().methods.iter())
            .map(|method| {
                let key = (method.service, method.name);
                (
                    key,
                    metrics.method(Side::Server, method.service, method.name),
                )
            })
            .collect();
        let services = services
            .into_iter()
            .map(|service| (service.spec().name.to_owned(), service))
            .collect();
        Server {
            services,
            stream_handlers: HashMap::new(),
            connection_hook: None,
            metrics,
            method_metrics,
            limits,
            draining: Arc::new(AtomicBool::new(false)),
            calls: Arc::new(Semaphore::new(limits.max_concurrent_calls)),
            shutdown: watch::channel(false).0,
            connections: watch::channel(0).0,
        }
    }

    /// Routes streams that open with a frame of `kind` to `handler`.
    pub fn set_stream_handler(&mut self, kind: FrameKind, handler: StreamHandler) {
        self.stream_handlers.insert(kind as u8, handler);
    }

    /// Runs `hook` on every accepted connection (before its streams are served).
    pub fn set_connection_hook(&mut self, hook: ConnectionHook) {
        self.connection_hook = Some(hook);
    }

    /// Admits streams of other kinds as calls are admitted: under the same limit of calls in
    /// flight, refused while draining, and waited for by a drain.
    pub fn admission(&self) -> Admission {
        Admission {
            permits: self.calls.clone(),
            draining: self.draining.clone(),
        }
    }

    /// The published services, by name.
    pub fn services(&self) -> impl Iterator<Item = &Arc<dyn Dispatch>> {
        self.services.values()
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Starts refusing new calls (with a refusal callers retry elsewhere).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether new calls are refused.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Calls being served right now.
    pub fn calls_in_flight(&self) -> usize {
        self.limits.max_concurrent_calls - self.calls.available_permits()
    }

    /// Waits until no call is in flight, or `timeout` passes; returns whether all finished.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let all = u32::try_from(self.limits.max_concurrent_calls).unwrap_or(u32::MAX);
        tokio::time::timeout(timeout, self.calls.acquire_many(all))
            .await
            .is_ok()
    }

    /// Stops accepting connections and streams. Each connection then answers the streams it
    /// accepted and closes, telling the peer which of its streams were never read
    /// (docs/PROTOCOL.md, section 8.5): callers retry exactly those elsewhere.
    pub fn stop_accepting(&self) {
        self.shutdown.send_replace(true);
    }

    /// Waits until every connection served here has closed, or `timeout` passes; returns
    /// whether all closed.
    pub async fn wait_connections_closed(&self, timeout: Duration) -> bool {
        let mut connections = self.connections.subscribe();
        tokio::time::timeout(timeout, connections.wait_for(|open| *open == 0))
            .await
            .is_ok()
    }

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
        // The stream limit starts small (quinn reserves state for each allowed stream, so an
        // idle or hostile connection costs little) and doubles whenever the peer keeps half of
        // it busy, up to `Limits::max_concurrent_streams`.
        let ceiling = self.limits.max_concurrent_streams;
        let mut limit = super::endpoint::initial_stream_limit(&self.limits);
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
            tokio::spawn(async move {
                // The reading phase is boxed and freed before the handler runs, so the task of
                // a held call is only as large as answering needs.
                let admitted = Box::pin(server.read_stream(connection, send, recv)).await;
                if let Some(call) = admitted {
                    server.answer(call).await;
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
        let reason = super::goaway::close_reason(first_unread);
        connection.close(error_code::SHUTDOWN, reason.as_bytes());
    }

    /// Reads a stream's opening frame. A call is admitted (see [`Server::admit`]) and returned
    /// for [`Server::answer`]; any other stream kind is served here by its handler.
    async fn read_stream(
        &self,
        connection: Connection,
        send: SendStream,
        mut recv: RecvStream,
    ) -> Option<Admitted> {
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
                let peer = connection.remote_address();
                self.admit(peer, frame.body, send, recv, decoder, buffer)
                    .await
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

    /// Decodes the call header, routes it, reads the request and takes a call permit; answers
    /// the stream itself (and returns `None`) when any of that fails.
    async fn admit(
        &self,
        peer: std::net::SocketAddr,
        header: Bytes,
        send: SendStream,
        mut recv: RecvStream,
        decoder: FrameDecoder,
        mut buffer: BytesMut,
    ) -> Option<Admitted> {
        let header: CallHeader<'_> =
            match crate::codec::from_slice_bounded(&header, crate::codec::MAX_HEADER_DEPTH) {
                Ok(header) => header,
                Err(error) => {
                    let status =
                        Status::invalid_argument(format!("malformed call header: {error}"));
                    self.reject(send, recv, &status).await;
                    return None;
                }
            };
        let deadline = header
            .deadline_ms
            .map(|ms| Instant::now() + Duration::from_millis(ms).min(MAX_DEADLINE));
        let (service, method) = match self.route(&header) {
            Ok(route) => route,
            Err(status) => {
                self.reject(send, recv, &status).await;
                return None;
            }
        };
        if header.deadline_ms == Some(0) {
            // No time left: the handler could not finish in time, so it is not started (gRPC
            // does the same). A caller should never send 0 (docs/PROTOCOL.md, section 5.1).
            let status =
                Status::deadline_exceeded("the call arrived with no time left (deadline_ms 0)");
            self.reject(send, recv, &status).await;
            return None;
        }
        let metadata = header.metadata;
        if self.is_draining() {
            let status = Status::refused(Code::Unavailable, "this node is draining");
            self.reject(send, recv, &status).await;
            return None;
        }

        let read_by = deadline
            .unwrap_or_else(|| Instant::now() + self.limits.request_read_timeout)
            .min(Instant::now() + self.limits.request_read_timeout);
        let request =
            tokio::time::timeout_at(read_by, read_request(&mut recv, &decoder, &mut buffer)).await;
        let request = match request {
            Err(_) => Err(Status::deadline_exceeded(
                "the request did not arrive before the deadline",
            )),
            Ok(result) => result,
        };
        let request = match request {
            Ok(request) => request,
            Err(status) => {
                self.reject(send, recv, &status).await;
                return None;
            }
        };
        // Taken only once the request is in, so streams that never send one hold no slot.
        let Ok(permit) = self.calls.clone().try_acquire_owned() else {
            let status = Status::refused(
                Code::ResourceExhausted,
                format!(
                    "this node is serving its limit of {} calls; try another replica",
                    self.limits.max_concurrent_calls
                ),
            );
            self.reject_with(send, recv, &status, error_code::OVERLOADED)
                .await;
            return None;
        };
        // Checked again now that the call holds a permit: a call that passed the first check
        // just before draining began could otherwise start after the drain found no call
        // in flight.
        if self.is_draining() {
            drop(permit);
            let status = Status::refused(Code::Unavailable, "this node is draining");
            self.reject(send, recv, &status).await;
            return None;
        }
        // The request was read to its end: dropping the receiving half sends nothing.
        drop(recv);
        Some(Admitted {
            peer,
            send,
            service,
            method,
            context: CallContext::new(method.service, method.name, deadline, metadata),
            request,
            permit,
        })
    }

    /// Runs the handler of an admitted call (until its deadline, or until the caller stops the
    /// stream) and writes the reply.
    async fn answer(&self, mut call: Admitted) {
        let started = Instant::now();
        self.metrics.set_in_flight(self.calls_in_flight());
        let method = call.method;
        #[cfg(feature = "otel")]
        let span = crate::telemetry::server_span(
            method.service,
            method.name,
            call.peer,
            call.context.metadata_mut(),
        );
        // In a block of its own, so the handler's state is gone while the reply is written.
        let outcome = {
            let deadline = call.context.deadline();
            let dispatch = call.service.dispatch(method, call.request, None);
            #[cfg(feature = "otel")]
            let dispatch = match &span {
                Some(span) => futures_util::future::Either::Left(tracing::Instrument::instrument(
                    dispatch,
                    span.clone(),
                )),
                None => futures_util::future::Either::Right(dispatch),
            };
            let handler = AssertUnwindSafe(call.context.scope(dispatch)).catch_unwind();
            let mut handler = std::pin::pin!(run_until(deadline, handler));
            // Most handlers finish on their first poll: they need no cancellation watch (which
            // costs a registration with the connection) and no deadline timer.
            match (&mut handler).now_or_never() {
                Some(outcome) => outcome,
                None => {
                    let mut cancelled = std::pin::pin!(call.send.stopped());
                    let finished = std::future::poll_fn(|cx| {
                        if let Poll::Ready(outcome) = handler.as_mut().poll(cx) {
                            return Poll::Ready(Some(outcome));
                        }
                        cancelled.as_mut().poll(cx).map(|_| None)
                    })
                    .await;
                    match finished {
                        Some(outcome) => outcome,
                        None => {
                            debug!(method = %method.name, "caller cancelled; handler dropped");
                            #[cfg(feature = "otel")]
                            if let Some(span) = &span {
                                crate::telemetry::record_code(span, Code::Cancelled);
                            }
                            return;
                        }
                    }
                }
            }
        };
        let code = match &outcome {
            Ok(Ok(Ok(_))) => Code::Ok,
            Ok(Ok(Err(status))) => status.code(),
            Ok(Err(_)) => Code::Internal,
            Err(()) => Code::DeadlineExceeded,
        };
        #[cfg(feature = "otel")]
        if let Some(span) = &span {
            crate::telemetry::record_code(span, code);
        }
        let elapsed = started.elapsed();
        match self.method_metrics.get(&(method.service, method.name)) {
            Some(recorder) => recorder.record(&self.metrics, code, elapsed),
            None => {
                self.metrics
                    .record_call(Side::Server, method.service, method.name, code, elapsed)
            }
        }
        // The built-in service answers the mesh's own questions (the gateway's dashboard asks
        // every member for its stats every few seconds): at debug level, so the access log at
        // info level shows the calls a user made.
        if method.service == crate::node_service::NODE_SERVICE {
            tracing::debug!(
                target: "meshrpc::access",
                "{code} | {:>10.3?} | {} | {}.{}",
                elapsed,
                call.peer,
                method.service,
                method.name
            );
        } else {
            tracing::info!(
                target: "meshrpc::access",
                "{code} | {:>10.3?} | {} | {}.{}",
                elapsed,
                call.peer,
                method.service,
                method.name
            );
        }
        let reply = match outcome {
            Ok(Ok(Ok(Body::Message(payload)))) => encode_reply(Some(&payload), &StatusBody::ok()),
            Ok(Ok(Ok(Body::Stream(_)))) => encode_reply(
                None,
                &StatusBody::from(&Status::unimplemented("streams are not served yet")),
            ),
            Ok(Ok(Err(status))) => encode_reply(None, &StatusBody::from(&status)),
            Ok(Err(_panic)) => {
                warn!(method = %method.name, "handler panicked");
                let status = Status::internal("the handler panicked");
                encode_reply(None, &StatusBody::from(&status))
            }
            Err(()) => {
                let status = Status::deadline_passed(method.service, method.name);
                encode_reply(None, &StatusBody::from(&status))
            }
        };
        let mut reply = reply;
        if call.send.write_all_chunks(&mut reply).await.is_ok() {
            let _ = call.send.finish();
            self.await_delivery(&call.send).await;
        }
        // Released only once the reply is written, so a draining node waits for it.
        drop(call.permit);
        self.metrics.set_in_flight(self.calls_in_flight());
    }

    fn route(
        &self,
        header: &CallHeader<'_>,
    ) -> Result<(Arc<dyn Dispatch>, &'static MethodSpec), Status> {
        let Some(service) = self.services.get(header.service.as_ref()) else {
            let mut published: Vec<&str> = self.services.keys().map(String::as_str).collect();
            published.sort_unstable();
            // Not `not_found`, which handlers answer for "no such item": a caller must be able
            // to tell the wrong place from a missing thing. The handler never ran, so the
            // caller may try a node that publishes the service.
            return Err(Status::refused(
                Code::Unimplemented,
                format!(
                    "no service `{}` on this node; it publishes: {}",
                    header.service,
                    if published.is_empty() {
                        "nothing".to_owned()
                    } else {
                        published.join(", ")
                    }
                ),
            ));
        };
        match service.spec().method(&header.method) {
            Some(method) => Ok((service.clone(), method)),
            None => Err(unknown_method(service.spec(), &header.method)),
        }
    }
}

/// Reads the single `DATA` frame of a unary request and the end of the stream.
async fn read_request(
    recv: &mut RecvStream,
    decoder: &FrameDecoder,
    buffer: &mut BytesMut,
) -> Result<Bytes, Status> {
    let payload = match read_frame(recv, decoder, buffer).await {
        Ok(Some(frame)) if frame.kind == FrameKind::Data => frame.body,
        Ok(Some(frame)) => {
            return Err(Status::invalid_argument(format!(
                "expected the request's DATA frame, got {:?}",
                frame.kind
            )));
        }
        Ok(None) => {
            return Err(Status::invalid_argument(
                "the stream ended before the request's DATA frame",
            ));
        }
        Err(error) => return Err(error.to_status()),
    };
    match read_frame(recv, decoder, buffer).await {
        Ok(None) => Ok(payload),
        Ok(Some(frame)) => Err(Status::invalid_argument(format!(
            "a unary call carries one DATA frame; got a further {:?} frame",
            frame.kind
        ))),
        Err(error) => Err(error.to_status()),
    }
}

/// `future`, cut off at `deadline` if there is one (`Err(())`). A plain future rather than an
/// `async fn`, which would keep a second copy of `future` in its state.
fn run_until<F: Future>(
    deadline: Option<Instant>,
    future: F,
) -> impl Future<Output = Result<F::Output, ()>> {
    match deadline {
        None => Either::Left(future.map(Ok)),
        Some(deadline) => Either::Right(
            tokio::time::timeout_at(deadline, future).map(|result| result.map_err(|_| ())),
        ),
    }
}

/// The `STATUS` frame of every successful reply.
const OK_STATUS_FRAME: &[u8] = b"\x03\x00\x00\x00\x07\x81\xa4code\x00";

/// The chunks of a reply: `[DATA prefix, payload, STATUS frame]`, or `[STATUS frame]` alone;
/// the payload is sent as is, never copied.
fn encode_reply(payload: Option<&Bytes>, status: &StatusBody) -> Vec<Bytes> {
    let status_frame = if status.is_ok() {
        Bytes::from_static(OK_STATUS_FRAME)
    } else {
        let body = rmp_serde::to_vec_named(status).unwrap_or_else(|_| b"\x81\xa4code\x0d".to_vec());
        let mut frame = BytesMut::with_capacity(body.len() + 5);
        encode_frame(FrameKind::Status, &body, &mut frame);
        frame.freeze()
    };
    match payload {
        Some(payload) => {
            let mut prefix = BytesMut::with_capacity(5);
            prefix.put_u8(FrameKind::Data as u8);
            prefix.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
            vec![prefix.freeze(), payload.clone(), status_frame]
        }
        None => vec![status_frame],
    }
}

impl Server {
    /// Answers a stream with `status` and discards whatever else the peer sends on it.
    async fn reject(&self, send: SendStream, recv: RecvStream, status: &Status) {
        let code = if status.code() == Code::ResourceExhausted {
            error_code::TOO_LARGE
        } else {
            error_code::PROTOCOL
        };
        self.reject_with(send, recv, status, code).await;
    }

    /// [`reject`] with an explicit stop code.
    async fn reject_with(
        &self,
        mut send: SendStream,
        mut recv: RecvStream,
        status: &Status,
        code: quinn::VarInt,
    ) {
        debug!(%status, "rejected a stream");
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

/// The streams of one connection still being served.
#[derive(Default)]
struct OpenStreams {
    count: std::sync::atomic::AtomicU32,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_precomputed_ok_status_frame_is_the_encoded_ok_status() {
        let body = rmp_serde::to_vec_named(&StatusBody::ok()).expect("encodes");
        let mut frame = BytesMut::new();
        encode_frame(FrameKind::Status, &body, &mut frame);
        assert_eq!(&frame[..], OK_STATUS_FRAME);
    }
}
