//! Trace export over OTLP/HTTP (feature `otel`): the spans every call makes on both sides, and
//! the W3C trace context they carry in call metadata.
//!
//! [`install`] (through [`cli::init_tracing`](crate::cli::init_tracing)) reads the usual
//! OpenTelemetry environment. Unless `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, nothing is installed and calls make no spans: the
//! call paths ask [`enabled`], one relaxed atomic load, and go on as without the feature.
//!
//! Once installed, the caller makes one CLIENT span per attempt (in
//! [`call_peer`](crate::transport::client::call_peer)), whose context replaces the call's
//! `traceparent`; the callee makes a SERVER span whose parent is that `traceparent`, and puts
//! its own context in the [`CallContext`](crate::context::CallContext) the handler runs in, so
//! calls the handler makes are its children. Spans go out in batches (`OTEL_BSP_*`) as
//! protobuf to `<endpoint>/v1/traces`, sent by a hyper client on a thread of its own.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::channel::Call;
use crate::metadata::Metadata;
use crate::status::{Code, Status};

/// Whether spans are being exported; set once by [`install`].
static ENABLED: AtomicBool = AtomicBool::new(false);

/// How long one export may take before it is given up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest collector reply read (its body is only ever a small status message).
const MAX_REPLY: usize = 64 * 1024;

/// The only protocol spoken; the OpenTelemetry default.
const HTTP_PROTOBUF: &str = "http/protobuf";

/// Whether this process exports spans. Call paths check it before making a span.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Why trace export could not be set up from the environment.
#[derive(thiserror::Error)]
pub enum TelemetryError {
    /// `OTEL_EXPORTER_OTLP_PROTOCOL` (or its `_TRACES_` form) names another protocol.
    #[error(
        "{variable}={value:?} is not supported: meshrpc exports traces over OTLP/HTTP with \
         protobuf only; set {variable}=http/protobuf or unset it"
    )]
    Protocol {
        /// The variable that was set.
        variable: &'static str,
        /// Its value.
        value: String,
    },
    /// The endpoint wants TLS, which the exporter does not speak.
    #[error(
        "{variable}={value:?}: traces are sent over plain HTTP only; point it at an \
         http:// collector (one next to the node, which may forward over TLS)"
    )]
    Tls {
        /// The variable that was set.
        variable: &'static str,
        /// Its value.
        value: String,
    },
    /// The exporter could not be built (an endpoint that is not a URL, for one).
    #[error("cannot export traces: {0}")]
    Exporter(String),
    /// The thread that sends spans could not be started.
    #[error("cannot start the trace export thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// The message, as a binary whose `main` returns this error prints it with `Debug`.
impl std::fmt::Debug for TelemetryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// The endpoint variables, most specific first; export is on when one is set.
const ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// The protocol variables, most specific first.
const PROTOCOL_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
];

/// Whether the environment asks for trace export: an endpoint is set, and
/// `OTEL_SDK_DISABLED` is not `true`.
pub fn configured() -> bool {
    configured_in(|name| std::env::var(name).ok())
}

/// [`configured`], reading the environment through `var`.
fn configured_in(var: impl Fn(&str) -> Option<String>) -> bool {
    let disabled =
        var("OTEL_SDK_DISABLED").is_some_and(|value| value.trim().eq_ignore_ascii_case("true"));
    !disabled
        && ENDPOINT_VARIABLES
            .iter()
            .any(|name| var(name).is_some_and(|value| !value.trim().is_empty()))
}

/// The running exporter; [`Exporter::shutdown`] sends what is left.
#[derive(Debug)]
pub struct Exporter {
    provider: SdkTracerProvider,
    sender: Option<SenderThread>,
}

/// The thread whose runtime drives the HTTP requests of the export.
#[derive(Debug)]
struct SenderThread {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Exporter {
    /// Exports the spans still buffered and stops exporting.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(error) = self.provider.shutdown() {
            tracing::debug!(%error, "trace exporter shutdown");
        }
        if let Some(sender) = self.sender.take() {
            let _ = sender.stop.send(());
            let _ = sender.thread.join();
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if self.sender.is_some() {
            self.stop();
        }
    }
}

