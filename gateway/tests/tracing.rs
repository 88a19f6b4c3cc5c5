//! Trace export end to end: real `mesh-api`, `concierge` and `greeter` processes on loopback
//! export their spans over OTLP/HTTP to a collector this test runs (an HTTP server on
//! 127.0.0.1 that decodes `POST /v1/traces` protobuf bodies with `opentelemetry-proto`), and
//! one `POST /concierge/welcome` must arrive as one trace whose parent links run gateway
//! request → gateway client → concierge server → concierge clients → greeter servers.
//!
//! The binaries are found as the other end-to-end tests find them (`target/<profile>/`, which
//! `cargo nextest run --workspace` fills, built with their default `otel` feature).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use common::{addr_after, get, send, workspace_binary};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use tokio::time::Instant;

/// One span as the collector received it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    name: String,
    kind: i32,
    attributes: HashMap<String, String>,
}

impl Received {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    fn is(&self, kind: SpanKind) -> bool {
        self.kind == kind as i32
    }
}

/// What the collector saw: spans, and requests it refused.
#[derive(Debug, Default)]
struct Collected {
    spans: Vec<Received>,
    refused: Vec<String>,
    requests: usize,
}

/// An OTLP/HTTP collector on loopback.
struct Collector {
    addr: SocketAddr,
    collected: Arc<Mutex<Collected>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(Value::StringValue(text)) => text.clone(),
        Some(Value::IntValue(number)) => number.to_string(),
        Some(Value::BoolValue(flag)) => flag.to_string(),
        Some(Value::DoubleValue(number)) => number.to_string(),
        other => format!("{other:?}"),
    }
}

async fn receive(
    collected: Arc<Mutex<Collected>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], Vec<u8>) {
    let reply = (
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    );
    let mut collected = collected.lock().expect("the collector's lock");
    collected.requests += 1;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if content_type != "application/x-protobuf" {
        collected
            .refused
            .push(format!("content-type {content_type:?}"));
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, reply.0, reply.1);
    }
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(request) => request,
        Err(error) => {
            collected.refused.push(format!("undecodable body: {error}"));
            return (StatusCode::BAD_REQUEST, reply.0, reply.1);
        }
    };
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .and_then(|resource| {
                resource
                    .attributes
                    .iter()
                    .find(|attribute| attribute.key == "service.name")
            })
            .map(|attribute| text(attribute.value.as_ref()))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                collected.spans.push(Received {
                    service: service.clone(),
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent: span.parent_span_id,
                    name: span.name,
                    kind: span.kind,
                    attributes: span
                        .attributes
                        .iter()
                        .map(|attribute| (attribute.key.clone(), text(attribute.value.as_ref())))
                        .collect(),
                });
            }
        }
    }
    (StatusCode::OK, reply.0, reply.1)
}

async fn start_collector() -> Collector {
    let collected = Arc::new(Mutex::new(Collected::default()));
    let state = collected.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: Bytes| receive(state.clone(), headers, body)),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("its address");
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Collector {
        addr,
        collected,
        server,
    }
}

/// A child process, killed and reaped when dropped.
struct Process {
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Whether one of its threads is the trace exporter's sender.
    fn exports(&self) -> bool {
        let tasks = PathBuf::from(format!("/proc/{}/task", self.child.id()));
        let Ok(entries) = std::fs::read_dir(tasks) else {
            return false;
        };
        entries.flatten().any(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.trim() == "otlp-sender")
        })
    }
}

/// Starts `program` with `env` (and no inherited `OTEL_*` variables); returns it with the first
/// line it prints on stdout.
fn start(program: &Path, args: &[String], env: &[(&str, String)]) -> (Process, String) {
    let mut command = Command::new(program);
    command
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (name, _) in std::env::vars() {
        if name.starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|error| panic!("{} does not start: {error}", program.display()));
    let stdout = child.stdout.take().expect("stdout");
    let process = Process { child };
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
        .expect("a first line");
    assert!(
        !line.is_empty(),
        "{} exited before printing its address",
        program.display()
    );
    (process, line)
}

/// A gateway, a concierge and a greeter, all with `env`.
struct Mesh {
    http: SocketAddr,
    gateway: Process,
    services: Vec<Process>,
    _state: tempfile::TempDir,
}

