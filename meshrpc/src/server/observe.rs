//! [`Observe`]: every call the node serves is counted and timed in its metrics, written to the
//! access log (`meshrpc::access`) and, with trace export on, recorded as a SERVER span. A
//! server stream is observed when it ends: its duration is the whole stream's, its code the
//! one it ended with (`cancelled` when the caller went away first).

use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasherDefault;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Layer, Service};

use super::IncomingCall;
use super::call::Caller;
use crate::metrics::{MethodMetrics, Metrics, Side};
use crate::spec::{MethodSpec, ServiceSpec};
use crate::status::{Code, Status};
use crate::streaming::{Body, Streaming};

/// Observes calls: see [`Observe`].
#[derive(Clone)]
pub struct ObserveLayer {
    shared: Arc<Shared>,
}

struct Shared {
    metrics: Arc<Metrics>,
    /// Pre-resolved recorders of the published methods, so a call costs no label lookup:
    /// found by the address of the method's `&'static MethodSpec` (one multiply to hash), by
    /// name for a spec from elsewhere (a user's layer may substitute one).
    by_address: HashMap<usize, MethodMetrics, BuildHasherDefault<AddressHasher>>,
    by_name: HashMap<(&'static str, &'static str), MethodMetrics>,
    /// What a call's start is counted from (see [`Record`]).
    epoch: Instant,
}

/// Hashes a `usize` address with one multiplication (Fibonacci hashing); nothing else.
#[derive(Default)]
struct AddressHasher(u64);

impl std::hash::Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_usize(&mut self, value: usize) {
        self.0 = (value as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

fn address(method: &'static MethodSpec) -> usize {
    std::ptr::from_ref(method) as usize
}

impl Shared {
    /// `now` in nanoseconds after the epoch (a u64 lasts 584 years).
    fn nanos_since_epoch(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }
}

impl std::fmt::Debug for ObserveLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObserveLayer").finish_non_exhaustive()
    }
}

