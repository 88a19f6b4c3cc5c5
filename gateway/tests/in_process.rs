//! The gateway in-process ([`gateway::serve`]) in front of an in-process node that publishes the
//! greeter (RPC and legacy HTTP) and `vault`, a hand-written service with a binary field and a
//! method slower than its timeout. Fast, so it covers the details; `e2e.rs` runs the real
//! binaries.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{get, post, send};
use meshrpc::codec::{decode_request, encode};
use meshrpc::{
    Body, BoxFuture, Dispatch, FieldSpec, MethodKind, MethodSpec, Node, ServiceSpec, Status,
    Streaming,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

const VAULT_DESCRIPTOR: &str = r#"{
  "service": "vault",
  "doc": "Keeps bytes.",
  "schema_hash": "00000000000000aa",
  "methods": [
    {"name": "reverse", "doc": "Reverses bytes.", "idempotent": true, "timeout_ms": null,
     "result_field": "reversed",
     "request": {"type": "object", "properties": {"data": {"type": "string", "format": "byte"}}, "required": ["data"]},
     "response": {"type": "object", "properties": {"reversed": {"type": "string", "format": "byte"}}, "required": ["reversed"]}},
    {"name": "sleep", "doc": "Sleeps.", "idempotent": false, "timeout_ms": 100,
     "result_field": "slept",
     "request": {"type": "object", "properties": {"ms": {"type": "integer", "format": "int64", "minimum": 0}}, "required": ["ms"]},
     "response": {"type": "object", "properties": {"slept": {"type": "integer", "format": "int64", "minimum": 0}}, "required": ["slept"]}},
    {"name": "hold", "doc": "Sleeps, with no timeout of its own.", "idempotent": false, "timeout_ms": null,
     "result_field": "held",
     "request": {"type": "object", "properties": {"ms": {"type": "integer", "format": "int64", "minimum": 0}}, "required": ["ms"]},
     "response": {"type": "object", "properties": {"held": {"type": "integer", "format": "int64", "minimum": 0}}, "required": ["held"]}},
    {"name": "forget", "doc": "Forgets a key; returns nothing.", "idempotent": false, "timeout_ms": null,
     "result_field": "result",
     "request": {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]},
     "response": {"type": "object", "properties": {}, "required": []}},
    {"name": "count", "doc": "Counts up to a number.", "idempotent": true, "timeout_ms": null,
     "result_field": "count",
     "request": {"type": "object", "properties": {"upto": {"type": "integer", "format": "int64", "minimum": 0}, "odd": {"type": "boolean"}}, "required": ["upto", "odd"]},
     "response": {"type": "object", "properties": {"count": {"type": "integer", "format": "int64", "minimum": 0}}, "required": ["count"]}}
  ],
  "types": {}
}"#;