/// The protocol the environment (read through `var`) asks for, refused unless it is
/// `http/protobuf`; the traces-only variable wins over the general one.
fn check_protocol(var: impl Fn(&str) -> Option<String>) -> Result<(), TelemetryError> {
    for variable in PROTOCOL_VARIABLES {
        let Some(value) = var(variable) else {
            continue;
        };
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        if value.eq_ignore_ascii_case(HTTP_PROTOBUF) {
            return Ok(());
        }
        return Err(TelemetryError::Protocol {
            variable,
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// Refuses an `https://` endpoint (the first one set, as the exporter reads them) up front,
/// rather than failing every export later.
fn check_endpoint(var: impl Fn(&str) -> Option<String>) -> Result<(), TelemetryError> {
    for variable in ENDPOINT_VARIABLES {
        let Some(value) = var(variable).filter(|value| !value.trim().is_empty()) else {
            continue;
        };
        let scheme = value.trim().split_once("://").map(|(scheme, _)| scheme);
        if scheme.is_some_and(|scheme| scheme.eq_ignore_ascii_case("https")) {
            return Err(TelemetryError::Tls { variable, value });
        }
        return Ok(());
    }
    Ok(())
}

/// The `service.name` of this process: `OTEL_SERVICE_NAME`, else `default`.
fn service_name(default: &str) -> String {
    std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// Builds the OTLP/HTTP exporter from the environment and the layer that feeds it, or `None`
/// when no endpoint is configured. `default_service` is the `service.name` unless
/// `OTEL_SERVICE_NAME` says otherwise. Spans count as made only once the layer is part of the
/// installed subscriber, so call [`activate`] after installing it.
pub fn install<S>(
    default_service: &str,
) -> Result<Option<(Exporter, impl tracing_subscriber::Layer<S>)>, TelemetryError>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    if !configured() {
        return Ok(None);
    }
    check_protocol(|name| std::env::var(name).ok())?;
    check_endpoint(|name| std::env::var(name).ok())?;
    let (sender, handle) = start_sender()?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_http_client(HyperSender::new(handle))
        .build()
        .map_err(|error| TelemetryError::Exporter(error.to_string()))?;
    let resource = Resource::builder()
        .with_service_name(service_name(default_service))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("meshrpc");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        // No busy/idle times and thread ids: a clock read per poll for attributes no trace
        // view needs.
        .with_tracked_inactivity(false)
        .with_threads(false);
    Ok(Some((
        Exporter {
            provider,
            sender: Some(sender),
        },
        layer,
    )))
}

/// Turns span making on: the layer [`install`] returned is in the global subscriber.
pub fn activate() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Starts the thread whose single-threaded runtime sends the exports. The SDK's batch
/// processor runs exports on a thread of its own, outside any runtime, and hyper needs one;
/// this one is the process's only part that waits on the collector.
fn start_sender() -> Result<(SenderThread, tokio::runtime::Handle), TelemetryError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("otlp-sender".into())
        .spawn(move || {
            runtime.block_on(async {
                let _ = stopped.await;
            });
        })?;
    Ok((SenderThread { stop, thread }, handle))
}

/// Sends OTLP requests with hyper's HTTP/1 client on the sender thread's runtime.
#[derive(Debug)]
struct HyperSender {
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    runtime: tokio::runtime::Handle,
}

impl HyperSender {
    fn new(runtime: tokio::runtime::Handle) -> HyperSender {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        HyperSender { client, runtime }
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for HyperSender {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let exchange = async move {
            let response = client.request(request.map(Full::new)).await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_REPLY).collect().await?.to_bytes();
            Ok::<_, opentelemetry_http::HttpError>(http::Response::from_parts(parts, body))
        };
        let task = self
            .runtime
            .spawn(async move { tokio::time::timeout(EXPORT_TIMEOUT, exchange).await });
        match task.await? {
            Ok(result) => result,
            Err(_) => Err(format!("no answer from the collector in {EXPORT_TIMEOUT:?}").into()),
        }
    }
}

/// Runs `f` with no span current, so that whatever `f` spawns in "the current span" does not
/// keep a call's span open. Without export on, it just runs `f`.
pub(crate) fn outside_spans<T>(f: impl FnOnce() -> T) -> T {
    if !enabled() {
        return f();
    }
    tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), f)
}

/// The `traceparent` and `tracestate` a carrier holds.
struct Found<'a> {
    traceparent: Option<&'a str>,
    tracestate: Option<&'a str>,
}

impl Extractor for Found<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.traceparent,
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// Writes `traceparent` and `tracestate` through a setter.
struct Setter<F>(F);

impl<F: FnMut(&str, String)> Injector for Setter<F> {
    fn set(&mut self, key: &str, value: String) {
        // An empty `tracestate` says nothing: it is not sent.
        if !value.is_empty() {
            (self.0)(key, value)
        }
    }
}

/// Makes `span` a child of the remote span the `traceparent` (and `tracestate`) that `get`
/// returns names; with no valid `traceparent`, `span` keeps its local parent.
pub fn continue_trace<'a>(span: &Span, get: impl Fn(&str) -> Option<&'a str>) {
    let found = Found {
        traceparent: get("traceparent"),
        tracestate: get("tracestate"),
    };
    if found.traceparent.is_none() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&found);
    let _ = span.set_parent(parent);
}

