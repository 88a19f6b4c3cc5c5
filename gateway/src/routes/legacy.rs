//! The legacy HTTP handlers services publish, under `/{service}/...`: the request is forwarded
//! over the mesh (`Node::http_client`, balanced over the members that serve the service's
//! HTTP) with the service prefix removed — `GET /greeter/check` reaches the greeter's
//! `GET /check` — keeping the query, the headers (less hop-by-hop ones) and a streaming body
//! both ways. The gateway adds `X-Forwarded-For`, `X-Forwarded-Host` and `X-Forwarded-Prefix`.
//! When API keys are on, the gateway's `Authorization` header is not passed on.
//!
//! The member's HTTP server takes at most [`MAX_FORWARDED_HEADERS`] header lines and
//! [`MAX_FORWARDED_HEAD_BYTES`] of request head (hyper's defaults); a request that would pass
//! either once the gateway's own headers are added is answered 431 by the gateway, in JSON.
//! An error answer (4xx, 5xx) a handler sends without a body gets the gateway's JSON error
//! body instead, with its status and its other headers (`Allow`, `Retry-After`, …) kept.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use http::{HeaderMap, HeaderName, HeaderValue, Version};
use http_body_util::Limited;
use meshrpc::Code;

use crate::Shared;
use crate::error::ApiError;

/// The most header lines a member's legacy HTTP server takes (hyper's default).
pub const MAX_FORWARDED_HEADERS: usize = 100;

/// The largest request head (request line and headers) forwarded: hyper's default buffer
/// (8 KiB + 400 KiB) less 1 KiB for what the mesh client adds.
pub const MAX_FORWARDED_HEAD_BYTES: usize = 8192 + 4096 * 100 - 1024;

/// Headers that concern one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Forwards `request` to a member serving `service`'s HTTP, as `/{rest}`.
pub async fn forward(
    shared: &Arc<Shared>,
    service: &str,
    rest: &str,
    request: Request,
) -> Result<Response, ApiError> {
    let (mut parts, body) = request.into_parts();
    let limit = shared.config.max_body;
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let client_ip = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    let target = match parts.uri.query() {
        Some(query) => format!("/{rest}?{query}"),
        None => format!("/{rest}"),
    };
    parts.uri = target
        .parse()
        .map_err(|error| ApiError::bad_request(format!("bad path {target:?}: {error}")))?;
    parts.version = Version::HTTP_11;
    parts.extensions = http::Extensions::new();
    let host = parts.headers.get(http::header::HOST).cloned();
    strip_hop_by_hop(&mut parts.headers);
    if shared.keys.enabled() {
        parts.headers.remove(http::header::AUTHORIZATION);
    }
    if let Some(ip) = client_ip {
        if let Ok(value) = HeaderValue::from_str(&ip.to_string()) {
            parts.headers.append("x-forwarded-for", value);
        }
    }
    if let Some(host) = host.clone() {
        parts.headers.insert("x-forwarded-host", host);
    } else if let Ok(value) = HeaderValue::from_str(service) {
        parts.headers.insert(http::header::HOST, value);
    }
    if let Ok(value) = HeaderValue::from_str(&format!("/{service}")) {
        parts.headers.insert("x-forwarded-prefix", value);
    }
    check_head(&parts)?;
    let request = http::Request::from_parts(parts, Limited::new(body, limit));

    let timeout = shared.config.request_timeout;
    let response =
        match tokio::time::timeout(timeout, shared.node.http_client(service).send(request)).await {
            Ok(result) => result.map_err(|status| ApiError::from_tunnel(status, service))?,
            Err(_) => {
                return Err(ApiError::new(
                    Code::DeadlineExceeded,
                    format!("`{service}` did not answer within {timeout:?}"),
                ));
            }
        };
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let empty = http_body::Body::size_hint(&body).exact() == Some(0);
    if empty && (parts.status.is_client_error() || parts.status.is_server_error()) {
        return Ok(json_error(service, parts));
    }
    Ok(Response::from_parts(parts, axum::body::Body::new(body)))
}

/// 431 when the request head, as forwarded, is more than a member's server takes.
fn check_head(parts: &http::request::Parts) -> Result<(), ApiError> {
    let lines = parts.headers.len();
    if lines > MAX_FORWARDED_HEADERS {
        return Err(too_large_head(format!(
            "the request has {lines} header lines with the gateway's X-Forwarded-* ones, over \
             the limit of {MAX_FORWARDED_HEADERS}"
        )));
    }
    let target = parts
        .uri
        .path_and_query()
        .map_or(1, |target| target.as_str().len());
    let mut bytes = parts.method.as_str().len() + 1 + target + " HTTP/1.1\r\n\r\n".len();
    for (name, value) in &parts.headers {
        bytes += name.as_str().len() + 2 + value.len() + 2;
    }
    if bytes > MAX_FORWARDED_HEAD_BYTES {
        return Err(too_large_head(format!(
            "the request head is {bytes} bytes with the gateway's X-Forwarded-* headers, over \
             the limit of {MAX_FORWARDED_HEAD_BYTES}"
        )));
    }
    Ok(())
}

fn too_large_head(message: String) -> ApiError {
    ApiError::with_status(
        http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        Code::ResourceExhausted,
        message,
    )
}

/// The meshrpc code that fits an HTTP error status best.
fn code_of(status: http::StatusCode) -> Code {
    match status.as_u16() {
        400 | 422 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 | 410 => Code::NotFound,
        405 | 501 => Code::Unimplemented,
        408 | 504 => Code::DeadlineExceeded,
        409 => Code::Aborted,
        412 => Code::FailedPrecondition,
        413 | 429 | 431 => Code::ResourceExhausted,
        503 => Code::Unavailable,
        500..=599 => Code::Internal,
        _ => Code::FailedPrecondition,
    }
}

/// The gateway's JSON error for a bodiless error answer of `service`'s handlers.
fn json_error(service: &str, mut parts: http::response::Parts) -> Response {
    let status = parts.status;
    let message = match status {
        http::StatusCode::NOT_FOUND => format!("`{service}` has no HTTP handler for this path"),
        http::StatusCode::METHOD_NOT_ALLOWED => format!(
            "`{service}`'s HTTP handler for this path does not answer this method; the Allow \
             header lists those it answers"
        ),
        _ => format!("`{service}`'s HTTP handler answered {status} without saying why",),
    };
    let error = ApiError::with_status(status, code_of(status), message);
    let body = error.body();
    parts.headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("accept", HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut headers);
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["accept"]);
    }
}
