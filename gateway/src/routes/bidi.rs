//! `GET /{service}/{method}` with a WebSocket upgrade, for a bidirectional method. The
//! method's other parameters, if it has any, come from the query string (typed as for a `GET`
//! call). Then, one JSON object per text message ([`crate::framing`]):
//!
//! - the client sends `{"item": <value>}` per item, and `{"status":"ok"}` to end its input
//!   (any other status, or a socket closed or lost before `{"status":"ok"}`, aborts the call:
//!   the handler sees an error, never an end); a message that is not a valid item aborts the
//!   call, and the gateway answers its final status naming the message's number and the field;
//! - the gateway sends `{"item": <value>}` per item of the reply stream, then one final
//!   `{"status": ...}`, and closes the socket.
//!
//! Each item is read from the socket only once the call took the previous one, and the next
//! reply item pulled only once the previous one was written, so neither side outruns the other.
//! Neither the gateway's request timeout nor any idle timeout applies (a conversation may
//! pause); the method's own timeout, if any, bounds the whole call.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{FromRequestParts, Request};
use axum::response::Response;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use meshrpc::channel::OutgoingStream;
use meshrpc::{Call, Channel, Code, Status, StreamSender, Streaming};
use serde::Deserialize;

use crate::Shared;
use crate::descriptors::{CompiledDescriptor, MethodDescriptor};
use crate::error::ApiError;
use crate::framing::status_object;
use crate::routes::generic::{
    call_error, prepare_call, query_or_body_to_msgpack, query_to_json, schemas,
};
use crate::stream_end::StreamEnd;
use crate::transcode::{self, CompiledSchema};

/// Items read ahead of the call: the runtime's own buffer size.
const READ_AHEAD: usize = meshrpc::streaming::DEFAULT_STREAM_CAPACITY;

/// Opens the WebSocket for `method`, a bidirectional method.
pub async fn call(
    shared: &Arc<Shared>,
    descriptor: &Arc<CompiledDescriptor>,
    method: &MethodDescriptor,
    request: Request,
) -> Result<Response, ApiError> {
    let (mut parts, _body) = request.into_parts();
    let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|rejection| {
            ApiError::bad_request(format!(
                "`{}.{}` streams both ways: open a WebSocket on this path (GET with \
                 `Upgrade: websocket`), send {{\"item\": ...}} messages and {{\"status\":\"ok\"}} \
                 to end ({})",
                descriptor.service,
                method.name,
                rejection.body_text()
            ))
        })?;
    let first = query_or_body_to_msgpack(&query_to_json(&parts.uri, method)?, descriptor, method)?;
    let line_schema = schemas(descriptor, method)?
        .request_line()
        .cloned()
        .ok_or_else(|| {
            ApiError::new(
                Code::Internal,
                format!(
                    "the descriptor of `{}.{}` has no `request_stream` schema",
                    descriptor.service, method.name
                ),
            )
        })?;
    let call = prepare_call(shared, descriptor, method, &parts.headers, first);
    let conversation = Conversation {
        channel: shared
            .node
            .channel_with_schema(&descriptor.service, descriptor.hash()),
        call,
        descriptor: descriptor.clone(),
        method: method.name.clone(),
        line_schema,
    };
    let end = StreamEnd::new();
    let held = end.clone();
    let max_message = shared.config.max_body;
    let mut response = upgrade
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| async move {
            conversation.run(socket).await;
            drop(held);
        });
    response.extensions_mut().insert(end);
    Ok(response)
}

/// One WebSocket's call.
struct Conversation {
    channel: Channel,
    call: Call,
    descriptor: Arc<CompiledDescriptor>,
    method: String,
    /// The schema of `{"item": <value>}`.
    line_schema: Arc<CompiledSchema>,
}

/// A client's control message.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusMessage {
    status: String,
    #[serde(default)]
    error: Option<String>,
}

