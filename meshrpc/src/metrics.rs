//! Per-node metrics in the Prometheus text format, and the admin HTTP endpoint that serves
//! them with `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::status::Code;

/// Labels of a served or sent call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    side: &'static str,
    service: String,
    method: String,
    code: &'static str,
}

/// Labels of a latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    side: &'static str,
    service: String,
    method: String,
}

fn latency_histogram() -> Histogram {
    // 50 µs to about 26 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

/// The metrics of one node.
pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    latency: Family<MethodLabels, Histogram, fn() -> Histogram>,
    members: Gauge,
    in_flight: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

/// Which end of a call a measurement was taken at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The node served the call.
    Server,
    /// The node made the call.
    Client,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Server => "server",
            Side::Client => "client",
        }
    }
}

impl Metrics {
    /// Fresh metrics, registered under the `meshrpc_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("meshrpc");
        let calls = Family::<CallLabels, Counter>::default();
        let latency = Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let members = Gauge::default();
        let in_flight = Gauge::default();
        registry.register(
            "calls",
            "Calls by side, service, method and status",
            calls.clone(),
        );
        registry.register(
            "call_duration_seconds",
            "Call latency by side, service and method",
            latency.clone(),
        );
        registry.register(
            "members",
            "Members in this node's view, itself included",
            members.clone(),
        );
        registry.register(
            "calls_in_flight",
            "Calls this node is serving",
            in_flight.clone(),
        );
        Metrics {
            registry,
            calls,
            latency,
            members,
            in_flight,
        }
    }

    /// Records one finished call.
    pub fn record_call(
        &self,
        side: Side,
        service: &str,
        method: &str,
        code: Code,
        elapsed: Duration,
    ) {
        self.calls
            .get_or_create(&CallLabels {
                side: side.label(),
                service: service.to_owned(),
                method: method.to_owned(),
                code: code.as_str(),
            })
            .inc();
        self.latency
            .get_or_create(&MethodLabels {
                side: side.label(),
                service: service.to_owned(),
                method: method.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// A recorder for one method's calls that skips the label lookups for successful calls.
    pub fn method(&self, side: Side, service: &'static str, method: &'static str) -> MethodMetrics {
        let ok = self
            .calls
            .get_or_create(&CallLabels {
                side: side.label(),
                service: service.to_owned(),
                method: method.to_owned(),
                code: Code::Ok.as_str(),
            })
            .clone();
        let latency = self
            .latency
            .get_or_create(&MethodLabels {
                side: side.label(),
                service: service.to_owned(),
                method: method.to_owned(),
            })
            .clone();
        MethodMetrics {
            side,
            service,
            method,
            ok,
            latency,
        }
    }

    /// Sets the number of members in view.
    pub fn set_members(&self, count: usize) {
        self.members.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Sets the number of calls in flight.
    pub fn set_in_flight(&self, count: usize) {
        self.in_flight.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Pre-resolved metrics of one method (see [`Metrics::method`]).
#[derive(Debug, Clone)]
pub struct MethodMetrics {
    side: Side,
    service: &'static str,
    method: &'static str,
    ok: Counter,
    latency: Histogram,
}

impl MethodMetrics {
    /// Records one finished call.
    pub fn record(&self, metrics: &Metrics, code: Code, elapsed: Duration) {
        if code == Code::Ok {
            self.ok.inc();
            self.latency.observe(elapsed.as_secs_f64());
        } else {
            metrics.record_call(self.side, self.service, self.method, code, elapsed);
        }
    }
}

/// What the admin endpoint reports about readiness.
pub trait Readiness: Send + Sync + 'static {
    /// Whether the node is ready, and a human-readable explanation either way.
    fn readiness(&self) -> (bool, String);
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the task is aborted.
pub(crate) async fn serve_admin(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    readiness: Arc<dyn Readiness>,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "admin endpoint listening");
    }
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        let readiness = readiness.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = admin_response(request.uri().path(), &metrics, &*readiness);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%error, "admin connection failed");
            }
        });
    }
}

/// Binds the admin listener (separately, so a taken port fails the node's start).
pub(crate) async fn bind_admin(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

fn admin_response(
    path: &str,
    metrics: &Metrics,
    readiness: &dyn Readiness,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" => {
            let (ready, why) = readiness.readiness();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, "text/plain", format!("{why}\n"))
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /metrics, /healthz or /readyz\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_by_service_method_and_code() {
        let metrics = Metrics::new();
        metrics.record_call(
            Side::Server,
            "greeter",
            "greet",
            Code::Ok,
            Duration::from_micros(80),
        );
        metrics.record_call(
            Side::Server,
            "greeter",
            "greet",
            Code::Ok,
            Duration::from_micros(90),
        );
        let text = metrics.render();
        assert!(
            text.contains(
                r#"meshrpc_calls_total{side="server",service="greeter",method="greet",code="ok"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains("meshrpc_call_duration_seconds_bucket"),
            "{text}"
        );
    }
}
