//! Crashes and restarts of real processes on loopback, under a bounded load, asserting what
//! the callers saw: `kill -9` and restart of a replica (three times), SIGTERM drain behind the
//! gateway (greet route and legacy HTTP), `kill -9` of a replica behind the gateway, and the
//! gateway's dependency vanishing and coming back.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use faults::load::{self, Load};
use faults::mesh::{free_tcp_port, free_udp_port, mesh_with_node, wait_for_greeters};
use faults::process::{Mesh, Proc, args};
use greeter::{Greeter, GreeterClient};
use meshrpc::CallOptions;
use tokio::time::Instant;

/// Every call's deadline: longer than failure detection, so a call that lands on a dead
/// replica can still be retried elsewhere in time.
const DEADLINE: Duration = Duration::from_secs(10);

fn greeter_on(mesh: &Mesh, label: &str, port: u16, seed: SocketAddr) -> Proc {
    mesh.greeter(
        label,
        None,
        &args(&[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "-N",
            &seed.to_string(),
        ]),
    )
}

fn greet_load(client: GreeterClient, max_calls: usize, max_time: Duration) -> Load {
    let client = client.with_options(CallOptions::new().timeout(DEADLINE));
    Load::start(
        4,
        max_calls,
        max_time,
        Duration::from_millis(2),
        move |worker, n| {
            let client = client.clone();
            async move {
                let name = format!("guest-{worker}-{n}");
                load::greeting(&name, client.greet(name.clone()).await)
            }
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restarted_on_its_address_serves_again_within_six_seconds_every_time() {
    // No call may fail either (asserted inside); 40 cycles in the long variant.
    let recoveries = kill_and_restart(faults::scaled(8, 40), Duration::from_secs(6)).await;
    eprintln!("kill -9 and restart: serving again after {recoveries:?}");
}

/// Kills one of three replicas `cycles` times under load and restarts it on the same address;
/// each time it must serve again within `limit`. No call may fail.
async fn kill_and_restart(cycles: usize, limit: Duration) -> Vec<Duration> {
    let _exclusive = faults::exclusive();
    let (_state, mesh, node) = mesh_with_node("crash").await;
    let seed = node.local_addr();
    let ports: Vec<u16> = (0..3).map(|_| free_udp_port("127.0.0.1")).collect();
    let mut replicas: Vec<Proc> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| greeter_on(&mesh, &format!("greeter-{i}"), *port, seed))
        .collect();
    wait_for_greeters(&node, 3, Duration::from_secs(15)).await;

    let load = greet_load(node.client(), 200_000, Duration::from_secs(60));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut recoveries = Vec::new();
    for cycle in 0..cycles {
        // The same replica each time, restarted on the same address (as a supervisor would).
        replicas[0].kill9();
        let killed = Instant::now();
        tokio::time::sleep(Duration::from_millis(500)).await;
        replicas[0] = greeter_on(&mesh, &format!("greeter-0-restart-{cycle}"), ports[0], seed);
        let back = faults::within(limit, async || {
            node.view()
                .member_at(SocketAddr::from(([127, 0, 0, 1], ports[0])))
                .is_some_and(|m| m.accepts_calls())
                && node
                    .client_to::<GreeterClient>(SocketAddr::from(([127, 0, 0, 1], ports[0])))
                    .with_options(CallOptions::new().timeout(Duration::from_millis(500)))
                    .greet("probe".into())
                    .await
                    .is_ok()
        })
        .await;
        let recovered = killed.elapsed();
        eprintln!("cycle {cycle}: restarted replica serving again {recovered:?} after the kill");
        assert!(
            back.is_some(),
            "cycle {cycle}: the restarted replica never served"
        );
        recoveries.push(recovered);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let report = load.finish().await;
    eprintln!("kill -9 and restart x{cycles}: {}", report.summary());
    assert!(report.sent() > 1_000, "only {} calls", report.sent());
    assert_eq!(
        (report.failed(), report.wrong()),
        (0, 0),
        "first problems: {:?}",
        report.first_problems()
    );
    assert!(report.max() <= DEADLINE + Duration::from_millis(500));
    drop(replicas);
    recoveries
}

/// A gateway on loopback with a fixed HTTP port, the seed of `mesh`.
fn gateway(mesh: &Mesh, extra: &[&str]) -> (Proc, SocketAddr, SocketAddr) {
    let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port("127.0.0.1"))
        .parse()
        .expect("addr");
    let mut list = vec!["--listen", "127.0.0.1:0", "--http"];
    let http_text = http.to_string();
    list.push(&http_text);
    list.extend_from_slice(extra);
    let process = mesh.gateway("mesh-api", None, &args(&list));
    let seed = process.addr_after("the mesh on ");
    (process, http, seed)
}

/// Requests through the gateway from four workers: two GET the greet route (an RPC to a
/// greeter), two GET the greeter's legacy `/check` handler (an HTTP tunnel to a greeter).
fn http_greet_load(http: SocketAddr, max_calls: usize, max_time: Duration) -> Load {
    let client = faults::http::client();
    Load::start(
        4,
        max_calls,
        max_time,
        Duration::from_millis(2),
        move |worker, n| {
            let client = client.clone();
            async move {
                if worker % 2 == 0 {
                    let name = format!("guest{worker}x{n}");
                    faults::http::greet_through_gateway(&client, http, &name, DEADLINE).await
                } else {
                    faults::http::check_through_gateway(&client, http, DEADLINE).await
                }
            }
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_drained_with_sigterm_behind_the_gateway_fails_no_request_and_exits_zero() {
    let _exclusive = faults::exclusive();
    let state = tempfile::tempdir().expect("tempdir");
    let mesh = Mesh::new(format!("drain-{}", std::process::id()), state.path());
    let (_gateway, http, mut replicas) = gateway_and_three_greeters(&mesh).await;

    let load = http_greet_load(http, 100_000, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Two of the three, one after the other: each drains while the others carry the load.
    for replica in replicas.iter_mut().take(2) {
        replica.signal("TERM");
        let signalled = Instant::now();
        let status = tokio::task::block_in_place(|| replica.wait_exit(Duration::from_secs(10)))
            .expect("a draining replica exits within its drain timeout");
        eprintln!(
            "SIGTERM: exited {:?} after {:?}",
            status.code(),
            signalled.elapsed()
        );
        assert_eq!(status.code(), Some(0), "a drained replica exits 0");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let report = load.finish().await;
    eprintln!("SIGTERM drain x2 behind the gateway: {}", report.summary());
    assert!(report.sent() > 500, "only {} requests", report.sent());
    assert_eq!(
        (report.failed(), report.wrong()),
        (0, 0),
        "first problems: {:?}",
        report.first_problems()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_behind_the_gateway_fails_no_get() {
    let _exclusive = faults::exclusive();
    let state = tempfile::tempdir().expect("tempdir");
    let mesh = Mesh::new(format!("kill-gw-{}", std::process::id()), state.path());
    let (_gateway, http, mut replicas) = gateway_and_three_greeters(&mesh).await;

    // GETs are idempotent: one that was on the killed replica is sent to another.
    let load = http_greet_load(http, 100_000, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(1)).await;
    replicas[0].kill9();
    // Until the mesh has declared it down, and a while after.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let report = load.finish().await;
    eprintln!("kill -9 behind the gateway: {}", report.summary());
    assert!(report.sent() > 500, "only {} requests", report.sent());
    assert_eq!(
        (report.failed(), report.wrong()),
        (0, 0),
        "first problems: {:?}",
        report.first_problems()
    );
}

/// A gateway (the seed of `mesh`) and three greeters, once the gateway counts all three live:
/// the gateway, its HTTP address and the greeters.
async fn gateway_and_three_greeters(mesh: &Mesh) -> (Proc, SocketAddr, Vec<Proc>) {
    let (gateway, http, seed) = gateway(mesh, &[]);
    let greeters: Vec<Proc> = (0..3)
        .map(|i| greeter_on(mesh, &format!("greeter-{i}"), 0, seed))
        .collect();
    wait_for_live(http, 3).await;
    (gateway, http, greeters)
}

/// Waits until the gateway's `/readyz` counts `count` live greeters.
async fn wait_for_live(http: SocketAddr, count: u64) -> Duration {
    faults::within(Duration::from_secs(20), async || {
        let Ok(answer) = faults::http::get(http, "/readyz").await else {
            return false;
        };
        let value: serde_json::Value = serde_json::from_str(&answer.body).unwrap_or_default();
        value["dependencies"]
            .as_array()
            .and_then(|list| list.iter().find(|d| d["service"] == "greeter"))
            .and_then(|d| d["rpc_members"].as_u64())
            == Some(count)
    })
    .await
    .unwrap_or_else(|| panic!("the gateway never counted {count} live greeters"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_answers_503_naming_the_service_while_every_greeter_is_gone() {
    let _exclusive = faults::exclusive();
    let state = tempfile::tempdir().expect("tempdir");
    let mesh = Mesh::new(format!("vanish-{}", std::process::id()), state.path());
    let (_gateway, http, seed) = gateway(&mesh, &["--require", "greeter"]);
    let mut replicas: Vec<Proc> = (0..2)
        .map(|i| greeter_on(&mesh, &format!("greeter-{i}"), 0, seed))
        .collect();
    wait_for_live(http, 2).await;
    let client = faults::http::client();
    let url = format!("http://{http}/greeter/greet/Max");
    let greet = async || {
        let started = Instant::now();
        let answer = faults::http::request(&client, "GET", &url, &[], Bytes::new(), DEADLINE)
            .await
            .expect("the gateway answers");
        (answer, started.elapsed())
    };
    assert_eq!(greet().await.0.status, 200);

    for replica in &mut replicas {
        replica.kill9();
    }
    let killed = Instant::now();
    // Until the mesh notices, requests may wait for the dead replicas; once it has, every
    // request is a quick 503 that names the service.
    let mut first_503 = None;
    let mut slowest_503 = Duration::ZERO;
    let mut answers_503 = 0;
    while killed.elapsed() < Duration::from_secs(12) {
        let (answer, took) = greet().await;
        match answer.status {
            503 => {
                assert!(answer.body.contains("`greeter`"), "{}", answer.body);
                // The first 503 may have waited for failure detection; the rest must not.
                if first_503.is_some() {
                    slowest_503 = slowest_503.max(took);
                }
                first_503.get_or_insert(killed.elapsed());
                answers_503 += 1;
                if answers_503 >= 20 {
                    break;
                }
            }
            status => assert!(first_503.is_none(), "{status} after a 503: {}", answer.body),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_503 = first_503.expect("503 within 12 s of the last greeter's death");
    eprintln!(
        "every greeter killed: first 503 after {first_503:?}; the next {} 503s answered in \
         at most {slowest_503:?}",
        answers_503 - 1
    );
    assert!(first_503 < Duration::from_secs(8), "{first_503:?}");
    assert!(slowest_503 < Duration::from_secs(1), "{slowest_503:?}");
    assert_eq!(
        faults::http::get(http, "/readyz").await.map(|a| a.status),
        Ok(503)
    );

    let returned = Instant::now();
    let _back = greeter_on(&mesh, "greeter-back", 0, seed);
    let took = faults::within(Duration::from_secs(15), async || {
        greet().await.0.status == 200
    })
    .await
    .expect("200 again once a greeter returns");
    eprintln!(
        "a greeter returned: 200 again after {took:?} ({:?} since its start)",
        returned.elapsed()
    );
    assert_eq!(
        faults::http::get(http, "/readyz").await.map(|a| a.status),
        Ok(200)
    );
}
