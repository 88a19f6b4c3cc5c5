//! Optional API keys: when the gateway has keys, every route but `/healthz` and `/readyz`
//! wants `Authorization: Bearer <key>`; anything else is a 401
//! `{"error":"missing or invalid API key","code":"unauthenticated"}`.
//!
//! The dashboard (`/dashboard`, `/dashboard/state`) is protected the same way, and also takes
//! the key as the password of HTTP Basic authentication (any user name): a browser cannot send
//! a bearer token when it opens a page, but it asks for a password when the 401 offers
//! `Basic`, and sends it again with the page's own requests.
//!
//! Keys are compared in constant time (`subtle`), against every configured key without an
//! early exit, so the answer's timing tells nothing about how much of a key was right.

use std::sync::Arc;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use meshrpc::Code;
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// Paths that never need a key: probes must work without secrets.
const OPEN_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// Paths a browser opens: they take the key as a Basic password too.
const BROWSER_PATHS: [&str; 2] = ["/dashboard", "/dashboard/state"];

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

    /// Whether an `Authorization` header value is HTTP Basic with one of the keys as its
    /// password (the user name is not looked at).
    pub fn accepts_basic(&self, authorization: Option<&[u8]>) -> bool {
        let Some(password) = authorization.and_then(basic_password) else {
            return false;
        };
        self.accepts(Some(&[b"Bearer ", password.as_slice()].concat()))
    }
}

/// The password of `Basic <base64 of user:password>` (scheme case-insensitive).
fn basic_password(value: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let (scheme, encoded) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim_ascii())
        .ok()?;
    let colon = decoded.iter().position(|byte| *byte == b':')?;
    Some(decoded[colon + 1..].to_vec())
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

/// Lets a request with a valid key (or to an open path) through; anything else gets the 401
/// answer (boxed: the rare path), with `WWW-Authenticate` offering `Bearer` (and `Basic` on the
/// browser paths). A step of the gateway's middleware ([`crate::middleware`]).
pub fn require_key(keys: &ApiKeys, request: &Request) -> Result<(), Box<Response>> {
    if !keys.enabled() || OPEN_PATHS.contains(&request.uri().path()) {
        return Ok(());
    }
    let authorization = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(http::HeaderValue::as_bytes);
    let browser = BROWSER_PATHS.contains(&request.uri().path());
    if keys.accepts(authorization) || (browser && keys.accepts_basic(authorization)) {
        return Ok(());
    }
    let mut response =
        ApiError::new(Code::Unauthenticated, "missing or invalid API key").into_response();
    let headers = response.headers_mut();
    headers.insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer"),
    );
    if browser {
        headers.append(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static(
                r#"Basic realm="mesh-api dashboard: any user, the API key as password", charset="UTF-8""#,
            ),
        );
    }
    Err(Box::new(response))
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
    fn a_key_is_accepted_as_a_basic_password_with_any_user() {
        use base64::Engine as _;
        let basic = |credentials: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(credentials)
            )
        };
        let keys = ApiKeys::new(["alpha"]);
        assert!(keys.accepts_basic(Some(basic("operator:alpha").as_bytes())));
        assert!(keys.accepts_basic(Some(basic(":alpha").as_bytes())));
        assert!(!keys.accepts_basic(Some(basic("alpha:").as_bytes())));
        assert!(!keys.accepts_basic(Some(basic("operator:alph").as_bytes())));
        assert!(!keys.accepts_basic(Some(basic("alpha").as_bytes())));
        assert!(!keys.accepts_basic(Some(b"Basic !!!")));
        assert!(!keys.accepts_basic(Some(b"Bearer alpha")));
        // The bearer check does not take Basic.
        assert!(!keys.accepts(Some(basic("operator:alpha").as_bytes())));
    }

    #[test]
    fn blank_keys_do_not_enable_authentication() {
        let keys = ApiKeys::new(["", "  "]);
        assert!(!keys.enabled());
        assert!(!format!("{:?}", ApiKeys::new(["secret"])).contains("secret"));
    }
}
