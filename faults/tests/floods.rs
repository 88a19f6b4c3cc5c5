//! One hostile peer with a valid certificate against a real `greeter` process while a proper
//! client keeps calling it: a flood of connections, of streams that never finish, of garbage
//! streams and garbage datagrams; and thousands of connect/close cycles. What must hold: the
//! limits, the other caller's service (no failure, p99 under a generous bound), bounded memory,
//! no crash, and nothing left behind once the churn settles.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use faults::host::{alive, open_fds, peak_rss_kib, rss_kib};
use faults::load::{self, Load};
use faults::mesh::{OneGreeter, one_greeter};
use faults::peer::{self, frame, greet_raw};
use greeter::{Greeter, GreeterClient};
use meshrpc::wire::{CallHeader, FrameKind};
use meshrpc::{CallOptions, Metadata, Node};
use tokio::time::Instant;

const MIB: u64 = 1024;

/// Handshakes the hostile peer runs at once.
const CONNECTING_AT_ONCE: usize = 16;

/// The live connections a node keeps per peer address (`meshrpc::transport::connections`).
const MAX_PER_PEER: usize = meshrpc::transport::connections::MAX_PER_PEER;

/// Those of `connections` that are still open.
fn still_open(connections: &[quinn::Connection]) -> Vec<quinn::Connection> {
    connections
        .iter()
        .filter(|connection| connection.close_reason().is_none())
        .cloned()
        .collect()
}

fn good_caller(node: &Node, max_time: Duration) -> Load {
    let client: GreeterClient = node.client();
    let client = client.with_options(CallOptions::new().timeout(Duration::from_secs(5)));
    Load::start(
        2,
        100_000,
        max_time,
        Duration::from_millis(5),
        move |w, n| {
            let client = client.clone();
            async move {
                let name = format!("good-{w}-{n}");
                load::greeting(&name, client.greet(name.clone()).await)
            }
        },
    )
}

