//! The mesh with real nodes on real loopback sockets: discovery from seeds, round robin,
//! sticky sessions, new replicas, drain, cluster isolation and legacy HTTP over the mesh.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use meshrpc::bytes::Bytes;
use meshrpc::resilience::breaker::BreakerConfig;
use meshrpc::{BoxFuture, CallOptions, Code, Dispatch, Node, ServiceSpec, Status};
use tokio::time::Instant;

/// A node of cluster `test` seeded to `seeds`, publishing `probe` if given.
async fn mesh_node(state: &std::path::Path, seeds: &[SocketAddr], probe: Option<Probe>) -> Node {
    let mut builder = Node::builder(if probe.is_some() { "replica" } else { "client" })
        .cluster("test")
        .state_dir(state)
        .listen("127.0.0.1:0".parse().expect("addr"))
        .seeds(seeds.iter().map(ToString::to_string));
    if let Some(probe) = &probe {
        builder = builder.publish(probe.clone());
    }
    let node = builder.start().await.expect("node starts");
    if let Some(probe) = probe {
        let _ = probe.node.set(node.clone());
    }
    node
}

/// Waits until `node` sees exactly `count` members publishing the probe service.
async fn wait_for_replicas(node: &Node, count: usize) {
    let node = node.clone();
    let seen = eventually(Duration::from_secs(10), move || {
        node.view()
            .publishing("probe")
            .filter(|m| m.accepts_calls())
            .count()
            == count
    })
    .await;
    assert!(seen, "expected {count} probe replicas in view");
}

/// A builder for a node named `web` of cluster `test` on loopback, seeded to `seed`; the caller
/// adds what it publishes.
fn web(state: &std::path::Path, seed: &Node) -> meshrpc::NodeBuilder {
    Node::builder("web")
        .cluster("test")
        .state_dir(state)
        .listen("127.0.0.1:0".parse().expect("addr"))
        .seeds([seed.local_addr().to_string()])
}

/// Waits until `node` sees exactly `count` members serving legacy HTTP for `service`.
async fn wait_for_http(node: &Node, service: &'static str, count: usize) {
    let node = node.clone();
    let seen = eventually(Duration::from_secs(10), move || {
        node.view().serving_http(service).count() == count
    })
    .await;
    assert!(
        seen,
        "expected {count} members serving HTTP for {service} in view"
    );
}

/// Runs `attempt` in a loop from 8 workers for 3 s, shuts `victim` down 0.8 s in, and returns
/// the attempts that succeeded and the errors of those that failed.
async fn drain_under_load<F, Fut, E>(victim: Node, attempt: F) -> (usize, Vec<E>)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), E>> + Send,
    E: Send + 'static,
{
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let attempt = attempt.clone();
        workers.spawn(async move {
            let stop = Instant::now() + Duration::from_secs(3);
            let (mut ok, mut failed) = (0, Vec::new());
            while Instant::now() < stop {
                match attempt().await {
                    Ok(()) => ok += 1,
                    Err(error) => failed.push(error),
                }
            }
            (ok, failed)
        });
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    victim.shutdown().await;
    let (mut ok, mut failed) = (0, Vec::new());
    while let Some(joined) = workers.join_next().await {
        let (o, f) = joined.expect("worker");
        ok += o;
        failed.extend(f);
    }
    (ok, failed)
}

