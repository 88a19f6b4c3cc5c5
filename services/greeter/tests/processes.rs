//! Real `greeter` processes on loopback: a replica killed with SIGKILL or drained with SIGTERM
//! under a steady load costs the callers nothing.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use greeter::{GREETER_SPEC, Greeter, GreeterClient, Postcard};
use meshrpc::node_service::{MembersReply, NODE_SPEC};
use meshrpc::{CallOptions, Node, Status};
use tokio::time::Instant;

/// A `greeter` process, killed when dropped.
struct Replica {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_replica(seed: SocketAddr, state: &std::path::Path, cluster: &str) -> Replica {
    let mut child = Command::new(env!("CARGO_BIN_EXE_greeter"))
        .args([
            "-N",
            &seed.to_string(),
            "--listen",
            "127.0.0.1:0",
            "--cluster",
            cluster,
        ])
        .arg("--state-dir")
        .arg(state)
        .args(["--drain-timeout", "5"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the greeter binary starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("a first line");
    // "greeter listening on 127.0.0.1:PORT (advertised as 127.0.0.1:PORT)"
    let addr = line
        .rsplit_once("advertised as ")
        .and_then(|(_, rest)| rest.trim().trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
    Replica { child, addr }
}

async fn seed_node(state: &std::path::Path, cluster: &str) -> Node {
    Node::builder("test-client")
        .cluster(cluster)
        .state_dir(state)
        .listen("127.0.0.1:0".parse().expect("addr"))
        .start()
        .await
        .expect("seed starts")
}

async fn wait_for_replicas(node: &Node, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while node
        .view()
        .publishing("greeter")
        .filter(|m| m.accepts_calls())
        .count()
        != count
    {
        assert!(
            Instant::now() < deadline,
            "never saw {count} greeter replicas"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A seed node and three `greeter` processes joined to it, the service up and answering.
async fn three_replicas(state: &std::path::Path, cluster: &str) -> (Node, Vec<Replica>) {
    let seed = seed_node(state, cluster).await;
    let replicas: Vec<Replica> = (0..3)
        .map(|_| spawn_replica(seed.local_addr(), state, cluster))
        .collect();
    wait_for_replicas(&seed, 3).await;
    seed.wait_for(&[&GREETER_SPEC], Duration::from_secs(10))
        .await
        .expect("greeter is up");
    (seed, replicas)
}

/// The members `addr` sees, by address.
async fn members_seen_by(node: &Node, addr: SocketAddr) -> Result<Vec<String>, Status> {
    let reply: MembersReply = node
        .channel_to(addr)
        .unary(
            &NODE_SPEC.methods[2],
            &(),
            &CallOptions::new().timeout(Duration::from_secs(1)),
        )
        .await?;
    Ok(reply.members.into_iter().map(|m| m.addr).collect())
}

/// Calls `greet` (idempotent) and, unless `greet_only`, `send_postcard` (not idempotent) in
/// a loop from several workers until `stop`; returns (calls made, failures).
fn start_load(
    client: GreeterClient,
    stop: Arc<AtomicBool>,
    greet_only: bool,
) -> tokio::task::JoinHandle<(usize, Vec<Status>)> {
    tokio::spawn(async move {
        let mut workers = tokio::task::JoinSet::new();
        for worker in 0..4 {
            let client = client.clone();
            let stop = stop.clone();
            workers.spawn(async move {
                let (mut made, mut failed) = (0usize, Vec::new());
                let limit = Instant::now() + Duration::from_secs(30);
                while !stop.load(Ordering::Relaxed) && Instant::now() < limit {
                    let result = if greet_only || made % 2 == 0 {
                        client
                            .greet(format!("guest-{worker}-{made}"))
                            .await
                            .map(drop)
                    } else {
                        let card = Postcard {
                            recipient: "Max".into(),
                            address: "World".into(),
                            message: "Hello".into(),
                            picture_url: String::new(),
                        };
                        client.send_postcard(card).await.map(drop)
                    };
                    made += 1;
                    if let Err(status) = result {
                        failed.push(status);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (made, failed)
            });
        }
        let (mut made, mut failed) = (0, Vec::new());
        while let Some(joined) = workers.join_next().await {
            let (m, f) = joined.expect("worker");
            made += m;
            failed.extend(f);
        }
        (made, failed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_replica_under_load_fails_no_idempotent_call_and_it_leaves_every_view() {
    let state = tempfile::tempdir().expect("tempdir");
    let (seed, mut replicas) = three_replicas(state.path(), "kill-test").await;

    let stop = Arc::new(AtomicBool::new(false));
    // Only greet is idempotent: a call in flight on the killed replica may be retried.
    let load = start_load(seed.client(), stop.clone(), true);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let victim = replicas.remove(0);
    let victim_addr = victim.addr.to_string();
    let killed_at = Instant::now();
    drop(victim); // SIGKILL, then reaped
    let survivors: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    let mut gone_everywhere = None;
    while killed_at.elapsed() < Duration::from_secs(10) {
        let mut seen_somewhere = seed
            .view()
            .members()
            .iter()
            .any(|m| m.id.addr.to_string() == victim_addr);
        for survivor in &survivors {
            let members = members_seen_by(&seed, *survivor)
                .await
                .expect("survivor answers");
            seen_somewhere |= members.contains(&victim_addr);
        }
        if !seen_somewhere {
            gone_everywhere = Some(killed_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone = gone_everywhere.expect("the dead replica left every view");
    eprintln!("the killed replica left every view after {gone:?}");
    assert!(gone < Duration::from_secs(5), "took {gone:?}");

    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let (made, failed) = load.await.expect("load");
    assert!(made > 100, "only {made} calls made");
    assert!(
        failed.is_empty(),
        "{} of {made} calls failed, first: {:?}",
        failed.len(),
        failed.first()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_replica_under_load_without_a_failed_call_and_it_exits_zero() {
    let state = tempfile::tempdir().expect("tempdir");
    let (seed, mut replicas) = three_replicas(state.path(), "term-test").await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(seed.client(), stop.clone(), false);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let mut victim = replicas.remove(0);
    let pid = victim.child.id().to_string();
    let signalled = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(signalled.success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = victim.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the replica did not exit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0), "a drained replica exits 0");

    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let (made, failed) = load.await.expect("load");
    assert!(made > 100, "only {made} calls made");
    assert!(
        failed.is_empty(),
        "{} of {made} calls failed, first: {:?}",
        failed.len(),
        failed.first()
    );
}
