//! Two real nodes on loopback whose identities are too large for a QUIC datagram (40 tags of
//! 100 characters: ~4 KB per copy, a probe ~12 KB): their membership packets ride streams of
//! their own (docs/PROTOCOL.md 10.2). They must see each other, stay alive in each other's
//! view (probes keep succeeding), and see the other go when it leaves.

use std::time::Duration;

use meshrpc::Node;
use meshrpc::membership::Liveness;

fn tags(node: &str) -> Vec<String> {
    (0..40)
        .map(|tag| format!("{node}-label-{tag:02}={}", "v".repeat(80)))
        .collect()
}

async fn start(state: &std::path::Path, cluster: &str, name: &str, seeds: &[String]) -> Node {
    Node::builder(name)
        .cluster(cluster)
        .state_dir(state)
        .listen("127.0.0.1:0".parse().expect("addr"))
        .tags(tags(name))
        .seeds(seeds.iter().cloned())
        .start()
        .await
        .expect("the node starts")
}

fn sees_alive(node: &Node, other: &Node) -> bool {
    node.view()
        .member_at(other.local_addr())
        .is_some_and(|member| member.liveness == Liveness::Alive && member.id.tags.len() == 40)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_identities_larger_than_a_datagram_probe_each_other_over_streams() {
    let state = tempfile::tempdir().expect("tempdir");
    let cluster = format!("large-{}", std::process::id());
    let first = start(state.path(), &cluster, "first", &[]).await;
    let second = start(
        state.path(),
        &cluster,
        "second",
        &[first.local_addr().to_string()],
    )
    .await;
    let met = faults::within(Duration::from_secs(15), async || {
        sees_alive(&first, &second) && sees_alive(&second, &first)
    })
    .await;
    assert!(met.is_some(), "the two nodes never saw each other alive");
    // Ten seconds of probing (20 probes each way): never suspected, never down.
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        assert!(sees_alive(&first, &second), "first lost second");
        assert!(sees_alive(&second, &first), "second lost first");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second.shutdown().await;
    let gone = faults::within(Duration::from_secs(10), async || {
        first.view().member_at(second.local_addr()).is_none()
    })
    .await;
    assert!(gone.is_some(), "the node that left stayed in the view");
    first.shutdown().await;
}
