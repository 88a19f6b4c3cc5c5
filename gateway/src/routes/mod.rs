//! Routing under `/{service}/...`: the explicit routes come first (axum matches static
//! segments before parameters), then, for everything else under a service's name,
//!
//! 1. `/{service}/{method}` when the method is in the service's descriptor belongs to the
//!    method: `POST` is a generic call ([`generic`]; a streaming method's goes on to
//!    [`server_stream`] or [`client_stream`]), `GET` (and `HEAD`) with query parameters too
//!    when the method is idempotent, takes no stream and its parameters are scalars, `GET` is
//!    the WebSocket of a bidirectional method ([`bidi`], which takes no `POST`), and any other
//!    method is a 405 with `Allow`;
//! 2. otherwise, when a live member serves legacy HTTP for the service: the request is
//!    forwarded to it ([`legacy`]) (a POST that looks like a call to an unknown method and
//!    that the legacy handlers answer with 404 gets the list of methods instead);
//! 3. otherwise an answer that says why: 404 naming the unknown service (with the known ones)
//!    or method (with the service's methods), 503 naming a known service that nobody serves
//!    right now.
//!
//! Paths are normalised before routing: runs of `/` count as one (`/greeter//check` is
//! `/greeter/check`, as `//greeter/check` is).

pub mod bidi;
pub mod client_stream;
pub mod dashboard;
pub mod generic;
pub mod legacy;
pub mod ops;
pub mod server_stream;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::Method;
use meshrpc::MethodKind;

use crate::Shared;
use crate::descriptors::DescriptorExt;
use crate::descriptors::serves_http_live;
use crate::error::ApiError;
use crate::metrics::KnownService;

/// `/{service}/{*rest}` with any method.
pub async fn dispatch(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    // The raw path, not axum's decoded parameters: a legacy handler must see `%2F` as sent.
    let path = request.uri().path().to_owned();
    let (service, rest) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path.trim_start_matches('/'), ""));
    let known = shared.descriptors.knows(service)
        || shared.config.require.iter().any(|name| name == service);
    let mut response = match route(&shared, service, rest, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    if known {
        response
            .extensions_mut()
            .insert(KnownService(service.to_owned()));
    }
    response
}

async fn route(
    shared: &Arc<Shared>,
    service: &str,
    rest: &str,
    request: Request,
) -> Result<Response, ApiError> {
    let view = shared.node.view();
    shared.descriptors.observe(&view);
    let method_name = (!rest.is_empty() && !rest.contains('/')).then_some(rest);
    let is_call = request.method() == Method::POST && method_name.is_some();
    let mut descriptor = None;
    let mut lookup_error = None;
    if let Some(name) = method_name {
        if shared.descriptors.knows_rpc(service) {
            match shared.descriptors.for_service(service).await {
                Ok(Some(found)) => {
                    if let Some(method) = found.method(name) {
                        let get_form = generic::has_get_form(method);
                        let websocket = method.kind == MethodKind::Bidirectional;
                        return match *request.method() {
                            Method::POST if !websocket => {
                                generic::call(shared, found, name, request).await
                            }
                            Method::GET if websocket => {
                                generic::call(shared, found, name, request).await
                            }
                            Method::GET | Method::HEAD if get_form => {
                                generic::call(shared, found, name, request).await
                            }
                            _ => Ok(method_not_allowed_here(
                                request.method(),
                                &format!("/{service}/{name}"),
                                if websocket {
                                    "GET"
                                } else if get_form {
                                    "GET, HEAD, POST"
                                } else {
                                    "POST"
                                },
                            )),
                        };
                    }
                    if is_call {
                        descriptor = Some(found);
                    }
                }
                Ok(None) => {}
                Err(error) if is_call => lookup_error = Some(error.without_addresses(service)),
                Err(_) => {}
            }
        }
    }
    if serves_http_live(&view, service) {
        let response = legacy::forward(shared, service, rest, request).await?;
        // A POST that looked like a call and that the legacy handlers do not know either:
        // name the methods rather than pass on a bare 404.
        if let (Some(descriptor), Some(name), true) = (
            &descriptor,
            method_name,
            response.status() == http::StatusCode::NOT_FOUND,
        ) {
            return Err(ApiError::not_found(format!(
                "service `{service}` has no method `{name}`; its methods are: {}",
                descriptor.routes()
            )));
        }
        return Ok(response);
    }
    if let Some(error) = lookup_error {
        return Err(error);
    }
    if let (Some(descriptor), Some(name)) = (&descriptor, method_name) {
        return Err(ApiError::not_found(format!(
            "service `{service}` has no method `{name}`; its methods are: {}",
            descriptor.routes()
        )));
    }
    if shared.descriptors.knows_http(service) {
        return Err(ApiError::unavailable(format!(
            "no live member serves HTTP for `{service}`"
        )));
    }
    if shared.descriptors.knows_rpc(service) {
        if !view.has_live(service, None) {
            return Err(ApiError::unavailable(format!(
                "no live member publishes `{service}`"
            )));
        }
        let routes = match shared.descriptors.for_service(service).await {
            Ok(Some(descriptor)) => descriptor.routes(),
            _ => format!("POST /{service}/<method>"),
        };
        return Err(ApiError::not_found(format!(
            "`{service}` has no route {} /{service}/{rest} and serves no legacy HTTP; \
             its methods are: {routes}",
            request.method()
        )));
    }
    if shared.config.require.iter().any(|name| name == service) {
        return Err(ApiError::unavailable(format!(
            "no live member publishes `{service}`"
        )));
    }
    Err(unknown_service(shared, service))
}

