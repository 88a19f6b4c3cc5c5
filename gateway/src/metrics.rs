//! The gateway's own HTTP metrics (requests by route and status, latency by route), rendered
//! together with the node's mesh metrics on `/metrics`.
//!
//! Every label comes from a bounded set, whatever clients send: the method is one of the eight
//! methods of RFC 9110, `PATCH`, or `other`; the route is the pattern the request matched
//! (`/greeter/greet/{name}`, `/{service}/{*rest}`), `/<service>/{*rest}` for a service a member
//! published, or `unmatched`; the status is a number. Labels are resolved without formatting a
//! string per request: methods are static strings and routes shared ones.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::extract::MatchedPath;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A route label: shared, so a label set is made without allocating.
type Route = Arc<String>;

/// Labels of a request count.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: Route,
    status: u16,
}

/// Labels of a latency observation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: Route,
}

/// The method label: a standard method's name, else `other`.
pub fn method_label(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// The label of requests no route matched.
pub const UNMATCHED: &str = "unmatched";

/// Shared labels by key.
type Labels = RwLock<HashMap<String, Route>>;

/// The label stored under `key` in `labels`, made with `make` on first use.
fn shared_label(labels: &Labels, key: &str, make: impl FnOnce(&str) -> String) -> Route {
    if let Some(label) = labels
        .read()
        .unwrap_or_else(|poison| poison.into_inner())
        .get(key)
    {
        return label.clone();
    }
    labels
        .write()
        .unwrap_or_else(|poison| poison.into_inner())
        .entry(key.to_owned())
        .or_insert_with(|| Arc::new(make(key)))
        .clone()
}

type LatencyFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// The gateway's HTTP metrics.
#[derive(Debug)]
pub struct HttpMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: LatencyFamily,
    in_flight: Gauge,
    buffered: Gauge,
    /// Route labels by router pattern (and `unmatched`).
    patterns: Labels,
    /// `/<service>/{*rest}` by service, for services a member published: a set the mesh
    /// bounds, not clients.
    services: Labels,
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
        let in_flight = Gauge::default();
        let buffered = Gauge::default();
        registry.register(
            "gateway_http_requests_in_flight",
            "Requests being answered now, the probes and /metrics aside (at most --max-in-flight)",
            in_flight.clone(),
        );
        registry.register(
            "gateway_http_buffered_body_bytes",
            "Request body bytes reserved now (at most --max-buffered)",
            buffered.clone(),
        );
        HttpMetrics {
            registry,
            requests,
            latency,
            in_flight,
            buffered,
            patterns: Labels::default(),
            services: Labels::default(),
        }
    }

    /// The shared label for `route`, made on first use. Only called with router patterns and
    /// [`UNMATCHED`].
    fn route(&self, route: &str) -> Route {
        shared_label(&self.patterns, route, |route| route.to_owned())
    }

    /// The shared label `/<service>/{*rest}` of a published service.
    fn service_route(&self, service: &str) -> Route {
        shared_label(&self.services, service, |service| {
            format!("/{service}/{{*rest}}")
        })
    }

    /// Counts one answered request. `route` must come from a bounded set (a router pattern,
    /// [`UNMATCHED`]).
    pub fn record(&self, method: &http::Method, route: &str, status: u16, seconds: f64) {
        let route = self.route(route);
        self.observe(method_label(method), route, status, seconds);
    }

    fn observe(&self, method: &'static str, route: Route, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method,
                route: route.clone(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels { method, route })
            .observe(seconds);
    }

    /// Sets the admission gauges (read from the budgets when `/metrics` is scraped).
    pub fn set_admission(&self, in_flight: usize, buffered: usize) {
        self.in_flight
            .set(i64::try_from(in_flight).unwrap_or(i64::MAX));
        self.buffered
            .set(i64::try_from(buffered).unwrap_or(i64::MAX));
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

/// Set on a response by the catch-all route when the service is known, so the route label
/// can name it (`/greeter/{*rest}`) without letting unknown names grow the label set.
#[derive(Debug, Clone)]
pub struct KnownService(pub String);

impl HttpMetrics {
    /// Times and counts `response`, the answer to a request with `method` that arrived at
    /// `started` and matched the router pattern `pattern`, when its head is ready (for a
    /// streamed answer, the time to its head: a stream is counted as it starts). A step of the
    /// gateway's middleware ([`crate::middleware`]).
    pub fn answered(
        &self,
        method: &'static str,
        pattern: Option<&MatchedPath>,
        response: &Response,
        started: Instant,
    ) {
        let route = match (response.extensions().get::<KnownService>(), pattern) {
            (Some(service), _) => self.service_route(&service.0),
            (None, Some(pattern)) => self.route(pattern.as_str()),
            (None, None) => self.route(UNMATCHED),
        };
        self.observe(
            method,
            route,
            response.status().as_u16(),
            started.elapsed().as_secs_f64(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_route_and_status_and_rendered_before_the_node_metrics() {
        let metrics = HttpMetrics::new();
        metrics.record(&http::Method::GET, "/greeter/greet/{name}", 200, 0.001);
        metrics.record(&http::Method::GET, "/greeter/greet/{name}", 200, 0.002);
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

    #[test]
    fn made_up_methods_share_one_label() {
        for name in ["BREW", "PROPFIND", "X-ANYTHING-AT-ALL"] {
            let method = http::Method::from_bytes(name.as_bytes()).expect("a token");
            assert_eq!(method_label(&method), "other");
        }
        assert_eq!(method_label(&http::Method::DELETE), "DELETE");
    }
}
