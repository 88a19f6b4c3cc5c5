//! Impaired links under a bounded load: loss and delay on every replica's link, and one slow
//! replica that peak-EWMA balancing must route around. The links are user-space relays
//! (`faults::link`): the replicas advertise the relay's address, so everything sent to them
//! crosses it.

use std::net::SocketAddr;
use std::time::Duration;

use faults::link::{Impairment, Relay};
use faults::load::{self, Load};
use faults::mesh::{free_tcp_port, greets_received, mesh_with_node, wait_for_greeters};
use faults::process::{Mesh, Proc, args};
use greeter::{Greeter, GreeterClient};
use meshrpc::CallOptions;

const DEADLINE: Duration = Duration::from_secs(10);

/// A greeter reached only through `relay`, with its admin endpoint on `admin`.
fn greeter_behind(
    mesh: &Mesh,
    label: &str,
    relay: &Relay,
    seed: SocketAddr,
    admin: SocketAddr,
) -> Proc {
    let process = mesh.greeter(
        label,
        None,
        &args(&[
            "--listen",
            "127.0.0.1:0",
            "--advertise",
            &relay.addr().to_string(),
            "--admin",
            &admin.to_string(),
            "-N",
            &seed.to_string(),
        ]),
    );
    relay.set_upstream(process.addr_after("listening on "));
    process
}

fn admin_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_tcp_port("127.0.0.1")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_is_answered_right_over_links_that_lose_and_delay_packets() {
    let _exclusive = faults::exclusive();
    let (_state, mesh, node) = mesh_with_node("lossy").await;
    // 5 % loss and 10 ms each way (20 ms more per round trip) on every replica's link.
    let impairment = Impairment {
        delay: Duration::from_millis(10),
        loss: 0.05,
    };
    let relays: Vec<Relay> = (0..3)
        .map(|i| Relay::start(impairment, 0x5eed + i))
        .collect();
    let _replicas: Vec<Proc> = relays
        .iter()
        .enumerate()
        .map(|(i, relay)| {
            greeter_behind(
                &mesh,
                &format!("greeter-{i}"),
                relay,
                node.local_addr(),
                admin_addr(),
            )
        })
        .collect();
    wait_for_greeters(&node, 3, Duration::from_secs(20)).await;

    let client: GreeterClient = node.client();
    let client = client.with_options(CallOptions::new().timeout(DEADLINE));
    let load = Load::start(
        8,
        3_000,
        Duration::from_secs(10),
        Duration::ZERO,
        move |w, n| {
            let client = client.clone();
            async move {
                // Some names long enough to span several packets.
                let name = format!("guest-{w}-{n}-{}", "x".repeat((n % 4) * 1_500));
                load::greeting(&name, client.greet(name.clone()).await)
            }
        },
    );
    let report = load.complete().await;
    let (forwarded, dropped) = relays.iter().fold((0, 0), |(f, d), relay| {
        let (rf, rd) = relay.counts();
        (f + rf, d + rd)
    });
    eprintln!(
        "5% loss + 20 ms RTT on every link: {}; the links dropped {dropped} of {} datagrams",
        report.summary(),
        forwarded + dropped
    );
    assert!(report.sent() >= 500, "only {} calls", report.sent());
    assert!(
        dropped > 0,
        "the links dropped nothing: the test tested nothing"
    );
    assert_eq!(
        (report.failed(), report.wrong()),
        (0, 0),
        "first problems: {:?}",
        report.first_problems()
    );
    assert!(report.max() <= DEADLINE + Duration::from_millis(500));
}

/// Runs `calls` greetings through the gateway at `http`; returns the load report.
async fn http_load(http: SocketAddr, calls: usize) -> faults::load::Report {
    let client = faults::http::client();
    Load::start(
        8,
        calls,
        Duration::from_secs(20),
        Duration::ZERO,
        move |w, n| {
            let client = client.clone();
            async move {
                let name = format!("g{w}x{n}");
                faults::http::greet_through_gateway(&client, http, &name, DEADLINE).await
            }
        },
    )
    .complete()
    .await
}

/// Per replica, the greet calls it has been sent (answered or abandoned by a hedge).
async fn received(admins: &[SocketAddr]) -> Vec<f64> {
    let mut counts = Vec::new();
    for admin in admins {
        counts.push(greets_received(*admin).await.expect("a replica's metrics"));
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_moves_traffic_away_from_a_slow_replica() {
    let _exclusive = faults::exclusive();
    let state = tempfile::tempdir().expect("tempdir");
    let mesh = Mesh::new(format!("slow-{}", std::process::id()), state.path());
    let gateway = |label: &str, balancing: &str, seed: Option<SocketAddr>| {
        let http = SocketAddr::from(([127, 0, 0, 1], free_tcp_port("127.0.0.1")));
        let mut list = vec![
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--http".to_owned(),
            http.to_string(),
            "--balancing".to_owned(),
            balancing.to_owned(),
        ];
        if let Some(seed) = seed {
            list.extend(["-N".to_owned(), seed.to_string()]);
        }
        let process = mesh.gateway(label, None, &list);
        (process, http)
    };
    let (round_robin, rr_http) = gateway("mesh-api-rr", "round-robin", None);
    let seed = round_robin.addr_after("the mesh on ");
    let (_peak_ewma, ewma_http) = gateway("mesh-api-ewma", "peak-ewma", Some(seed));

    // Every replica behind a relay, so all pay its cost; the first one's link adds 30 ms.
    let slow = Impairment {
        delay: Duration::from_millis(15),
        loss: 0.0,
    };
    let relays: Vec<Relay> = (0..3)
        .map(|i| Relay::start(if i == 0 { slow } else { Impairment::default() }, i))
        .collect();
    let admins: Vec<SocketAddr> = (0..3).map(|_| admin_addr()).collect();
    let _replicas: Vec<Proc> = relays
        .iter()
        .zip(&admins)
        .enumerate()
        .map(|(i, (relay, admin))| {
            greeter_behind(&mesh, &format!("greeter-{i}"), relay, seed, *admin)
        })
        .collect();
    for http in [rr_http, ewma_http] {
        faults::within(Duration::from_secs(20), async || {
            let Ok(answer) = faults::http::get(http, "/readyz").await else {
                return false;
            };
            answer.body.contains(r#""service":"greeter""#)
                && answer.body.contains(r#""rpc_members":3"#)
        })
        .await
        .expect("both gateways see three greeters");
    }

    let mut shares = Vec::new();
    for (name, http) in [("round robin", rr_http), ("peak EWMA", ewma_http)] {
        let before = received(&admins).await;
        let report = http_load(http, 2_000).await;
        let after = received(&admins).await;
        let deltas: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        let total: f64 = deltas.iter().sum();
        let share = deltas[0] / total;
        eprintln!(
            "{name}: the replica with 30 ms more latency was sent {:.1}% of the calls ({} of {total}); {}",
            share * 100.0,
            deltas[0],
            report.summary()
        );
        assert_eq!(
            report.failed() + report.wrong(),
            0,
            "{:?}",
            report.first_problems()
        );
        shares.push(share);
    }
    assert!(
        (0.25..0.42).contains(&shares[0]),
        "round robin gives each replica a third: {:.3}",
        shares[0]
    );
    assert!(
        shares[1] < 0.20,
        "peak EWMA still sent {:.3} to the slow replica",
        shares[1]
    );
}
