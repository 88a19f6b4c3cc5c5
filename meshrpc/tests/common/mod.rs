//! A hand-written test service ("probe") and helpers to start nodes on loopback.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use meshrpc::bytes::Bytes;
use meshrpc::codec::{decode_request, encode};
use meshrpc::{
    BoxFuture, CallContext, CallOptions, Dispatch, FieldSpec, MethodSpec, Node, ServiceSpec, Status,
};
use serde::{Deserialize, Serialize};

macro_rules! method {
    ($name:literal, $idempotent:expr, $index:literal) => {
        MethodSpec {
            service: "probe",
            name: $name,
            doc: "",
            idempotent: $idempotent,
            timeout: None,
            attempt_timeout: None,
            hedge_after: None,
            params: &[FieldSpec {
                name: "x",
                rust_type: "u64",
            }],
            result_field: "result",
            result_type: "u64",
            kind: meshrpc::MethodKind::Unary,
            index: $index,
        }
    };
}

pub static PROBE_SPEC: ServiceSpec = ServiceSpec {
    name: "probe",
    doc: "A service for testing the runtime.",
    methods: &[
        method!("add", true, 0),
        method!("sleep", false, 1),
        method!("remaining", true, 2),
        method!("nested", false, 3),
        method!("panic", false, 4),
        method!("echo", true, 5),
        method!("whoami", true, 6),
    ],
    schema_hash: 1,
    manifest: "",
    descriptor: "{}",
    use_schemas: &[],
};

pub fn method(name: &str) -> &'static MethodSpec {
    PROBE_SPEC.method(name).expect("probe method")
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct AddRequest {
    pub a: i64,
    pub b: i64,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct Reply {
    pub result: i64,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct SleepRequest {
    pub ms: u64,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct NestedRequest {
    pub addr: String,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct Echo {
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// Counts what the server saw, for assertions.
#[derive(Default, Debug)]
pub struct Counters {
    pub started: AtomicUsize,
    pub completed: AtomicUsize,
    pub dropped: AtomicUsize,
}

#[derive(Clone)]
pub struct Probe {
    pub counters: Arc<Counters>,
    pub node: Arc<OnceLock<Node>>,
}

impl Probe {
    pub fn new() -> Probe {
        Probe {
            counters: Arc::default(),
            node: Arc::default(),
        }
    }
}

struct DropCounter {
    counters: Arc<Counters>,
    done: bool,
}

impl Drop for DropCounter {
    fn drop(&mut self) {
        if !self.done {
            self.counters.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Dispatch for Probe {
    fn spec(&self) -> &'static ServiceSpec {
        &PROBE_SPEC
    }

    fn dispatch(
        &self,
        method: &'static MethodSpec,
        request: Bytes,
        _stream: Option<meshrpc::Streaming<Bytes>>,
    ) -> BoxFuture<'static, Result<meshrpc::Body, Status>> {
        let probe = self.clone();
        let method = method.name;
        Box::pin(async move {
            probe.counters.started.fetch_add(1, Ordering::SeqCst);
            let mut guard = DropCounter {
                counters: probe.counters.clone(),
                done: false,
            };
            let result = match method {
                "add" => {
                    let r: AddRequest = decode_request("add", &request)?;
                    encode(&Reply { result: r.a + r.b })
                }
                "sleep" => {
                    let r: SleepRequest = decode_request("sleep", &request)?;
                    tokio::time::sleep(Duration::from_millis(r.ms)).await;
                    encode(&Reply { result: 0 })
                }
                "remaining" => {
                    let remaining = CallContext::current()
                        .and_then(|c| c.remaining())
                        .map_or(-1, |d| d.as_millis() as i64);
                    encode(&Reply { result: remaining })
                }
                "nested" => {
                    let r: NestedRequest = decode_request("nested", &request)?;
                    let addr: SocketAddr = r
                        .addr
                        .parse()
                        .map_err(|_| Status::invalid_argument("addr"))?;
                    let node = probe.node.get().expect("node set").clone();
                    let reply: Reply = node
                        .channel_to(addr)
                        .unary(method_static("remaining"), &(), &CallOptions::new())
                        .await?;
                    encode(&reply)
                }
                "panic" => panic!("the probe was asked to panic"),
                "whoami" => {
                    let node = probe.node.get().expect("node set");
                    encode(&Reply {
                        result: i64::from(node.advertised_addr().port()),
                    })
                }
                "echo" => {
                    let r: Echo = decode_request("echo", &request)?;
                    encode(&r)
                }
                other => Err(meshrpc::service::unknown_method(&PROBE_SPEC, other)),
            };
            guard.done = true;
            probe.counters.completed.fetch_add(1, Ordering::SeqCst);
            result.map(meshrpc::Body::Message)
        })
    }
}

fn method_static(name: &str) -> &'static MethodSpec {
    method(name)
}

/// Starts a node on loopback publishing `probe`, with its dev CA in `state`.
pub async fn start_probe_node(state: &std::path::Path, probe: Probe) -> Node {
    let node = Node::builder("probe")
        .cluster("test")
        .state_dir(state)
        .listen("127.0.0.1:0".parse().expect("addr"))
        .publish(probe.clone())
        .start()
        .await
        .expect("node starts");
    let _ = probe.node.set(node.clone());
    node
}

/// Starts a node on loopback publishing nothing (a pure client).
pub async fn start_client_node(state: &std::path::Path) -> Node {
    Node::builder("client")
        .cluster("test")
        .state_dir(state)
        .listen("127.0.0.1:0".parse().expect("addr"))
        .start()
        .await
        .expect("node starts")
}

/// Waits until `condition` holds, polling, for at most `limit`.
pub async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}