async fn start_mesh(test: &str, env: &[(&str, String)]) -> Mesh {
    let state = tempfile::tempdir().expect("a temporary directory");
    let cluster = format!("tracing-{test}-{}", std::process::id());
    let common = |listen: &str| -> Vec<String> {
        vec![
            "--listen".into(),
            listen.into(),
            "--cluster".into(),
            cluster.clone(),
            "--state-dir".into(),
            state.path().display().to_string(),
        ]
    };
    let mut args = common("127.0.0.1:0");
    args.extend(["--http".into(), "127.0.0.1:0".into()]);
    let (gateway, line) = start(Path::new(env!("CARGO_BIN_EXE_mesh-api")), &args, env);
    let http = addr_after(&line, "serving HTTP on ");
    let mesh = addr_after(&line, "the mesh on ");
    let mut services = Vec::new();
    for name in ["greeter", "concierge"] {
        let binary = workspace_binary(name).unwrap_or_else(|| {
            panic!(
                "the {name} binary is missing: build the workspace first (cargo build --workspace)"
            )
        });
        let mut args = vec!["-N".to_owned(), mesh.to_string()];
        args.extend(common("127.0.0.1:0"));
        services.push(start(&binary, &args, env).0);
    }
    for service in ["greeter", "concierge"] {
        wait_for_member(http, service).await;
    }
    Mesh {
        http,
        gateway,
        services,
        _state: state,
    }
}

/// Waits until `/readyz` reports a live member publishing `service`.
async fn wait_for_member(http: SocketAddr, service: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = get(http, "/readyz").await;
        let live = answer.json()["dependencies"]
            .as_array()
            .and_then(|list| {
                list.iter()
                    .find(|dependency| dependency["service"] == service)
                    .and_then(|dependency| dependency["rpc_members"].as_u64())
            })
            .unwrap_or(0);
        if live >= 1 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{service} never joined: {}",
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Welcomes two guests, again while the concierge does not see the greeter yet (a 503 for at
/// most 20 s: members learn of each other by gossip, each on its own schedule).
async fn welcome(http: SocketAddr, headers: &[(&str, &str)]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = send(
            http,
            "POST",
            "/concierge/welcome",
            headers,
            r#"{"guests": ["Ada", "Max"]}"#.to_owned(),
        )
        .await;
        if answer.status == 503 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        assert_eq!(answer.status, 200, "{answer:?}");
        let greetings = answer.json()["greetings"].clone();
        assert_eq!(greetings.as_array().map(Vec::len), Some(2), "{answer:?}");
        return;
    }
}

fn export_env(collector: &Collector) -> Vec<(&'static str, String)> {
    vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{}", collector.addr),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ]
}

/// The welcome call's chain, as found among the collected spans of the trace of the gateway
/// request span `root`.
struct Chain {
    root: Received,
    trace: Vec<Received>,
}

impl Chain {
    fn children<'a>(
        &'a self,
        parent: &'a Received,
        kind: SpanKind,
        service: &'a str,
    ) -> impl Iterator<Item = &'a Received> + 'a {
        self.trace.iter().filter(move |span| {
            span.parent == parent.span_id && span.is(kind) && span.service == service
        })
    }
}