impl ObserveLayer {
    /// Observes the calls of `services` into `metrics`.
    pub fn new(services: &[&'static ServiceSpec], metrics: Arc<Metrics>) -> ObserveLayer {
        let methods: Vec<(&'static MethodSpec, MethodMetrics)> = services
            .iter()
            .flat_map(|service| service.methods.iter())
            .map(|method| {
                (
                    method,
                    metrics.method(Side::Server, method.service, method.name),
                )
            })
            .collect();
        let by_address = methods
            .iter()
            .map(|(method, recorder)| (address(method), recorder.clone()))
            .collect();
        let by_name = methods
            .into_iter()
            .map(|(method, recorder)| ((method.service, method.name), recorder))
            .collect();
        ObserveLayer {
            shared: Arc::new(Shared {
                metrics,
                by_address,
                by_name,
                epoch: Instant::now(),
            }),
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Records every call's code and duration (metrics, access log, trace span).
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> std::fmt::Debug for Observe<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observe").finish_non_exhaustive()
    }
}

impl<S> Service<IncomingCall> for Observe<S>
where
    S: Service<IncomingCall, Response = Body, Error = Status>,
{
    type Response = Body;
    type Error = Status;
    type Future = Observed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    #[allow(unused_mut)]
    fn call(&mut self, mut call: IncomingCall) -> Self::Future {
        let record = Record {
            started: self.shared.nanos_since_epoch(Instant::now()),
            shared: self.shared.clone(),
            method: call.method,
            caller: call.caller.clone(),
            #[cfg(feature = "otel")]
            span: crate::telemetry::server_span(
                call.method.service,
                call.method.name,
                call.caller.addr,
                call.context.metadata_mut(),
            )
            .map(Box::new),
        };
        let inner = {
            #[cfg(feature = "otel")]
            let _entered = record.span.as_deref().map(tracing::Span::enter);
            self.inner.call(call)
        };
        Observed {
            inner,
            record: Some(record),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of an [`Observe`]d call. With trace export on, the call's span is entered
    /// whenever the call is polled (as `tracing::Instrument` would, without a second handle
    /// to the span in every call's future).
    pub struct Observed<F> {
        #[pin]
        inner: F,
        record: Option<Record>,
    }
}

impl<F> Future for Observed<F>
where
    F: Future<Output = Result<Body, Status>>,
{
    type Output = Result<Body, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let outcome = {
            #[cfg(feature = "otel")]
            let _entered = this
                .record
                .as_ref()
                .and_then(|record| record.span.as_deref())
                .map(tracing::Span::enter);
            std::task::ready!(this.inner.poll(cx))
        };
        let Some(record) = this.record.take() else {
            return Poll::Ready(outcome);
        };
        Poll::Ready(match outcome {
            Ok(Body::Stream(stream)) => Ok(Body::Stream(record.on_end_of(stream))),
            Ok(message) => {
                record.finish(Code::Ok);
                Ok(message)
            }
            Err(status) => {
                record.finish(status.code());
                Err(status)
            }
        })
    }
}

/// What one observed call records when it ends.
struct Record {
    shared: Arc<Shared>,
    method: &'static MethodSpec,
    /// Who called (shared by the calls of a connection: a held call keeps a pointer, not an
    /// address).
    caller: Arc<Caller>,
    /// When the call started, in nanoseconds after the layer's epoch: half an `Instant`'s
    /// size, in every held call's state.
    started: u64,
    /// The call's SERVER span, when trace export is on. Boxed: a held call's future carries
    /// one pointer for it, whether export is on or not.
    #[cfg(feature = "otel")]
    span: Option<Box<tracing::Span>>,
}

impl Record {
    /// Records the call's end with `code`.
    fn finish(self, code: Code) {
        let elapsed = Duration::from_nanos(
            self.shared
                .nanos_since_epoch(Instant::now())
                .saturating_sub(self.started),
        );
        let method = self.method;
        #[cfg(feature = "otel")]
        if let Some(span) = &self.span {
            crate::telemetry::record_code(span, code);
        }
        let recorder = self
            .shared
            .by_address
            .get(&address(method))
            .or_else(|| self.shared.by_name.get(&(method.service, method.name)));
        match recorder {
            Some(recorder) => recorder.record(&self.shared.metrics, code, elapsed),
            None => self.shared.metrics.record_call(
                Side::Server,
                method.service,
                method.name,
                code,
                elapsed,
            ),
        }
        // The built-in service answers the mesh's own questions (the gateway's dashboard asks
        // every member for its stats every few seconds): at debug level, so the access log at
        // info level shows the calls a user made.
        if method.service == crate::node_service::NODE_SERVICE {
            tracing::debug!(
                target: "meshrpc::access",
                "{code} | {:>10.3?} | {} | {}.{}",
                elapsed,
                self.caller.addr,
                method.service,
                method.name
            );
        } else {
            tracing::info!(
                target: "meshrpc::access",
                "{code} | {:>10.3?} | {} | {}.{}",
                elapsed,
                self.caller.addr,
                method.service,
                method.name
            );
        }
    }

    /// `stream`, recording the call when it ends: `ok` at a clean end, the error's code, or
    /// `cancelled` if it is dropped first.
    fn on_end_of(self, stream: Streaming<bytes::Bytes>) -> Streaming<bytes::Bytes> {
        stream.on_end(move |code| self.finish(code))
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::server::tests::{TEST_SPEC, call_to, echo_service};

    fn counted(metrics: &Metrics, method: &str, code: &str) -> bool {
        metrics.render().lines().any(|line| {
            line.starts_with("meshrpc_calls_total")
                && line.contains(&format!("method=\"{method}\""))
                && line.contains(&format!("code=\"{code}\""))
                && line.ends_with(" 1")
        })
    }

    #[tokio::test]
    async fn calls_are_counted_by_method_and_code() {
        let metrics = Arc::new(Metrics::new());
        let layer = ObserveLayer::new(&[&TEST_SPEC], metrics.clone());
        let mut service = layer.layer(echo_service());
        service.call(call_to("echo")).await.expect("ok");
        let _ = service.call(call_to("fail")).await;
        assert!(counted(&metrics, "echo", "ok"), "{}", metrics.render());
        assert!(
            counted(&metrics, "fail", "not_found"),
            "{}",
            metrics.render()
        );
    }

    #[tokio::test]
    async fn a_stream_is_counted_when_it_ends_and_a_dropped_one_as_cancelled() {
        let metrics = Arc::new(Metrics::new());
        let layer = ObserveLayer::new(&[&TEST_SPEC], metrics.clone());
        let mut service = layer.layer(echo_service());
        let Ok(Body::Stream(mut items)) = service.call(call_to("stream")).await else {
            panic!("a stream");
        };
        assert!(!counted(&metrics, "stream", "ok"), "not before its end");
        while items.next().await.is_some() {}
        assert!(counted(&metrics, "stream", "ok"), "{}", metrics.render());
        let Ok(Body::Stream(items)) = service.call(call_to("forever")).await else {
            panic!("a stream");
        };
        drop(items);
        assert!(
            counted(&metrics, "forever", "cancelled"),
            "{}",
            metrics.render()
        );
    }
}