static VAULT_SPEC: ServiceSpec = ServiceSpec {
    name: "vault",
    doc: "Keeps bytes.",
    methods: &[
        MethodSpec {
            service: "vault",
            kind: MethodKind::Unary,
            index: 0,
            name: "reverse",
            doc: "Reverses bytes.",
            idempotent: true,
            timeout: None,
            attempt_timeout: None,
            hedge_after: None,
            params: &[FieldSpec {
                name: "data",
                rust_type: "Vec<u8>",
            }],
            result_field: "reversed",
            result_type: "Vec<u8>",
        },
        MethodSpec {
            service: "vault",
            kind: MethodKind::Unary,
            index: 1,
            name: "sleep",
            doc: "Sleeps.",
            idempotent: false,
            timeout: Some(Duration::from_millis(100)),
            attempt_timeout: None,
            hedge_after: None,
            params: &[FieldSpec {
                name: "ms",
                rust_type: "u64",
            }],
            result_field: "slept",
            result_type: "u64",
        },
        MethodSpec {
            service: "vault",
            kind: MethodKind::Unary,
            index: 2,
            name: "hold",
            doc: "Sleeps, with no timeout of its own.",
            idempotent: false,
            timeout: None,
            attempt_timeout: None,
            hedge_after: None,
            params: &[FieldSpec {
                name: "ms",
                rust_type: "u64",
            }],
            result_field: "held",
            result_type: "u64",
        },
        MethodSpec {
            service: "vault",
            kind: MethodKind::Unary,
            index: 3,
            name: "forget",
            doc: "Forgets a key; returns nothing.",
            idempotent: false,
            timeout: None,
            attempt_timeout: None,
            hedge_after: None,
            params: &[FieldSpec {
                name: "key",
                rust_type: "String",
            }],
            result_field: "result",
            result_type: "()",
        },
        MethodSpec {
            service: "vault",
            kind: MethodKind::Unary,
            index: 4,
            name: "count",
            doc: "Counts up to a number.",
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
                    name: "odd",
                    rust_type: "bool",
                },
            ],
            result_field: "count",
            result_type: "u64",
        },
    ],
    schema_hash: 0xaa,
    manifest: "",
    descriptor: VAULT_DESCRIPTOR,
    use_schemas: &[],
};

#[derive(Serialize, Deserialize)]
struct Data {
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

#[derive(Serialize)]
struct Reversed {
    #[serde(with = "serde_bytes")]
    reversed: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Sleep {
    ms: u64,
}

#[derive(Serialize)]
struct Slept {
    slept: u64,
}

#[derive(Serialize)]
struct Held {
    held: u64,
}

#[derive(Deserialize)]
struct Forget {
    key: String,
}

#[derive(Serialize)]
struct Nothing {}

#[derive(Deserialize)]
struct Count {
    upto: u64,
    odd: bool,
}

#[derive(Serialize)]
struct Counted {
    count: u64,
}

/// The details `forget` attaches to its refusal: MessagePack `{"key": ""}`.
const FORGET_DETAILS: &[u8] = b"\x81\xa3key\xa0";

#[derive(Debug, Default)]
struct Vault {
    calls: AtomicUsize,
    /// `hold` calls under way.
    holding: std::sync::Arc<AtomicUsize>,
}

impl Dispatch for Vault {
    fn spec(&self) -> &'static ServiceSpec {
        &VAULT_SPEC
    }

    fn dispatch(
        &self,
        method: &'static MethodSpec,
        request: Bytes,
        _stream: Option<Streaming<Bytes>>,
    ) -> BoxFuture<'static, Result<Body, Status>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let holding = self.holding.clone();
        Box::pin(async move {
            let reply = match method.name {
                "reverse" => {
                    let Data { mut data } = decode_request("reverse", &request)?;
                    data.reverse();
                    encode(&Reversed { reversed: data })
                }
                "sleep" => {
                    let Sleep { ms } = decode_request("sleep", &request)?;
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    encode(&Slept { slept: ms })
                }
                "hold" => {
                    let Sleep { ms } = decode_request("hold", &request)?;
                    holding.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    encode(&Held { held: ms })
                }
                "forget" => {
                    let Forget { key } = decode_request("forget", &request)?;
                    if key.is_empty() {
                        return Err(Status::failed_precondition("there is no empty key")
                            .with_details(FORGET_DETAILS));
                    }
                    encode(&Nothing {})
                }
                "count" => {
                    let Count { upto, odd } = decode_request("count", &request)?;
                    let count = if odd { upto.div_ceil(2) } else { upto / 2 };
                    encode(&Counted { count })
                }
                other => Err(Status::unimplemented(format!("no method {other}"))),
            };
            reply.map(Body::Message)
        })
    }
}

/// The greeter's REST routes, as the `mesh-api` binary mounts them.
fn greeter_rest() -> gateway::Extension {
    gateway::Extension::new(&greeter::GREETER_SPEC, |context| {
        greeter::rest::router(
            context
                .node()
                .client::<greeter::GreeterClient>()
                .with_options(context.call_options()),
        )
    })
    .with_openapi(greeter::rest::document)
}

