//! Optional API keys: when the gateway has keys, every route but `/healthz` and `/readyz`
//! wants `Authorization: Bearer <key>`; anything else is a 401
//! `{"error":"missing or invalid API key","code":"unauthenticated"}`.
//!
//! Keys are compared in constant time (`subtle`), against every configured key without an
//! early exit, so the answer's timing tells nothing about how much of a key was right.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use meshrpc::Code;
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// Paths that never need a key: probes must work without secrets.
const OPEN_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// The configured keys; empty means no authentication.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Arc<Vec<Vec<u8>>>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the keys themselves.
        f.debug_struct("ApiKeys")
            .field("count", &self.keys.len())
            .finish()
    }
}

impl ApiKeys {
    /// These keys; blank entries are ignored.
    pub fn new<I, S>(keys: I) -> ApiKeys
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        ApiKeys {
            keys: Arc::new(
                keys.into_iter()
                    .map(|key| key.as_ref().trim().as_bytes().to_vec())
                    .filter(|key| !key.is_empty())
                    .collect(),
            ),
        }
    }

    /// Whether any key is configured.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Whether an `Authorization` header value carries one of the keys.
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some(presented) = authorization.and_then(bearer_token) else {
            return false;
        };
        let mut matched = subtle::Choice::from(0);
        for key in self.keys.iter() {
            // `ct_eq` on slices of different lengths is false without looking at contents.
            matched |= key.as_slice().ct_eq(presented);
        }
        matched.into()
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = token.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// The middleware: lets requests with a valid key (or to an open path) through.
pub async fn require_key(State(keys): State<ApiKeys>, request: Request, next: Next) -> Response {
    if !keys.enabled() || OPEN_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let authorization = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(http::HeaderValue::as_bytes);
    if keys.accepts(authorization) {
        next.run(request).await
    } else {
        let mut response =
            ApiError::new(Code::Unauthenticated, "missing or invalid API key").into_response();
        response.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_key_is_accepted_as_a_bearer_token() {
        let keys = ApiKeys::new(["alpha", "beta"]);
        assert!(keys.accepts(Some(b"Bearer beta")));
        assert!(keys.accepts(Some(b"bearer alpha")));
    }

    #[test]
    fn wrong_missing_or_partial_keys_are_refused() {
        let keys = ApiKeys::new(["alpha"]);
        assert!(!keys.accepts(None));
        assert!(!keys.accepts(Some(b"Bearer alph")));
        assert!(!keys.accepts(Some(b"Bearer alphaa")));
        assert!(!keys.accepts(Some(b"Basic alpha")));
        assert!(!keys.accepts(Some(b"alpha")));
        assert!(!keys.accepts(Some(b"Bearer ")));
    }

    #[test]
    fn blank_keys_do_not_enable_authentication() {
        let keys = ApiKeys::new(["", "  "]);
        assert!(!keys.enabled());
        assert!(!format!("{:?}", ApiKeys::new(["secret"])).contains("secret"));
    }
}