fn header_only() -> Vec<u8> {
    let header = CallHeader {
        service: "greeter".into(),
        method: "greet".into(),
        deadline_ms: None,
        metadata: Metadata::new(),
        sticky_key: None,
    };
    frame(
        FrameKind::Call,
        &rmp_serde::to_vec_named(&header).expect("header"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_peer_leaves_another_caller_served_and_memory_bounded() {
    let _exclusive = faults::exclusive();
    let target = one_greeter("flood").await;
    let pid = target.greeter.pid();
    let rss_before = rss_kib(pid).expect("rss");
    let good = good_caller(&target.node, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let attack_started = good.elapsed();

    // 1. Connections: 300 at once from one endpoint, all kept open by the peer.
    let endpoint = peer::member_endpoint(&target.mesh.state, &target.mesh.cluster);
    let mut connecting = tokio::task::JoinSet::new();
    let opening = Arc::new(tokio::sync::Semaphore::new(CONNECTING_AT_ONCE));
    for _ in 0..300 {
        let (endpoint, addr, cluster) =
            (endpoint.clone(), target.addr, target.mesh.cluster.clone());
        let opening = opening.clone();
        connecting.spawn(async move {
            let _permit = opening.acquire().await;
            peer::connect(&endpoint, addr, &cluster).await
        });
    }
    let mut connections = Vec::new();
    while let Some(joined) = connecting.join_next().await {
        if let Ok(Ok(connection)) = joined {
            connections.push(connection);
        }
    }
    let connected = good.elapsed();
    let accepted = connections.len();
    assert!(accepted > 0, "no connection was accepted");
    // The node keeps at most `MAX_PER_PEER` live connections per peer address (the newest),
    // and closes the others: one endpoint cannot make it hold 300.
    let capped_by = Instant::now() + Duration::from_secs(2);
    while still_open(&connections).len() > MAX_PER_PEER && Instant::now() < capped_by {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let survivors = still_open(&connections);
    eprintln!(
        "flood: {accepted} of 300 connections accepted, {} left open",
        survivors.len()
    );
    assert!(
        survivors.len() == MAX_PER_PEER,
        "{} of one peer's connections left open",
        survivors.len()
    );

    // 2. Streams that send a call header and never the request, on one connection, until the
    //    per-connection stream limit stops the opening.
    let held = Arc::new(AtomicUsize::new(0));
    let stalled = {
        let connection = survivors[0].clone();
        let held = held.clone();
        let header = header_only();
        tokio::spawn(async move {
            let mut streams = Vec::new();
            for _ in 0..6_000 {
                let opened =
                    tokio::time::timeout(Duration::from_secs(1), connection.open_bi()).await;
                let Ok(Ok((mut send, recv))) = opened else {
                    return (streams.len(), true);
                };
                let _ = send.write_all(&header).await;
                streams.push((send, recv));
                held.fetch_add(1, Ordering::Relaxed);
            }
            (streams.len(), false)
        })
    };

    // 3. Garbage streams and garbage datagrams on 40 more connections, each from an endpoint
    //    of its own (one endpoint keeps only `MAX_PER_PEER`).
    let mut garbage = tokio::task::JoinSet::new();
    for index in 0..40 {
        let Ok(connection) = peer::connect(
            &peer::member_endpoint(&target.mesh.state, &target.mesh.cluster),
            target.addr,
            &target.mesh.cluster,
        )
        .await
        else {
            continue;
        };
        garbage.spawn(async move {
            let mut rng = faults::fuzzing::mutate::XorShift::new(index as u64);
            for _ in 0..100 {
                let bytes: Vec<u8> = (0..rng.below(300) + 1).map(|_| rng.byte()).collect();
                let datagram: Vec<u8> = (0..rng.below(1000) + 1).map(|_| rng.byte()).collect();
                let _ = connection.send_datagram(datagram.into());
                let Ok(Ok((mut send, mut recv))) =
                    tokio::time::timeout(Duration::from_secs(2), connection.open_bi()).await
                else {
                    continue;
                };
                let _ = send.write_all(&bytes).await;
                let _ = send.finish();
                let _ = tokio::time::timeout(Duration::from_secs(2), recv.read_to_end(4096)).await;
            }
        });
    }
    let garbage_deadline = Instant::now() + Duration::from_secs(20);
    while let Ok(Some(_)) = tokio::time::timeout_at(garbage_deadline, garbage.join_next()).await {}
    let (stream_count, limited) = stalled.await.expect("the stream flood task");
    let attack_ended = good.elapsed();
    let peak = peak_rss_kib(pid).expect("peak rss");
    let rss_during = rss_kib(pid).expect("rss");
    // A well-formed call on a flooded connection's neighbour still works.
    let reply = greet_raw(
        &survivors[survivors.len() - 1],
        "after",
        Duration::from_secs(5),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = good.finish().await;

    eprintln!(
        "flood: {accepted} connections, {stream_count} header-only streams on one (opening \
         stopped by the limit: {limited}), 40 x 100 garbage streams and datagrams; server RSS \
         {} MiB before, {} MiB after, peak {} MiB",
        rss_before / MIB,
        rss_during / MIB,
        peak / MIB
    );
    eprintln!(
        "flood: the other caller: {}; p99 {:.1?} while the connections opened, {:.1?} during \
         the stream and garbage flood",
        report.summary(),
        report.quantile_in(0.99, attack_started, connected),
        report.quantile_in(0.99, connected, attack_ended)
    );
    assert!(alive(pid), "the greeter died");
    assert!(
        reply.is_ok(),
        "a proper call on the hostile peer's connection: {reply:?}"
    );
    assert!(
        limited && stream_count <= 4_096,
        "{stream_count} streams opened"
    );
    assert_eq!(
        (report.failed(), report.wrong()),
        (0, 0),
        "first problems: {:?}",
        report.first_problems()
    );
    assert!(report.sent() > 100, "only {} calls", report.sent());
    // Handshakes cost CPU on both sides, and here the attacker shares the server's two cores:
    // a looser bound while they run.
    let p99 = report.quantile_in(0.99, attack_started, connected);
    assert!(
        p99 < Duration::from_secs(1),
        "p99 {p99:?} while the connections opened"
    );
    let p99 = report.quantile_in(0.99, connected, attack_ended);
    assert!(
        p99 < Duration::from_millis(500),
        "p99 {p99:?} during the stream flood"
    );
    assert!(peak < 200 * MIB, "peak RSS {} MiB", peak / MIB);
    drop(connections);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_connect_close_cycles_leave_no_files_or_memory_behind() {
    let cycles = faults::scaled(2_000, 10_000);
    let _exclusive = faults::exclusive();
    let target = one_greeter("churn").await;
    let pid = target.greeter.pid();
    let tls = meshrpc::TlsMaterial::dev(&target.mesh.state, &target.mesh.cluster, "churner")
        .expect("TLS material");
    // Warm up, so lazily made buffers do not count as growth.
    churn(&tls, &target, 100).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (fds_before, rss_before) = (open_fds(pid).expect("fds"), rss_kib(pid).expect("rss"));

    let started = Instant::now();
    let failures = churn(&tls, &target, cycles).await;
    let took = started.elapsed();
    // Let closed connections drain (three probe timeouts) and the allocator settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (fds_after, rss_after) = (open_fds(pid).expect("fds"), rss_kib(pid).expect("rss"));
    eprintln!(
        "churn: {cycles} connect/call/close cycles from fresh ports in {took:.1?} ({failures} \
         failed); server fds {fds_before} -> {fds_after}, RSS {} -> {} KiB ({:+} KiB)",
        rss_before,
        rss_after,
        rss_after as i64 - rss_before as i64
    );
    assert!(alive(pid));
    assert_eq!(failures, 0);
    assert!(
        fds_after <= fds_before + 2,
        "fds grew {fds_before} -> {fds_after}"
    );
    assert!(
        rss_after <= rss_before + 16 * MIB,
        "RSS grew by {} KiB over {cycles} cycles",
        rss_after - rss_before
    );
    // The node still serves its proper callers.
    let client: GreeterClient = target.node.client();
    assert_eq!(
        client.greet("Max".into()).await.expect("greets"),
        "Hello, Max"
    );
}

/// `cycles` times: a fresh endpoint (a fresh source port), a handshake, one greet, a close.
/// Eight at a time. Returns how many cycles failed.
async fn churn(tls: &meshrpc::TlsMaterial, target: &OneGreeter, cycles: usize) -> usize {
    let failures = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (tls, addr, cluster) = (tls.clone(), target.addr, target.mesh.cluster.clone());
        let (failures, next) = (failures.clone(), next.clone());
        workers.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < cycles {
                let endpoint = peer::endpoint("127.0.0.1:0".parse().expect("addr"), &tls, &cluster);
                let ok = match peer::connect(&endpoint, addr, &cluster).await {
                    Ok(connection) => {
                        let reply = greet_raw(&connection, "churn", Duration::from_secs(5)).await;
                        connection.close(0u32.into(), b"bye");
                        reply.is_ok()
                    }
                    Err(_) => false,
                };
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                endpoint.wait_idle().await;
            }
        });
    }
    while workers.join_next().await.is_some() {}
    failures.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_from_one_peer_keep_the_node_under_200_mib() {
    let _exclusive = faults::exclusive();
    let target = one_greeter("conncap").await;
    let pid = target.greeter.pid();
    let endpoint = peer::member_endpoint(&target.mesh.state, &target.mesh.cluster);
    let opening = Arc::new(tokio::sync::Semaphore::new(CONNECTING_AT_ONCE));
    let mut connecting = tokio::task::JoinSet::new();
    for _ in 0..1_000 {
        let (endpoint, addr, cluster) =
            (endpoint.clone(), target.addr, target.mesh.cluster.clone());
        let opening = opening.clone();
        connecting.spawn(async move {
            let _permit = opening.acquire().await;
            peer::connect(&endpoint, addr, &cluster).await
        });
    }
    let mut connections = Vec::new();
    while let Some(joined) = connecting.join_next().await {
        if let Ok(Ok(connection)) = joined {
            connections.push(connection);
        }
    }
    let peak = peak_rss_kib(pid).expect("peak rss");
    eprintln!(
        "connection cap: {} of 1000 connections accepted from one peer; server peak RSS {} MiB",
        connections.len(),
        peak / MIB
    );
    assert!(alive(pid));
    assert!(peak < 200 * MIB, "peak RSS {} MiB", peak / MIB);
}
