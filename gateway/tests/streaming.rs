//! The streaming routes, in-process: the gateway ([`gateway::serve`]) in front of a node that
//! publishes `numbers` (the streaming example) and `probe`, a hand-written service whose
//! streams report what became of them (finished, aborted, dropped) and how far they were
//! produced.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{Answer, send};
use futures_util::{SinkExt, StreamExt};
use meshrpc::codec::{decode_item, decode_request, encode};
use meshrpc::{
    Body, BoxFuture, Code, Dispatch, FieldSpec, MethodKind, MethodSpec, Node, ServiceSpec, Status,
    Streaming,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const PROBE_DESCRIPTOR: &str = r#"{
  "service": "probe",
  "doc": "Streams that report what became of them.",
  "schema_hash": "00000000000000bb",
  "methods": [
    {"name": "ticks", "doc": "1, 2, ... upto; then fails if asked to.", "kind": "server_streaming",
     "idempotent": true, "timeout_ms": null, "result_field": "result",
     "request": {"type": "object", "properties": {"upto": {"type": "integer", "format": "int64", "minimum": 0}, "fail": {"type": "boolean"}}, "required": ["upto", "fail"]},
     "response_stream": {"type": "integer", "format": "int64", "minimum": 0}},
    {"name": "blobs", "doc": "`upto` strings of 1 KiB, produced as they are read.", "kind": "server_streaming",
     "idempotent": true, "timeout_ms": null, "result_field": "result",
     "request": {"type": "object", "properties": {"upto": {"type": "integer", "format": "int64", "minimum": 0}}, "required": ["upto"]},
     "response_stream": {"type": "string"}},
    {"name": "silent", "doc": "Never says anything.", "kind": "server_streaming",
     "idempotent": false, "timeout_ms": null, "result_field": "result",
     "request": {"type": "object", "properties": {}, "required": []},
     "response_stream": {"type": "integer", "format": "int64", "minimum": 0}},
    {"name": "total", "doc": "Adds up numbers.", "kind": "client_streaming",
     "idempotent": false, "timeout_ms": null, "result_field": "total",
     "request": {"type": "object", "properties": {"start": {"type": "integer", "format": "int64", "minimum": 0}}, "required": ["start"]},
     "request_stream": {"type": "integer", "format": "int64", "minimum": 0},
     "response": {"type": "object", "properties": {"total": {"type": "integer", "format": "int64", "minimum": 0}}, "required": ["total"]}},
    {"name": "echo", "doc": "Answers each word in capitals.", "kind": "bidirectional",
     "idempotent": false, "timeout_ms": null, "result_field": "result",
     "request": {"type": "object", "properties": {}, "required": []},
     "request_stream": {"type": "string"},
     "response_stream": {"type": "string"}}
  ],
  "types": {}
}"#;

static PROBE_SPEC: ServiceSpec = ServiceSpec {
    name: "probe",
    doc: "Streams that report what became of them.",
    methods: &[
        MethodSpec {
            service: "probe",
            name: "ticks",
            doc: "1, 2, ... upto; then fails if asked to.",
            idempotent: true,
            timeout: None,
            attempt_timeout: None,
            hedge_after: None,
            params: &[
                FieldSpec {
                    name: "upto",
                    rust_type: "u64",
                },
                FieldSpec {
                    name: "fail",
                    rust_type: "bool",
                },
            ],
            result_field: "result",
            result_type: "u64",
            kind: MethodKind::ServerStreaming,
            index: 0,
        },
        MethodSpec {
            service: "probe",
            name: "blobs",
            doc: "`upto` strings of 1 KiB, produced as they are read.",
            idempotent: true,
            timeout: None,
            attempt_timeout: None,
            hedge_after: None,
            params: &[FieldSpec {
                name: "upto",
                rust_type: "u64",
            }],
            result_field: "result",
            result_type: "String",
            kind: MethodKind::ServerStreaming,
            index: 1,
        },
        MethodSpec {
            service: "probe",
            name: "silent",
            doc: "Never says anything.",
            idempotent: false,
            timeout: None,
            attempt_timeout: None,
            hedge_after: None,
            params: &[],
            result_field: "result",
            result_type: "u64",
            kind: MethodKind::ServerStreaming,
            index: 2,
        },
        MethodSpec {
            service: "probe",
            name: "total",
            doc: "Adds up numbers.",
            idempotent: false,
            timeout: None,
            attempt_timeout: None,
            hedge_after: None,
            params: &[FieldSpec {
                name: "start",
                rust_type: "u64",
            }],
            result_field: "total",
            result_type: "u64",
            kind: MethodKind::ClientStreaming,
            index: 3,
        },
        MethodSpec {
            service: "probe",
            name: "echo",
            doc: "Answers each word in capitals.",
            idempotent: false,
            timeout: None,
            attempt_timeout: None,
            hedge_after: None,
            params: &[],
            result_field: "result",
            result_type: "String",
            kind: MethodKind::Bidirectional,
            index: 4,
        },
    ],
    schema_hash: 0xbb,
    manifest: "",
    descriptor: PROBE_DESCRIPTOR,
    use_schemas: &[],
};

