//! CPU starvation: busy loops pinned to every core for 30 s while a small mesh of real
//! processes (four greeters in network namespaces and the test's node) serves a bounded load.
//! A starved process answers probes late and reads acks late; membership must declare no live
//! member dead (docs/RELIABILITY.md, "CPU starvation"). In the long variant only
//! (`cargo xtask faults --long`): it saturates the machine for half a minute.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use faults::load::{self, Load};
use faults::mesh::{client_node, live_greeters, wait_for_greeters};
use faults::netns::Lab;
use faults::process::{Mesh, Proc, args, binary};
use greeter::{Greeter, GreeterClient};
use meshrpc::{CallOptions, Strategy};

const DEADLINE: Duration = Duration::from_secs(10);
const MESH_PORT: u16 = 11999;
const GREETERS: usize = 4;
const STARVATION: Duration = Duration::from_secs(30);
const BUSY_PER_CORE: usize = 4;

/// Busy loops pinned to each core, killed when dropped.
struct BusyLoops(Vec<Child>);

impl BusyLoops {
    /// `per_core` busy shell loops pinned (taskset) to each of the machine's cores, at
    /// niceness `nice` (0 competes with the mesh as an equal; below 0 takes precedence).
    fn start(per_core: usize, nice: i32) -> BusyLoops {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let mut children = Vec::new();
        for core in 0..cores {
            for _ in 0..per_core {
                let child = Command::new("nice")
                    .args(["-n", &nice.to_string(), "taskset", "-c", &core.to_string()])
                    .args(["sh", "-c", "while :; do :; done"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("nice and taskset (coreutils, util-linux) start a busy loop");
                children.push(child);
            }
        }
        BusyLoops(children)
    }
}

impl Drop for BusyLoops {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "saturates every core for 30 s: run by `cargo xtask faults --long`"]
async fn busy_loops_on_every_core_for_30_s_kill_no_live_member() {
    let _exclusive = faults::exclusive();
    let Some(lab) = Lab::create_or_skip("starvation", GREETERS) else {
        return;
    };
    let state = tempfile::tempdir().expect("tempdir");
    let mesh = Mesh::new(format!("starve-{}", std::process::id()), state.path());
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
            let mut command = mesh.command(&binary("greeter"), Some(&host.ns));
            command
                .args(args(&[
                    "--listen",
                    &format!("{}:{MESH_PORT}", host.ip),
                    "-N",
                    &seed,
                ]))
                .env("RUST_LOG", "warn,meshrpc::membership=info");
            let label = format!("greeter-{i}");
            let log = state.path().join(format!("{label}.log"));
            Proc::start(label, command, &log)
        })
        .collect();
    wait_for_greeters(&node, GREETERS, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let client: GreeterClient = node.client();
    let client = client.with_options(CallOptions::new().timeout(DEADLINE));
    let load = Load::start(
        4,
        1_000_000,
        STARVATION + Duration::from_secs(20),
        Duration::from_millis(2),
        move |w, n| {
            let client = client.clone();
            async move {
                let name = format!("guest-{w}-{n}");
                load::greeting(&name, client.greet(name.clone()).await)
            }
        },
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let starved_from = load.elapsed();
    // `MESHRPC_FAULTS_BUSY_NICE` (default 0) gives the busy loops precedence over the mesh.
    let nice: i32 = std::env::var("MESHRPC_FAULTS_BUSY_NICE")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    let busy = BusyLoops::start(BUSY_PER_CORE, nice);
    // What the test's own node sees, sampled every 100 ms (it is starved too).
    let mut smallest_view = GREETERS;
    let mut samples = 0;
    let started = tokio::time::Instant::now();
    while started.elapsed() < STARVATION {
        smallest_view = smallest_view.min(live_greeters(&node).len());
        samples += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(busy);
    let starved_to = load.elapsed();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let report = load.finish().await;
    let logs: Vec<String> = replicas.iter().map(Proc::log_text).collect();
    let count = |needle: &str| -> usize {
        logs.iter()
            .map(|log| log.lines().filter(|line| line.contains(needle)).count())
            .sum()
    };
    let downs = count("member down");
    let renewed = count("declared down by the cluster");
    let late = count("timers run late");
    eprintln!(
        "CPU starvation ({} busy loops at nice {nice} on {} cores, {STARVATION:?}): {downs} members declared \
         down by the greeters, {renewed} greeters renewed, the test's node saw at least \
         {smallest_view} of {GREETERS} greeters alive ({samples} samples), {late} greeters \
         noticed their timers ran late; load {}; during starvation {} calls, p99 {:.1?}",
        BUSY_PER_CORE * std::thread::available_parallelism().map_or(1, usize::from),
        std::thread::available_parallelism().map_or(1, usize::from),
        report.summary(),
        report.sent_in(starved_from, starved_to),
        report.quantile_in(0.99, starved_from, starved_to),
    );
    assert_eq!(
        downs,
        0,
        "live members declared down; logs:\n{}",
        logs.join("\n")
    );
    assert_eq!(renewed, 0, "a greeter was declared down by the cluster");
    assert_eq!(
        smallest_view, GREETERS,
        "the test's node lost sight of a greeter"
    );
    assert_eq!(live_greeters(&node).len(), GREETERS);
    assert!(report.sent() > 1_000, "only {} calls", report.sent());
    assert_eq!(report.wrong(), 0, "{:?}", report.first_problems());
    assert_eq!(report.failed(), 0, "{:?}", report.first_problems());
    drop(replicas);
}
