//! The one error shape every gateway route answers with:
//! `{"error":"<message>","code":"<status name>"}` (plus `"details"` when the service attached
//! some), with the HTTP status that the meshrpc [`Code`] maps to (`Code::http_status`), so
//! callers can tell their own mistakes (4xx) from the mesh's (503, 504) and the handler's (500).
//!
//! A service's `Status::with_details` bytes travel as `"details"`: a base64 string of the bytes
//! as the service sent them (they are opaque to the gateway; a service that sends MessagePack
//! documents its shape itself).
//!
//! Outside callers never see mesh addresses: a status that the mesh transport made about the
//! replica it tried (its message names that replica's address, [`Status::peer`]) is answered
//! with the address replaced by "a replica of `<service>`", and the whole message, address
//! included, goes to the log. A handler's own message passes as it is.

use std::net::SocketAddr;

use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::StatusCode;
use meshrpc::{Code, Status};
use serde::Serialize;

/// A failed request, as the gateway answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The status name (`invalid_argument`, `unavailable`, …).
    pub code: &'static str,
    /// What went wrong, for a human.
    pub message: String,
    /// The service's machine-readable details, base64.
    pub details: Option<String>,
    /// Seconds after which a retry may succeed (`Retry-After`), for 503s the gateway sheds.
    pub retry_after: Option<u32>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a str>,
}

impl ApiError {
    /// An error with this meshrpc code, answered with the code's HTTP status.
    pub fn new(code: Code, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::from_u16(code.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: code.as_str(),
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    /// An error with an HTTP status of its own and the meshrpc code that fits it best.
    pub fn with_status(status: StatusCode, code: Code, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            ..ApiError::new(code, message)
        }
    }

    /// The error for a status a call through the mesh to `service` ended with. A message that
    /// names the replica's mesh address (a transport failure about that replica) is answered
    /// without it, and logged with it.
    pub fn from_call(status: Status, service: &str) -> ApiError {
        let message = match status.peer() {
            Some(peer) => redact_addr(status.message(), peer, service),
            None => None,
        };
        match message {
            Some(message) => {
                tracing::warn!(
                    service,
                    peer = ?status.peer(),
                    code = status.code().as_str(),
                    message = status.message(),
                    "a call through the mesh failed"
                );
                ApiError {
                    message,
                    ..ApiError::from(status)
                }
            }
            None => ApiError::from(status),
        }
    }

    /// The error for a status that a legacy HTTP request to `service` ended with. Such a
    /// status always comes from the mesh (a handler's own failures are HTTP answers), so every
    /// socket address in it is replaced, and the whole message is logged.
    pub fn from_tunnel(status: Status, service: &str) -> ApiError {
        match redact_any_addr(status.message(), service) {
            Some(message) => {
                tracing::warn!(
                    service,
                    code = status.code().as_str(),
                    message = status.message(),
                    "a legacy HTTP request through the mesh failed"
                );
                ApiError {
                    message,
                    ..ApiError::from(status)
                }
            }
            None => ApiError::from(status),
        }
    }

    /// This error with every socket address in its message replaced (the whole message goes to
    /// the log): for errors the gateway composed from what members answered it, such as a
    /// failed descriptor fetch.
    pub fn without_addresses(self, service: &str) -> ApiError {
        match redact_any_addr(&self.message, service) {
            Some(message) => {
                tracing::warn!(service, message = %self.message, "a request to the mesh failed");
                ApiError { message, ..self }
            }
            None => self,
        }
    }

    /// 503 `unavailable` with `Retry-After`: the gateway is at a limit of its own.
    pub fn overloaded(message: impl Into<String>, retry_after: u32) -> ApiError {
        ApiError {
            retry_after: Some(retry_after),
            ..ApiError::unavailable(message)
        }
    }

    /// 400: the request was wrong.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(Code::InvalidArgument, message)
    }

