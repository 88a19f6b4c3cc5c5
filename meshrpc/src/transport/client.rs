//! The caller's half of a call on a QUIC stream, and [`PeerService`], the tower service that
//! sends every call to one known peer.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use quinn::{Connection, ConnectionError};
use tokio::time::Instant;
use tower::Service;

use super::connections::Connections;
use super::io::{ReadFrameError, read_frame};
use super::streams::{
    COALESCE_BELOW, Chunks, Direction, End, FairShare, SendGuard, first_reply_item, incoming_items,
    poll_batch, status_frame,
};
use crate::channel::Call;
use crate::service::BoxFuture;
use crate::spec::MethodKind;
use crate::status::{Code, Status};
use crate::streaming::{Body, Streaming};
use crate::wire::{FrameBuffer, FrameDecoder, FrameKind, StatusBody};
use futures_util::StreamExt;

/// Sends `call` to the peer at `addr` over a new stream of the pooled connection and waits for
/// the reply. Dropping the returned future stops the stream, which cancels the handler.
///
/// With trace export on (feature `otel`), the attempt is a CLIENT span whose context the call
/// carries as its `traceparent`.
pub async fn call_peer(
    connections: &Connections,
    addr: SocketAddr,
    call: Call,
    max_message_size: usize,
) -> Result<Body, Status> {
    call_peer_owned(Arc::new(connections.clone()), addr, call, max_message_size).await
}

/// [`call_peer`] as one future that owns what it uses: what a [`PeerService`] boxes per call.
/// Not an `async fn`, whose arguments would be moved once more into its body: the call is held
/// once, in place, and lent to the exchange.
#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` would move its arguments once more into its body: twice their size in the future"
)]
fn call_peer_owned(
    connections: Arc<Connections>,
    addr: SocketAddr,
    #[cfg_attr(not(feature = "otel"), allow(unused_mut))] mut call: Call,
    max_message_size: usize,
) -> impl Future<Output = Result<Body, Status>> + Send + 'static {
    async move {
        #[cfg(feature = "otel")]
        {
            // One exchange future either way, and the span (boxed: one pointer in the call's
            // future whether export is on or not) entered whenever it is polled, as
            // `tracing::Instrument` would, without a second handle to it.
            let span = crate::telemetry::client_span(&mut call, addr).map(Box::new);
            let mut exchange =
                std::pin::pin!(exchange(&connections, addr, &call, max_message_size));
            let outcome = std::future::poll_fn(|cx| {
                let _entered = span.as_deref().map(tracing::Span::enter);
                exchange.as_mut().poll(cx)
            })
            .await;
            if let Some(span) = &span {
                crate::telemetry::record_outcome(span, &outcome);
            }
            outcome
        }
        #[cfg(not(feature = "otel"))]
        exchange(&connections, addr, &call, max_message_size).await
    }
}

/// The call itself: the request out, the reply in.
async fn exchange(
    connections: &Connections,
    addr: SocketAddr,
    call: &Call,
    max_message_size: usize,
) -> Result<Body, Status> {
    if call.kind != MethodKind::Unary {
        // Boxed: a unary call's future does not carry a streaming call's state.
        return Box::pin(exchange_streams(connections, addr, call, max_message_size)).await;
    }
    let mut request = encode_request(call, max_message_size)?;
    let connection = connection_to(connections, addr).await?;
    let (mut send, mut recv) = connection.open_bi().await.map_err(|error| {
        Status::refused(
            Code::Unavailable,
            format!("cannot open a stream to {addr}: {error}"),
        )
    })?;
    let stream = send.id();
    match send.write_all_chunks(request.as_mut_slice()).await {
        Ok(_) => {
            // Finishing can only fail if the peer already stopped the stream; its reply says why.
            let _ = send.finish();
        }
        // The peer refused the call before reading all of it; its reply says why.
        Err(quinn::WriteError::Stopped(_)) => {}
        Err(quinn::WriteError::ConnectionLost(error)) => {
            return Err(connection_lost(addr, stream, &error));
        }
        Err(error) => {
            return Err(Status::unavailable(format!(
                "sending to {addr} failed: {error}"
            )));
        }
    }

    let decoder = FrameDecoder::new(max_message_size);
    let mut buffer = FrameBuffer::default();
    let mut payload = None;
    loop {
        let frame = match read_frame(&mut recv, &decoder, &mut buffer).await {
            Ok(frame) => frame,
            Err(ReadFrameError::Stream(quinn::ReadError::ConnectionLost(error))) => {
                return Err(connection_lost(addr, stream, &error));
            }
            Err(error) => return Err(error.to_status()),
        };
        match frame {
            Some(frame) if frame.kind == FrameKind::Data && payload.is_none() => {
                payload = Some(frame.body);
            }
            Some(frame) if frame.kind == FrameKind::Status => {
                let status = StatusBody::decode(&frame.body).map_err(|error| {
                    Status::internal(format!("{addr} sent an undecodable status: {error}"))
                })?;
                // Read the FIN (it normally arrives with the status): dropping a stream that
                // is not read to its end would send STOP_SENDING, one more packet per call.
                if buffer.is_empty() {
                    let _ = recv.read_chunk(usize::MAX, true).await;
                }
                return if status.is_ok() {
                    Ok(Body::Message(payload.unwrap_or_default()))
                } else {
                    Err(status.into_status())
                };
            }
            Some(frame) => {
                return Err(Status::internal(format!(
                    "{addr} broke the protocol: unexpected {:?} frame in a reply",
                    frame.kind
                )));
            }
            None => {
                return Err(Status::unavailable(format!(
                    "{addr} ended the call without a status"
                )));
            }
        }
    }
}

