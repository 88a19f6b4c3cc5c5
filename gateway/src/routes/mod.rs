//! Routing under `/{service}/...`: the explicit routes come first (axum matches static
//! segments before parameters), then, for everything else under a service's name,
//!
//! 1. `POST /{service}/{method}` when the method is in the service's descriptor: a generic
//!    call ([`generic`]);
//! 2. otherwise, when a live member serves legacy HTTP for the service: the request is
//!    forwarded to it ([`legacy`]) (a POST that looks like a call to an unknown method and
//!    that the legacy handlers answer with 404 gets the list of methods instead);
//! 3. otherwise an answer that says why: 404 naming the unknown service (with the known ones)
//!    or method (with the service's methods), 503 naming a known service that nobody serves
//!    right now.

pub mod generic;
pub mod greeter;
pub mod legacy;
pub mod ops;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::Method;

use crate::Shared;
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
    let known = shared.descriptors.knows_rpc(service)
        || shared.descriptors.knows_http(service)
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
    if let (true, Some(name)) = (is_call, method_name) {
        if shared.descriptors.knows_rpc(service) {
            match shared.descriptors.for_service(service).await {
                Ok(Some(found)) => {
                    if found.method(name).is_some() {
                        return generic::call(shared, found, name, request).await;
                    }
                    descriptor = Some(found);
                }
                Ok(None) => {}
                Err(error) => lookup_error = Some(error),
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

/// Anything no route matched.
pub async fn not_found(State(shared): State<Arc<Shared>>, request: Request) -> ApiError {
    let path = request.uri().path();
    let service = path.trim_start_matches('/');
    if !service.is_empty() && !service.contains('/') {
        if shared.descriptors.knows_rpc(service) || shared.descriptors.knows_http(service) {
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