/// What became of the probe's streams.
#[derive(Debug, Default)]
struct Seen {
    /// Blobs produced so far.
    produced: AtomicU64,
    /// A `blobs` stream was dropped before its end.
    blobs_dropped: AtomicBool,
    /// How the last `total` call's input ended: its sum, or the code it was aborted with.
    total: Mutex<Option<Result<u64, Code>>>,
    /// How the last `echo` call's input ended.
    echo: Mutex<Option<Result<(), Code>>>,
}

#[derive(Debug, Clone, Default)]
struct Probe {
    seen: Arc<Seen>,
}

#[derive(Deserialize)]
struct Ticks {
    upto: u64,
    fail: bool,
}

#[derive(Deserialize)]
struct Total {
    start: u64,
}

#[derive(Serialize)]
struct Totalled {
    total: u64,
}

#[derive(Deserialize)]
struct Blobs {
    upto: u64,
}

/// Sets `blobs_dropped` unless disarmed: the stream was dropped before it ended.
struct DropFlag(Arc<Seen>, bool);

impl Drop for DropFlag {
    fn drop(&mut self) {
        if self.1 {
            self.0.blobs_dropped.store(true, Ordering::SeqCst);
        }
    }
}

/// `1, 2, ... upto` (then `resource_exhausted` if `fail`), each item made by `item`, produced
/// only as it is read; `on_item` runs for each, and `flag` is disarmed at the end.
fn produce(
    upto: u64,
    fail: bool,
    mut flag: Option<DropFlag>,
    on_item: impl Fn() + Send + Sync + 'static,
    item: impl Fn(u64) -> Result<Bytes, Status> + Send + Sync + 'static,
) -> Streaming<Bytes> {
    let mut next = 1u64;
    let mut ended = false;
    Streaming::new(futures_util::stream::poll_fn(move |_| {
        if ended {
            return std::task::Poll::Ready(None);
        }
        if next > upto {
            ended = true;
            if let Some(flag) = flag.as_mut() {
                flag.1 = false;
            }
            if fail {
                let error = Status::new(Code::ResourceExhausted, "no more ticks today");
                return std::task::Poll::Ready(Some(Err(error)));
            }
            return std::task::Poll::Ready(None);
        }
        on_item();
        let value = item(next);
        next += 1;
        std::task::Poll::Ready(Some(value))
    }))
}

impl Dispatch for Probe {
    fn spec(&self) -> &'static ServiceSpec {
        &PROBE_SPEC
    }

    fn dispatch(
        &self,
        method: &'static MethodSpec,
        request: Bytes,
        stream: Option<Streaming<Bytes>>,
    ) -> BoxFuture<'static, Result<Body, Status>> {
        let seen = self.seen.clone();
        Box::pin(async move {
            match method.name {
                "ticks" => {
                    let Ticks { upto, fail } = decode_request("ticks", &request)?;
                    let items = produce(upto, fail, None, || {}, |n| encode(&n));
                    Ok(Body::Stream(items))
                }
                "blobs" => {
                    let Blobs { upto } = decode_request("blobs", &request)?;
                    let flag = DropFlag(seen.clone(), true);
                    let counted = seen.clone();
                    let items = produce(
                        upto,
                        false,
                        Some(flag),
                        move || {
                            counted.produced.fetch_add(1, Ordering::SeqCst);
                        },
                        |n| encode(&format!("{n:01024}")),
                    );
                    Ok(Body::Stream(items))
                }
                "silent" => Ok(Body::Stream(
                    Streaming::new(futures_util::stream::pending()),
                )),
                "total" => {
                    let Total { start } = decode_request("total", &request)?;
                    let mut items = stream.unwrap_or_else(Streaming::empty);
                    let mut total = start;
                    let outcome = loop {
                        match items.message().await {
                            Ok(Some(item)) => total += decode_item::<u64>("total", &item)?,
                            Ok(None) => break Ok(total),
                            Err(status) => break Err(status),
                        }
                    };
                    *meshrpc::lock(&seen.total) =
                        Some(outcome.as_ref().map(|total| *total).map_err(Status::code));
                    Ok(Body::Message(encode(&Totalled { total: outcome? })?))
                }
                "echo" => {
                    let items = stream.unwrap_or_else(Streaming::empty);
                    let answers = items.map(move |item| match item {
                        Ok(item) => {
                            let word: String = decode_item("echo", &item)?;
                            encode(&word.to_uppercase())
                        }
                        Err(status) => {
                            *meshrpc::lock(&seen.echo) = Some(Err(status.code()));
                            Err(status)
                        }
                    });
                    Ok(Body::Stream(Streaming::new(answers)))
                }
                other => Err(Status::unimplemented(format!("no method {other}"))),
            }
        })
    }
}