impl Conversation {
    async fn run(mut self, socket: WebSocket) {
        let (mut outgoing, mut incoming) = socket.split();
        let (sender, items) = Streaming::channel(READ_AHEAD);
        self.call.stream = Some(OutgoingStream::new(items));
        let call = self.call.clone();
        let descriptor = self.descriptor.clone();
        let outcome = {
            let input = pump_input(&mut incoming, sender, &self.line_schema);
            let output = pump_output(&self.channel, call, &mut outgoing);
            tokio::pin!(input, output);
            let mut input_done = false;
            loop {
                tokio::select! {
                    read = &mut input, if !input_done => {
                        input_done = true;
                        if let Err(error) = read {
                            // The call was aborted; its own end says less than why.
                            break Err(error);
                        }
                    }
                    written = &mut output => break written,
                }
            }
        };
        let outcome = outcome.map_err(|failure| match failure {
            Failure::Call(status) => match descriptor.method(&self.method) {
                Some(method) => call_error(status, &descriptor, method),
                None => ApiError::from_call(status, &descriptor.service),
            },
            Failure::Client(error) => error,
            Failure::Gone => ApiError::new(Code::Cancelled, "the client left"),
        });
        let last = status_object(&outcome);
        let last = Utf8Bytes::try_from(last).unwrap_or_else(|_| Utf8Bytes::from_static("{}"));
        if outgoing.send(Message::Text(last)).await.is_ok() {
            let _ = outgoing
                .send(Message::Close(Some(CloseFrame {
                    code: close_code::NORMAL,
                    reason: Utf8Bytes::from_static(""),
                })))
                .await;
        }
    }
}

/// Why a conversation ended early.
enum Failure {
    /// The call failed with this status.
    Call(Status),
    /// The client sent something wrong.
    Client(ApiError),
    /// The socket is gone.
    Gone,
}

/// Reads the client's messages into the call's stream until `{"status":"ok"}` (a clean end).
/// A socket closed or lost first, another status, or a bad message aborts the stream.
async fn pump_input(
    incoming: &mut futures_util::stream::SplitStream<WebSocket>,
    sender: StreamSender<Bytes>,
    schema: &CompiledSchema,
) -> Result<(), Failure> {
    let mut number = 0usize;
    loop {
        let text = match incoming.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(_))) => {
                number += 1;
                return Err(refuse(
                    sender,
                    number,
                    "binary messages are not taken; send JSON text",
                )
                .await);
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                sender
                    .abort(Status::cancelled(
                        "the WebSocket closed before the client sent {\"status\":\"ok\"}",
                    ))
                    .await;
                return Ok(());
            }
        };
        number += 1;
        if let Ok(control) = serde_json::from_str::<StatusMessage>(text.as_str()) {
            if control.status == "ok" {
                sender.finish();
                return Ok(());
            }
            let message = control
                .error
                .unwrap_or_else(|| format!("the client ended its input with `{}`", control.status));
            sender
                .abort(Status::new(client_code(&control.status), message))
                .await;
            return Ok(());
        }
        match schema.json_item_to_msgpack(text.as_bytes()) {
            Ok(item) => {
                if sender.send(Bytes::from(item)).await.is_err() {
                    // The call ended; its status is the conversation's.
                    return Ok(());
                }
            }
            Err(error) => return Err(refuse(sender, number, &error.to_string()).await),
        }
    }
}

/// The code of a status name a client ended its input with (`cancelled` when unknown).
fn client_code(name: &str) -> Code {
    Code::ALL
        .iter()
        .copied()
        .find(|code| code.as_str() == name && *code != Code::Ok)
        .unwrap_or(Code::Cancelled)
}

/// Aborts the call for message `number` and answers why.
async fn refuse(sender: StreamSender<Bytes>, number: usize, why: &str) -> Failure {
    let message = format!("message {number}: {why}; the call was aborted");
    sender
        .abort(Status::invalid_argument(message.clone()))
        .await;
    Failure::Client(ApiError::bad_request(message))
}

/// Sends the call and writes each reply item to the socket; ends with the call's outcome.
async fn pump_output(
    channel: &Channel,
    call: Call,
    outgoing: &mut futures_util::stream::SplitSink<WebSocket, Message>,
) -> Result<(), Failure> {
    let mut items = channel
        .send(call)
        .await
        .map_err(Failure::Call)?
        .into_stream();
    while let Some(item) = items.next().await {
        let item = item.map_err(Failure::Call)?;
        let json = transcode::msgpack_item_to_json(&item)
            .map_err(|error| Failure::Call(Status::internal(error.to_string())))?;
        let text = Utf8Bytes::try_from(json)
            .map_err(|error| Failure::Call(Status::internal(error.to_string())))?;
        outgoing
            .send(Message::Text(text))
            .await
            .map_err(|_| Failure::Gone)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_status_maps_to_its_code_and_never_to_ok() {
        assert_eq!(client_code("deadline_exceeded"), Code::DeadlineExceeded);
        assert_eq!(client_code("nonsense"), Code::Cancelled);
        assert_eq!(client_code("ok"), Code::Cancelled);
    }
}
