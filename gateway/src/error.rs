//! The one error shape every gateway route answers with:
//! `{"error":"<message>","code":"<status name>"}`, with the HTTP status that the meshrpc
//! [`Code`] maps to (`Code::http_status`), so callers can tell their own mistakes (4xx) from
//! the mesh's (503, 504) and the handler's (500).

use axum::response::{IntoResponse, Response};
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
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    code: &'a str,
}

impl ApiError {
    /// An error with this meshrpc code, answered with the code's HTTP status.
    pub fn new(code: Code, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::from_u16(code.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: code.as_str(),
            message: message.into(),
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
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: Code::ResourceExhausted.as_str(),
            message: format!("the request body is larger than the limit of {limit} bytes"),
        }
    }

    /// 408: the request body did not arrive in time.
    pub fn body_timeout(timeout: std::time::Duration) -> ApiError {
        ApiError {
            status: StatusCode::REQUEST_TIMEOUT,
            code: Code::DeadlineExceeded.as_str(),
            message: format!("the request body did not arrive within {timeout:?}"),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        serde_json::to_string(&Body {
            error: &self.message,
            code: self.code,
        })
        .unwrap_or_else(|_| String::from(r#"{"error":"","code":"internal"}"#))
    }
}

impl From<Status> for ApiError {
    fn from(status: Status) -> ApiError {
        ApiError::new(status.code(), status.message())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.code, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            [(http::header::CONTENT_TYPE, "application/json")],
            self.body(),
        )
            .into_response()
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
    fn an_oversize_body_is_a_413_that_names_the_limit() {
        let error = ApiError::too_large(1024);
        assert_eq!(error.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(error.message.contains("1024 bytes"), "{error}");
    }
}
