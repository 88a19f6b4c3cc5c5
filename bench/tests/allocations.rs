//! Heap allocations per unary call and per streamed item, counted and pinned so they cannot
//! creep back.
//!
//! A server node and a client node in this process, on one thread, call `echo` over loopback
//! QUIC with mutual TLS, through the generated client and server as an application would. The
//! counts are of both sides together (client stack, QUIC, TLS records, server stack, handler),
//! per call, averaged over many calls after a warm-up; background work of the nodes (gossip
//! timers) is spread over those calls too. bench/README.md ("Where a call's time goes") says
//! where they come from.

use std::alloc::System;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use meshrpc::{Node, Status, Streaming};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[allow(unreachable_pub, missing_docs, dead_code, clippy::all)]
mod generated {
    meshrpc::include_services!("echo");
}

use generated::{Echo, EchoClient, EchoServer};

/// Allocations per unary call, client and server together, on a direct channel
/// (`Node::client_to`). Measured: 19.9 (see the test's output); `meshrpc/tests/allocations.rs`
/// counts each side apart.
const DIRECT_CALL_BUDGET: f64 = 21.0;

/// The same through the balanced, retried, hedged client (`Node::client`). Measured: 21.9 (the
/// balancer keeps its few candidate replicas inline, not in a list allocated per attempt).
const BALANCED_CALL_BUDGET: f64 = 23.0;

/// Allocations per 64 B item of a server stream, client and server together: an item costs
/// none of its own (it is encoded into the writer's batch and read out of the received
/// chunk); what is left is QUIC's, per packet and per batch.
const STREAMED_ITEM_BUDGET: f64 = 0.1;

/// Items of the measured stream.
const STREAMED_ITEMS: u64 = 50_000;

const WARM_UP: u32 = 300;
const MEASURED: u32 = 2_000;

#[derive(Clone)]
struct EchoService;

impl Echo for EchoService {
    async fn echo(&self, payload: Bytes, _sleep_ms: u32) -> Result<Bytes, Status> {
        Ok(payload)
    }

    async fn relay(&self, _hops_left: u32, state: Bytes) -> Result<Bytes, Status> {
        Ok(state)
    }

    async fn produce(&self, size: u32, count: u64) -> Result<Streaming<Bytes>, Status> {
        let payload = Bytes::from(vec![7u8; size as usize]);
        Ok(Streaming::iter((0..count).map(move |_| payload.clone())))
    }
}

async fn start(state: &std::path::Path, name: &str, seed: Option<SocketAddr>) -> Node {
    let mut builder = Node::builder(name)
        .cluster("allocations")
        .state_dir(state)
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)));
    if let Some(seed) = seed {
        builder = builder.seeds([seed.to_string()]);
    } else {
        builder = builder.publish(EchoServer::new(EchoService));
    }
    builder.start().await.expect("node starts")
}

/// Average allocations per call over [`MEASURED`] sequential calls, after [`WARM_UP`].
async fn allocations_per_call(client: &EchoClient) -> f64 {
    let payload = Bytes::from_static(b"sixteen bytes!!!");
    for _ in 0..WARM_UP {
        let echoed = client.echo(payload.clone(), 0).await.expect("echo");
        assert_eq!(echoed, payload);
    }
    let region = Region::new(GLOBAL);
    for _ in 0..MEASURED {
        let echoed = client.echo(payload.clone(), 0).await.expect("echo");
        assert_eq!(echoed, payload);
    }
    let change = region.change();
    (change.allocations + change.reallocations) as f64 / f64::from(MEASURED)
}

/// Reports `per_call` and fails if it is over `budget`.
fn within_budget(label: &str, per_call: f64, budget: f64) {
    eprintln!("{label}: {per_call:.1} allocations per unary call (both sides)");
    assert!(
        per_call <= budget,
        "{label}: {per_call:.1} allocations per call, over the budget of {budget}"
    );
}

fn runtime() -> tokio::runtime::Runtime {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn a_unary_call_allocates_within_its_budget_on_a_direct_channel() {
    runtime().block_on(async {
        let state = tempfile::tempdir().expect("tempdir");
        let server = start(state.path(), "server", None).await;
        let caller = start(state.path(), "caller", Some(server.local_addr())).await;
        let client: EchoClient = caller.client_to(server.local_addr());
        let per_call = allocations_per_call(&client).await;
        within_budget("direct channel", per_call, DIRECT_CALL_BUDGET);
        caller.shutdown().await;
        server.shutdown().await;
    });
}

#[test]
fn a_unary_call_allocates_within_its_budget_through_the_balanced_client() {
    runtime().block_on(async {
        let state = tempfile::tempdir().expect("tempdir");
        let server = start(state.path(), "server", None).await;
        let caller = start(state.path(), "caller", Some(server.local_addr())).await;
        caller
            .wait_for(&[&generated::ECHO_SPEC], Duration::from_secs(20))
            .await
            .expect("the caller sees the echo service");
        let client: EchoClient = caller.client();
        let per_call = allocations_per_call(&client).await;
        within_budget("balanced client", per_call, BALANCED_CALL_BUDGET);
        caller.shutdown().await;
        server.shutdown().await;
    });
}

#[test]
fn a_streamed_item_costs_no_allocation_of_its_own() {
    runtime().block_on(async {
        let state = tempfile::tempdir().expect("tempdir");
        let server = start(state.path(), "server", None).await;
        let caller = start(state.path(), "caller", Some(server.local_addr())).await;
        let client: EchoClient = caller.client_to(server.local_addr());
        let read = |count| {
            let client = client.clone();
            async move {
                let mut items = client.produce(64, count).await.expect("stream opens");
                let mut read = 0u64;
                while let Some(item) = futures::StreamExt::next(&mut items).await {
                    assert_eq!(item.expect("an item").len(), 64);
                    read += 1;
                }
                assert_eq!(read, count, "the stream ended early");
            }
        };
        read(2_000).await;
        let region = Region::new(GLOBAL);
        read(STREAMED_ITEMS).await;
        let change = region.change();
        let per_item = (change.allocations + change.reallocations) as f64 / STREAMED_ITEMS as f64;
        eprintln!("{per_item:.3} allocations per streamed 64 B item (both sides)");
        assert!(
            per_item <= STREAMED_ITEM_BUDGET,
            "{per_item:.3} allocations per streamed item, over the budget of \
             {STREAMED_ITEM_BUDGET}"
        );
        caller.shutdown().await;
        server.shutdown().await;
    });
}