/// The pooled connection to `addr`; connecting (boxed: a call's future does not carry a
/// connection attempt's state) only when there is none.
async fn connection_to(connections: &Connections, addr: SocketAddr) -> Result<Connection, Status> {
    match connections.live(addr) {
        Some(connection) => Ok(connection),
        None => Box::pin(connections.get(addr)).await,
    }
}

/// A call with a stream either way: the first message out, then the caller's items (a
/// separate task pumps them, so the caller may read replies while it still sends), and the
/// reply — one message, or the callee's items once the first has arrived (a bidirectional
/// call returns at once: its callee may wait for items before it answers).
async fn exchange_streams(
    connections: &Connections,
    addr: SocketAddr,
    call: &Call,
    max_message_size: usize,
) -> Result<Body, Status> {
    let mut request = encode_request(call, max_message_size)?;
    let connection = connection_to(connections, addr).await?;
    let (send, recv) = connection.open_bi().await.map_err(|error| {
        Status::refused(
            Code::Unavailable,
            format!("cannot open a stream to {addr}: {error}"),
        )
    })?;
    let stream = send.id();
    let mut send = SendGuard::new(send);
    match send.get().write_all_chunks(request.as_mut_slice()).await {
        Ok(_) => {}
        // The peer refused the call before reading all of it; its reply says why.
        Err(quinn::WriteError::Stopped(_)) => {}
        Err(quinn::WriteError::ConnectionLost(error)) => {
            return Err(connection_lost(addr, stream, &error));
        }
        Err(error) => {
            return Err(Status::unavailable(format!(
                "sending to {addr} failed: {error}"
            )));
        }
    }
    let target = call.target();
    let pump = match call.stream.as_ref() {
        Some(items) if call.kind.client_streams() => {
            let Some(items) = items.take() else {
                return Err(Status::internal(format!(
                    "the items of `{target}` were already sent by an earlier attempt"
                )));
            };
            Some(PumpTask(tokio::spawn(pump_items(
                send,
                items,
                max_message_size,
                target.clone(),
            ))))
        }
        _ => {
            let _ = send.finish();
            None
        }
    };
    let decoder = FrameDecoder::new(max_message_size);
    let who = addr.to_string();
    if call.kind == MethodKind::Bidirectional {
        let items = incoming_items(recv, decoder, FrameBuffer::default(), Direction::Reply, who);
        return Ok(Body::Stream(items.on_end(move |_| drop(pump))));
    }
    if call.kind.server_streams() {
        let items = first_reply_item(recv, decoder, who).await?;
        return Ok(Body::Stream(items.on_end(move |_| drop(pump))));
    }
    // A client stream and one reply: the reply ends the call, pumped or not.
    let mut reply = incoming_items(recv, decoder, FrameBuffer::default(), Direction::Reply, who);
    let message = match reply.next().await {
        Some(Ok(message)) => message,
        Some(Err(status)) => return Err(status),
        None => {
            return Err(Status::internal(format!(
                "{addr} answered `{target}` without its reply message"
            )));
        }
    };
    match reply.next().await {
        None => Ok(Body::Message(message)),
        Some(Err(status)) => Err(status),
        Some(Ok(_)) => Err(Status::internal(format!(
            "{addr} broke the protocol: more than one reply message for `{target}`"
        ))),
    }
}

/// The task sending a call's items; aborted (its stream reset) when the call is dropped.
struct PumpTask(tokio::task::JoinHandle<()>);