/// A gateway node with the gateway served on it, and a service node joined to it.
struct Mesh {
    _state: tempfile::TempDir,
    gateway_node: Node,
    service_node: Option<Node>,
    gateway: gateway::Gateway,
}

impl Mesh {
    async fn start(cluster: &str, config: gateway::Config, with_services: bool) -> Mesh {
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
        let gateway = gateway::serve_with(config, gateway_node.clone(), vec![greeter_rest()])
            .await
            .expect("the gateway serves");
        let mut mesh = Mesh {
            _state: state,
            gateway_node,
            service_node: None,
            gateway,
        };
        if with_services {
            mesh.start_services(cluster).await;
        }
        mesh
    }

    async fn start_services(&mut self, cluster: &str) {
        let node = Node::builder("services")
            .cluster(cluster)
            .listen("127.0.0.1:0".parse().expect("addr"))
            .state_dir(self._state.path())
            .seeds([self.gateway_node.local_addr().to_string()])
            .publish(greeter::GreeterServer::new(greeter::GreeterService))
            .publish(Vault::default())
            .publish_http("greeter", greeter::http_handlers())
            .start()
            .await
            .expect("the service node starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(self.gateway_node.view().has_live("greeter", None)
            && self.gateway_node.view().has_live("vault", None))
        {
            assert!(Instant::now() < deadline, "the services never joined");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.service_node = Some(node);
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.gateway.local_addr()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_routes_answer_byte_for_byte() {
    let mesh = Mesh::start("gw-readme", gateway::Config::default(), true).await;
    let addr = mesh.addr();

    let answer = get(addr, "/greeter/greet/Max").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "\"Hello, Max\"")
    );
    assert_eq!(answer.headers["content-type"], "application/json");

    let answer = post(addr, "/greeter/greet", r#"{"name": "Max"}"#).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, r#"{"error":"","message":"Hello, Max"}"#)
    );

    let answer = get(addr, "/greeter/check").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.body.starts_with("All ok! "), "{answer:?}");