/// Hands `set` the `traceparent` (and `tracestate`) that make a callee's spans children of
/// `span`.
pub fn propagate(span: &Span, set: impl FnMut(&str, String)) {
    TraceContextPropagator::new().inject_context(&span.context(), &mut Setter(set));
}

/// Continues the trace of `metadata` in `span`, then makes `metadata` name `span`.
fn relay(span: &Span, metadata: &mut Metadata) {
    continue_trace(span, |key| metadata.get(key));
    let mut context = Metadata::new();
    propagate(span, |key, value| context.insert(key, value));
    for (key, value) in context.iter() {
        metadata.insert(key, value);
    }
}

/// The CLIENT span of one attempt of `call` to `peer`, or `None` when export is off. The
/// call's metadata then carries the span's context to the callee.
pub(crate) fn client_span(call: &mut Call, peer: SocketAddr) -> Option<Span> {
    enabled().then(|| make_client_span(call, peer))
}

fn make_client_span(call: &mut Call, peer: SocketAddr) -> Span {
    let span = tracing::info_span!(
        target: "meshrpc::trace",
        "meshrpc.call",
        otel.name = %format_args!("{}/{}", call.service, call.method),
        otel.kind = "client",
        otel.status_code = Empty,
        otel.status_description = Empty,
        rpc.system = "meshrpc",
        rpc.service = %call.service,
        rpc.method = %call.method,
        rpc.response.status_code = Empty,
        server.address = %peer.ip(),
        server.port = peer.port(),
        network.peer.address = %peer.ip(),
        network.peer.port = peer.port(),
    );
    relay(&span, &mut call.metadata);
    span
}

/// The SERVER span of a call to `service.method` from `peer`, a child of the caller's span
/// named in `metadata`, or `None` when export is off. `metadata` then names this span, so
/// calls the handler makes are its children.
pub(crate) fn server_span(
    service: &str,
    method: &str,
    peer: SocketAddr,
    metadata: &mut Metadata,
) -> Option<Span> {
    enabled().then(|| make_server_span(service, method, peer, metadata))
}

fn make_server_span(
    service: &str,
    method: &str,
    peer: SocketAddr,
    metadata: &mut Metadata,
) -> Span {
    let span = tracing::info_span!(
        target: "meshrpc::trace",
        "meshrpc.serve",
        otel.name = %format_args!("{service}/{method}"),
        otel.kind = "server",
        otel.status_code = Empty,
        otel.status_description = Empty,
        rpc.system = "meshrpc",
        rpc.service = service,
        rpc.method = method,
        rpc.response.status_code = Empty,
        client.address = %peer.ip(),
        client.port = peer.port(),
        network.peer.address = %peer.ip(),
        network.peer.port = peer.port(),
    );
    relay(&span, metadata);
    span
}

/// Records a call's status code on its span; any code but `ok` marks the span an error.
pub(crate) fn record_code(span: &Span, code: Code) {
    span.record("rpc.response.status_code", code.as_str());
    if code != Code::Ok {
        span.record("otel.status_code", "error");
    }
}

