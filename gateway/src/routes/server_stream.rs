//! `POST /{service}/{method}` (and `GET` with query parameters, for an idempotent method with
//! scalar parameters, as an `EventSource` opens it) for a method with a server stream: the
//! request is the usual JSON object of the parameters, and the answer a stream of JSON objects
//! ([`crate::framing`]): NDJSON by default, Server-Sent Events for `Accept: text/event-stream`.
//!
//! - The gateway waits at most its request timeout for the first item (or the end): a call that
//!   fails before it is answered with the usual HTTP error and JSON error body. From the first
//!   item on, the stream runs until it ends; only the method's own timeout (the manifest's
//!   `timeout`) bounds the whole call, and its expiry is the final line's status.
//! - The next item is pulled from the mesh only when the body asks for more, which it does as
//!   the client reads: a slow reader slows the producer, and nothing piles up in between.
//! - A client that disconnects drops the body, and with it the call: the mesh call is
//!   cancelled.

use std::sync::Arc;

use axum::body::Body as HttpBody;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use meshrpc::{Code, Status, Streaming};

use crate::Shared;
use crate::descriptors::{CompiledDescriptor, MethodDescriptor};
use crate::error::ApiError;
use crate::framing::Framing;
use crate::routes::generic::{call_error, prepare_call, request_payload};
use crate::stream_end::StreamEnd;
use crate::transcode;

/// Calls `method`, a server-streaming method, and streams its items to the client.
pub async fn call(
    shared: &Arc<Shared>,
    descriptor: &CompiledDescriptor,
    method: &MethodDescriptor,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let framing = Framing::negotiate(&parts.headers);
    let payload = request_payload(shared, descriptor, method, &parts, body).await?;
    let call = prepare_call(shared, descriptor, method, &parts.headers, payload);
    let channel = shared
        .node
        .channel_with_schema(&descriptor.service, descriptor.hash());
    let timeout = shared.config.request_timeout;
    let first = tokio::time::timeout(timeout, async {
        let mut items = channel.send(call).await?.into_stream();
        let first = items.next().await;
        Ok::<_, Status>((items, first))
    })
    .await
    .map_err(|_| {
        ApiError::new(
            Code::DeadlineExceeded,
            format!(
                "`{}.{}` sent nothing within the gateway's request timeout of {timeout:?}",
                descriptor.service, method.name
            ),
        )
    })?;
    let (items, first) = first.map_err(|status| call_error(status, descriptor, method))?;
    let first = match first {
        Some(Err(status)) => return Err(call_error(status, descriptor, method)),
        Some(Ok(item)) => Some(item),
        None => None,
    };
    Ok(stream_response(
        framing,
        first,
        items,
        descriptor.service.clone(),
    ))
}

/// The streamed answer: `first` (if the stream had one), the rest of `items`, then the final
/// status, framed by `framing`.
fn stream_response(
    framing: Framing,
    first: Option<Bytes>,
    items: Streaming<Bytes>,
    service: String,
) -> Response {
    let end = StreamEnd::new();
    let body = framed(framing, first, items, service, end.clone());
    let mut response = Response::new(HttpBody::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(framing.content_type()),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    // Proxies such as nginx hold streamed bodies back unless told not to.
    headers.insert("x-accel-buffering", http::HeaderValue::from_static("no"));
    response.extensions_mut().insert(end);
    response
}

/// What [`framed`] has left to write.
enum State {
    /// Items to write, `first` before the rest.
    Streaming {
        first: Option<Bytes>,
        items: Streaming<Bytes>,
    },
    /// Everything was written.
    Done,
}

/// The body's chunks: one per item, then the final status. `end` is held until the body is
/// dropped (written out, or the client gone).
fn framed(
    framing: Framing,
    first: Option<Bytes>,
    items: Streaming<Bytes>,
    service: String,
    end: StreamEnd,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static {
    let state = State::Streaming { first, items };
    futures_util::stream::unfold((state, end), move |(state, end)| {
        let service = service.clone();
        async move {
            let State::Streaming { first, mut items } = state else {
                return None;
            };
            let next = match first {
                Some(item) => Some(Ok(item)),
                None => items.next().await,
            };
            let (chunk, state) = match next {
                Some(Ok(item)) => match transcode::msgpack_item_to_json(&item) {
                    Ok(json) => (framing.item(&json), State::Streaming { first: None, items }),
                    // Dropping `items` cancels the call.
                    Err(error) => (
                        framing.end(&Err(ApiError::new(Code::Internal, error.to_string()))),
                        State::Done,
                    ),
                },
                Some(Err(status)) => (
                    framing.end(&Err(ApiError::from_call(status, &service))),
                    State::Done,
                ),
                None => (framing.end(&Ok(())), State::Done),
            };
            Some((Ok(chunk), (state, end)))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(value: u64) -> Bytes {
        Bytes::from(rmp_serde::to_vec(&value).expect("encodes"))
    }

    async fn body_of(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("the body");
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    #[tokio::test]
    async fn items_then_the_ok_line() {
        let items = Streaming::iter([item(2), item(3)]);
        let response = stream_response(Framing::NdJson, Some(item(1)), items, "n".into());
        assert_eq!(
            response.headers()[http::header::CONTENT_TYPE],
            "application/x-ndjson"
        );
        assert_eq!(
            body_of(response).await,
            "{\"item\":1}\n{\"item\":2}\n{\"item\":3}\n{\"status\":\"ok\"}\n"
        );
    }

    #[tokio::test]
    async fn a_failed_stream_ends_with_its_status_as_the_last_event() {
        let items = Streaming::new(futures_util::stream::iter([
            Ok(item(1)),
            Err(Status::new(Code::ResourceExhausted, "too many numbers")),
        ]));
        let response = stream_response(Framing::Sse, None, items, "n".into());
        assert_eq!(
            body_of(response).await,
            "event: item\ndata: {\"item\":1}\n\n\
             event: end\ndata: {\"status\":\"resource_exhausted\",\"error\":\"too many numbers\"}\n\n"
        );
    }

    #[tokio::test]
    async fn the_end_comes_when_the_body_is_dropped() {
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sender, items) = Streaming::<Bytes>::channel(1);
        let response = stream_response(Framing::NdJson, None, items, "n".into());
        let flag = ran.clone();
        response
            .extensions()
            .get::<StreamEnd>()
            .expect("a stream end")
            .defer(move || flag.store(true, std::sync::atomic::Ordering::SeqCst));
        let (parts, body) = response.into_parts();
        drop(parts);
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
        drop(body);
        assert!(ran.load(std::sync::atomic::Ordering::SeqCst));
        assert!(
            sender.is_closed(),
            "the call's stream was dropped with the body"
        );
    }
}
