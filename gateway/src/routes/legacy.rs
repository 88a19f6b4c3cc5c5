//! The legacy HTTP handlers services publish, under `/{service}/...`: the request is forwarded
//! over the mesh (`Node::http_client`, balanced over the members that serve the service's
//! HTTP) with the service prefix removed — `GET /greeter/check` reaches the greeter's
//! `GET /check` — keeping the query, the headers (less hop-by-hop ones) and a streaming body
//! both ways. The gateway adds `X-Forwarded-For`, `X-Forwarded-Host` and `X-Forwarded-Prefix`.
//! When API keys are on, the gateway's `Authorization` header is not passed on.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use http::{HeaderMap, HeaderName, HeaderValue, Version};
use http_body_util::Limited;
use meshrpc::Code;

use crate::Shared;
use crate::error::ApiError;

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
    let request = http::Request::from_parts(parts, Limited::new(body, limit));

    let timeout = shared.config.request_timeout;
    let response =
        match tokio::time::timeout(timeout, shared.node.http_client(service).send(request)).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(ApiError::new(
                    Code::DeadlineExceeded,
                    format!("`{service}` did not answer within {timeout:?}"),
                ));
            }
        };
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, axum::body::Body::new(body)))
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
