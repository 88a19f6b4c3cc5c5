//! One access-log line per request, as the original gateway printed with GIN:
//!
//! ```text
//! [GATEWAY] 200 |     2.24422ms |       127.0.0.1 | GET      /greeter/greet/Max
//! ```
//!
//! Emitted through `tracing` (target `mesh_api::access`) when the response head is ready, or,
//! for a streamed answer ([`crate::stream_end`]), when the stream ends (the latency is then the
//! stream's whole life), so `RUST_LOG=mesh_api::access=off` silences it and JSON subscribers
//! can pick it up.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use axum::extract::{ConnectInfo, Request};
use axum::response::Response;

use crate::stream_end::StreamEnd;

/// What a request's line needs from the request, taken as it arrives.
#[derive(Debug)]
pub struct Entry {
    started: Instant,
    client: Option<IpAddr>,
    method: http::Method,
    path: String,
}

impl Entry {
    /// The entry for `request`, which arrived at `started`; `None` when the log is silenced
    /// (`mesh_api::access=off`): nothing is kept for a line nobody prints.
    pub fn begin(request: &Request, started: Instant) -> Option<Entry> {
        if !tracing::enabled!(target: "mesh_api::access", tracing::Level::INFO) {
            return None;
        }
        Some(Entry {
            started,
            client: request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0.ip()),
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
        })
    }

    fn emit(self, status: u16) {
        let client = self
            .client
            .map_or_else(|| "-".to_owned(), |ip| ip.to_string());
        tracing::info!(
            target: "mesh_api::access",
            "{}",
            line(
                status,
                self.started.elapsed(),
                &client,
                self.method.as_str(),
                &self.path
            )
        );
    }
}

/// Logs `response`'s line now, or when its stream ends. The outermost step of the gateway's
/// middleware ([`crate::middleware`]) that waits for a stream's end: it takes the
/// [`StreamEnd`] out of the response, so the end comes with the stream's last holder.
pub fn finish(entry: Option<Entry>, response: &mut Response) {
    let end = response.extensions_mut().remove::<StreamEnd>();
    let Some(entry) = entry else {
        return;
    };
    let status = response.status().as_u16();
    match end {
        Some(end) => end.defer(move || entry.emit(status)),
        None => entry.emit(status),
    }
}

/// The log line, GIN's layout.
pub fn line(
    status: u16,
    latency: std::time::Duration,
    client: &str,
    method: &str,
    path: &str,
) -> String {
    format!(
        "[GATEWAY] {status} | {:>13} | {client:>15} | {method:<8} {path}",
        format!("{latency:?}")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_has_status_latency_client_method_and_path_in_gin_columns() {
        let line = line(
            200,
            std::time::Duration::from_micros(2244),
            "127.0.0.1",
            "GET",
            "/greeter/greet/Max",
        );
        assert_eq!(
            line,
            "[GATEWAY] 200 |       2.244ms |       127.0.0.1 | GET      /greeter/greet/Max"
        );
    }
}
