//! Admission: a bound on what the gateway holds at once, so no number of clients can take its
//! memory. Two budgets, both taken before a request is read and given back when its answer
//! is ready:
//!
//! - **requests in flight** (`--max-in-flight`): every request but the probes and `/metrics`
//!   takes one;
//! - **body bytes** (`--max-buffered`): a request with a body reserves its `Content-Length`
//!   (or `--max-body` when it sends no length), capped at `--max-body`.
//!
//! A streamed answer ([`crate::stream_end`]: a server stream, a client stream, a WebSocket)
//! holds its request until the stream ends, and its reservation too; a client stream's body is
//! read line by line, so it holds at most one line of it at a time.
//!
//! A request past either is answered at once with 503 `unavailable` and `Retry-After: 1`,
//! without reading its body. Memory then scales with the budgets, not with clients: a generic
//! call holds its JSON body, the MessagePack request, the reply and the JSON answer (about four
//! times its body size at its peak), so buffered bodies cost at most about four times
//! `--max-buffered`, and small requests a few KiB each.

use std::sync::Arc;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;
use crate::stream_end::StreamEnd;

/// Paths never shed: probes must answer under load, and `/metrics` shows the load.
const EXEMPT_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Seconds a shed client is told to wait.
pub const RETRY_AFTER_SECS: u32 = 1;

/// The two budgets.
#[derive(Debug, Clone)]
pub struct Admission {
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_in_flight: usize,
    max_buffered: usize,
    max_body: usize,
}

impl Admission {
    /// Budgets of `max_in_flight` requests and `max_buffered` body bytes, for bodies of at most
    /// `max_body` bytes.
    pub fn new(max_in_flight: usize, max_buffered: usize, max_body: usize) -> Admission {
        let max_in_flight = max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        // Permits are taken in u32 units; more than 4 GiB of buffers is not a budget anyway.
        let max_buffered = max_buffered.clamp(1, u32::MAX as usize);
        Admission {
            requests: Arc::new(Semaphore::new(max_in_flight)),
            bytes: Arc::new(Semaphore::new(max_buffered)),
            max_in_flight,
            max_buffered,
            max_body,
        }
    }

    /// Requests in flight now (the exempt ones aside).
    pub fn in_flight(&self) -> usize {
        self.max_in_flight
            .saturating_sub(self.requests.available_permits())
    }

    /// Body bytes reserved now.
    pub fn buffered(&self) -> usize {
        self.max_buffered
            .saturating_sub(self.bytes.available_permits())
    }

    /// The bytes a request reserves: its declared length, or the body limit when it streams a
    /// body of unknown length, capped at the body limit and at the whole budget.
    fn reservation(&self, headers: &http::HeaderMap) -> u32 {
        let declared = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        let bytes = match declared {
            Some(length) => length.min(self.max_body as u64),
            None if headers.contains_key(http::header::TRANSFER_ENCODING) => self.max_body as u64,
            None => 0,
        };
        bytes.min(self.max_buffered as u64) as u32
    }
}

/// What an admitted request holds: its share of both budgets, given back when it is dropped.
#[derive(Debug)]
pub struct Admitted {
    _request: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

impl Admitted {
    /// Gives the budgets back when `response` is done: at once for a plain answer, when its
    /// stream ends for a streamed one.
    pub fn release_with(self, response: &Response) {
        if let Some(end) = response.extensions().get::<StreamEnd>() {
            end.defer(move || drop(self));
        }
    }
}

impl Admission {
    /// Takes `request`'s share of the budgets: `Ok(None)` for an exempt path, the 503 answer
    /// when either budget is spent (boxed: the rare path). A step of the gateway's middleware
    /// ([`crate::middleware`]).
    pub fn admit(&self, request: &Request) -> Result<Option<Admitted>, Box<Response>> {
        if EXEMPT_PATHS.contains(&request.uri().path()) {
            return Ok(None);
        }
        let Ok(permit) = self.requests.clone().try_acquire_owned() else {
            return Err(ApiError::overloaded(
                format!(
                    "the gateway is at its limit of {} requests in flight; retry shortly",
                    self.max_in_flight
                ),
                RETRY_AFTER_SECS,
            )
            .into_response()
            .into());
        };
        let bytes = self.reservation(request.headers());
        let bytes = if bytes == 0 {
            None
        } else {
            match self.bytes.clone().try_acquire_many_owned(bytes) {
                Ok(permit) => Some(permit),
                Err(_) => {
                    return Err(ApiError::overloaded(
                        format!(
                            "the gateway is at its limit of {} buffered body bytes; retry shortly",
                            self.max_buffered
                        ),
                        RETRY_AFTER_SECS,
                    )
                    .into_response()
                    .into());
                }
            }
        };
        Ok(Some(Admitted {
            _request: permit,
            _bytes: bytes,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_reserves_its_declared_length_capped_at_the_body_limit() {
        let admission = Admission::new(8, 10_000, 4096);
        let mut headers = http::HeaderMap::new();
        assert_eq!(admission.reservation(&headers), 0);
        headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(100));
        assert_eq!(admission.reservation(&headers), 100);
        headers.insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from(1 << 30),
        );
        assert_eq!(admission.reservation(&headers), 4096);
        headers.remove(http::header::CONTENT_LENGTH);
        headers.insert(
            http::header::TRANSFER_ENCODING,
            http::HeaderValue::from_static("chunked"),
        );
        assert_eq!(admission.reservation(&headers), 4096);
    }
}