    /// 404: no such service, method or handler.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(Code::NotFound, message)
    }

    /// 503: nobody can serve it right now.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(Code::Unavailable, message)
    }

    /// 413: the body is over the limit.
    pub fn too_large(limit: usize) -> ApiError {
        ApiError::with_status(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::ResourceExhausted,
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    }

    /// 408: the request body did not arrive in time.
    pub fn body_timeout(timeout: std::time::Duration) -> ApiError {
        ApiError::with_status(
            StatusCode::REQUEST_TIMEOUT,
            Code::DeadlineExceeded,
            format!("the request body did not arrive within {timeout:?}"),
        )
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        serde_json::to_string(&Body {
            error: &self.message,
            code: self.code,
            details: self.details.as_deref(),
        })
        .unwrap_or_else(|_| String::from(r#"{"error":"","code":"internal"}"#))
    }
}

impl From<Status> for ApiError {
    /// The status as it is: for statuses the gateway made itself or a handler sent. Statuses
    /// of calls through the mesh go through [`ApiError::from_call`].
    fn from(status: Status) -> ApiError {
        ApiError {
            details: status.details().map(|details| BASE64.encode(details)),
            ..ApiError::new(status.code(), status.message())
        }
    }
}

/// `message` with every mention of `peer` replaced, or `None` when it does not mention it.
fn redact_addr(message: &str, peer: SocketAddr, service: &str) -> Option<String> {
    let addr = peer.to_string();
    message
        .contains(&addr)
        .then(|| message.replace(&addr, &format!("a replica of `{service}`")))
}

/// `message` with every word that is a socket address replaced, or `None` when it has none.
fn redact_any_addr(message: &str, service: &str) -> Option<String> {
    let mut found = false;
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while !rest.is_empty() {
        let start = rest.len() - rest.trim_start().len();
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let word = &rest[..end];
        // Trailing punctuation is not part of an address: `127.0.0.1:9:` or `…:9,`.
        let core = word.trim_end_matches([':', ',', ';', '.', ')', '\'', '"', '`']);
        let core = core.trim_start_matches(['(', '\'', '"', '`']);
        if core.parse::<SocketAddr>().is_ok() {
            found = true;
            out.push_str(&word.replacen(core, &format!("a replica of `{service}`"), 1));
        } else {
            out.push_str(word);
        }
        rest = &rest[end..];
    }
    found.then_some(out)
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.code, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(http::header::CONTENT_TYPE, "application/json")],
            self.body(),
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_keeps_its_code_and_message_and_maps_to_its_http_status() {
        let error = ApiError::from(Status::deadline_exceeded("too slow"));
        assert_eq!(error.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            error.body(),
            r#"{"error":"too slow","code":"deadline_exceeded"}"#
        );
    }

    #[test]
    fn details_travel_as_base64() {
        let error = ApiError::from(
            Status::failed_precondition("out of stock").with_details(&b"\x81\xa3sku\x07"[..]),
        );
        assert_eq!(
            error.body(),
            r#"{"error":"out of stock","code":"failed_precondition","details":"gaNza3UH"}"#
        );
    }

    #[test]
    fn a_transport_message_about_the_replica_loses_its_address() {
        let peer: SocketAddr = "127.0.0.1:55046".parse().expect("addr");
        let status = Status::unavailable("the connection to 127.0.0.1:55046 was lost: closed")
            .with_peer(peer);
        let error = ApiError::from_call(status, "greeter");
        assert_eq!(
            error.message,
            "the connection to a replica of `greeter` was lost: closed"
        );
        assert_eq!(error.code, "unavailable");
        // A handler's message that does not name the replica passes as it is.
        let status = Status::unavailable("the stock database at db:5432 is down").with_peer(peer);
        let error = ApiError::from_call(status, "greeter");
        assert_eq!(error.message, "the stock database at db:5432 is down");
    }

    #[test]
    fn a_tunnel_message_loses_every_address() {
        let status = Status::unavailable("cannot open a stream to [::1]:7001: closed");
        let error = ApiError::from_tunnel(status, "greeter");
        assert_eq!(
            error.message,
            "cannot open a stream to a replica of `greeter`: closed"
        );
        let status = Status::unavailable("no live member serves HTTP for `greeter`");
        let error = ApiError::from_tunnel(status, "greeter");
        assert_eq!(error.message, "no live member serves HTTP for `greeter`");
        let error = ApiError::unavailable(
            "could not learn the methods of `greeter` from its members (10.1.2.3:11999: closed)",
        )
        .without_addresses("greeter");
        assert_eq!(
            error.message,
            "could not learn the methods of `greeter` from its members (a replica of `greeter`: closed)"
        );
    }

    #[test]
    fn an_oversize_body_is_a_413_that_names_the_limit() {
        let error = ApiError::too_large(1024);
        assert_eq!(error.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(error.message.contains("1024 bytes"), "{error}");
    }
}