/// Waits (at most 20 s) until the collector holds a complete welcome trace whose request span
/// satisfies `is_root`, and returns it.
async fn welcome_trace(collector: &Collector, is_root: impl Fn(&Received) -> bool) -> Chain {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let spans = collector
            .collected
            .lock()
            .expect("the collector's lock")
            .spans
            .clone();
        let roots = spans.iter().filter(|span| {
            span.service == "mesh-api"
                && span.is(SpanKind::Server)
                && span.attribute("http.route") == Some("/{service}/{*rest}")
                && span.attribute("http.response.status_code") == Some("200")
                && is_root(span)
        });
        for root in roots {
            let trace: Vec<Received> = spans
                .iter()
                .filter(|span| span.trace_id == root.trace_id)
                .cloned()
                .collect();
            let count = |service: &str, kind: SpanKind| {
                trace
                    .iter()
                    .filter(|span| span.service == service && span.is(kind))
                    .count()
            };
            // Each process exports on its own schedule: wait for all of the chain's spans.
            if count("mesh-api", SpanKind::Client) >= 1
                && count("concierge", SpanKind::Server) >= 1
                && count("concierge", SpanKind::Client) >= 2
                && count("greeter", SpanKind::Server) >= 2
            {
                return Chain {
                    root: root.clone(),
                    trace,
                };
            }
        }
        assert!(
            Instant::now() < deadline,
            "no complete welcome trace arrived; the collector has {:#?}",
            collector.collected.lock().expect("the collector's lock")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_welcome_request_is_one_trace_across_gateway_concierge_and_greeter() {
    let collector = start_collector().await;
    let mesh = start_mesh("chain", &export_env(&collector)).await;
    for process in std::iter::once(&mesh.gateway).chain(&mesh.services) {
        assert!(
            process.exports(),
            "a binary has no trace exporter running: rebuild it with its default features \
             (cargo build -p greeter -p concierge)"
        );
    }

    welcome(mesh.http, &[]).await;
    let chain = welcome_trace(&collector, |span| span.parent.is_empty()).await;
    let root = &chain.root;
    assert_eq!(root.attribute("http.request.method"), Some("POST"));
    assert_eq!(root.attribute("http.response.status_code"), Some("200"));
    assert_eq!(root.name, "POST /{service}/{*rest}");

    // The gateway's call to the concierge is a child of its request span ...
    let gateway_calls: Vec<&Received> = chain
        .children(root, SpanKind::Client, "mesh-api")
        .filter(|span| span.attribute("rpc.service") == Some("concierge"))
        .collect();
    assert_eq!(gateway_calls.len(), 1, "{:#?}", chain.trace);
    let gateway_call = gateway_calls[0];
    assert_eq!(gateway_call.name, "concierge/welcome");
    assert_eq!(gateway_call.attribute("rpc.system"), Some("meshrpc"));
    assert_eq!(gateway_call.attribute("rpc.method"), Some("welcome"));
    assert_eq!(
        gateway_call.attribute("rpc.response.status_code"),
        Some("ok")
    );
    assert_eq!(gateway_call.attribute("server.address"), Some("127.0.0.1"));

    // ... the concierge's server span a child of that call ...
    let served: Vec<&Received> = chain
        .children(gateway_call, SpanKind::Server, "concierge")
        .collect();
    assert_eq!(served.len(), 1, "{:#?}", chain.trace);
    let served = served[0];
    assert_eq!(served.attribute("rpc.service"), Some("concierge"));
    assert_eq!(served.attribute("rpc.method"), Some("welcome"));
    assert_eq!(served.attribute("rpc.response.status_code"), Some("ok"));

    // ... its two calls to the greeter children of the server span, and each greeter server
    // span a child of one of them.
    let greets: Vec<&Received> = chain
        .children(served, SpanKind::Client, "concierge")
        .collect();
    assert_eq!(greets.len(), 2, "{:#?}", chain.trace);
    for greet in greets {
        assert_eq!(greet.attribute("rpc.service"), Some("greeter"), "{greet:?}");
        let greeted: Vec<&Received> = chain.children(greet, SpanKind::Server, "greeter").collect();
        assert_eq!(greeted.len(), 1, "{:#?}", chain.trace);
        assert_eq!(greeted[0].name, "greeter/greet");
    }
    // Nothing in the trace hangs off a span the trace does not hold.
    for span in &chain.trace {
        assert!(
            span.parent.is_empty() || chain.trace.iter().any(|other| other.span_id == span.parent),
            "{span:?} has a parent outside the trace"
        );
    }

    // A client's own `traceparent` is continued: its trace, its span as the parent.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{parent_id}-01");
    welcome(mesh.http, &[("traceparent", &traceparent)]).await;
    let continued = welcome_trace(&collector, |span| hex(&span.trace_id) == trace_id).await;
    assert_eq!(hex(&continued.root.parent), parent_id);

    // A typed route (it calls a generated client, forwarding no header) is traced as well.
    let answer = get(mesh.http, "/greeter/greet/Max").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let spans = collector
            .collected
            .lock()
            .expect("the collector's lock")
            .spans
            .clone();
        let linked = spans
            .iter()
            .filter(|span| {
                span.service == "mesh-api"
                    && span.is(SpanKind::Server)
                    && span.attribute("http.route") == Some("/greeter/greet/{name}")
            })
            .any(|root| {
                spans
                    .iter()
                    .filter(|call| call.parent == root.span_id && call.is(SpanKind::Client))
                    .any(|call| {
                        call.name == "greeter/greet"
                            && spans.iter().any(|served| {
                                served.parent == call.span_id
                                    && served.service == "greeter"
                                    && served.is(SpanKind::Server)
                                    && served.trace_id == root.trace_id
                            })
                    })
            });
        if linked {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "GET /greeter/greet/Max never arrived as request -> call -> greeter: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let collected = collector.collected.lock().expect("the collector's lock");
    assert!(collected.refused.is_empty(), "{:?}", collected.refused);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_exported_and_calls_work_as_before() {
    let collector = start_collector().await;
    // Everything but the endpoint, so only its absence keeps export off.
    let env = vec![
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ("OTEL_SERVICE_NAME", "anything".to_owned()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
    ];
    let mesh = start_mesh("off", &env).await;
    welcome(mesh.http, &[]).await;
    for process in std::iter::once(&mesh.gateway).chain(&mesh.services) {
        assert!(!process.exports(), "an exporter runs without an endpoint");
    }
    // Longer than several batch delays: an exporter, had one started, would have sent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        collector
            .collected
            .lock()
            .expect("the collector's lock")
            .requests,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_other_than_http_protobuf_is_refused_at_start() {
    let collector = start_collector().await;
    let state = tempfile::tempdir().expect("a temporary directory");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mesh-api"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--state-dir",
        ])
        .arg(state.path())
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{}", collector.addr),
        )
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mesh-api starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("its status") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mesh-api kept running with OTEL_EXPORTER_OTLP_PROTOCOL=grpc");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    assert!(!status.success());
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && stderr.contains("http/protobuf"),
        "{stderr}"
    );
}