    let answer = post(addr, "/greeter/sendPostcard/Max/World/Hello", "").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (
            200,
            r#"{"PictureURL":"","Address":"World","Recipient":"Max","Message":"Hello"}"#
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_field_travels_as_base64_in_json() {
    let mesh = Mesh::start("gw-bytes", gateway::Config::default(), true).await;
    let answer = post(mesh.addr(), "/vault/reverse", r#"{"data": "AAEC/w=="}"#).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, r#"{"error":"","reversed":"/wIBAA=="}"#)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_the_method_timeout_is_a_504() {
    let mesh = Mesh::start("gw-deadline", gateway::Config::default(), true).await;
    let started = Instant::now();
    let answer = post(mesh.addr(), "/vault/sleep", r#"{"ms": 3000}"#).await;
    assert_eq!(answer.status, 504, "{answer:?}");
    assert_eq!(answer.json()["code"], "deadline_exceeded");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    let answer = post(mesh.addr(), "/vault/sleep", r#"{"ms": 1}"#).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, r#"{"error":"","slept":1}"#)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistakes_are_answered_with_4xx_and_a_message() {
    let config = gateway::Config {
        max_body: 1024,
        ..gateway::Config::default()
    };
    let mesh = Mesh::start("gw-mistakes", config, true).await;
    let addr = mesh.addr();

    let answer = post(addr, "/greeter/greet", r#"{"name": "Max""#).await;
    assert_eq!(answer.status, 400);
    assert!(
        answer.error().starts_with("body is not valid JSON: "),
        "{answer:?}"
    );
    assert_eq!(answer.json()["code"], "invalid_argument");

    let answer = post(addr, "/greeter/greet", r#""Max""#).await;
    assert_eq!(answer.status, 400);
    assert!(
        answer.error().contains("must be a JSON object"),
        "{answer:?}"
    );

    let answer = post(addr, "/greeter/greet", r#"{"name": 42}"#).await;
    assert_eq!(answer.status, 400);
    assert_eq!(
        answer.error(),
        "field `name`: expected a string, found the number 42"
    );

    let answer = post(addr, "/greeter/greet", r#"{"nmae": "Max"}"#).await;
    assert_eq!(answer.status, 400);
    assert!(
        answer.error().contains("unknown field `nmae`"),
        "{answer:?}"
    );

    // The service's own invalid_argument, with its message.
    let body =
        r#"{"card": {"picture_url": "", "address": "World", "recipient": " ", "message": "Hi"}}"#;
    let answer = post(addr, "/greeter/send_postcard", body).await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(answer.error(), "a postcard needs a recipient");

    let answer = post(addr, "/nosuch/method", "{}").await;
    assert_eq!(answer.status, 404);
    assert!(
        answer.error().contains("unknown service `nosuch`"),
        "{answer:?}"
    );
    assert!(answer.error().contains("`greeter`"), "{answer:?}");
    assert!(answer.error().contains("`vault`"), "{answer:?}");

    let answer = post(addr, "/greeter/shout", "{}").await;
    assert_eq!(answer.status, 404);
    assert!(answer.error().contains("no method `shout`"), "{answer:?}");
    assert!(answer.error().contains("POST /greeter/greet"), "{answer:?}");

    let big = format!(r#"{{"name": "{}"}}"#, "x".repeat(2000));
    let answer = post(addr, "/greeter/greet", &big).await;
    assert_eq!(answer.status, 413, "{answer:?}");
    assert!(answer.error().contains("1024 bytes"), "{answer:?}");

    // A method's path belongs to the method: GET is its query form (idempotent, scalar
    // parameters), other methods are 405 with the ones it answers.
    let answer = get(addr, "/vault/reverse").await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(
        answer.error().contains("missing field `data`"),
        "{answer:?}"
    );
    let answer = send(addr, "PUT", "/vault/reverse", &[], "{}").await;
    assert_eq!(answer.status, 405, "{answer:?}");
    assert_eq!(answer.headers["allow"], "GET, HEAD, POST");
    assert_eq!(answer.json()["code"], "unimplemented");
    let answer = get(addr, "/vault/sleep?ms=1").await;
    assert_eq!(answer.status, 405, "{answer:?}");
    assert_eq!(answer.headers["allow"], "POST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_service_without_members_is_a_503_at_once_and_readyz_says_so() {
    let config = gateway::Config {
        require: vec!["greeter".to_owned()],
        ..gateway::Config::default()
    };
    let mut mesh = Mesh::start("gw-late", config, false).await;
    let addr = mesh.addr();
    for (method, path, body) in [
        ("GET", "/greeter/greet/Max", ""),
        ("POST", "/greeter/greet", r#"{"name": "Max"}"#),
        ("GET", "/greeter/check", ""),
    ] {
        let started = Instant::now();
        let answer = send(addr, method, path, &[], body.to_owned()).await;
        let took = started.elapsed();
        eprintln!(
            "{method} {path} without greeter: {} in {took:?}",
            answer.status
        );
        assert_eq!(answer.status, 503, "{answer:?}");
        assert!(answer.error().contains("`greeter`"), "{answer:?}");
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
    let answer = get(addr, "/readyz").await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.json()["dependencies"][0]["service"], "greeter");
    assert_eq!(answer.json()["dependencies"][0]["live"], false);

    mesh.start_services("gw-late").await;
    let answer = get(addr, "/greeter/greet/Max").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "\"Hello, Max\"")
    );
    let answer = get(addr, "/readyz").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(get(addr, "/healthz").await.body, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_every_route_but_the_probes() {
    let config = gateway::Config {
        api_keys: vec!["k1".to_owned(), "k2".to_owned()],
        ..gateway::Config::default()
    };
    let mesh = Mesh::start("gw-keys", config, true).await;
    let addr = mesh.addr();
    for path in ["/greeter/greet/Max", "/metrics", "/openapi.json", "/nosuch"] {
        let answer = get(addr, path).await;
        assert_eq!(answer.status, 401, "{path}: {answer:?}");
        assert_eq!(
            answer.body,
            r#"{"error":"missing or invalid API key","code":"unauthenticated"}"#
        );
        let answer = send(addr, "GET", path, &[("authorization", "Bearer k3")], "").await;
        assert_eq!(answer.status, 401, "{path}: {answer:?}");
    }
    let answer = send(
        addr,
        "GET",
        "/greeter/greet/Max",
        &[("authorization", "Bearer k2")],
        "",
    )
    .await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "\"Hello, Max\"")
    );
    assert_eq!(get(addr, "/healthz").await.status, 200);
    assert_eq!(get(addr, "/readyz").await.status, 200);

    // Refused requests with made-up methods and paths add no metric series.
    let scrape = || async {
        let metrics = send(
            addr,
            "GET",
            "/metrics",
            &[("authorization", "Bearer k1")],
            "",
        )
        .await;
        metrics
            .body
            .lines()
            .filter(|line| line.starts_with("gateway_http_") && !line.contains("/metrics"))
            .count()
    };
    let hostile = |round: usize| async move {
        for index in 0..100 {
            let method = format!("UNAUTH{round}X{index}");
            let path = format!("/made/up/{round}/{index}");
            assert_eq!(send(addr, &method, &path, &[], "").await.status, 401);
        }
    };
    hostile(0).await;
    let before = scrape().await;
    hostile(1).await;
    hostile(2).await;
    assert_eq!(scrape().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_every_method_and_metrics_count_the_calls() {
    let mesh = Mesh::start("gw-docs", gateway::Config::default(), true).await;
    let addr = mesh.addr();
    let answer = get(addr, "/openapi.json").await;
    assert_eq!(answer.status, 200);
    let document: openapiv3::OpenAPI =
        serde_json::from_str(&answer.body).expect("an OpenAPI 3 document");
    let paths: Vec<&String> = document.paths.paths.keys().collect();
    for path in [
        "/greeter/greet",
        "/greeter/send_postcard",
        "/vault/reverse",
        "/vault/sleep",
    ] {
        assert!(
            paths.iter().any(|known| *known == path),
            "{path} in {paths:?}"
        );
    }
    let components = document.components.expect("components");
    assert!(components.schemas.contains_key("greeter.Postcard"));

    for _ in 0..3 {
        assert_eq!(get(addr, "/greeter/greet/Ada").await.status, 200);
    }
    assert_eq!(post(addr, "/greeter/greet", "{").await.status, 400);
    let metrics = get(addr, "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains(
            r#"gateway_http_requests_total{method="GET",route="/greeter/greet/{name}",status="200"} 3"#
        ),
        "{}",
        metrics.body
    );
    assert!(
        metrics.body.contains(
            r#"gateway_http_requests_total{method="POST",route="/greeter/{*rest}",status="400"} 1"#
        ),
        "{}",
        metrics.body
    );
    // The node's own metrics follow, with a single end marker.
    assert!(metrics.body.contains("meshrpc_"), "{}", metrics.body);
    assert_eq!(metrics.body.matches("# EOF").count(), 1);
    drop(mesh.service_node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn details_results_of_nothing_and_get_forms_answer_as_documented() {
    let mesh = Mesh::start("gw-shapes", gateway::Config::default(), true).await;
    let addr = mesh.addr();

    // A status with details: base64 of the bytes the service attached.
    let answer = post(addr, "/vault/forget", r#"{"key": ""}"#).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (
            400,
            r#"{"error":"there is no empty key","code":"failed_precondition","details":"gaNrZXmg"}"#
        )
    );
    // A method without a result: the bare envelope.
    let answer = post(addr, "/vault/forget", r#"{"key": "k"}"#).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, r#"{"error":""}"#)
    );

    // The GET form: query parameters typed by the schema.
    let answer = get(addr, "/vault/count?upto=7&odd=true").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, r#"{"error":"","count":4}"#)
    );
    let answer = get(addr, "/vault/count?upto=seven&odd=true").await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(answer.error().contains("field `upto`"), "{answer:?}");
    let answer = get(addr, "/vault/count?upto=7&odd=true&extra=1").await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(
        answer.error().contains("unknown field `extra`"),
        "{answer:?}"
    );
    // Not idempotent: no GET form.
    let answer = get(addr, "/vault/forget?key=k").await;
    assert_eq!(answer.status, 405, "{answer:?}");
    assert_eq!(answer.headers["allow"], "POST");

    // The document says the same.
    let document = get(addr, "/openapi.json").await.json();
    let forget = &document["paths"]["/vault/forget"];
    assert!(forget.get("get").is_none(), "{forget}");
    let success = &forget["post"]["responses"]["200"];
    assert!(
        success["description"]
            .as_str()
            .expect("text")
            .contains("returns nothing"),
        "{success}"
    );
    let count = &document["paths"]["/vault/count"]["get"]["parameters"];
    assert_eq!(count.as_array().map(Vec::len), Some(2), "{count}");
    assert_eq!(
        document["components"]["schemas"]["meshrpc.Error"]["properties"]["details"]["format"],
        "byte"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_lost_with_its_replica_is_answered_without_the_replica_address() {
    let mesh = Mesh::start("gw-lost", gateway::Config::default(), false).await;
    let seed = mesh.gateway_node.local_addr().to_string();
    let state = mesh._state.path().to_owned();
    let vault = Vault::default();
    let holding = vault.holding.clone();
    // The replica runs on a runtime of its own, so that dropping the runtime stops it dead
    // (no drain, no goodbye), as a killed process would.
    let (started, replica) = std::sync::mpsc::channel();
    let (kill, killed) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let node = runtime.block_on(async {
            Node::builder("doomed")
                .cluster("gw-lost")
                .listen("127.0.0.1:0".parse().expect("addr"))
                .state_dir(&state)
                .seeds([seed])
                .publish(vault)
                .start()
                .await
                .expect("the replica starts")
        });
        started.send(node.local_addr()).expect("the test waits");
        let _ = killed.recv();
        runtime.shutdown_background();
    });
    let replica = replica.recv().expect("the replica's address");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !mesh.gateway_node.view().has_live("vault", None) {
        assert!(Instant::now() < deadline, "the replica never joined");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A call that is not idempotent, on the replica when it dies: not retried, 503.
    let addr = mesh.addr();
    let call = tokio::spawn(async move {
        let client: hyper_util::client::legacy::Client<_, http_body_util::Full<Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let request = http::Request::post(format!("http://{addr}/vault/hold"))
            .body(http_body_util::Full::new(Bytes::from_static(
                br#"{"ms": 60000}"#,
            )))
            .expect("a request");
        let response = client.request(request).await.expect("an answer");
        let status = response.status().as_u16();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("a body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while holding.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the call never reached the replica"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    kill.send(()).expect("the replica waits");
    thread.join().expect("the replica's thread");

    let (status, body) = tokio::time::timeout(Duration::from_secs(25), call)
        .await
        .expect("an answer once the replica is known dead")
        .expect("the call task");
    eprintln!("{status} {body}");
    assert_eq!(status, 503, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["code"], "unavailable", "{body}");
    assert!(!body.contains(&replica.to_string()), "{body}");
    assert!(!body.contains("127.0.0.1"), "{body}");
}