async fn whoami(client: &Node, options: &CallOptions) -> Result<u16, meshrpc::Status> {
    let reply: Reply = client
        .channel("probe")
        .unary(method("whoami"), &(), options)
        .await?;
    Ok(reply.result as u16)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_gives_three_replicas_an_even_share_of_3000_calls() {
    let state = tempfile::tempdir().expect("tempdir");
    let seed = mesh_node(state.path(), &[], None).await;
    let seeds = [seed.local_addr()];
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(mesh_node(state.path(), &seeds, Some(Probe::new())).await);
    }
    seed.wait_for(&[&PROBE_SPEC], Duration::from_secs(10))
        .await
        .expect("probe is up");
    wait_for_replicas(&seed, 3).await;

    let mut counts: HashMap<u16, usize> = HashMap::new();
    let mut calls = tokio::task::JoinSet::new();
    for worker in 0..10 {
        let seed = seed.clone();
        calls.spawn(async move {
            let mut ports = Vec::with_capacity(300);
            for _ in 0..300 {
                ports.push(
                    whoami(&seed, &CallOptions::new())
                        .await
                        .expect("call succeeds"),
                );
            }
            (worker, ports)
        });
    }
    while let Some(joined) = calls.join_next().await {
        for port in joined.expect("worker").1 {
            *counts.entry(port).or_default() += 1;
        }
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (port, count) in &counts {
        assert!(
            (900..=1100).contains(count),
            "replica {port} got {count} of 3000: {counts:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_keys_stay_on_one_replica_and_only_the_dead_ones_keys_move() {
    let state = tempfile::tempdir().expect("tempdir");
    let seed = mesh_node(state.path(), &[], None).await;
    let seeds = [seed.local_addr()];
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(mesh_node(state.path(), &seeds, Some(Probe::new())).await);
    }
    wait_for_replicas(&seed, 3).await;

    let mut owner = HashMap::new();
    for key in 0..100 {
        let options = CallOptions::new().sticky_key(format!("user-{key}"));
        let first = whoami(&seed, &options).await.expect("call");
        for _ in 0..4 {
            assert_eq!(
                whoami(&seed, &options).await.expect("call"),
                first,
                "key {key} moved"
            );
        }
        owner.insert(key, first);
    }
    let victim = replicas.remove(1);
    let victim_port = victim.advertised_addr().port();
    assert!(
        owner.values().any(|port| *port == victim_port),
        "the victim owned some keys"
    );
    victim.shutdown().await;
    wait_for_replicas(&seed, 2).await;
    for key in 0..100 {
        let options = CallOptions::new().sticky_key(format!("user-{key}"));
        let now = whoami(&seed, &options).await.expect("call");
        if owner[&key] == victim_port {
            assert_ne!(now, victim_port);
        } else {
            assert_eq!(
                now, owner[&key],
                "key {key} moved although its replica lives"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_mid_load_gets_traffic_within_two_seconds() {
    let state = tempfile::tempdir().expect("tempdir");
    let seed = mesh_node(state.path(), &[], None).await;
    let seeds = [seed.local_addr()];
    let _first = mesh_node(state.path(), &seeds, Some(Probe::new())).await;
    wait_for_replicas(&seed, 1).await;

    let load = {
        let seed = seed.clone();
        tokio::spawn(async move {
            let mut served = Vec::new();
            let stop = Instant::now() + Duration::from_secs(6);
            while Instant::now() < stop {
                let port = whoami(&seed, &CallOptions::new())
                    .await
                    .expect("no call fails");
                served.push((Instant::now(), port));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            served
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let late = mesh_node(state.path(), &seeds, Some(Probe::new())).await;
    let late_port = late.advertised_addr().port();
    let served = load.await.expect("load");
    let first_call = served
        .iter()
        .find(|(_, port)| *port == late_port)
        .map(|(at, _)| at.duration_since(started))
        .expect("the new replica got traffic");
    assert!(
        first_call < Duration::from_secs(2),
        "first call after {first_call:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_replica_under_load_fails_no_call() {
    let state = tempfile::tempdir().expect("tempdir");
    let seed = mesh_node(state.path(), &[], None).await;
    let seeds = [seed.local_addr()];
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(mesh_node(state.path(), &seeds, Some(Probe::new())).await);
    }
    wait_for_replicas(&seed, 3).await;
    let (ok, failed) = drain_under_load(replicas.remove(0), move || {
        let seed = seed.clone();
        async move {
            // A non-idempotent method: only refusals may be retried.
            seed.channel("probe")
                .unary::<_, Reply>(
                    method("sleep"),
                    &SleepRequest { ms: 20 },
                    &CallOptions::new(),
                )
                .await
                .map(|_| ())
        }
    })
    .await;
    assert!(
        failed.is_empty(),
        "{} calls failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(ok > 200, "only {ok} calls made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_cluster_is_never_seen_nor_called() {
    let state = tempfile::tempdir().expect("tempdir");
    let seed = mesh_node(state.path(), &[], None).await;
    let ours = Probe::new();
    let _replica = mesh_node(state.path(), &[seed.local_addr()], Some(ours.clone())).await;
    let foreign_probe = Probe::new();
    let foreign = Node::builder("foreign")
        .cluster("other")
        .state_dir(state.path())
        .listen("127.0.0.1:0".parse().expect("addr"))
        .seeds([seed.local_addr().to_string()])
        .publish(foreign_probe.clone())
        .start()
        .await
        .expect("starts");
    let _ = foreign_probe.node.set(foreign.clone());
    wait_for_replicas(&seed, 1).await;
    for _ in 0..200 {
        whoami(&seed, &CallOptions::new()).await.expect("call");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(seed.view().members().iter().all(|m| m.id.cluster == "test"));
    assert_eq!(
        foreign.view().members().len(),
        1,
        "the foreign node joined nobody"
    );
    assert_eq!(foreign_probe.counters.started.load(Ordering::SeqCst), 0);
    assert_eq!(ours.counters.started.load(Ordering::SeqCst), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_http_handler_answers_through_another_node() {
    use axum::routing::get;
    use http_body_util::BodyExt;

    let state = tempfile::tempdir().expect("tempdir");
    let seed = mesh_node(state.path(), &[], None).await;
    let router = axum::Router::new()
        .route("/check", get(|| async { "All ok!" }))
        .route(
            "/echo",
            axum::routing::post(|body: String| async move { format!("got {} bytes", body.len()) }),
        );
    let _web = web(state.path(), &seed)
        .publish_http("probe", router)
        .start()
        .await
        .expect("starts");
    wait_for_http(&seed, "probe", 1).await;
    let client = seed.http_client("probe");
    let response = client
        .send(
            http::Request::get("/check")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("request"),
        )
        .await
        .expect("answered");
    assert_eq!(response.status(), 200);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(&body[..], b"All ok!");
    let big = "x".repeat(300_000);
    let response = client
        .send(
            http::Request::post("/echo")
                .body(http_body_util::Full::new(bytes::Bytes::from(big)))
                .expect("request"),
        )
        .await
        .expect("answered");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(&body[..], b"got 300000 bytes");
}

#[tokio::test]
async fn waiting_for_a_missing_service_names_it() {
    let state = tempfile::tempdir().expect("tempdir");
    let lonely = mesh_node(state.path(), &[], None).await;
    let error = lonely
        .wait_for(&[&PROBE_SPEC], Duration::from_millis(300))
        .await
        .expect_err("nobody publishes it");
    assert!(
        error
            .to_string()
            .contains("`probe` (no member publishes it yet)"),
        "{error}"
    );
    let status = whoami(&lonely, &CallOptions::new())
        .await
        .expect_err("no replica");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "no live member publishes `probe`");
}

/// A probe replica whose every call fails as a broken replica's would, counting the calls.
#[derive(Clone, Default)]
struct Broken {
    calls: Arc<AtomicUsize>,
}

impl Dispatch for Broken {
    fn spec(&self) -> &'static ServiceSpec {
        &PROBE_SPEC
    }

    fn dispatch(
        &self,
        _: &'static meshrpc::MethodSpec,
        _: Bytes,
        _: Option<meshrpc::Streaming<Bytes>>,
    ) -> BoxFuture<'static, Result<meshrpc::Body, Status>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Err(Status::new(Code::Unavailable, "this replica is broken")) })
    }
}

/// How many of 20 calls from a client with breaker tuning `breaker` reach a broken replica
/// that shares the probe service with a healthy one.
async fn calls_reaching_a_broken_replica(breaker: BreakerConfig) -> usize {
    let state = tempfile::tempdir().expect("tempdir");
    let client = Node::builder("client")
        .cluster("test")
        .state_dir(state.path())
        .listen("127.0.0.1:0".parse().expect("addr"))
        .breaker(breaker)
        .start()
        .await
        .expect("node starts");
    let seeds = [client.local_addr()];
    let _healthy = mesh_node(state.path(), &seeds, Some(Probe::new())).await;
    let broken = Broken::default();
    let _broken = Node::builder("broken")
        .cluster("test")
        .state_dir(state.path())
        .listen("127.0.0.1:0".parse().expect("addr"))
        .seeds(seeds.iter().map(ToString::to_string))
        .publish(broken.clone())
        .start()
        .await
        .expect("node starts");
    wait_for_replicas(&client, 2).await;
    for _ in 0..20 {
        let _ = whoami(&client, &CallOptions::new()).await;
    }
    broken.calls.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_set_on_the_builder_ejects_a_failing_replica_at_its_own_threshold() {
    let ejection = Duration::from_secs(60);
    let after_one = calls_reaching_a_broken_replica(
        BreakerConfig::default()
            .consecutive_failures(1)
            .base_ejection(ejection)
            .max_ejection(ejection),
    )
    .await;
    assert_eq!(after_one, 1, "ejected after its first failure");
    let by_default = calls_reaching_a_broken_replica(
        BreakerConfig::default()
            .base_ejection(ejection)
            .max_ejection(ejection),
    )
    .await;
    assert_eq!(by_default, 5, "ejected after five failures in a row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_http_requests_are_balanced_over_every_replica() {
    use axum::routing::get;
    use http_body_util::BodyExt;

    let state = tempfile::tempdir().expect("tempdir");
    let seed = mesh_node(state.path(), &[], None).await;
    let mut webs = Vec::new();
    for index in 0..3 {
        let router =
            axum::Router::new().route("/who", get(move || async move { format!("web-{index}") }));
        webs.push(
            web(state.path(), &seed)
                .publish_http("probe", router)
                .start()
                .await
                .expect("starts"),
        );
    }
    wait_for_http(&seed, "probe", 3).await;
    let client = seed.http_client("probe");
    let mut answers = HashMap::new();
    for _ in 0..9 {
        let request = http::Request::get("/who")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request");
        let response = tokio::time::timeout(Duration::from_secs(3), client.send(request))
            .await
            .expect("answered in time")
            .expect("answered");
        let body = tokio::time::timeout(Duration::from_secs(3), response.into_body().collect())
            .await
            .expect("body in time")
            .expect("body")
            .to_bytes();
        *answers
            .entry(String::from_utf8_lossy(&body).into_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(answers.len(), 3, "{answers:?}");
    assert!(answers.values().all(|count| *count == 3), "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_legacy_http_replica_under_load_fails_no_request() {
    use axum::routing::get;
    use http_body_util::BodyExt;

    let state = tempfile::tempdir().expect("tempdir");
    let seed = mesh_node(state.path(), &[], None).await;
    let mut webs = Vec::new();
    for index in 0..3 {
        let router = axum::Router::new().route(
            "/who",
            get(move || async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                format!("web-{index}")
            }),
        );
        webs.push(
            web(state.path(), &seed)
                .publish_http("probe", router)
                .start()
                .await
                .expect("starts"),
        );
    }
    wait_for_http(&seed, "probe", 3).await;
    let client = seed.http_client("probe");
    let (ok, failed) = drain_under_load(webs.remove(0), move || {
        let client = client.clone();
        async move {
            let request = http::Request::get("/who")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("request");
            let answer = tokio::time::timeout(Duration::from_secs(5), async {
                let response = client.send(request).await.map_err(|s| s.to_string())?;
                let status = response.status();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                Ok::<_, String>((status, body))
            })
            .await;
            match answer {
                Ok(Ok((status, body))) if status == 200 && body.starts_with(b"web-") => Ok(()),
                Ok(Ok((status, body))) => Err(format!("{status}: {body:?}")),
                Ok(Err(error)) => Err(error),
                Err(_) => Err("no answer within 5 s".to_owned()),
            }
        }
    })
    .await;
    assert!(
        failed.is_empty(),
        "{} requests failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(ok > 200, "only {ok} requests made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_http_request_refused_by_a_member_at_its_limit_goes_to_another() {
    use axum::routing::get;
    use http_body_util::BodyExt;

    let state = tempfile::tempdir().expect("tempdir");
    let seed = mesh_node(state.path(), &[], None).await;
    let mut webs = Vec::new();
    for (index, limit) in [(0, 1), (1, 1_000)] {
        let router =
            axum::Router::new().route("/who", get(move || async move { format!("web-{index}") }));
        let probe = Probe::new();
        let node = web(state.path(), &seed)
            .limits(meshrpc::Limits::default().max_concurrent_calls(limit))
            .publish(probe.clone())
            .publish_http("web", router)
            .start()
            .await
            .expect("starts");
        let _ = probe.node.set(node.clone());
        webs.push(node);
    }
    wait_for_http(&seed, "web", 2).await;
    // web-0 serves one call at a time: a call that sleeps 3 s takes its only slot.
    let busy = {
        let channel = seed.channel_to(webs[0].local_addr());
        tokio::spawn(async move {
            channel
                .unary::<_, Reply>(
                    method("sleep"),
                    &SleepRequest { ms: 3_000 },
                    &CallOptions::new(),
                )
                .await
        })
    };
    let taken = {
        let web = webs[0].clone();
        eventually(Duration::from_secs(2), move || web.calls_in_flight() == 1).await
    };
    assert!(taken, "the sleeping call never reached web-0");

    // Round robin sends half of these to web-0, which refuses each unread: they go to web-1.
    let client = seed.http_client("web");
    for _ in 0..6 {
        let request = http::Request::get("/who")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request");
        let response = tokio::time::timeout(Duration::from_secs(2), client.send(request))
            .await
            .expect("answered in time")
            .expect("answered by the other member");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(&body[..], b"web-1");
    }
    assert!(
        webs[0].calls_in_flight() == 1,
        "the sleeping call ended too soon"
    );
    busy.await
        .expect("task")
        .expect("the sleeping call finishes");
}

/// A minimal HTTP GET on loopback: (status, body).
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("writes");
    let mut raw = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut raw))
        .await
        .expect("answered in time")
        .expect("reads");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoint_reports_health_readiness_and_the_calls_served() {
    let state = tempfile::tempdir().expect("tempdir");
    let seed = mesh_node(state.path(), &[], None).await;
    let probe = Probe::new();
    let replica = Node::builder("replica")
        .cluster("test")
        .state_dir(state.path())
        .listen("127.0.0.1:0".parse().expect("addr"))
        .seeds([seed.local_addr().to_string()])
        .admin("127.0.0.1:0".parse().expect("addr"))
        .publish(probe.clone())
        .start()
        .await
        .expect("starts");
    let _ = probe.node.set(replica.clone());
    let admin = replica.admin_addr().expect("admin address");
    wait_for_replicas(&seed, 1).await;
    for _ in 0..5 {
        whoami(&seed, &CallOptions::new()).await.expect("call");
    }
    assert_eq!(http_get(admin, "/healthz").await, (200, "ok\n".to_owned()));
    let (status, body) = http_get(admin, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (status, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            r#"meshrpc_calls_total{side="server",service="probe",method="whoami",code="ok"} 5"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains("meshrpc_members 2"), "{metrics}");
    assert!(metrics.contains("meshrpc_calls_in_flight 0"), "{metrics}");
    let (status, _) = http_get(admin, "/nope").await;
    assert_eq!(status, 404);
    // Draining makes the node unready.
    let draining = {
        let replica = replica.clone();
        tokio::spawn(async move { replica.shutdown().await })
    };
    let unready = {
        let mut unready = false;
        for _ in 0..50 {
            if let (503, _) = http_get(admin, "/readyz").await {
                unready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        unready
    };
    draining.await.expect("drained");
    assert!(unready, "a draining node reports itself unready");
}

#[tokio::test]
async fn a_node_whose_identity_can_never_be_gossiped_is_refused_at_start() {
    let state = tempfile::tempdir().expect("tempdir");
    let tags: Vec<String> = (0..300)
        .map(|n| format!("tag-{n:03}-{}", "x".repeat(90)))
        .collect();
    let error = Node::builder("verbose")
        .cluster("test")
        .state_dir(state.path())
        .listen("127.0.0.1:0".parse().expect("addr"))
        .tags(tags)
        .start()
        .await
        .expect_err("thirty kilobytes of tags cannot ride a probe");
    assert!(matches!(error, meshrpc::NodeError::Identity(_)), "{error}");
}
