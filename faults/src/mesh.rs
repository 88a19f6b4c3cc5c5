//! The test's own member of the mesh: an in-process node that the replicas join through (it is
//! their seed) and that calls them, plus what a test asks of the mesh — views, members seen by
//! another node, a free port, server-side call counts.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use meshrpc::node_service::{MembersReply, NODE_SPEC};
use meshrpc::{CallOptions, Node, Status, Strategy};

use crate::process::{Mesh, Proc, args};

/// A mesh of the test's node and one `greeter` process seeded to it, on loopback.
#[derive(Debug)]
pub struct OneGreeter {
    /// The state directory (the dev CA), removed on drop.
    pub state: tempfile::TempDir,
    /// The mesh: cluster name and state directory.
    pub mesh: Mesh,
    /// The test's node (the greeter's seed).
    pub node: Node,
    /// The greeter process.
    pub greeter: Proc,
    /// The greeter's advertised address.
    pub addr: SocketAddr,
}

/// A fresh state directory, a mesh in a cluster named after `name` (and this process), and the
/// test's round-robin node in it on loopback: what most fault tests start from.
pub async fn mesh_with_node(name: &str) -> (tempfile::TempDir, Mesh, Node) {
    let state = tempfile::tempdir().expect("tempdir");
    let mesh = Mesh::new(format!("{name}-{}", std::process::id()), state.path());
    let node = client_node(
        state.path(),
        &mesh.cluster,
        "127.0.0.1:0".parse().expect("addr"),
        Strategy::RoundRobin,
    )
    .await;
    (state, mesh, node)
}

/// Starts [`OneGreeter`] in a cluster named after `name`; resolves once the node sees it.
pub async fn one_greeter(name: &str) -> OneGreeter {
    let (state, mesh, node) = mesh_with_node(name).await;
    let greeter = mesh.greeter(
        "greeter",
        None,
        &args(&[
            "--listen",
            "127.0.0.1:0",
            "-N",
            &node.local_addr().to_string(),
        ]),
    );
    let addr = greeter.addr_after("advertised as ");
    wait_for_greeters(&node, 1, Duration::from_secs(15)).await;
    OneGreeter {
        state,
        mesh,
        node,
        greeter,
        addr,
    }
}

/// Starts the test's node on `listen` in `cluster` with its CA under `state`.
pub async fn client_node(
    state: &Path,
    cluster: &str,
    listen: SocketAddr,
    strategy: Strategy,
) -> Node {
    Node::builder("fault-test")
        .cluster(cluster)
        .state_dir(state)
        .listen(listen)
        .balancing(strategy)
        .start()
        .await
        .expect("the test's node starts")
}

/// Alive, non-draining members publishing `greeter` in `node`'s view.
pub fn live_greeters(node: &Node) -> Vec<SocketAddr> {
    node.view()
        .publishing("greeter")
        .filter(|m| m.accepts_calls() && m.liveness == meshrpc::membership::Liveness::Alive)
        .map(|m| m.id.addr)
        .collect()
}

/// Waits up to `limit` until `node` sees exactly `count` live greeters; panics otherwise.
pub async fn wait_for_greeters(node: &Node, count: usize, limit: Duration) -> Duration {
    crate::within(limit, async || live_greeters(node).len() == count)
        .await
        .unwrap_or_else(|| {
            panic!(
                "never saw {count} live greeters within {limit:?}; view: {:?}",
                node.view()
                    .members()
                    .iter()
                    .map(|m| (m.id.addr, m.id.name.clone(), m.liveness, m.id.draining))
                    .collect::<Vec<_>>()
            )
        })
}

/// The members the node at `addr` sees, by address (its `meshrpc.node/members` answer).
pub async fn members_seen_by(node: &Node, addr: SocketAddr) -> Result<Vec<SocketAddr>, Status> {
    let reply: MembersReply = node
        .channel_to(addr)
        .unary(
            &NODE_SPEC.methods[2],
            &(),
            &CallOptions::new().timeout(Duration::from_secs(1)),
        )
        .await?;
    Ok(reply
        .members
        .into_iter()
        .filter_map(|m| m.addr.parse().ok())
        .collect())
}

/// A UDP port free on `ip` right now (a replica restarted on it keeps its address).
pub fn free_udp_port(ip: &str) -> u16 {
    let socket = std::net::UdpSocket::bind((ip, 0)).expect("a free port");
    socket.local_addr().expect("address").port()
}

/// A TCP port free on `ip` right now.
pub fn free_tcp_port(ip: &str) -> u16 {
    let listener = std::net::TcpListener::bind((ip, 0)).expect("a free port");
    listener.local_addr().expect("address").port()
}

/// `greeter.greet` calls a node served successfully, from its admin `/metrics` at `admin`.
pub async fn greets_served(admin: SocketAddr) -> Option<f64> {
    let text = crate::http::get(admin, "/metrics").await.ok()?.body;
    Some(
        crate::http::metric(
            &text,
            r#"meshrpc_calls_total{side="server",service="greeter",method="greet",code="ok"}"#,
        )
        .unwrap_or(0.0),
    )
}

/// How many `greeter.greet` calls the node with admin endpoint `admin` has taken, whatever
/// their end: answered, and also cancelled (the losing attempt of a hedged call, which its
/// caller abandoned once another replica answered) or failed. What a balancer sent there.
pub async fn greets_received(admin: SocketAddr) -> Option<f64> {
    let text = crate::http::get(admin, "/metrics").await.ok()?.body;
    let prefix = r#"meshrpc_calls_total{side="server",service="greeter",method="greet",code=""#;
    Some(
        text.lines()
            .filter(|line| line.starts_with(prefix))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}
