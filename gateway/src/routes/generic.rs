//! `POST /{service}/{method}` for every published method: the JSON body is checked against
//! the method's request schema and transcoded into the MessagePack request map, the call goes
//! through the node's balanced, retried channel (retried only when the descriptor says the
//! method is idempotent), and the MessagePack reply comes back as
//! `{"error":"", <result field>: ...}` (`{"error":""}` for a method without a result): the
//! original gateway's `POST /greeter/greet` answered that shape, and every generic route keeps
//! it, so a client reads every answer the same way.
//!
//! An idempotent method whose parameters are all scalars (strings, numbers, booleans, or
//! optional ones) can also be called as `GET /{service}/{method}?param=value&...`: each query
//! parameter becomes the field of that name (a number or boolean when the field's schema says
//! so) and the object is checked like a JSON body.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, Request};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use meshrpc::{Call, Code, MethodKind};
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::Shared;
use crate::descriptors::{CompiledDescriptor, DescriptorExt, MethodDescriptor, MethodSchemas};
use crate::error::ApiError;
use crate::transcode;

/// Headers carried into the call's metadata, so traces continue through the mesh.
const PROPAGATED: [&str; 2] = ["traceparent", "tracestate"];

/// Calls `descriptor.service`'s `method` with the request's JSON body; a streaming method is
/// answered by [`server_stream`](super::server_stream), [`client_stream`](super::client_stream)
/// or [`bidi`](super::bidi).
pub async fn call(
    shared: &Arc<Shared>,
    descriptor: Arc<CompiledDescriptor>,
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
    match method.kind {
        MethodKind::Unary => {}
        MethodKind::ServerStreaming => {
            return super::server_stream::call(shared, &descriptor, method, request).await;
        }
        MethodKind::ClientStreaming => {
            return super::client_stream::call(shared, &descriptor, method, request).await;
        }
        MethodKind::Bidirectional => {
            return super::bidi::call(shared, &descriptor, method, request).await;
        }
    }
    let (parts, body) = request.into_parts();
    let payload = request_payload(shared, &descriptor, method, &parts, body).await?;
    let call = prepare_call(shared, &descriptor, method, &parts.headers, payload);
    // Only members of the schema the body was checked against may serve it.
    let reply = shared
        .node
        .channel_with_schema(&descriptor.service, descriptor.hash())
        .call(call)
        .await
        .map_err(|status| call_error(status, &descriptor, method))?;
    let json = transcode::msgpack_to_json_envelope(&reply)
        .map_err(|error| ApiError::new(Code::Internal, error.to_string()))?;
    Ok((
        [(http::header::CONTENT_TYPE, "application/json")],
        Bytes::from(json),
    )
        .into_response())
}

/// The MessagePack request map of a call: the JSON body of a `POST`, the query parameters of a
/// `GET`, checked against the method's request schema.
pub(crate) async fn request_payload(
    shared: &Shared,
    descriptor: &CompiledDescriptor,
    method: &MethodDescriptor,
    parts: &http::request::Parts,
    body: axum::body::Body,
) -> Result<Bytes, ApiError> {
    let body = if parts.method == http::Method::POST {
        read_body(
            &parts.headers,
            body,
            shared.config.max_body,
            shared.config.request_timeout,
        )
        .await?
    } else {
        query_to_json(&parts.uri, method)?
    };
    query_or_body_to_msgpack(&body, descriptor, method)
}

/// The MessagePack request map for the JSON object `json`.
pub(crate) fn query_or_body_to_msgpack(
    json: &[u8],
    descriptor: &CompiledDescriptor,
    method: &MethodDescriptor,
) -> Result<Bytes, ApiError> {
    schemas(descriptor, method)?
        .request()
        .json_to_msgpack(json)
        .map(Bytes::from)
        .map_err(|error| ApiError::bad_request(error.to_string()))
}

/// The compiled schemas of `method`, one of `descriptor`'s methods.
pub(crate) fn schemas<'d>(
    descriptor: &'d CompiledDescriptor,
    method: &MethodDescriptor,
) -> Result<&'d MethodSchemas, ApiError> {
    descriptor.schemas(&method.name).ok_or_else(|| {
        ApiError::new(
            Code::Internal,
            format!(
                "the descriptor of `{}` has no method `{}`",
                descriptor.service, method.name
            ),
        )
    })
}

/// The call for `method` with this request map: retried only when idempotent, the request's
/// trace headers in its metadata, and its deadline. A unary call's deadline is the gateway's
/// request timeout or the method's own shorter one; a streaming call's is the method's own
/// timeout only, so a stream runs until it ends (the gateway bounds the wait for its first
/// message itself).
pub(crate) fn prepare_call(
    shared: &Shared,
    descriptor: &CompiledDescriptor,
    method: &MethodDescriptor,
    headers: &http::HeaderMap,
    payload: Bytes,
) -> Call {
    let mut call = Call::new(descriptor.service.clone(), method.name.clone(), payload);
    call.idempotent = method.idempotent;
    call.kind = method.kind;
    let own = method.timeout_ms.map(Duration::from_millis);
    let timeout = if method.kind == MethodKind::Unary {
        Some(own.map_or(shared.config.request_timeout, |own| {
            own.min(shared.config.request_timeout)
        }))
    } else {
        own
    };
    call.deadline = timeout.map(|timeout| Instant::now() + timeout);
    for name in PROPAGATED {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
            call.metadata.insert(name, value);
        }
    }
    call
}