impl Drop for PumpTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends each of the caller's items as a `DATA` frame, then `FIN`; an `Err` item is sent as a
/// `STATUS` frame (the callee sees that error, never a clean end), a panicking producer resets
/// the stream with [`error_code::PANICKED`](super::error_code::PANICKED). Stops as soon as
/// the callee stops reading (it answered, or refused the call).
async fn pump_items(mut send: SendGuard, mut items: Streaming<Bytes>, max: usize, target: String) {
    let mut last_size = 0;
    let mut share = FairShare::default();
    loop {
        let batch = std::future::poll_fn(|cx| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                poll_batch(&mut items, cx, max, &target, &mut last_size)
            }))
            .map_or(Poll::Ready(None), |batch| batch.map(Some))
        });
        let batch = tokio::select! {
            biased;
            _ = send.get().stopped() => return,
            batch = batch => batch,
        };
        let Some((mut chunks, end)) = batch else {
            tracing::warn!(%target, "the stream of items of a call panicked");
            send.reset(super::error_code::PANICKED);
            return;
        };
        if !chunks.is_empty() {
            let len = FairShare::batch_len(&chunks);
            if send.get().write_all_chunks(&mut chunks).await.is_err() {
                return;
            }
            share.wrote(len).await;
        }
        match end {
            None => {}
            Some(End::Finished) => {
                send.finish();
                return;
            }
            Some(End::Failed(status)) => return abort_items(send, status).await,
        }
    }
}

/// Ends the caller's items with `status` in a `STATUS` frame: the callee sees that error,
/// never a clean end.
async fn abort_items(mut send: SendGuard, status: Status) {
    let status = if status.code() == Code::Ok {
        Status::new(Code::Unknown, status.message().to_owned())
    } else {
        status
    };
    let frame = status_frame(&StatusBody::from(&status));
    if send.get().write_chunk(frame).await.is_ok() {
        send.finish();
    }
}

/// The status of a call whose connection to `addr` was lost: a refusal if the peer closed it
/// saying it never read `stream` (see [`goaway`](super::goaway)), else a plain failure.
fn connection_lost(addr: SocketAddr, stream: quinn::StreamId, error: &ConnectionError) -> Status {
    if super::goaway::never_read(error, stream) {
        Status::refused(
            Code::Unavailable,
            format!("{addr} shut down before it read this call"),
        )
    } else {
        Status::unavailable(format!("the connection to {addr} was lost: {error}"))
    }
}

/// Encodes the `CALL` frame and the `DATA` frame's prefix into one buffer, with a small payload
/// copied after them (one chunk for QUIC); a large payload follows as its own chunk, so it is
/// never copied. Both go out in one write.
fn encode_request(call: &Call, max_message_size: usize) -> Result<Chunks<2>, Status> {
    if call.payload.len() > max_message_size {
        return Err(Status::new(
            Code::ResourceExhausted,
            format!(
                "the request to `{}` is {} bytes, over the limit of {max_message_size} bytes",
                call.target(),
                call.payload.len()
            ),
        ));
    }
    let deadline_ms = match call.deadline {
        None => None,
        Some(deadline) => {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Status::deadline_exceeded(format!(
                    "the deadline of `{}` passed before it was sent",
                    call.target()
                )));
            }
            // Round up: a call with 0.4 ms left must not read as "no time left".
            Some(remaining.as_micros().div_ceil(1000) as u64)
        }
    };
    let small = call.payload.len() < COALESCE_BELOW;
    let header_len = crate::wire::fast::call_frame_len(
        &call.service,
        &call.method,
        deadline_ms,
        &call.metadata,
        call.sticky_key.as_deref(),
    );
    // Exactly the bytes written: a buffer frozen with room to spare costs an allocation more.
    let mut buffer =
        BytesMut::with_capacity(header_len + 5 + if small { call.payload.len() } else { 0 });
    crate::wire::fast::put_call_frame(
        &mut buffer,
        &call.service,
        &call.method,
        deadline_ms,
        &call.metadata,
        call.sticky_key.as_deref(),
    );
    buffer.put_u8(FrameKind::Data as u8);
    buffer.put_u32(call.payload.len() as u32);
    if small {
        buffer.put_slice(&call.payload);
        return Ok(Chunks::new([buffer.freeze(), Bytes::new()], 1));
    }
    Ok(Chunks::new([buffer.freeze(), call.payload.clone()], 2))
}

/// A tower service that sends every call to one peer address.
#[derive(Debug, Clone)]
pub struct PeerService {
    connections: Arc<Connections>,
    addr: SocketAddr,
    max_message_size: usize,
}

impl PeerService {
    /// Calls go to `addr` over `connections`.
    pub fn new(connections: Connections, addr: SocketAddr, max_message_size: usize) -> PeerService {
        PeerService {
            connections: Arc::new(connections),
            addr,
            max_message_size,
        }
    }
}

impl Service<Call> for PeerService {
    type Response = Body;
    type Error = Status;
    type Future = BoxFuture<'static, Result<Body, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        Box::pin(call_peer_owned(
            self.connections.clone(),
            self.addr,
            call,
            self.max_message_size,
        ))
    }
}
