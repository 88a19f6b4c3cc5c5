//! A real mesh of 64 processes, one network namespace each: a gateway (`mesh-api`) and 63
//! greeters, plus the test's own node as observer and seed. Views converge; the idle resident
//! memory and CPU of every process are measured; under HTTP load through the gateway, 16
//! greeters are killed with `kill -9` at once; every survivor's view must shrink to the
//! survivors within 10 s, and no idempotent call may fail (docs/SCALE.md, "A real mesh of 64
//! processes"). In the long variant only (`cargo xtask faults --long`): it starts 64 processes.

use std::net::SocketAddr;
use std::time::Duration;

use faults::load::Load;
use faults::mesh::{client_node, members_seen_by};
use faults::netns::Lab;
use faults::process::{Mesh, Proc, args};
use meshrpc::{Node, Strategy};
use tokio::time::Instant;

const MESH_PORT: u16 = 11999;
const HTTP_PORT: u16 = 8080;
const GREETERS: usize = 63;
const KILLED: usize = 16;
const DEADLINE: Duration = Duration::from_secs(10);

/// User and system CPU time process `pid` has used so far (`/proc/<pid>/stat`, in clock ticks
/// of 10 ms).
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the name: state is field 3, utime 14 and stime 15 (1-based over the whole line).
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Whether every node at `addrs` sees exactly `expected` members, asked in parallel.
async fn all_see(node: &Node, addrs: &[SocketAddr], expected: &[SocketAddr]) -> bool {
    differences(node, addrs, expected).await.is_empty()
}

/// The nodes at `addrs` that do not see exactly `expected`: what each sees instead (members
/// missing or extra), or why it did not answer.
async fn differences(node: &Node, addrs: &[SocketAddr], expected: &[SocketAddr]) -> Vec<String> {
    let mut asks = tokio::task::JoinSet::new();
    for addr in addrs {
        let (node, addr) = (node.clone(), *addr);
        asks.spawn(async move { (addr, members_seen_by(&node, addr).await) });
    }
    let mut wrong = Vec::new();
    while let Some(answer) = asks.join_next().await {
        let Ok((addr, answer)) = answer else {
            wrong.push("a query panicked".to_owned());
            continue;
        };
        match answer {
            Ok(members) => {
                let extra: Vec<_> = members.iter().filter(|m| !expected.contains(m)).collect();
                let missing: Vec<_> = expected.iter().filter(|m| !members.contains(m)).collect();
                if !extra.is_empty() || !missing.is_empty() {
                    wrong.push(format!("{addr} also sees {extra:?}, misses {missing:?}"));
                }
            }
            Err(status) => wrong.push(format!("{addr} did not answer: {status}")),
        }
    }
    wrong
}

/// The kernel's neighbour (ARP) table is one for all namespaces: 64 hosts that each probe
/// every other need ~64² entries, over the default ceiling of 1,024 (the kernel then logs
/// "neighbor table overflow" and hosts past ~35 cannot reach anyone). Raised for the test and
/// put back when dropped.
struct NeighbourTable {
    saved: Vec<(String, String)>,
}

impl NeighbourTable {
    fn raise() -> NeighbourTable {
        let mut saved = Vec::new();
        for (name, value) in [
            ("gc_thresh1", "4096"),
            ("gc_thresh2", "8192"),
            ("gc_thresh3", "16384"),
        ] {
            let path = format!("/proc/sys/net/ipv4/neigh/default/{name}");
            if let Ok(old) = std::fs::read_to_string(&path)
                && std::fs::write(&path, value).is_ok()
            {
                saved.push((path, old.trim().to_owned()));
            }
        }
        NeighbourTable { saved }
    }
}

impl Drop for NeighbourTable {
    fn drop(&mut self) {
        for (path, old) in &self.saved {
            let _ = std::fs::write(path, old);
        }
    }
}

