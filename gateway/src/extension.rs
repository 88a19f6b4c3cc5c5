//! Routes a gateway binary adds beside the generic ones: a service's hand-written REST routes,
//! for instance (the `mesh-api` binary mounts the greeter's, `greeter::rest`). The gateway
//! library knows no service; a binary passes its extensions to [`crate::serve_with`].
//!
//! An extension is a plain axum [`Router`] built from an [`ExtensionContext`] (the gateway's
//! node and its request timeout), with the service's [`ServiceSpec`] so its routes answer 503,
//! not 404, before any replica has joined, and optionally their OpenAPI description
//! ([`Extension::with_openapi`]). Its routes go through the gateway's middleware (API
//! keys, admission, metrics, access log, tracing) and get the gateway's 405 answer for methods
//! they do not serve. A handler answers a failed mesh call by putting the call's
//! [`Status`] in its response's extensions: the gateway then answers with its own error shape
//! for that status (`{"error":...,"code":...}`, mesh addresses left out).

use std::fmt;
use std::time::Duration;

use axum::Router;
use axum::response::{IntoResponse, Response};
use meshrpc::{CallOptions, Node, ServiceSpec, Status};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Builds an extension's routes.
type BuildRoutes = Box<dyn Fn(&ExtensionContext) -> Router + Send + Sync>;

/// Adds an extension's routes to the OpenAPI document's `paths` (and may refine the
/// `components/schemas` that its service's descriptor brought).
type DocumentRoutes = Box<dyn Fn(&mut Map<String, Value>, &mut Map<String, Value>) + Send + Sync>;

/// Routes for one service, mounted by [`crate::serve_with`].
pub struct Extension {
    spec: &'static ServiceSpec,
    build: BuildRoutes,
    document: Option<DocumentRoutes>,
}

impl fmt::Debug for Extension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extension")
            .field("service", &self.spec.name)
            .finish_non_exhaustive()
    }
}

impl Extension {
    /// Routes for the service `spec` describes, built by `routes` when the gateway starts.
    pub fn new(
        spec: &'static ServiceSpec,
        routes: impl Fn(&ExtensionContext) -> Router + Send + Sync + 'static,
    ) -> Extension {
        Extension {
            spec,
            build: Box::new(routes),
            document: None,
        }
    }

    /// The same extension, with `document` adding its routes to `/openapi.json`: it gets the
    /// document's `paths` and `components/schemas` (the service's types among them), and is
    /// called while the service is known.
    pub fn with_openapi(
        mut self,
        document: impl Fn(&mut Map<String, Value>, &mut Map<String, Value>) + Send + Sync + 'static,
    ) -> Extension {
        self.document = Some(Box::new(document));
        self
    }

    /// Adds the routes to an OpenAPI document's `paths` and `schemas`.
    pub(crate) fn document(
        &self,
        paths: &mut Map<String, Value>,
        schemas: &mut Map<String, Value>,
    ) {
        if let Some(document) = &self.document {
            document(paths, schemas);
        }
    }

    /// The service the routes call.
    pub fn spec(&self) -> &'static ServiceSpec {
        self.spec
    }

    /// The routes, as built; the gateway's middleware ([`crate::middleware`]) answers their
    /// failed calls in its error shape.
    pub(crate) fn routes(&self, context: &ExtensionContext) -> Router {
        (self.build)(context)
    }
}

/// What an extension's routes are built with.
#[derive(Debug, Clone)]
pub struct ExtensionContext {
    node: Node,
    request_timeout: Duration,
}

impl ExtensionContext {
    pub(crate) fn new(node: Node, request_timeout: Duration) -> ExtensionContext {
        ExtensionContext {
            node,
            request_timeout,
        }
    }

    /// The node the gateway calls through: build clients with `node().client::<C>()`.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Options for the extension's calls: the gateway's request timeout.
    pub fn call_options(&self) -> CallOptions {
        CallOptions::new().timeout(self.request_timeout)
    }
}

/// `response`, or the gateway's error for the [`Status`] it carries (a failed call of
/// `service`).
pub(crate) fn render_failed_call(mut response: Response, service: &str) -> Response {
    match response.extensions_mut().remove::<Status>() {
        Some(status) => ApiError::from_call(status, service).into_response(),
        None => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshrpc::Code;

    #[test]
    fn a_carried_status_is_answered_in_the_gateway_error_shape() {
        let mut response = (http::StatusCode::IM_A_TEAPOT, "whatever").into_response();
        response
            .extensions_mut()
            .insert(Status::new(Code::NotFound, "no such card"));
        let rendered = render_failed_call(response, "greeter");
        assert_eq!(rendered.status(), http::StatusCode::NOT_FOUND);
        let plain = (http::StatusCode::OK, "fine").into_response();
        assert_eq!(
            render_failed_call(plain, "greeter").status(),
            http::StatusCode::OK
        );
    }
}
