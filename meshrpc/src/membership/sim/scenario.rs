//! The measurements `cargo xtask sim` reports, one [`Simulation`] per mesh size: bootstrap,
//! steady gossip, a join, a crash, loss, and a partition that heals — in that order, each phase
//! starting from a converged mesh.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use foca::Config;

use super::{Network, Seen, Simulation};
use crate::membership::identity::MemberId;
use crate::membership::view::MemberView;

/// How a run is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// The seed of every random choice.
    pub seed: u64,
    /// The network outside the loss phases.
    pub network: Network,
    /// The nodes' SWIM settings.
    pub config: Config,
    /// Whether `max_transmissions` grows with the mesh (the node's behaviour).
    pub adaptive: bool,
    /// The loss rates of the false-death phases.
    pub losses: Vec<f64>,
    /// How long each loss phase runs.
    pub loss_phase: Duration,
    /// How long a partition lasts before it heals (`None`: no partition phase).
    pub partition: Option<Duration>,
    /// Whether to start the mesh converged ([`Simulation::add_converged`]) instead of
    /// simulating its bootstrap; `bootstrap` is then not measured.
    pub warm_start: bool,
    /// How long the steady-state window lasts (after 20 s, or 5 s after a warm start, of
    /// settling).
    pub steady: Duration,
    /// Whether to print each phase's end (virtual and wall-clock time) to stderr.
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            seed: 1,
            network: Network::default(),
            config: Simulation::node_config(),
            adaptive: true,
            losses: vec![0.01, 0.05, 0.20],
            loss_phase: Duration::from_secs(30),
            partition: Some(Duration::from_secs(20)),
            warm_start: false,
            steady: Duration::from_secs(10),
            progress: false,
        }
    }
}

/// False deaths during one loss phase.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FalseDeaths {
    /// The datagram loss rate.
    pub loss: f64,
    /// Down notifications about running members, over all observers.
    pub notices: usize,
    /// Distinct running members declared down by someone.
    pub members: usize,
}

/// What one run measured. Durations are virtual time; `None` means not within the phase's limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// Mesh size.
    pub nodes: usize,
    /// From the first node's start (one more every 10 ms) until every view is complete.
    pub bootstrap: Option<Duration>,
    /// Whether the mesh started converged (no bootstrap measured).
    pub warm_start: bool,
    /// Steady-state gossip per node, bytes per second (foca payload).
    pub steady_bytes_per_node: f64,
    /// Steady-state gossip per node, datagrams per second.
    pub steady_datagrams_per_node: f64,
    /// From a new node's start until every other member has seen it up.
    pub join: Option<Duration>,
    /// From a crash until every other member has seen it down.
    pub crash: Option<Duration>,
    /// Gossip per node, bytes per second, over the join and crash phases.
    pub churn_bytes_per_node: f64,
    /// The busiest node's gossip over the join and crash phases, bytes per second.
    pub churn_bytes_busiest: f64,
    /// False deaths per loss rate.
    pub false_deaths: Vec<FalseDeaths>,
    /// From the end of a partition (half the mesh on each side) until every view is complete
    /// (`None` if not run; `Some(None)` if not within the limit).
    pub partition_heal: Option<Option<Duration>>,
    /// The largest full-state exchange message, bytes.
    pub largest_exchange: u64,
    /// The most members a node's foca tracked (down ones included) at the end.
    pub most_tracked: usize,
    /// Heap and inline bytes per known member: its [`MemberView`] and foca's entry.
    pub bytes_per_member: usize,
}

/// How long a phase may take before it is reported as missed.
const LIMIT: Duration = Duration::from_secs(120);

/// Starts `nodes` nodes, one every 10 ms, joining through the first three.
pub fn bootstrap(nodes: usize, options: &Options) -> (Simulation, Option<Duration>) {
    let mut sim = Simulation::new(
        options.seed,
        options.network.clone(),
        options.config.clone(),
    );
    sim.set_adaptive(options.adaptive);
    sim.set_seeds((0..nodes.min(3)).map(super::node_addr).collect());
    let start = sim.now();
    for _ in 0..nodes {
        sim.add_node();
        sim.run_for(Duration::from_millis(10));
    }
    let took = sim
        .run_until_true(LIMIT, |sim| sim.converged())
        .map(|_| sim.now() - start);
    (sim, took)
}