/// Records the outcome of a call on its span.
pub(crate) fn record_outcome<T>(span: &Span, outcome: &Result<T, Status>) {
    match outcome {
        Ok(_) => record_code(span, Code::Ok),
        Err(status) => {
            record_code(span, status.code());
            span.record("otel.status_description", status.message());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&str, &str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    #[test]
    fn export_is_on_only_with_an_endpoint_and_not_disabled() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        let traces = (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://127.0.0.1:4318/v1/traces",
        );
        assert!(!configured_in(env(&[])));
        assert!(!configured_in(env(&[("OTEL_SERVICE_NAME", "greeter")])));
        assert!(!configured_in(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")])));
        assert!(configured_in(env(&[endpoint])));
        assert!(configured_in(env(&[traces])));
        assert!(!configured_in(env(&[
            endpoint,
            ("OTEL_SDK_DISABLED", "true")
        ])));
        assert!(configured_in(env(&[
            endpoint,
            ("OTEL_SDK_DISABLED", "false")
        ])));
    }

    #[test]
    fn an_https_endpoint_is_refused_and_http_accepted() {
        let error = check_endpoint(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://collector:4318",
        )]))
        .expect_err("https is refused");
        assert!(error.to_string().contains("http://"), "{error}");
        assert!(
            check_endpoint(env(&[(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://collector:4318"
            )]))
            .is_ok()
        );
        // The traces endpoint is the one used when both are set.
        assert!(
            check_endpoint(env(&[
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://collector:4318/v1/traces"
                ),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://elsewhere:4318"),
            ]))
            .is_ok()
        );
    }

    #[test]
    fn http_protobuf_or_no_protocol_at_all_is_accepted() {
        assert!(check_protocol(env(&[])).is_ok());
        assert!(check_protocol(env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")])).is_ok());
        assert!(check_protocol(env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "HTTP/Protobuf")])).is_ok());
    }

    #[test]
    fn another_protocol_is_refused_naming_the_variable_and_what_to_set() {
        let error = check_protocol(env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]))
            .expect_err("grpc is refused");
        let message = error.to_string();
        assert!(
            message.contains("OTEL_EXPORTER_OTLP_PROTOCOL=\"grpc\""),
            "{message}"
        );
        assert!(message.contains("http/protobuf"), "{message}");
        // The traces-only variable wins over the general one.
        let error = check_protocol(env(&[
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]))
        .expect_err("http/json is refused");
        assert!(
            error
                .to_string()
                .contains("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        );
        assert!(
            check_protocol(env(&[
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ]))
            .is_ok()
        );
    }

    #[test]
    fn without_an_installed_exporter_calls_make_no_spans() {
        let mut call = Call::new("greeter", "greet", Bytes::new());
        call.metadata.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        let before = call.metadata.clone();
        assert!(client_span(&mut call, ([127, 0, 0, 1], 1).into()).is_none());
        assert_eq!(call.metadata, before);
    }

    /// Keeps every finished span.
    #[derive(Debug, Clone, Default)]
    struct Kept(std::sync::Arc<std::sync::Mutex<Vec<opentelemetry_sdk::trace::SpanData>>>);

    impl opentelemetry_sdk::trace::SpanExporter for Kept {
        async fn export(
            &self,
            batch: Vec<opentelemetry_sdk::trace::SpanData>,
        ) -> opentelemetry_sdk::error::OTelSdkResult {
            crate::lock(&self.0).extend(batch);
            Ok(())
        }
    }

    #[test]
    fn a_served_call_continues_the_callers_trace_and_parents_the_calls_it_makes() {
        use opentelemetry::trace::{SpanKind, TraceContextExt as _};
        use tracing_subscriber::layer::SubscriberExt as _;

        let kept = Kept::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(kept.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let caller = "00f067aa0ba902b7";
        let peer: SocketAddr = ([127, 0, 0, 1], 4000).into();
        let (served_id, nested_id) = tracing::subscriber::with_default(subscriber, || {
            let mut metadata = Metadata::new();
            metadata.insert("traceparent", format!("00-{trace_id}-{caller}-01"));
            let served = make_server_span("concierge", "welcome", peer, &mut metadata);
            let served_id = served.context().span().span_context().span_id();
            // The handler's calls inherit the metadata, which now names the served span.
            assert_eq!(
                metadata.get("traceparent"),
                Some(format!("00-{trace_id}-{served_id}-01").as_str())
            );
            let mut call = Call::new("greeter", "greet", Bytes::new());
            call.metadata = metadata.clone();
            let nested = make_client_span(&mut call, peer);
            let nested_id = nested.context().span().span_context().span_id();
            assert_eq!(
                call.metadata.get("traceparent"),
                Some(format!("00-{trace_id}-{nested_id}-01").as_str())
            );
            record_outcome::<()>(&nested, &Err(Status::unavailable("gone")));
            drop(nested);
            record_code(&served, Code::Ok);
            drop(served);
            (served_id, nested_id)
        });
        let spans = crate::lock(&kept.0).clone();
        let find = |id| {
            spans
                .iter()
                .find(|span| span.span_context.span_id() == id)
                .unwrap_or_else(|| panic!("span {id} was not exported: {spans:#?}"))
        };
        let served = find(served_id);
        assert_eq!(served.span_kind, SpanKind::Server);
        assert_eq!(served.name, "concierge/welcome");
        assert_eq!(served.span_context.trace_id().to_string(), trace_id);
        assert_eq!(served.parent_span_id.to_string(), caller);
        let nested = find(nested_id);
        assert_eq!(nested.span_kind, SpanKind::Client);
        assert_eq!(nested.name, "greeter/greet");
        assert_eq!(nested.parent_span_id, served_id);
        assert!(matches!(
            nested.status,
            opentelemetry::trace::Status::Error { .. }
        ));
        let attribute = |span: &opentelemetry_sdk::trace::SpanData, key: &str| {
            span.attributes
                .iter()
                .find(|attribute| attribute.key.as_str() == key)
                .map(|attribute| attribute.value.to_string())
        };
        assert_eq!(attribute(nested, "rpc.system").as_deref(), Some("meshrpc"));
        assert_eq!(
            attribute(nested, "rpc.response.status_code").as_deref(),
            Some("unavailable")
        );
        assert_eq!(
            attribute(nested, "server.address").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            attribute(served, "rpc.response.status_code").as_deref(),
            Some("ok")
        );
    }
}
