//! A replica cut off the network (its cable pulled: the bridge port of its namespace goes
//! down) under a bounded load, then plugged back in. Needs network namespaces (root and
//! iproute2); skipped with a message otherwise.

use std::net::SocketAddr;
use std::time::Duration;

use faults::load::{self, Load};
use faults::mesh::{client_node, greets_served, live_greeters, members_seen_by, wait_for_greeters};
use faults::netns::Lab;
use faults::process::{Mesh, Proc, args};
use greeter::{Greeter, GreeterClient};
use meshrpc::{CallOptions, Strategy};
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(10);
const MESH_PORT: u16 = 11999;
const ADMIN_PORT: u16 = 9100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_replica_is_declared_dead_calls_fail_over_and_it_rejoins_after_healing() {
    partition_and_heal().await;
}

/// Cuts one of three replicas off under load and heals it: no call may fail or be wrong.
async fn partition_and_heal() {
    let _exclusive = faults::exclusive();
    let Some(lab) = Lab::create_or_skip("partition", 3) else {
        return;
    };
    let state = tempfile::tempdir().expect("tempdir");
    let mesh = Mesh::new(format!("partition-{}", std::process::id()), state.path());
    let node = client_node(
        state.path(),
        &mesh.cluster,
        SocketAddr::from((lab.root_ip(), 0)),
        Strategy::RoundRobin,
    )
    .await;
    let seed = node.local_addr().to_string();
    let replicas: Vec<Proc> = lab
        .hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            mesh.greeter(
                &format!("greeter-{i}"),
                Some(&host.ns),
                &args(&[
                    "--listen",
                    &format!("{}:{MESH_PORT}", host.ip),
                    "--admin",
                    &format!("{}:{ADMIN_PORT}", host.ip),
                    "-N",
                    &seed,
                ]),
            )
        })
        .collect();
    wait_for_greeters(&node, 3, Duration::from_secs(20)).await;
    let addrs: Vec<SocketAddr> = lab
        .hosts
        .iter()
        .map(|host| SocketAddr::from((host.ip, MESH_PORT)))
        .collect();
    let victim = addrs[0];
    let victim_admin = SocketAddr::from((lab.hosts[0].ip, ADMIN_PORT));

    let client: GreeterClient = node.client();
    let client = client.with_options(CallOptions::new().timeout(DEADLINE));
    let load = Load::start(
        4,
        200_000,
        Duration::from_secs(60),
        Duration::from_millis(2),
        move |w, n| {
            let client = client.clone();
            async move {
                let name = format!("guest-{w}-{n}");
                load::greeting(&name, client.greet(name.clone()).await)
            }
        },
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    lab.cut(0);
    let cut = Instant::now();
    let cut_at = load.elapsed();
    let detected = faults::within(Duration::from_secs(10), async || {
        if node.view().member_at(victim).is_some() {
            return false;
        }
        for survivor in &addrs[1..] {
            match members_seen_by(&node, *survivor).await {
                Ok(members) if !members.contains(&victim) => {}
                _ => return false,
            }
        }
        true
    })
    .await
    .expect("the partitioned replica leaves every view");
    let detected_at = load.elapsed();
    eprintln!("partition: the cut replica left every view {detected:?} after the cut");
    assert!(detected < Duration::from_secs(5), "took {detected:?}");

    // Stay cut a little longer, then plug the cable back in.
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(cut.elapsed() - detected)).await;
    let served_before = greets_served(victim_admin).await;
    lab.heal(0);
    let healed = Instant::now();
    let rejoined = faults::within(Duration::from_secs(25), async || {
        live_greeters(&node).contains(&victim)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the healed replica never rejoined; its log:\n{}",
            replicas[0].log_text()
        )
    });
    let served_again = faults::within(Duration::from_secs(10), async || {
        match (served_before, greets_served(victim_admin).await) {
            (Some(before), Some(now)) => now > before,
            (None, Some(now)) => now > 0.0,
            _ => false,
        }
    })
    .await
    .expect("the rejoined replica gets traffic again");
    let traffic_after = healed.elapsed();
    eprintln!(
        "partition healed: back in the view after {rejoined:?}, serving the load again \
         {traffic_after:?} after the heal (within {served_again:?} of looking)"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = load.finish().await;
    eprintln!(
        "partition of one of three replicas: {}; during detection: {} calls, p99 {:.1?}",
        report.summary(),
        report.sent_in(cut_at, detected_at),
        report.quantile_in(0.99, cut_at, detected_at)
    );
    assert!(report.sent() > 1_000, "only {} calls", report.sent());
    assert_eq!(report.wrong(), 0, "{:?}", report.first_problems());
    assert_eq!(report.failed(), 0, "{:?}", report.first_problems());
    assert!(
        report.max() <= DEADLINE + Duration::from_millis(500),
        "a call hung past its deadline: {:?}",
        report.max()
    );
    assert!(
        rejoined < Duration::from_secs(20),
        "rejoined after {rejoined:?}"
    );
    drop(replicas);
}
