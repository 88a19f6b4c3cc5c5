//! The gateway's middleware, as one tower layer around each route. For every request, outermost
//! first:
//!
//! 1. the access log ([`crate::access_log`]) notes the request, and writes its line when the
//!    answer's head is ready (a stream's line when the stream ends);
//! 2. the metrics ([`crate::metrics`]) time it and count its answer;
//! 3. admission ([`crate::admission`]) takes its share of the budgets or answers 503;
//! 4. the API keys ([`crate::auth`]) let it through or answer 401;
//! 5. the route answers; on an extension's routes, a failed call it carries is rendered in the
//!    gateway's error shape ([`crate::extension`]).
//!
//! One layer, not one per concern: axum wraps and boxes every route once per `Router::layer`
//! call and clones each box for each request, and `axum::middleware::from_fn` boxes its inner
//! service and its future per request too. As one layer, a request costs one boxed future.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use meshrpc::BoxFuture;
use tower::{Layer, Service};

use crate::access_log;
use crate::admission::Admission;
use crate::auth::{self, ApiKeys};
use crate::extension::render_failed_call;
use crate::metrics::{HttpMetrics, method_label};

/// What the steps share.
#[derive(Debug)]
struct Steps {
    keys: ApiKeys,
    admission: Admission,
    metrics: Arc<HttpMetrics>,
}

/// The layer: the gateway's middleware over a route.
#[derive(Debug, Clone)]
pub struct Middleware {
    steps: Arc<Steps>,
    /// The service whose calls an extension's routes make, for its failed calls' answers.
    extension_of: Option<&'static str>,
}

impl Middleware {
    /// The middleware with these API keys, admission budgets and metrics.
    pub fn new(keys: ApiKeys, admission: Admission, metrics: Arc<HttpMetrics>) -> Middleware {
        Middleware {
            steps: Arc::new(Steps {
                keys,
                admission,
                metrics,
            }),
            extension_of: None,
        }
    }

    /// The same middleware for the routes of an extension calling `service`: a response that
    /// carries a failed call's [`meshrpc::Status`] is answered in the gateway's error shape.
    pub fn for_extension(&self, service: &'static str) -> Middleware {
        Middleware {
            steps: self.steps.clone(),
            extension_of: Some(service),
        }
    }
}

impl<S> Layer<S> for Middleware {
    type Service = WithMiddleware<S>;

    fn layer(&self, inner: S) -> WithMiddleware<S> {
        WithMiddleware {
            inner,
            middleware: self.clone(),
        }
    }
}

/// A route behind the gateway's middleware.
#[derive(Debug, Clone)]
pub struct WithMiddleware<S> {
    inner: S,
    middleware: Middleware,
}

impl<S> Service<Request> for WithMiddleware<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let steps = self.middleware.steps.clone();
        let extension_of = self.middleware.extension_of;
        let entry = access_log::Entry::begin(&request, started);
        let method = method_label(request.method());
        let pattern = request.extensions().get::<MatchedPath>().cloned();
        // Admission, then the key: a refusal is answered without calling the route.
        let answer = steps.admission.admit(&request).and_then(|admitted| {
            auth::require_key(&steps.keys, &request)?;
            Ok((admitted, self.inner.call(request)))
        });
        Box::pin(async move {
            let mut response = match answer {
                Ok((admitted, answer)) => {
                    let mut response = answer.await?;
                    if let Some(service) = extension_of {
                        response = render_failed_call(response, service);
                    }
                    if let Some(admitted) = admitted {
                        admitted.release_with(&response);
                    }
                    response
                }
                Err(refusal) => *refusal,
            };
            steps
                .metrics
                .answered(method, pattern.as_ref(), &response, started);
            access_log::finish(entry, &mut response);
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::body::Body;
    use axum::response::IntoResponse;
    use axum::routing::get;
    use http_body_util::BodyExt as _;
    use meshrpc::Status;
    use tower::ServiceExt as _;

    use super::*;

    fn middleware(keys: &[&str]) -> (Middleware, Arc<HttpMetrics>) {
        let metrics = Arc::new(HttpMetrics::new());
        let middleware = Middleware::new(
            ApiKeys::new(keys),
            Admission::new(8, 1 << 20, 1 << 16),
            metrics.clone(),
        );
        (middleware, metrics)
    }

    async fn answer(router: Router, path: &str) -> (u16, String) {
        let request = Request::get(path).body(Body::empty()).expect("a request");
        let response = router.oneshot(request).await.expect("infallible");
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.expect("a body");
        (
            status,
            String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        )
    }

    #[tokio::test]
    async fn an_extension_routes_failed_call_is_answered_without_the_replica_address() {
        let (middleware, metrics) = middleware(&[]);
        let failed = || async {
            let peer = "127.0.0.1:7946".parse().expect("an address");
            let status =
                Status::unavailable("lost the connection to 127.0.0.1:7946").with_peer(peer);
            let mut response = (http::StatusCode::IM_A_TEAPOT, "whatever").into_response();
            response.extensions_mut().insert(status);
            response
        };
        let router = Router::new()
            .route("/vault/open/{box}", get(failed))
            .layer(middleware.for_extension("vault"));
        let (status, body) = answer(router, "/vault/open/7").await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(
            body,
            r#"{"error":"lost the connection to a replica of `vault`","code":"unavailable"}"#
        );
        let text = metrics.render("# EOF\n");
        assert!(
            text.contains(
                r#"gateway_http_requests_total{method="GET",route="/vault/open/{box}",status="503"} 1"#
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_refused_request_never_reaches_its_route_and_is_counted() {
        let (middleware, metrics) = middleware(&["secret"]);
        let reached = Arc::new(AtomicUsize::new(0));
        let counter = reached.clone();
        let router = Router::new()
            .route(
                "/private",
                get(move || async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    "in"
                }),
            )
            .layer(middleware);
        let (status, body) = answer(router, "/private").await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("missing or invalid API key"), "{body}");
        assert_eq!(reached.load(Ordering::SeqCst), 0);
        let text = metrics.render("# EOF\n");
        assert!(
            text.contains(
                r#"gateway_http_requests_total{method="GET",route="/private",status="401"} 1"#
            ),
            "{text}"
        );
    }
}
