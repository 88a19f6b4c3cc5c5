//! Reading a call off a new stream: the `CALL` header (decoded, routed to a published method,
//! its deadline taken), the first request message, and for methods with a client stream the
//! items that follow. Whatever fails here is answered on the stream without running anything.

use std::time::Duration;

use bytes::Bytes;
use quinn::RecvStream;
use tokio::time::Instant;

use super::call::{Caller, IncomingCall};
use crate::context::CallContext;
use crate::service::unknown_method;
use crate::spec::MethodSpec;
use crate::status::{Code, Status};
use crate::transport::io::read_frame;
use crate::transport::streams::{Direction, incoming_items};
use crate::wire::{CallHeader, FrameBuffer, FrameDecoder, FrameKind};

/// Longest deadline a caller may ask for; longer ones are clamped (a day).
const MAX_DEADLINE: Duration = Duration::from_secs(24 * 60 * 60);

/// The published services by name, as calls are routed to them.
pub(crate) type Services = super::route::Published;

/// The rest of a stream whose opening frame was read: the receiving half, its decoder, and
/// any bytes already read past the opening frame.
pub(crate) struct Opened {
    pub(crate) recv: RecvStream,
    pub(crate) decoder: FrameDecoder,
    pub(crate) buffer: FrameBuffer,
}

/// What the server's state says about a new call.
pub(crate) struct Rules<'a> {
    pub(crate) services: &'a Services,
    pub(crate) request_read_timeout: Duration,
    pub(crate) draining: bool,
}

/// Decodes a `CALL` header, resolves its method and reads the request that follows it on
/// `opened`.
pub(crate) async fn read_call(
    rules: Rules<'_>,
    header: &Bytes,
    caller: Caller,
    opened: Opened,
) -> Result<IncomingCall, (Status, RecvStream)> {
    let Opened {
        mut recv,
        decoder,
        mut buffer,
    } = opened;
    let Rules {
        services,
        request_read_timeout,
        draining,
    } = rules;
    let header: CallHeader<'_> = match crate::wire::fast::read_call_header(header) {
        Some(header) => header,
        None => match crate::codec::from_slice_bounded(header, crate::codec::MAX_HEADER_DEPTH) {
            Ok(header) => header,
            Err(error) => {
                let status = Status::invalid_argument(format!("malformed call header: {error}"));
                return Err((status, recv));
            }
        },
    };
    // Read once: the clock is read per call, not per use.
    let now = Instant::now();
    let deadline = header
        .deadline_ms
        .map(|ms| now + Duration::from_millis(ms).min(MAX_DEADLINE));
    let method = match route(services, &header) {
        Ok(method) => method,
        Err(status) => return Err((status, recv)),
    };
    if header.deadline_ms == Some(0) {
        // No time left: the handler could not finish in time, so it is not started (gRPC
        // does the same). A caller should never send 0 (docs/PROTOCOL.md, section 5.1).
        let status =
            Status::deadline_exceeded("the call arrived with no time left (deadline_ms 0)");
        return Err((status, recv));
    }
    if draining {
        return Err((
            Status::refused(Code::Unavailable, "this node is draining"),
            recv,
        ));
    }
    let read_by = deadline
        .unwrap_or(now + request_read_timeout)
        .min(now + request_read_timeout);
    let client_streams = method.kind.client_streams();
    let read = read_first_message(&mut recv, &decoder, &mut buffer, !client_streams);
    let request = match tokio::time::timeout_at(read_by, read).await {
        Err(_) => Err(Status::deadline_exceeded(
            "the request did not arrive before the deadline",
        )),
        Ok(result) => result,
    };
    let request = match request {
        Ok(request) => request,
        Err(status) => return Err((status, recv)),
    };
    let stream = if client_streams {
        let who = format!("the caller ({})", caller.addr);
        Some(incoming_items(
            recv,
            decoder,
            buffer,
            Direction::Request,
            who,
        ))
    } else {
        // The request was read to its end: dropping the receiving half sends nothing.
        drop(recv);
        None
    };
    Ok(IncomingCall {
        method,
        context: CallContext::new(method.service, method.name, deadline, header.metadata),
        caller,
        request,
        stream,
    })
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
async fn read_first_message(
    recv: &mut RecvStream,
    decoder: &FrameDecoder,
    buffer: &mut FrameBuffer,
    then_end: bool,
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