/// Runs until every running node other than `member`'s own has seen `seen` about the member
/// at `addr`; returns how long it took.
pub fn until_all_see(
    sim: &mut Simulation,
    addr: SocketAddr,
    seen: Seen,
    limit: Duration,
) -> Option<Duration> {
    let mut observers: HashSet<usize> = HashSet::new();
    sim.run_until_true(limit, |sim| {
        for notice in sim.take_log() {
            if notice.member == addr && notice.seen == seen {
                observers.insert(notice.observer);
            }
        }
        (0..sim.len())
            .filter(|&node| sim.is_running(node) && sim.addr(node) != addr)
            .all(|node| observers.contains(&node))
    })
}

/// Runs one mesh of `nodes` through every phase.
pub fn measure(nodes: usize, options: &Options) -> Figures {
    let started = std::time::Instant::now();
    let progress = |sim: &Simulation, phase: &str| {
        if options.progress {
            eprintln!(
                "{nodes} nodes: {phase} done at {:.1} s virtual, {:.1} s wall",
                sim.now().as_secs_f64(),
                started.elapsed().as_secs_f64()
            );
        }
    };
    let (mut sim, bootstrap) = if options.warm_start {
        let mut sim = Simulation::new(
            options.seed,
            options.network.clone(),
            options.config.clone(),
        );
        sim.set_adaptive(options.adaptive);
        sim.set_seeds((0..nodes.min(3)).map(super::node_addr).collect());
        sim.add_converged(nodes);
        sim.run_for(Duration::from_secs(5));
        (sim, None)
    } else {
        let (mut sim, took) = bootstrap(nodes, options);
        sim.run_until_true(LIMIT, |sim| sim.converged());
        // Let the bootstrap's updates drain before measuring the steady state.
        sim.run_for(Duration::from_secs(20));
        (sim, took)
    };
    progress(&sim, "bootstrap");
    let before = sim.traffic();
    let window = options.steady;
    sim.run_for(window);
    let after = sim.traffic();
    let per_node = (sim.running() as f64) * window.as_secs_f64();
    let steady_bytes_per_node = (after.datagram_bytes - before.datagram_bytes) as f64 / per_node;
    let steady_datagrams_per_node = (after.datagrams - before.datagrams) as f64 / per_node;

    progress(&sim, "steady");
    let churn_start = (sim.now(), sim.traffic());
    let sent_before: Vec<u64> = (0..sim.len()).map(|node| sim.sent_bytes(node)).collect();
    sim.take_log();
    let newcomer = sim.add_node();
    let addr = sim.addr(newcomer);
    let join = until_all_see(&mut sim, addr, Seen::Up, LIMIT);
    sim.run_until_true(LIMIT, |sim| sim.converged());
    sim.run_for(Duration::from_secs(5));

    sim.take_log();
    let victim = nodes / 2;
    sim.crash(victim);
    let addr = sim.addr(victim);
    let crash = until_all_see(&mut sim, addr, Seen::Down, LIMIT);
    let churn_seconds = (sim.now() - churn_start.0).as_secs_f64();
    let churn_bytes_per_node = (sim.traffic().datagram_bytes - churn_start.1.datagram_bytes) as f64
        / (sim.running() as f64 * churn_seconds);
    let churn_bytes_busiest = (0..sim.len())
        .map(|node| sim.sent_bytes(node) - sent_before.get(node).copied().unwrap_or(0))
        .max()
        .unwrap_or(0) as f64
        / churn_seconds;
    progress(&sim, "join and crash");
    sim.run_until_true(LIMIT, |sim| sim.converged());
    sim.run_for(Duration::from_secs(5));

    let mut false_deaths = Vec::new();
    for &loss in &options.losses {
        sim.take_log();
        sim.network_mut().loss = loss;
        sim.run_for(options.loss_phase);
        sim.network_mut().loss = options.network.loss;
        let running: HashSet<SocketAddr> = (0..sim.len())
            .filter(|&node| sim.is_running(node))
            .map(|node| sim.addr(node))
            .collect();
        let downs: Vec<SocketAddr> = sim
            .take_log()
            .into_iter()
            .filter(|notice| notice.seen == Seen::Down && running.contains(&notice.member))
            .map(|notice| notice.member)
            .collect();
        let members: HashSet<SocketAddr> = downs.iter().copied().collect();
        false_deaths.push(FalseDeaths {
            loss,
            notices: downs.len(),
            members: members.len(),
        });
        sim.run_until_true(LIMIT, |sim| sim.converged());
        sim.run_for(Duration::from_secs(5));
        progress(&sim, &format!("{:.0} % loss", loss * 100.0));
    }

    let partition_heal = options.partition.map(|partition| {
        let half = sim.len() / 2;
        sim.partition(|node| node < half);
        sim.run_for(partition);
        sim.heal();
        let healed = sim.run_until_true(LIMIT, |sim| sim.converged());
        progress(&sim, "partition");
        healed
    });

    let most_tracked = (0..sim.len())
        .map(|node| sim.tracked(node))
        .max()
        .unwrap_or(0);
    let bytes_per_member = sim.identity(0).map_or(0, bytes_per_member);
    Figures {
        nodes,
        bootstrap,
        warm_start: options.warm_start,
        steady_bytes_per_node,
        steady_datagrams_per_node,
        join,
        crash,
        churn_bytes_per_node,
        churn_bytes_busiest,
        false_deaths,
        partition_heal,
        largest_exchange: sim.traffic().largest_exchange,
        most_tracked,
        bytes_per_member,
    }
}