fn summary(values: &[f64]) -> String {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mean = sorted.iter().sum::<f64>() / sorted.len().max(1) as f64;
    format!(
        "mean {mean:.1}, median {:.1}, max {:.1}",
        sorted.get(sorted.len() / 2).copied().unwrap_or(0.0),
        sorted.last().copied().unwrap_or(0.0)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "starts 64 processes in 64 network namespaces: run by `cargo xtask faults --long`"]
async fn a_mesh_of_64_processes_converges_and_shrinks_within_10_s_after_16_kill_9() {
    let _exclusive = faults::exclusive();
    let Some(lab) = Lab::create_or_skip("scale", GREETERS + 1) else {
        return;
    };
    let _neighbours = NeighbourTable::raise();
    let state = tempfile::tempdir().expect("tempdir");
    let mesh = Mesh::new(format!("scale-{}", std::process::id()), state.path());
    let node = client_node(
        state.path(),
        &mesh.cluster,
        SocketAddr::from((lab.root_ip(), MESH_PORT)),
        Strategy::RoundRobin,
    )
    .await;
    let seed = node.local_addr().to_string();
    let started = Instant::now();
    let gateway_host = &lab.hosts[0];
    let gateway = mesh.gateway(
        "mesh-api",
        Some(&gateway_host.ns),
        &args(&[
            "--listen",
            &format!("{}:{MESH_PORT}", gateway_host.ip),
            "--http",
            &format!("{}:{HTTP_PORT}", gateway_host.ip),
            "-N",
            &seed,
        ]),
    );
    let http = SocketAddr::from((gateway_host.ip, HTTP_PORT));
    let mut greeters: Vec<Proc> = Vec::new();
    for (i, host) in lab.hosts[1..].iter().enumerate() {
        let mut command = mesh.command(&faults::process::binary("greeter"), Some(&host.ns));
        command
            .args(args(&[
                "--listen",
                &format!("{}:{MESH_PORT}", host.ip),
                "-N",
                &seed,
            ]))
            .env(
                "RUST_LOG",
                "warn,meshrpc::membership=info,meshrpc::node=info",
            );
        let label = format!("greeter-{i}");
        let log = state.path().join(format!("{label}.log"));
        greeters.push(Proc::start(label, command, &log));
        if i % 8 == 7 {
            // Debug builds start slowly: eight at a time.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let all: Vec<SocketAddr> = lab
        .hosts
        .iter()
        .map(|host| SocketAddr::from((host.ip, MESH_PORT)))
        .collect();
    let mut everyone = all.clone();
    everyone.push(node.local_addr());
    everyone.sort();
    let joined = faults::within(Duration::from_secs(120), async || {
        faults::mesh::live_greeters(&node).len() == GREETERS
    })
    .await;
    if joined.is_none() {
        let seen = faults::mesh::live_greeters(&node);
        let missing: Vec<String> = greeters
            .iter()
            .zip(&all[1..])
            .filter(|(_, addr)| !seen.contains(addr))
            .take(3)
            .map(|(greeter, addr)| format!("{addr}:\n{}", greeter.log_text()))
            .collect();
        panic!(
            "the test's node sees {} of {GREETERS} greeters after 120 s; the first missing:\n{}",
            seen.len(),
            missing.join("\n")
        );
    }
    let seen_by_test = started.elapsed();
    let converged = faults::within(Duration::from_secs(120), async || {
        all_see(&node, &all, &everyone).await
    })
    .await
    .expect("every process sees the 65 members");
    let converged = seen_by_test + converged;

    // Idle: resident memory and CPU per process over 10 s.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pids: Vec<u32> = std::iter::once(gateway.pid())
        .chain(greeters.iter().map(Proc::pid))
        .collect();
    let cpu_before: Vec<Option<Duration>> = pids.iter().map(|pid| cpu_time(*pid)).collect();
    let idle_window = Duration::from_secs(10);
    tokio::time::sleep(idle_window).await;
    let cpu_percent: Vec<f64> = pids
        .iter()
        .zip(&cpu_before)
        .filter_map(|(pid, before)| cpu_time(*pid)?.checked_sub((*before)?))
        .map(|used| 100.0 * used.as_secs_f64() / idle_window.as_secs_f64())
        .collect();
    let rss_mib: Vec<f64> = pids
        .iter()
        .filter_map(|pid| faults::host::rss_kib(*pid))
        .map(|kib| kib as f64 / 1024.0)
        .collect();
    let fds: Vec<f64> = pids
        .iter()
        .filter_map(|pid| faults::host::open_fds(*pid))
        .map(|fds| fds as f64)
        .collect();

    // Load through the gateway, then 16 greeters killed at once.
    let client = faults::http::client();
    let load = Load::start(
        4,
        1_000_000,
        Duration::from_secs(60),
        Duration::from_millis(2),
        move |worker, n| {
            let client = client.clone();
            async move {
                let name = format!("guest-{worker}-{n}");
                faults::http::greet_through_gateway(&client, http, &name, DEADLINE).await
            }
        },
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let killed_at = load.elapsed();
    let mut killed = Vec::new();
    for (index, greeter) in greeters.iter_mut().enumerate().skip(GREETERS - KILLED) {
        greeter.kill9();
        killed.push(all[index + 1]);
    }
    let kill = Instant::now();
    let survivors: Vec<SocketAddr> = all
        .iter()
        .copied()
        .filter(|addr| !killed.contains(addr))
        .collect();
    let mut expected: Vec<SocketAddr> = everyone
        .iter()
        .copied()
        .filter(|addr| !killed.contains(addr))
        .collect();
    expected.sort();
    let shrunk = faults::within(Duration::from_secs(30), async || {
        all_see(&node, &survivors, &expected).await
    })
    .await;
    let shrunk_at = load.elapsed();
    let kill_to_views = kill.elapsed();
    let still = differences(&node, &survivors, &expected).await;
    let logs: Vec<String> = greeters.iter().map(Proc::log_text).collect();
    let late = logs
        .iter()
        .filter(|log| log.contains("timers run late"))
        .count();
    let highest_score = logs
        .iter()
        .flat_map(|log| log.lines())
        .filter_map(|line| line.split("score=").nth(1))
        .filter_map(|score| score.trim().parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    let false_downs = logs
        .iter()
        .flat_map(|log| log.lines())
        .filter(|line| line.contains("member down"))
        .filter(|line| {
            !killed
                .iter()
                .any(|addr| line.contains(&format!("addr={addr}")))
        })
        .count();
    let own_view = node.view().members().len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let report = load.finish().await;
    eprintln!(
        "64-process mesh (1 gateway, {GREETERS} greeters, the test's node): views of all 65 \
         members after {converged:.1?}; idle RSS MiB {}; idle CPU % of a core {}; open fds \
         {}; kill -9 of {KILLED}: every survivor's view shrank after {shrunk:?} (looked until \
         {kill_to_views:.1?}); {late} greeters saw their timers run late (highest local health \
         score {highest_score}); {false_downs} live members declared down; load {}; from the \
         kill to the shrink {} calls, p99 {:.1?}",
        summary(&rss_mib),
        summary(&cpu_percent),
        summary(&fds),
        report.summary(),
        report.sent_in(killed_at, shrunk_at),
        report.quantile_in(0.99, killed_at, shrunk_at),
    );
    assert!(
        shrunk.is_some_and(|took| took <= Duration::from_secs(10)),
        "views shrank after {shrunk:?}; the test's node sees {own_view} members; {} survivors \
         still differ: {still:#?}",
        still.len()
    );
    assert!(report.sent() > 500, "only {} calls", report.sent());
    assert_eq!(report.wrong(), 0, "{:?}", report.first_problems());
    assert_eq!(report.failed(), 0, "{:?}", report.first_problems());
    drop(greeters);
    drop(gateway);
}
