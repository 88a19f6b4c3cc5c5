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
        match tokio::time::timeout(timeout, send_over_mesh(shared, service, request)).await {
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

/// Sends `request` to a live member serving `service`'s HTTP, round robin, skipping members
/// that cannot be reached before anything is sent.
///
/// This is `meshrpc::HttpClient::send` with one difference, a workaround until the runtime
/// fixes it: the node serving a tunnel drops whatever bytes arrived in the same read as the
/// tunnel's opening frame (`Server::serve_stream` hands stream handlers the frame but not the
/// rest of its read buffer), so an HTTP request written right behind the frame can vanish and
/// the exchange hangs. Waiting a moment after the frame lets it leave in a packet of its own.
async fn send_over_mesh(
    shared: &Shared,
    service: &str,
    request: http::Request<Limited<axum::body::Body>>,
) -> Result<http::Response<hyper::body::Incoming>, meshrpc::Status> {
    use meshrpc::membership::Liveness;
    use meshrpc::wire::{FrameKind, HttpHeader, encode_frame};

    let view = shared.node.view();
    let members: Vec<SocketAddr> = view
        .serving_http(service)
        .filter(|member| member.liveness == Liveness::Alive && member.accepts_calls())
        .map(|member| member.id.addr)
        .collect();
    if members.is_empty() {
        return Err(meshrpc::Status::refused(
            Code::Unavailable,
            format!("no live member serves HTTP for `{service}`"),
        ));
    }
    let header = rmp_serde::to_vec_named(&HttpHeader {
        service: service.to_owned(),
    })
    .map_err(|error| meshrpc::Status::internal(error.to_string()))?;
    let mut frame = bytes::BytesMut::new();
    encode_frame(FrameKind::Http, &header, &mut frame);
    let frame = frame.freeze();

    let first = shared
        .legacy_turn
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut last = None;
    for attempt in 0..members.len().min(3) {
        let addr = members[(first + attempt) % members.len()];
        let connection = match shared.node.connections().get(addr).await {
            Ok(connection) => connection,
            Err(status) => {
                last = Some(status);
                continue;
            }
        };
        let (mut send, recv) = match connection.open_bi().await {
            Ok(streams) => streams,
            Err(error) => {
                last = Some(meshrpc::Status::refused(
                    Code::Unavailable,
                    format!("cannot open a stream to {addr}: {error}"),
                ));
                continue;
            }
        };
        if let Err(error) = send.write_chunk(frame.clone()).await {
            last = Some(meshrpc::Status::refused(
                Code::Unavailable,
                format!("cannot write to {addr}: {error}"),
            ));
            continue;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        let io = hyper_util::rt::TokioIo::new(tokio::io::join(recv, send));
        let (mut sender, tunnel) =
            hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|error| {
                    meshrpc::Status::unavailable(format!("HTTP tunnel failed: {error}"))
                })?;
        tokio::spawn(async move {
            if let Err(error) = tunnel.await {
                tracing::debug!(%error, "HTTP tunnel ended with an error");
            }
        });
        return sender.send_request(request).await.map_err(|error| {
            meshrpc::Status::unavailable(format!("HTTP request over the mesh failed: {error}"))
        });
    }
    Err(last.unwrap_or_else(|| meshrpc::Status::unavailable("no attempt was made")))
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
