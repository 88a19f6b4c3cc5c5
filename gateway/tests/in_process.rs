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
use meshrpc::{BoxFuture, Dispatch, FieldSpec, MethodSpec, Node, ServiceSpec, Status};
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
     "response": {"type": "object", "properties": {"slept": {"type": "integer", "format": "int64", "minimum": 0}}, "required": ["slept"]}}
  ],
  "types": {}
}"#;

static VAULT_SPEC: ServiceSpec = ServiceSpec {
    name: "vault",
    doc: "Keeps bytes.",
    methods: &[
        MethodSpec {
            service: "vault",
            name: "reverse",
            doc: "Reverses bytes.",
            idempotent: true,
            timeout: None,
            params: &[FieldSpec {
                name: "data",
                rust_type: "Vec<u8>",
            }],
            result_field: "reversed",
            result_type: "Vec<u8>",
        },
        MethodSpec {
            service: "vault",
            name: "sleep",
            doc: "Sleeps.",
            idempotent: false,
            timeout: Some(Duration::from_millis(100)),
            params: &[FieldSpec {
                name: "ms",
                rust_type: "u64",
            }],
            result_field: "slept",
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

#[derive(Debug, Default)]
struct Vault {
    calls: AtomicUsize,
}

impl Dispatch for Vault {
    fn spec(&self) -> &'static ServiceSpec {
        &VAULT_SPEC
    }

    fn dispatch(&self, method: &str, request: Bytes) -> BoxFuture<'static, Result<Bytes, Status>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let method = method.to_owned();
        Box::pin(async move {
            match method.as_str() {
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
                other => Err(Status::unimplemented(format!("no method {other}"))),
            }
        })
    }
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
        let gateway = gateway::serve(config, gateway_node.clone())
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