fn unknown_service(shared: &Shared, service: &str) -> ApiError {
    let known = shared.descriptors.known_services();
    let known = if known.is_empty() {
        "none yet".to_owned()
    } else {
        known
            .iter()
            .map(|name| format!("`{name}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    ApiError::not_found(format!(
        "unknown service `{service}`; known services: {known}"
    ))
}

/// A 405 for `method` on `path`, which answers the `allow`ed methods.
fn method_not_allowed_here(method: &Method, path: &str, allow: &'static str) -> Response {
    let mut response = ApiError::with_status(
        http::StatusCode::METHOD_NOT_ALLOWED,
        meshrpc::Code::Unimplemented,
        format!("{path} does not answer {method}; it answers {allow}"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
    response
}

/// A route that exists, asked with a method it does not answer: 405, JSON (the router adds
/// `Allow`).
pub async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::with_status(
        http::StatusCode::METHOD_NOT_ALLOWED,
        meshrpc::Code::Unimplemented,
        format!(
            "{} does not answer {}; the Allow header lists the methods it answers",
            request.uri().path(),
            request.method()
        ),
    )
}

/// Collapses runs of `/` in the request's path into one, so every spelling of a path reaches
/// the same route. Allocates only for paths that have such a run.
pub fn normalize_path<B>(request: &mut http::Request<B>) {
    let path = request.uri().path();
    if !path.contains("//") {
        return;
    }
    let mut collapsed = String::with_capacity(path.len());
    for character in path.chars() {
        if !(character == '/' && collapsed.ends_with('/')) {
            collapsed.push(character);
        }
    }
    if let Some(query) = request.uri().query() {
        collapsed.push('?');
        collapsed.push_str(query);
    }
    let mut parts = request.uri().clone().into_parts();
    match collapsed.parse() {
        Ok(path_and_query) => parts.path_and_query = Some(path_and_query),
        // Cannot happen (the characters were a valid path before), and then the request is
        // routed as sent.
        Err(_) => return,
    }
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
}

/// Anything no route matched.
pub async fn not_found(State(shared): State<Arc<Shared>>, request: Request) -> ApiError {
    let path = request.uri().path();
    let service = path.trim_start_matches('/');
    if !service.is_empty() && !service.contains('/') {
        if shared.descriptors.knows(service) {
            return ApiError::not_found(format!(
                "`{service}` is a service: call its methods as POST /{service}/<method> \
                 (see /openapi.json)"
            ));
        }
        return unknown_service(&shared, service);
    }
    ApiError::not_found(format!(
        "no route for {} {path}; methods are served as POST /<service>/<method> \
         (see /openapi.json)",
        request.method()
    ))
}