/// The answer for a status a call to `method` ended with.
pub(crate) fn call_error(
    status: meshrpc::Status,
    descriptor: &CompiledDescriptor,
    method: &MethodDescriptor,
) -> ApiError {
    let refused_by_decoder = status.code() == Code::InvalidArgument;
    let error = ApiError::from_call(status, &descriptor.service);
    match descriptor.schemas(&method.name) {
        Some(schemas) if refused_by_decoder => {
            name_unchecked_fields(error, schemas.request().unchecked())
        }
        _ => error,
    }
}

/// `error`, an `invalid_argument` the service answered, with the places of the request the
/// gateway passed through unchecked (`use` types without a schema) named first: the service's
/// decoder speaks of MessagePack markers, and the mistake is most likely in one of them.
fn name_unchecked_fields(mut error: ApiError, unchecked: &[transcode::Unchecked]) -> ApiError {
    if unchecked.is_empty() {
        return error;
    }
    let places = unchecked
        .iter()
        .map(|place| format!("`{}` ({})", place.path, place.rust_type))
        .collect::<Vec<_>>()
        .join(", ");
    error.message = format!(
        "the service could not decode the request; the gateway cannot check {places}, \
         so look there first (the type has no schema: see MANIFEST.md, \"What the gateway can \
         check\"). The service said: {}",
        error.message
    );
    error
}

/// The JSON type of a scalar parameter: `string`, `integer`, `number` or `boolean`; `None`
/// for anything else (objects, arrays, references).
fn scalar_type(schema: &Value) -> Option<&str> {
    match schema.get("type").and_then(Value::as_str) {
        Some(kind @ ("string" | "integer" | "number" | "boolean")) => Some(kind),
        _ => None,
    }
}

/// Whether `method` can be called with `GET` and query parameters: it is idempotent, answers
/// one message or a server stream (an `EventSource` opens streams with `GET`), and every
/// parameter is a scalar.
pub fn has_get_form(method: &MethodDescriptor) -> bool {
    !method.kind.client_streams()
        && method.idempotent
        && method
            .request
            .get("properties")
            .and_then(Value::as_object)
            .is_none_or(|fields| fields.values().all(|field| scalar_type(field).is_some()))
}

/// The JSON object a `GET` call's query parameters stand for (a streaming call's too).
pub(crate) fn query_to_json(uri: &http::Uri, method: &MethodDescriptor) -> Result<Bytes, ApiError> {
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|error| ApiError::bad_request(format!("bad query string: {error}")))?;
    let fields = method.request.get("properties").and_then(Value::as_object);
    let mut object = Map::new();
    for (name, text) in pairs {
        let kind = fields
            .and_then(|fields| fields.get(&name))
            .and_then(scalar_type);
        let value = match kind {
            Some("integer" | "number") => serde_json::from_str::<serde_json::Number>(&text)
                .map_or(Value::String(text), Value::Number),
            Some("boolean") => match text.as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => Value::String(text),
            },
            // Strings, and names the schema does not know (the check names them).
            _ => Value::String(text),
        };
        if object.insert(name.clone(), value).is_some() {
            return Err(ApiError::bad_request(format!(
                "query parameter `{name}` is given more than once"
            )));
        }
    }
    serde_json::to_vec(&Value::Object(object))
        .map(Bytes::from)
        .map_err(|error| ApiError::new(Code::Internal, error.to_string()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transcode::CompiledSchema;
    use serde_json::json;

    #[test]
    fn a_refusal_names_the_places_the_gateway_could_not_check() {
        let root = json!({
            "type": "object",
            "properties": {
                "card": {"$ref": "#/components/schemas/post.Card"},
                "count": {"type": "integer"}
            }
        });
        let types = json!({
            "post.Card": {
                "type": "object",
                "properties": {"mood": {"description": "Rust type crate::model::Mood"}}
            }
        });
        let schema = transcode::Schema {
            root: &root,
            types: types.as_object().expect("an object"),
        };
        let refused = ApiError::new(Code::InvalidArgument, "wrong msgpack marker FixMap(1)");
        let error = name_unchecked_fields(refused, CompiledSchema::compile(schema).unchecked());
        assert_eq!(error.code, "invalid_argument");
        assert!(
            error
                .message
                .contains("cannot check `card.mood` (crate::model::Mood)"),
            "{}",
            error.message
        );
        assert!(
            error
                .message
                .ends_with("The service said: wrong msgpack marker FixMap(1)"),
            "{}",
            error.message
        );
    }

    #[test]
    fn a_refusal_of_a_fully_checked_request_is_left_as_the_service_said_it() {
        let root = json!({"type": "object", "properties": {"count": {"type": "integer"}}});
        let types = serde_json::Map::new();
        let schema = transcode::Schema {
            root: &root,
            types: &types,
        };
        let refused = ApiError::new(Code::InvalidArgument, "count must be odd");
        assert_eq!(
            name_unchecked_fields(refused.clone(), CompiledSchema::compile(schema).unchecked()),
            refused
        );
    }
}