/// A gateway node with the gateway on it, and a node publishing `numbers` and `probe`.
struct Mesh {
    _state: tempfile::TempDir,
    _gateway_node: Node,
    _service_node: Node,
    gateway: gateway::Gateway,
    seen: Arc<Seen>,
}

impl Mesh {
    async fn start(cluster: &str, config: gateway::Config) -> Mesh {
        let state = tempfile::tempdir().expect("a temporary directory");
        let gateway_node = Node::builder("mesh-api")
            .cluster(cluster)
            .listen("127.0.0.1:0".parse().expect("addr"))
            .state_dir(state.path())
            .start()
            .await
            .expect("the gateway node starts");
        let config = gateway::Config {
            http: "127.0.0.1:0".parse().expect("addr"),
            ..config
        };
        let gateway = gateway::serve(config, gateway_node.clone())
            .await
            .expect("the gateway serves");
        let probe = Probe::default();
        let seen = probe.seen.clone();
        let service_node = Node::builder("services")
            .cluster(cluster)
            .listen("127.0.0.1:0".parse().expect("addr"))
            .state_dir(state.path())
            .seeds([gateway_node.local_addr().to_string()])
            .publish(numbers::NumbersServer::new(numbers::NumbersService))
            .publish(probe)
            .start()
            .await
            .expect("the service node starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(gateway_node.view().has_live("numbers", None)
            && gateway_node.view().has_live("probe", None))
        {
            assert!(Instant::now() < deadline, "the services never joined");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Mesh {
            _state: state,
            _gateway_node: gateway_node,
            _service_node: service_node,
            gateway,
            seen,
        }
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.gateway.local_addr()
    }
}

async fn post_json(addr: std::net::SocketAddr, path: &str, body: &str) -> Answer {
    send(addr, "POST", path, &[], body.to_owned()).await
}

/// The lines of an NDJSON body, parsed.
fn lines(answer: &Answer) -> Vec<serde_json::Value> {
    answer
        .body
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect()
}

/// Waits (at most 10 s) until `done` holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens a raw connection and sends `head` (and `body`) as they are.
async fn raw(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> TcpStream {
    let mut socket = TcpStream::connect(addr).await.expect("connects");
    socket.write_all(head.as_bytes()).await.expect("writes");
    socket.write_all(body).await.expect("writes");
    socket
}

/// Reads from `socket` until `marker` has arrived (at most 10 s); returns what was read.
async fn read_until(socket: &mut TcpStream, marker: &str) -> String {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&seen).contains(marker) {
        let read = tokio::time::timeout_at(deadline, socket.read(&mut buffer))
            .await
            .unwrap_or_else(|_| panic!("{marker:?} never came: {}", String::from_utf8_lossy(&seen)))
            .expect("reads");
        assert!(
            read > 0,
            "closed before {marker:?}: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buffer[..read]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stream_is_ndjson_items_then_the_ok_line() {
    let mesh = Mesh::start("gw-stream-ndjson", gateway::Config::default()).await;
    let answer = post_json(
        mesh.addr(),
        "/numbers/count",
        r#"{"from":1,"to":5,"every_ms":0}"#,
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.headers["content-type"], "application/x-ndjson");
    assert_eq!(
        answer.body,
        "{\"item\":1}\n{\"item\":2}\n{\"item\":3}\n{\"item\":4}\n{\"item\":5}\n{\"status\":\"ok\"}\n"
    );
    // An idempotent method with scalar parameters also opens with GET, as an EventSource does.
    let answer = send(
        mesh.addr(),
        "GET",
        "/numbers/count?from=2&to=3&every_ms=0",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(
        answer.body,
        "{\"item\":2}\n{\"item\":3}\n{\"status\":\"ok\"}\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_are_written_as_they_are_produced() {
    let mesh = Mesh::start("gw-stream-live", gateway::Config::default()).await;
    let body = r#"{"from":1,"to":3,"every_ms":1000}"#;
    let head = format!(
        "POST /numbers/count HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut socket = raw(mesh.addr(), &head, body.as_bytes()).await;
    let first = read_until(&mut socket, "{\"item\":1}").await;
    assert!(
        !first.contains("\"status\""),
        "the whole stream came at once: {first}"
    );
    let rest = read_until(&mut socket, "{\"status\":\"ok\"}").await;
    assert!(rest.contains("{\"item\":3}"), "{rest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_frame_items_and_the_end() {
    let mesh = Mesh::start("gw-stream-sse", gateway::Config::default()).await;
    let answer = send(
        mesh.addr(),
        "POST",
        "/numbers/count",
        &[("accept", "text/event-stream")],
        r#"{"from":7,"to":8,"every_ms":0}"#.to_owned(),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.headers["content-type"], "text/event-stream");
    assert_eq!(
        answer.body,
        "event: item\ndata: {\"item\":7}\n\nevent: item\ndata: {\"item\":8}\n\n\
         event: end\ndata: {\"status\":\"ok\"}\n\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_stream_ends_with_its_status_line_and_an_early_failure_is_an_http_error() {
    let mesh = Mesh::start("gw-stream-fail", gateway::Config::default()).await;
    let answer = post_json(mesh.addr(), "/probe/ticks", r#"{"upto":2,"fail":true}"#).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        lines(&answer),
        vec![
            serde_json::json!({"item": 1}),
            serde_json::json!({"item": 2}),
            serde_json::json!({"status": "resource_exhausted", "error": "no more ticks today"}),
        ]
    );
    // Refused before the first item: the usual error answer.
    let answer = post_json(
        mesh.addr(),
        "/numbers/count",
        r#"{"from":5,"to":1,"every_ms":0}"#,
    )
    .await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(answer.json()["code"], "invalid_argument");
    assert!(answer.error().contains("cannot count from 5"), "{answer:?}");
    // A request the schema refuses never reaches the service.
    let answer = post_json(
        mesh.addr(),
        "/numbers/count",
        r#"{"from":"one","to":1,"every_ms":0}"#,
    )
    .await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(answer.error().contains("`from`"), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stream_takes_one_item_per_line_and_answers_the_envelope() {
    let mesh = Mesh::start("gw-stream-sum", gateway::Config::default()).await;
    let answer = send(
        mesh.addr(),
        "POST",
        "/numbers/sum",
        &[("content-type", "application/x-ndjson")],
        "{\"item\":1}\n{\"item\":2}\n\n{\"item\":3}".to_owned(),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, r#"{"error":"","sum":6}"#);
    // The other parameters come from the query string.
    let answer = post_json(mesh.addr(), "/probe/total?start=10", "{\"item\":5}\n").await;
    assert_eq!(answer.body, r#"{"error":"","total":15}"#);
    assert_eq!(*meshrpc::lock(&mesh.seen.total), Some(Ok(15)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_line_aborts_the_call_and_names_the_line_and_the_field() {
    let mesh = Mesh::start("gw-stream-badline", gateway::Config::default()).await;
    let answer = post_json(
        mesh.addr(),
        "/probe/total?start=0",
        "{\"item\":1}\n{\"item\":\"two\"}\n{\"item\":3}\n",
    )
    .await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(answer.json()["code"], "invalid_argument");
    let error = answer.error();
    assert!(error.starts_with("line 2: field `item`"), "{error}");
    eventually("the handler sees the abort", || {
        meshrpc::lock(&mesh.seen.total).is_some()
    })
    .await;
    assert_eq!(
        *meshrpc::lock(&mesh.seen.total),
        Some(Err(Code::InvalidArgument)),
        "the handler saw an error, not an end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_request_body_aborts_the_call() {
    let mesh = Mesh::start("gw-stream-cut", gateway::Config::default()).await;
    let head = "POST /probe/total?start=0 HTTP/1.1\r\nHost: gateway\r\n\
                Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n";
    // One whole line, then a chunk that promises 32 bytes and sends 6, then the end of input.
    let mut socket = raw(mesh.addr(), head, b"b\r\n{\"item\":1}\n\r\n20\r\n{\"item").await;
    socket.shutdown().await.expect("half-closes");
    let answer = read_until(&mut socket, "\r\n\r\n").await;
    eventually("the handler sees the abort", || {
        meshrpc::lock(&mesh.seen.total).is_some()
    })
    .await;
    assert!(
        matches!(*meshrpc::lock(&mesh.seen.total), Some(Err(_))),
        "the handler saw an end, not an error: {:?}",
        meshrpc::lock(&mesh.seen.total)
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidirectional_call_is_a_websocket() {
    let mesh = Mesh::start("gw-stream-ws", gateway::Config::default()).await;
    let url = format!("ws://{}/numbers/running_total", mesh.addr());
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrades");
    let mut answers = Vec::new();
    for number in [1, 2, 3] {
        socket
            .send(Message::text(format!("{{\"item\":{number}}}")))
            .await
            .expect("sends");
        answers.push(next_text(&mut socket).await);
    }
    socket
        .send(Message::text(r#"{"status":"ok"}"#))
        .await
        .expect("sends");
    answers.push(next_text(&mut socket).await);
    assert_eq!(
        answers,
        [
            r#"{"item":1}"#,
            r#"{"item":3}"#,
            r#"{"item":6}"#,
            r#"{"status":"ok"}"#
        ]
    );
    let closed = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .expect("closes in time");
    assert!(
        matches!(closed, Some(Ok(Message::Close(_))) | None),
        "{closed:?}"
    );
    // A plain GET is told to open a WebSocket; a POST is not allowed.
    let answer = send(
        mesh.addr(),
        "GET",
        "/numbers/running_total",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(answer.error().contains("WebSocket"), "{answer:?}");
    let answer = post_json(mesh.addr(), "/numbers/running_total", "").await;
    assert_eq!(answer.status, 405, "{answer:?}");
    assert_eq!(answer.headers["allow"], "GET");
}

async fn next_text(
    socket: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
) -> String {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .expect("a message");
        if let Message::Text(text) = message {
            return text.as_str().to_owned();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_closed_without_ok_aborts_the_call_and_a_bad_message_is_named() {
    let mesh = Mesh::start("gw-stream-wsabort", gateway::Config::default()).await;
    let url = format!("ws://{}/probe/echo", mesh.addr());
    let (mut socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("upgrades");
    socket
        .send(Message::text(r#"{"item":"hello"}"#))
        .await
        .expect("sends");
    assert_eq!(next_text(&mut socket).await, r#"{"item":"HELLO"}"#);
    socket.close(None).await.expect("closes");
    drop(socket);
    eventually("the handler sees the abort", || {
        meshrpc::lock(&mesh.seen.echo).is_some()
    })
    .await;
    assert_eq!(*meshrpc::lock(&mesh.seen.echo), Some(Err(Code::Cancelled)));

    let (mut socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("upgrades");
    socket
        .send(Message::text(r#"{"item":5}"#))
        .await
        .expect("sends");
    let last: serde_json::Value =
        serde_json::from_str(&next_text(&mut socket).await).expect("JSON");
    assert_eq!(last["status"], "invalid_argument", "{last}");
    let error = last["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("message 1: field `item`"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnecting_client_cancels_the_call_and_a_slow_one_holds_the_producer_back() {
    let mesh = Mesh::start("gw-stream-gone", gateway::Config::default()).await;
    // 100 MiB in all, far more than the buffers on the way hold.
    const UPTO: u64 = 100_000;
    let body = format!(r#"{{"upto":{UPTO}}}"#);
    let head = format!(
        "POST /probe/blobs HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let mut socket = raw(mesh.addr(), &head, body.as_bytes()).await;
    read_until(&mut socket, "{\"item\":\"000").await;
    // The client reads no more: production stops once the buffers on the way are full.
    let mut last = 0;
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let produced = mesh.seen.produced.load(Ordering::SeqCst);
        if produced == last || Instant::now() > deadline {
            break;
        }
        last = produced;
    }
    let produced = mesh.seen.produced.load(Ordering::SeqCst);
    assert!(produced < UPTO, "the producer ran to the end: {produced}");
    assert!(
        !mesh.seen.blobs_dropped.load(Ordering::SeqCst),
        "the call ended while the client was still there"
    );
    drop(socket);
    eventually("the call is cancelled", || {
        mesh.seen.blobs_dropped.load(Ordering::SeqCst)
    })
    .await;
    assert!(mesh.seen.produced.load(Ordering::SeqCst) < UPTO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_holds_its_admission_until_it_ends_and_is_counted() {
    let config = gateway::Config {
        max_in_flight: 1,
        ..gateway::Config::default()
    };
    let mesh = Mesh::start("gw-stream-admit", config).await;
    let body = r#"{"from":1,"to":2,"every_ms":1000}"#;
    let head = format!(
        "POST /numbers/count HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut socket = raw(mesh.addr(), &head, body.as_bytes()).await;
    read_until(&mut socket, "{\"item\":1}").await;
    let shed = post_json(
        mesh.addr(),
        "/numbers/count",
        r#"{"from":1,"to":1,"every_ms":0}"#,
    )
    .await;
    assert_eq!(
        shed.status, 503,
        "the open stream holds the only slot: {shed:?}"
    );
    read_until(&mut socket, "{\"status\":\"ok\"}").await;
    drop(socket);
    let mut answer = shed;
    let deadline = Instant::now() + Duration::from_secs(10);
    while answer.status == 503 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        answer = post_json(
            mesh.addr(),
            "/numbers/count",
            r#"{"from":1,"to":1,"every_ms":0}"#,
        )
        .await;
    }
    assert_eq!(answer.status, 200, "the slot came back: {answer:?}");
    let metrics = send(mesh.addr(), "GET", "/metrics", &[], Bytes::new()).await;
    assert!(
        metrics.body.contains(
            r#"gateway_http_requests_total{method="POST",route="/numbers/{*rest}",status="200"} 2"#
        ),
        "{}",
        metrics.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_the_streaming_routes() {
    let mesh = Mesh::start("gw-stream-openapi", gateway::Config::default()).await;
    let answer = send(mesh.addr(), "GET", "/openapi.json", &[], Bytes::new()).await;
    let document = answer.json();
    let document_text = answer.body.clone();
    serde_json::from_value::<openapiv3::OpenAPI>(document.clone())
        .expect("a valid OpenAPI document");
    let count = &document["paths"]["/numbers/count"]["post"];
    assert!(
        count["responses"]["200"]["content"]["application/x-ndjson"].is_object(),
        "{count}"
    );
    assert!(
        count["responses"]["200"]["content"]["text/event-stream"].is_object(),
        "{count}"
    );
    let sum = &document["paths"]["/numbers/sum"]["post"];
    assert!(
        sum["requestBody"]["content"]["application/x-ndjson"].is_object(),
        "{sum}"
    );
    let running = &document["paths"]["/numbers/running_total"]["get"];
    assert!(
        running["description"]
            .as_str()
            .unwrap_or_default()
            .contains("WebSocket"),
        "{running}"
    );
    assert!(
        document_text.contains("{\\\"status\\\":\\\"ok\\\"}"),
        "the line format is described"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_timeout_bounds_the_wait_for_the_first_item_only() {
    let config = gateway::Config {
        request_timeout: Duration::from_millis(400),
        ..gateway::Config::default()
    };
    let mesh = Mesh::start("gw-stream-timeout", config).await;
    let answer = post_json(mesh.addr(), "/probe/silent", "{}").await;
    assert_eq!(answer.status, 504, "{answer:?}");
    assert_eq!(answer.json()["code"], "deadline_exceeded");
    assert!(answer.error().contains("sent nothing within"), "{answer:?}");
    // Four items 200 ms apart outlast the timeout: only the first one had to beat it.
    let answer = post_json(
        mesh.addr(),
        "/numbers/count",
        r#"{"from":1,"to":4,"every_ms":200}"#,
    )
    .await;
    assert_eq!(
        answer.body,
        "{\"item\":1}\n{\"item\":2}\n{\"item\":3}\n{\"item\":4}\n{\"status\":\"ok\"}\n"
    );
    // A client stream's body may not fall silent for longer than the timeout.
    let head = "POST /probe/total?start=0 HTTP/1.1\r\nHost: gateway\r\n\
                Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut socket = raw(mesh.addr(), head, b"b\r\n{\"item\":1}\n\r\n").await;
    let answer = read_until(&mut socket, "\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    eventually("the handler sees the abort", || {
        meshrpc::lock(&mesh.seen.total).is_some()
    })
    .await;
    assert_eq!(
        *meshrpc::lock(&mesh.seen.total),
        Some(Err(Code::DeadlineExceeded))
    );
}