/// Inline and heap bytes one member costs a node that knows it: a [`MemberView`] in the view
/// and a `foca::Member` in foca's list, each holding its own copy of the identity. Allocator
/// overhead (rounding, headers) comes on top.
pub fn bytes_per_member(id: &MemberId) -> usize {
    let heap = id.name.capacity()
        + id.cluster.capacity()
        + id.services.capacity() * std::mem::size_of::<crate::membership::Published>()
        + id.services.iter().map(|s| s.name.capacity()).sum::<usize>()
        + id.http.capacity() * std::mem::size_of::<String>()
        + id.http.iter().map(String::capacity).sum::<usize>()
        + id.tags.capacity() * std::mem::size_of::<String>()
        + id.tags.iter().map(String::capacity).sum::<usize>();
    std::mem::size_of::<MemberView>() + std::mem::size_of::<foca::Member<MemberId>>() + 2 * heap
}

fn seconds(duration: Option<Duration>) -> String {
    duration.map_or_else(
        || "not within 120 s".to_owned(),
        |d| format!("{:.2} s", d.as_secs_f64()),
    )
}

/// The figures as a Markdown table, one row per mesh size.
pub fn table(rows: &[Figures]) -> String {
    let mut out = String::new();
    let rates: Vec<f64> = {
        let mut rates: Vec<f64> = rows
            .iter()
            .flat_map(|row| row.false_deaths.iter().map(|f| f.loss))
            .collect();
        rates.sort_by(f64::total_cmp);
        rates.dedup();
        rates
    };
    let losses: Vec<String> = rates
        .iter()
        .map(|loss| format!("false deaths at {:.0} % loss", loss * 100.0))
        .collect();
    let _ = writeln!(
        out,
        "| nodes | bootstrap | join seen by all | crash seen by all | {} | gossip per node, steady | gossip per node, join + crash (busiest node) | partition (halves) heals in | largest exchange | foca entries (max) | bytes per member |",
        losses.join(" | ")
    );
    let _ = writeln!(out, "|{}", "---|".repeat(10 + losses.len()));
    for row in rows {
        let deaths: Vec<String> = rates
            .iter()
            .map(|loss| {
                row.false_deaths
                    .iter()
                    .find(|f| f.loss == *loss)
                    .map_or_else(
                        || "not run".to_owned(),
                        |f| format!("{} ({} members)", f.notices, f.members),
                    )
            })
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.0} B/s ({:.1} datagrams/s) | {:.0} B/s ({:.0} B/s) | {} | {} B | {} | {} B |",
            row.nodes,
            if row.warm_start {
                "warm start".to_owned()
            } else {
                seconds(row.bootstrap)
            },
            seconds(row.join),
            seconds(row.crash),
            deaths.join(" | "),
            row.steady_bytes_per_node,
            row.steady_datagrams_per_node,
            row.churn_bytes_per_node,
            row.churn_bytes_busiest,
            row.partition_heal
                .map_or_else(|| "not run".to_owned(), seconds),
            row.largest_exchange,
            row.most_tracked,
            row.bytes_per_member,
        );
    }
    out
}
