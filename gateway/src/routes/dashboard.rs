//! The dashboard's routes: `GET /dashboard`, the page (HTML, CSS and script inline, built into
//! the binary), and `GET /dashboard/state`, the JSON it polls every second (`?all=1` adds the
//! mesh's own `meshrpc.node` calls). Both want an API key when the gateway has keys.

use std::sync::Arc;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use crate::Shared;
use crate::dashboard::{PAGE, state};

/// What the page may do: run its own inline script and style, fetch from this origin; nothing
/// from elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
     frame-ancestors 'none'";

/// `GET /dashboard`: the page.
pub async fn page() -> Response {
    (
        [
            (http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (http::header::CACHE_CONTROL, "no-store"),
            (
                http::header::CONTENT_SECURITY_POLICY,
                CONTENT_SECURITY_POLICY,
            ),
        ],
        PAGE,
    )
        .into_response()
}

/// `GET /dashboard/state`: members, services and method numbers as JSON.
pub async fn state(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    let dashboard = shared.dashboard();
    dashboard.watch();
    // `all`, `all=1` or `all=true` anywhere in the query; anything else is ignored.
    let all = query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .any(|pair| matches!(pair, "all" | "all=" | "all=1" | "all=true"));
    let view = shared.node().view();
    let now = Instant::now();
    let body = dashboard.with_departed(|departed| {
        dashboard.with_history(|history| {
            state::build(shared.node().name(), &view, history, departed, now, all)
        })
    });
    ([(http::header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}
