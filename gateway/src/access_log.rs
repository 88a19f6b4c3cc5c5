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

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;

use crate::stream_end::StreamEnd;

/// The middleware.
pub async fn log(request: Request, next: Next) -> Response {
    // Silenced (`mesh_api::access=off`): nothing to keep for a line nobody prints.
    if !tracing::enabled!(target: "mesh_api::access", tracing::Level::INFO) {
        let mut response = next.run(request).await;
        response.extensions_mut().remove::<StreamEnd>();
        return response;
    }
    let started = Instant::now();
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut response = next.run(request).await;
    let status = response.status().as_u16();
    let emit = move || {
        let client = client.map_or_else(|| "-".to_owned(), |ip| ip.to_string());
        tracing::info!(
            target: "mesh_api::access",
            "{}",
            line(status, started.elapsed(), &client, method.as_str(), &path)
        );
    };
    // The outermost middleware that waits for the end: the response no longer carries it, so
    // the end comes with the stream's last holder.
    match response.extensions_mut().remove::<StreamEnd>() {
        Some(end) => end.defer(emit),
        None => emit(),
    }
    response
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
