//! The gateway's own HTTP metrics (requests by route and status, latency by route), rendered
//! together with the node's mesh metrics on `/metrics`.
//!
//! Routes are labelled by their pattern (`/greeter/greet/{name}`, `/{service}/{*rest}`), never
//! by the raw path, so label cardinality stays bounded whatever clients send; generic calls
//! and legacy requests also carry the service name.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a request count.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

/// Labels of a latency observation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

type LatencyFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// The gateway's HTTP metrics.
#[derive(Debug)]
pub struct HttpMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: LatencyFamily,
}

fn latency_histogram() -> Histogram {
    // 50 µs to ~26 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics::new()
    }
}

impl HttpMetrics {
    /// Empty metrics, registered as `gateway_http_requests_total` and
    /// `gateway_http_request_duration_seconds`.
    pub fn new() -> HttpMetrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: LatencyFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "gateway_http_requests",
            "HTTP requests answered by the gateway, by method, route and status",
            requests.clone(),
        );
        registry.register(
            "gateway_http_request_duration_seconds",
            "Time from a request's arrival to its response head, by method and route",
            latency.clone(),
        );
        HttpMetrics {
            registry,
            requests,
            latency,
        }
    }

    /// Counts one answered request.
    pub fn record(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                method: method.to_owned(),
                route: route.to_owned(),
            })
            .observe(seconds);
    }

    /// The gateway's metrics followed by `node`'s, as one exposition (one `# EOF`).
    pub fn render(&self, node: &str) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        let own = text.strip_suffix("# EOF\n").unwrap_or(&text);
        let mut all = String::with_capacity(own.len() + node.len());
        all.push_str(own);
        all.push_str(node);
        if !all.ends_with("# EOF\n") {
            all.push_str("# EOF\n");
        }
        all
    }
}

/// The route label of a request: the pattern it matched.
fn route_label(request: &Request) -> String {
    request.extensions().get::<MatchedPath>().map_or_else(
        || "unmatched".to_owned(),
        |pattern| pattern.as_str().to_owned(),
    )
}

/// Set on a response by the catch-all route when the service is known, so the route label
/// can name it (`/greeter/{*rest}`) without letting unknown names grow the label set.
#[derive(Debug, Clone)]
pub struct KnownService(pub String);

/// The middleware: times every request and counts its answer.
pub async fn record(
    State(metrics): State<std::sync::Arc<HttpMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let mut route = route_label(&request);
    let response = next.run(request).await;
    if let Some(service) = response.extensions().get::<KnownService>() {
        route = format!("/{}/{{*rest}}", service.0);
    }
    metrics.record(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_route_and_status_and_rendered_before_the_node_metrics() {
        let metrics = HttpMetrics::new();
        metrics.record("GET", "/greeter/greet/{name}", 200, 0.001);
        metrics.record("GET", "/greeter/greet/{name}", 200, 0.002);
        let text = metrics.render("# TYPE meshrpc_members gauge\nmeshrpc_members 2\n# EOF\n");
        assert!(
            text.contains(
                "gateway_http_requests_total{method=\"GET\",route=\"/greeter/greet/{name}\",status=\"200\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("gateway_http_request_duration_seconds_bucket"));
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(text.ends_with("meshrpc_members 2\n# EOF\n"));
    }
}
