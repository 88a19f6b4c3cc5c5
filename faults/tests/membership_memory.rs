//! Memory per known member, measured: the resident memory this process gains when it builds
//! simulated meshes of 100 and then 200 converged nodes (each node knows every other, its view
//! built) and keeps both. Each node holds a fixed part `b` and a part per known member `a`: the
//! first mesh costs `100·b + 100²·a`, the second `200·b + 200²·a`, so
//! `a = (second − 2 × first) / (200² − 2 × 100²)`. docs/SCALE.md quotes the figure. (Resident
//! memory rather than a counting allocator: the workspace forbids `unsafe`, which a global
//! allocator needs.)

use std::time::Duration;

use meshrpc::membership::sim::{Network, Simulation};

/// A converged mesh of `nodes`, views built, after a second of gossip.
fn mesh(nodes: usize) -> Simulation {
    let mut sim = Simulation::new(1, Network::default(), Simulation::node_config());
    sim.add_converged(nodes);
    sim.run_for(Duration::from_secs(1));
    for node in 0..nodes {
        assert_eq!(sim.view(node).map(|view| view.members().len()), Some(nodes));
    }
    sim
}

fn rss_bytes() -> f64 {
    faults::host::rss_kib(std::process::id()).expect("/proc/self/status") as f64 * 1024.0
}

#[test]
fn a_known_member_costs_a_node_under_four_kilobytes() {
    let start = rss_bytes();
    let small = mesh(100);
    let first = rss_bytes() - start;
    let large = mesh(200);
    let second = rss_bytes() - start - first;
    let per_member = (second - 2.0 * first) / (200.0 * 200.0 - 2.0 * 100.0 * 100.0);
    let per_node = (first - 100.0 * 100.0 * per_member) / 100.0;
    eprintln!(
        "memory per known member (3 services, 1 tag): {per_member:.0} bytes resident; fixed per \
         node {per_node:.0} bytes (meshes of 100 and 200 nodes: +{:.1} and +{:.1} MiB)",
        first / 1048576.0,
        second / 1048576.0
    );
    drop((small, large));
    assert!(
        per_member > 200.0,
        "{per_member} bytes: the measurement is broken"
    );
    assert!(per_member < 4096.0, "{per_member} bytes per known member");
}
