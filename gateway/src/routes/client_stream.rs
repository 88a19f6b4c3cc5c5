//! `POST /{service}/{method}` for a method with a client stream (and no server stream): the
//! body is NDJSON, one `{"item": <value>}` per line, each line checked against the item schema
//! and sent as one item as soon as it is read; the method's other parameters, if it has any,
//! come from the query string (`?param=value`, typed as for a `GET` call). The answer is the
//! unary envelope, `{"error":"", <result field>: ...}`.
//!
//! - The end of a complete body ends the stream. A body cut off mid-way, or a line that is not
//!   a valid item, aborts it: the handler sees an error, never an end, and the client gets a
//!   400 naming the line (and the field).
//! - The body is read line by line, and the next line only once the call took the previous
//!   item: a slow handler slows the upload, and the gateway holds at most one line (of at most
//!   `--max-body` bytes) and a few items. Blank lines are skipped.
//! - The gateway's request timeout bounds the silence between two lines and the wait for the
//!   answer after the body's end; the method's own timeout, if any, bounds the whole call.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use meshrpc::channel::OutgoingStream;
use meshrpc::{Code, Status, StreamSender, Streaming};

use crate::Shared;
use crate::descriptors::{CompiledDescriptor, MethodDescriptor};
use crate::error::ApiError;
use crate::routes::generic::{
    call_error, prepare_call, query_or_body_to_msgpack, query_to_json, schemas,
};
use crate::transcode::{self, CompiledSchema};

/// Items read ahead of the call: the runtime's own buffer size.
const READ_AHEAD: usize = meshrpc::streaming::DEFAULT_STREAM_CAPACITY;

/// Calls `method`, a client-streaming method, with the items of the request's NDJSON body.
pub async fn call(
    shared: &Arc<Shared>,
    descriptor: &CompiledDescriptor,
    method: &MethodDescriptor,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let first = query_or_body_to_msgpack(&query_to_json(&parts.uri, method)?, descriptor, method)?;
    let line_schema = schemas(descriptor, method)?.request_line().ok_or_else(|| {
        ApiError::new(
            Code::Internal,
            format!(
                "the descriptor of `{}.{}` has no `request_stream` schema",
                descriptor.service, method.name
            ),
        )
    })?;
    let (sender, items) = Streaming::channel(READ_AHEAD);
    let mut call = prepare_call(shared, descriptor, method, &parts.headers, first);
    call.stream = Some(OutgoingStream::new(items));
    let channel = shared
        .node
        .channel_with_schema(&descriptor.service, descriptor.hash());
    let timeout = shared.config.request_timeout;
    let reading = read_items(
        body,
        sender,
        line_schema,
        Limits {
            line: shared.config.max_body,
            idle: timeout,
        },
    );
    let calling = channel.call(call);
    tokio::pin!(reading, calling);
    let reply = tokio::select! {
        reply = &mut calling => reply,
        read = &mut reading => {
            if let Err(error) = read {
                // The stream was aborted: let the handler see it and end, then answer why.
                let _ = tokio::time::timeout(timeout, &mut calling).await;
                return Err(error);
            }
            tokio::time::timeout(timeout, &mut calling).await.map_err(|_| {
                ApiError::new(
                    Code::DeadlineExceeded,
                    format!(
                        "`{}.{}` did not answer within the gateway's request timeout of \
                         {timeout:?} after the request's last line",
                        descriptor.service, method.name
                    ),
                )
            })?
        }
    };
    let reply = reply.map_err(|status| call_error(status, descriptor, method))?;
    let json = transcode::msgpack_to_json_envelope(&reply)
        .map_err(|error| ApiError::new(Code::Internal, error.to_string()))?;
    // The request ends with this answer, as a unary one does (a handler that answered before
    // the body's end leaves the rest of it unread).
    Ok((
        [(http::header::CONTENT_TYPE, "application/json")],
        Bytes::from(json),
    )
        .into_response())
}

/// Bounds on reading a streamed body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The longest line, in bytes.
    pub(crate) line: usize,
    /// The longest wait for the next part of the body.
    pub(crate) idle: Duration,
}

/// Reads `body` line by line and sends each line's item to `sender`; finishes the stream at
/// the body's end, aborts it (and answers why) on a bad line, a cut body or a silent client.
/// Stops early, with `Ok`, when the call no longer takes items (it ended).
pub(crate) async fn read_items(
    mut body: axum::body::Body,
    sender: StreamSender<Bytes>,
    schema: &CompiledSchema,
    limits: Limits,
) -> Result<(), ApiError> {
    let mut pending = BytesMut::new();
    let mut line_number = 0usize;
    loop {
        let frame = match tokio::time::timeout(limits.idle, body.frame()).await {
            Err(_) => {
                let error = ApiError::body_timeout(limits.idle);
                sender
                    .abort(Status::deadline_exceeded(error.message.clone()))
                    .await;
                return Err(error);
            }
            Ok(None) => break,
            Ok(Some(Err(error))) => {
                let error = ApiError::bad_request(format!(
                    "the request body was cut off after line {line_number}: {error}; \
                     the call was aborted"
                ));
                sender.abort(Status::cancelled(error.message.clone())).await;
                return Err(error);
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(at) = pending.iter().position(|byte| *byte == b'\n') {
            let line = pending.split_to(at + 1);
            line_number += 1;
            match send_line(&line, &sender, schema).await {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(error) => return Err(refuse_line(sender, line_number, error).await),
            }
        }
        if pending.len() > limits.line {
            let error = ApiError {
                message: format!(
                    "line {} is longer than the limit of {} bytes (--max-body); the call was \
                     aborted",
                    line_number + 1,
                    limits.line
                ),
                ..ApiError::too_large(limits.line)
            };
            sender
                .abort(Status::invalid_argument(error.message.clone()))
                .await;
            return Err(error);
        }
    }
    if !pending.is_empty() {
        line_number += 1;
        match send_line(&pending, &sender, schema).await {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(error) => return Err(refuse_line(sender, line_number, error).await),
        }
    }
    sender.finish();
    Ok(())
}

/// Sends the item of one line (nothing for a blank one). `Ok(false)` when the call no longer
/// takes items; `Err` with what is wrong with the line.
async fn send_line(
    line: &[u8],
    sender: &StreamSender<Bytes>,
    schema: &CompiledSchema,
) -> Result<bool, transcode::RequestError> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(true);
    }
    let item = schema.json_item_to_msgpack(line)?;
    Ok(sender.send(Bytes::from(item)).await.is_ok())
}

/// Aborts the stream for a bad line and answers why.
async fn refuse_line(
    sender: StreamSender<Bytes>,
    number: usize,
    error: transcode::RequestError,
) -> ApiError {
    let message = format!("line {number}: {error}; the call was aborted");
    sender
        .abort(Status::invalid_argument(message.clone()))
        .await;
    ApiError::bad_request(message)
}
