//! Reading a call off a new stream: the `CALL` header (decoded, routed to a published method,
//! its deadline taken), the first request message, and for methods with a client stream the
//! items that follow. Whatever fails here is answered on the stream without running anything.
//!
//! The reading runs in the task that later answers the call, so its state is kept small: the
//! steps are plain functions and [`ReadTimer`]'s futures, and the timer exists only when a
//! read has to wait.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use quinn::RecvStream;
use tokio::time::{Instant, Sleep};

use super::call::Caller;
use crate::metadata::Metadata;
use crate::service::unknown_method;
use crate::spec::MethodSpec;
use crate::status::{Code, Status};
use crate::streaming::Streaming;
use crate::transport::io::read_frame;
use crate::transport::streams::{Direction, incoming_items};
use crate::wire::{CallHeader, FrameBuffer, FrameDecoder, FrameKind};

/// Longest deadline a caller may ask for; longer ones are clamped (a day).
const MAX_DEADLINE: Duration = Duration::from_secs(24 * 60 * 60);

/// The published services by name, as calls are routed to them.
pub(crate) type Services = super::route::Published;

/// What the server's state says about a new call.
pub(crate) struct Rules<'a> {
    pub(crate) services: &'a Services,
    pub(crate) request_read_timeout: Duration,
    pub(crate) draining: bool,
}

/// A call whose header was read and accepted: the method to run, what its context is made
/// of (made once the request is read: the context is larger than its parts), and when its
/// request must have arrived.
pub(crate) struct AcceptedCall {
    pub(crate) method: &'static MethodSpec,
    pub(crate) deadline: Option<Instant>,
    pub(crate) metadata: Metadata,
    /// The caller's deadline or `request_read_timeout` from now, whichever comes first.
    pub(crate) read_by: Instant,
}

/// Decodes a `CALL` header and resolves its method; refuses a call that cannot run (unknown,
/// out of time, or arriving while the node drains) with the status to answer.
pub(crate) fn accept_call(rules: Rules<'_>, header: &Bytes) -> Result<AcceptedCall, Status> {
    let Rules {
        services,
        request_read_timeout,
        draining,
    } = rules;
    let header: CallHeader<'_> = match crate::wire::fast::read_call_header(header) {
        Some(header) => header,
        None => crate::codec::from_slice_bounded(header, crate::codec::MAX_HEADER_DEPTH)
            .map_err(|error| Status::invalid_argument(format!("malformed call header: {error}")))?,
    };
    // Read once: the clock is read per call, not per use.
    let now = Instant::now();
    let deadline = header
        .deadline_ms
        .map(|ms| now + Duration::from_millis(ms).min(MAX_DEADLINE));
    let method = route(services, &header)?;
    if header.deadline_ms == Some(0) {
        // No time left: the handler could not finish in time, so it is not started (gRPC
        // does the same). A caller should never send 0 (docs/PROTOCOL.md, section 5.1).
        return Err(Status::deadline_exceeded(
            "the call arrived with no time left (deadline_ms 0)",
        ));
    }
    if draining {
        return Err(Status::refused(Code::Unavailable, "this node is draining"));
    }
    let read_by = deadline
        .unwrap_or(now + request_read_timeout)
        .min(now + request_read_timeout);
    Ok(AcceptedCall {
        method,
        deadline,
        metadata: header.metadata,
        read_by,
    })
}

/// The timer of a stream's reading phase. It is made only when a read has to wait: most
/// calls arrive whole with their stream, and are read without one.
#[derive(Default)]
pub(crate) struct ReadTimer(Option<Pin<Box<Sleep>>>);

impl ReadTimer {
    /// `read`, or `None` if it has not finished `timeout` after it first had to wait.
    pub(crate) fn within<F: Future>(
        &mut self,
        timeout: Duration,
        read: F,
    ) -> Before<'_, F, impl FnOnce() -> Instant> {
        Before {
            read,
            timer: &mut self.0,
            at: Some(move || Instant::now() + timeout),
        }
    }

    /// `read`, or `None` if it has not finished by `at`.
    pub(crate) fn until<F: Future>(
        &mut self,
        at: Instant,
        read: F,
    ) -> Before<'_, F, impl FnOnce() -> Instant> {
        if let Some(timer) = &mut self.0 {
            timer.as_mut().reset(at);
        }
        Before {
            read,
            timer: &mut self.0,
            at: Some(move || at),
        }
    }
}

pin_project_lite::pin_project! {
    /// A read raced against its [`ReadTimer`], which it starts (at the time `at` gives) when
    /// the read first has to wait.
    pub(crate) struct Before<'a, F, A> {
        #[pin]
        read: F,
        timer: &'a mut Option<Pin<Box<Sleep>>>,
        at: Option<A>,
    }
}

impl<F: Future, A: FnOnce() -> Instant> Future for Before<'_, F, A> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.read.poll(cx) {
            return Poll::Ready(Some(output));
        }
        if this.timer.is_none()
            && let Some(at) = this.at.take()
        {
            **this.timer = Some(Box::pin(tokio::time::sleep_until(at())));
        }
        match this.timer {
            Some(timer) => timer.as_mut().poll(cx).map(|()| None),
            None => Poll::Pending,
        }
    }
}

/// The items of a client stream that follow the first request message on `recv`.
pub(crate) fn request_items(
    recv: RecvStream,
    decoder: FrameDecoder,
    buffer: FrameBuffer,
    caller: &Caller,
) -> Streaming<Bytes> {
    let who = format!("the caller ({})", caller.addr);
    incoming_items(recv, decoder, buffer, Direction::Request, who)
}

/// The method a header names, or the status that refuses it.
fn route(services: &Services, header: &CallHeader<'_>) -> Result<&'static MethodSpec, Status> {
    let Some(service) = services.get(header.service.as_ref()) else {
        let published: Vec<&str> = services.names().collect();
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
    service
        .spec()
        .method(&header.method)
        .ok_or_else(|| unknown_method(service.spec(), &header.method))
}

/// Reads the first `DATA` frame of a request and, when `then_end`, the end of the stream
/// (a unary or server-streaming request carries exactly one message).
#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` would move its arguments once more into its body: a server's reading state carries this future"
)]
pub(crate) fn read_first_message<'a>(
    recv: &'a mut RecvStream,
    decoder: &'a FrameDecoder,
    buffer: &'a mut FrameBuffer,
    then_end: bool,
) -> impl Future<Output = Result<Bytes, Status>> + Send + 'a {
    async move {
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
        if !then_end {
            return Ok(payload);
        }
        match read_frame(recv, decoder, buffer).await {
            Ok(None) => Ok(payload),
            Ok(Some(frame)) => Err(Status::invalid_argument(format!(
                "a unary call carries one DATA frame; got a further {:?} frame",
                frame.kind
            ))),
            Err(error) => Err(error.to_status()),
        }
    }
}
