//! `POST /{service}/{method}` for every published method: the JSON body is checked against
//! the method's request schema and transcoded into the MessagePack request map, the call goes
//! through the node's balanced, retried channel (retried only when the descriptor says the
//! method is idempotent), and the MessagePack reply comes back as
//! `{"error":"", <result field>: ...}`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use meshrpc::{Call, Code};
use tokio::time::Instant;

use crate::Shared;
use crate::descriptors::Descriptor;
use crate::error::ApiError;
use crate::transcode;

/// Headers carried into the call's metadata, so traces continue through the mesh.
const PROPAGATED: [&str; 2] = ["traceparent", "tracestate"];

/// Calls `descriptor.service`'s `method` with the request's JSON body.
pub async fn call(
    shared: &Arc<Shared>,
    descriptor: Arc<Descriptor>,
    method: &str,
    request: Request,
) -> Result<Response, ApiError> {
    let Some(method) = descriptor.method(method) else {
        return Err(ApiError::not_found(format!(
            "service `{}` has no method `{method}`; its methods are: {}",
            descriptor.service,
            descriptor.routes()
        )));
    };
    let (parts, body) = request.into_parts();
    let body = read_body(
        &parts.headers,
        body,
        shared.config.max_body,
        shared.config.request_timeout,
    )
    .await?;
    let payload = transcode::json_to_msgpack(&body, descriptor.request_schema(method))
        .map_err(|error| ApiError::bad_request(error.to_string()))?;

    let mut call = Call::new(
        descriptor.service.clone(),
        method.name.clone(),
        Bytes::from(payload),
    );
    call.idempotent = method.idempotent;
    let timeout = method
        .timeout_ms
        .map(Duration::from_millis)
        .map_or(shared.config.request_timeout, |own| {
            own.min(shared.config.request_timeout)
        });
    call.deadline = Some(Instant::now() + timeout);
    for name in PROPAGATED {
        if let Some(value) = parts.headers.get(name).and_then(|v| v.to_str().ok()) {
            call.metadata.insert(name, value);
        }
    }
    // Only members of the schema the body was checked against may serve it.
    let reply = shared
        .node
        .channel_with_schema(&descriptor.service, descriptor.hash())
        .call(call)
        .await?;
    let json = transcode::msgpack_to_json_envelope(&reply)
        .map_err(|error| ApiError::new(Code::Internal, error.to_string()))?;
    Ok((
        [(http::header::CONTENT_TYPE, "application/json")],
        Bytes::from(json),
    )
        .into_response())
}

/// Reads the whole body, refusing more than `limit` bytes with 413.
pub async fn read_body(
    headers: &http::HeaderMap,
    body: axum::body::Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    // A client that dribbles its body must not hold the request open forever.
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect())
        .await
        .map_err(|_| ApiError::body_timeout(timeout))?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::too_large(limit))
        }
        Err(error) => Err(ApiError::bad_request(format!(
            "could not read the request body: {error}"
        ))),
    }
}
