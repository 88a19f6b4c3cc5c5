//! A SERVER span for every HTTP request, when the process exports traces (feature `otel`, and
//! an OTLP endpoint in the environment; see `meshrpc::cli::init_tracing`).
//!
//! The span continues the client's `traceparent`, if it sent one, and replaces it in the
//! request with its own, so the generic routes, which forward `traceparent` into the call's
//! metadata, make the mesh's spans its children; calls made from typed routes find it as the
//! current span. Its attributes come from bounded sets whatever clients send: the method is a
//! standard one or `_OTHER`, `http.route` the router pattern the request matched (the raw path
//! never; a request no route matched has none).
//!
//! Without export the layer is not installed at all ([`layer`]), so requests pay nothing.

/// The layer to put around every route: the request-span layer while the process exports
/// traces, else nothing.
#[cfg(feature = "otel")]
pub fn layer() -> tower::util::Either<otel::RequestSpans, tower::layer::util::Identity> {
    tower::util::option_layer(meshrpc::telemetry::enabled().then_some(otel::RequestSpans))
}

/// The layer to put around every route: nothing, as this build exports no traces.
#[cfg(not(feature = "otel"))]
pub fn layer() -> tower::layer::util::Identity {
    tower::layer::util::Identity::new()
}

#[cfg(feature = "otel")]
pub use otel::{RequestSpan, RequestSpans};

#[cfg(feature = "otel")]
mod otel {
    use std::convert::Infallible;
    use std::task::{Context, Poll};

    use axum::extract::{MatchedPath, Request};
    use axum::response::Response;
    use http::{HeaderName, HeaderValue};
    use meshrpc::BoxFuture;
    use tower::{Layer, Service};
    use tracing::Instrument as _;
    use tracing::field::Empty;

    use crate::metrics::method_label;

    /// Wraps each route in a [`RequestSpan`].
    #[derive(Debug, Clone, Copy)]
    pub struct RequestSpans;

    impl<S> Layer<S> for RequestSpans {
        type Service = RequestSpan<S>;

        fn layer(&self, inner: S) -> RequestSpan<S> {
            RequestSpan { inner }
        }
    }

    /// Answers each request inside a SERVER span; see the [module docs](super).
    #[derive(Debug, Clone)]
    pub struct RequestSpan<S> {
        inner: S,
    }

    impl<S> Service<Request> for RequestSpan<S>
    where
        S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
        S::Future: Send + 'static,
    {
        type Response = Response;
        type Error = Infallible;
        type Future = BoxFuture<'static, Result<Response, Infallible>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            self.inner.poll_ready(cx)
        }

        fn call(&mut self, mut request: Request) -> Self::Future {
            let span = request_span(&mut request);
            let answer = self.inner.call(request).instrument(span.clone());
            Box::pin(async move {
                let response = answer.await?;
                let status = response.status();
                span.record("http.response.status_code", status.as_u16());
                if status.is_server_error() {
                    span.record("otel.status_code", "error");
                }
                Ok(response)
            })
        }
    }

    /// The span of `request`, which from now on carries the span's `traceparent`.
    fn request_span(request: &mut Request) -> tracing::Span {
        let method = match method_label(request.method()) {
            "other" => "_OTHER",
            method => method,
        };
        // A request no route matched has no `http.route`, and only its method as its name.
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str);
        let span = tracing::info_span!(
            target: "mesh_api::trace",
            "http.request",
            otel.name = Empty,
            otel.kind = "server",
            otel.status_code = Empty,
            http.request.method = method,
            http.route = Empty,
            http.response.status_code = Empty,
            url.scheme = "http",
        );
        match route {
            Some(route) => {
                span.record("otel.name", format_args!("{method} {route}"));
                span.record("http.route", route);
            }
            None => {
                span.record("otel.name", method);
            }
        }
        let headers = request.headers_mut();
        meshrpc::telemetry::continue_trace(&span, |key| {
            headers.get(key).and_then(|value| value.to_str().ok())
        });
        meshrpc::telemetry::propagate(&span, |key, value| {
            if let (Ok(name), Ok(value)) = (HeaderName::try_from(key), HeaderValue::try_from(value))
            {
                headers.insert(name, value);
            }
        });
        span
    }
}
