//! A deterministic simulation of the membership: many nodes' [`Core`]s — foca with the node's
//! codec, identities, exchange messages and view logic, the code the node runs — driven in
//! virtual time over a simulated network instead of QUIC and tokio.
//!
//! Events (a datagram arriving, a timer expiring, a full-state exchange, a turn of a node's join
//! loop) sit in one queue ordered by virtual time and then by the order they were scheduled, and
//! every random choice (foca's and the network's) comes from RNGs seeded from one `u64`: the same
//! seed gives the same run, event for event. The network has a base latency with per-packet
//! jitter, independent loss per datagram, partitions, and nodes that crash and restart.
//!
//! What is not simulated: CPU (every event takes no time, so a run shows what the protocol
//! does, not what a starved process does), QUIC's own packets (handshakes, acknowledgements,
//! keep-alives) and connection set-up, stream bandwidth (an exchange arrives after one latency
//! whatever its size). Datagram bytes counted are foca's payload, without QUIC/UDP/IP headers.
//!
//! The module is public but hidden: `cargo xtask sim` and the tests drive it; it is not part of
//! meshrpc's API.

pub mod scenario;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use foca::Config;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::core::{Core, CoreTimer, Effects, decode_members_frame, encode_members};
use super::identity::{MemberId, Published};

/// How long a joining node waits for a seed that does not answer (the node's connect timeout).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(3);

/// How often a node that knows some member retries the seeds it does not see (`node.rs`).
const RESEED_INTERVAL: Duration = Duration::from_secs(10);

/// The generation of a node started at virtual time 0: 1_700_000_000 s after the Unix epoch,
/// in microseconds, as a node's generation is its start time.
const START_EPOCH_MICROS: u64 = 1_700_000_000_000_000;

/// How long before virtual time 0 the nodes of a warm start started.
const WARM_START_AGE: Duration = Duration::from_secs(3600);

/// The simulated network.
#[derive(Debug, Clone)]
pub struct Network {
    /// The one-way latency of every datagram and exchange message.
    pub latency: Duration,
    /// A random extra delay per datagram, uniform in `0..jitter`.
    pub jitter: Duration,
    /// The probability that a datagram is lost (exchanges ride streams, which retransmit).
    pub loss: f64,
}

impl Default for Network {
    fn default() -> Network {
        Network {
            latency: Duration::from_micros(500),
            jitter: Duration::from_micros(500),
            loss: 0.0,
        }
    }
}

/// Counters of what crossed the network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Gossip datagrams sent.
    pub datagrams: u64,
    /// Their payload bytes.
    pub datagram_bytes: u64,
    /// Datagrams lost on the way (loss, partition, a crashed receiver).
    pub dropped: u64,
    /// Full-state exchange messages (both ways).
    pub exchanges: u64,
    /// Their bytes.
    pub exchange_bytes: u64,
    /// The largest exchange message.
    pub largest_exchange: u64,
    /// Datagrams over the datagram budget (1,100 bytes): the node sends them on a stream.
    pub large_packets: u64,
    /// The largest datagram.
    pub largest_packet: u64,
}

/// One membership notification seen by one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// `observer` sees the member at `member` up.
    Up,
    /// `observer` declared (or learnt) the member at `member` down.
    Down,
}

/// A notification, as recorded by [`Simulation::take_log`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// When.
    pub at: Duration,
    /// The node that saw it.
    pub observer: usize,
    /// The member it is about.
    pub member: SocketAddr,
    /// That member's generation.
    pub generation: u64,
    /// Up or down.
    pub seen: Seen,
}

#[derive(Debug)]
enum Event {
    Timer {
        node: usize,
        life: u32,
        timer: CoreTimer,
        /// When it was due (it runs later on a stalled node).
        due: Duration,
    },
    Datagram {
        to: SocketAddr,
        data: Bytes,
    },
    /// A joining node's member list reaches a seed.
    ExchangeOpen {
        from: usize,
        life: u32,
        seed: SocketAddr,
        frame: Bytes,
    },
    /// The seed's answer (or the joiner's timeout, `None`) reaches the joining node.
    ExchangeAnswer {
        to: usize,
        life: u32,
        seed: SocketAddr,
        frame: Option<Bytes>,
    },
    JoinLoop {
        node: usize,
        life: u32,
    },
}

#[derive(Debug)]
struct Scheduled {
    at: Duration,
    order: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

#[derive(Debug)]
struct Node {
    addr: SocketAddr,
    core: Option<Core>,
    /// Bumped on every crash, so events of a dead process are dropped.
    life: u32,
    /// Which side of a partition the node is on.
    group: u8,
    /// Exchanges of the current join-loop turn still under way.
    pending_joins: usize,
    /// The join loop's current pause.
    join_pause: Duration,
    /// Datagram bytes this node sent.
    sent_bytes: u64,
    /// Whether its view holds exactly the running nodes, all alive.
    complete: bool,
    /// A starved node runs only at multiples of this: its timers fire late and the datagrams
    /// it receives wait until then.
    stall: Option<Duration>,
}

/// A simulated mesh.
#[derive(Debug)]
pub struct Simulation {
    now: Duration,
    queue: BinaryHeap<Reverse<Scheduled>>,
    order: u64,
    nodes: Vec<Node>,
    by_addr: HashMap<SocketAddr, usize>,
    seeds: Vec<SocketAddr>,
    network: Network,
    rng: StdRng,
    seed: u64,
    config: Config,
    adaptive: bool,
    lifeguard: bool,
    services: usize,
    tags: usize,
    long_names: bool,
    traffic: Traffic,
    log: Vec<Notice>,
    /// How many running nodes see exactly every running node alive; kept up to date.
    complete_views: usize,
    /// The addresses of the running nodes.
    running: std::collections::HashSet<SocketAddr>,
    /// How long before now the nodes being started started (a warm start's, an hour).
    started_before: Duration,
}

impl Simulation {
    /// An empty mesh whose nodes run `config`; `seed` decides every random choice.
    pub fn new(seed: u64, network: Network, config: Config) -> Simulation {
        Simulation {
            now: Duration::ZERO,
            queue: BinaryHeap::new(),
            order: 0,
            nodes: Vec::new(),
            by_addr: HashMap::new(),
            seeds: Vec::new(),
            network,
            rng: StdRng::seed_from_u64(seed),
            seed,
            config,
            adaptive: true,
            lifeguard: true,
            services: 3,
            tags: 1,
            long_names: false,
            traffic: Traffic::default(),
            log: Vec::new(),
            complete_views: 0,
            running: std::collections::HashSet::new(),
            started_before: Duration::ZERO,
        }
    }

    /// The node's default SWIM settings ([`swim_config`](super::core::swim_config)).
    pub fn node_config() -> Config {
        super::core::swim_config()
    }

    /// Whether nodes raise foca's `max_transmissions` as the mesh grows, as the node does
    /// (on by default).
    pub fn set_adaptive(&mut self, adaptive: bool) {
        self.adaptive = adaptive;
    }

    /// Whether nodes run Lifeguard's additions (local health and buddy pings), as the node
    /// does (on by default; applies to nodes started afterwards); off, foca alone.
    pub fn set_lifeguard(&mut self, enabled: bool) {
        self.lifeguard = enabled;
    }

    /// Starves node `node` of CPU: it runs only at multiples of `every` (its timers fire up to
    /// `every` late, and what it receives waits until then), or normally again with `None`.
    pub fn stall(&mut self, node: usize, every: Option<Duration>) {
        self.nodes[node].stall = every.filter(|every| !every.is_zero());
    }

    /// Node `node`'s local health score (0 when its timers fire on time).
    pub fn health(&self, node: usize) -> u32 {
        self.nodes[node].core.as_ref().map_or(0, Core::health)
    }

    /// A caller on node `observer` reports that `member` stopped answering calls
    /// ([`Membership::report_unresponsive`](super::Membership::report_unresponsive)).
    pub fn report_unresponsive(&mut self, observer: usize, member: SocketAddr) {
        if let Some(core) = self.nodes[observer].core.as_mut() {
            let effects = core.report_unresponsive(member);
            self.carry_out(observer, effects);
        }
    }

    /// Whether node `observer` holds `member` as suspect.
    pub fn suspects(&self, observer: usize, member: SocketAddr) -> bool {
        self.nodes[observer].core.as_ref().is_some_and(|core| {
            core.active_members()
                .any(|(id, alive)| id.addr == member && !alive)
        })
    }

    /// Gives nodes started afterwards identities of a real deployment's size: `tags` tags and
    /// long, package-qualified service names (about 50 characters instead of 20).
    pub fn set_large_identities(&mut self, tags: usize) {
        self.tags = tags;
        self.long_names = true;
    }

    /// The largest membership packet node `node` sends now.
    pub fn packet_limit(&self, node: usize) -> usize {
        self.nodes[node].core.as_ref().map_or(0, Core::packet_limit)
    }

    /// How many services each node publishes (3 by default).
    pub fn set_services(&mut self, services: usize) {
        self.services = services;
    }

    /// The addresses new nodes join through (the first nodes added, by default none).
    pub fn set_seeds(&mut self, seeds: Vec<SocketAddr>) {
        self.seeds = seeds;
    }

    /// The virtual time.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// The network, to change loss or latency during a run.
    pub fn network_mut(&mut self) -> &mut Network {
        &mut self.network
    }

    /// What crossed the network so far.
    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    /// How many nodes were ever added.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node was added.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The address of node `node`.
    pub fn addr(&self, node: usize) -> SocketAddr {
        self.nodes[node].addr
    }

    /// Whether node `node` runs.
    pub fn is_running(&self, node: usize) -> bool {
        self.nodes[node].core.is_some()
    }

    /// How many nodes run.
    pub fn running(&self) -> usize {
        self.nodes.iter().filter(|node| node.core.is_some()).count()
    }

    /// How many members node `node` sees (itself included), or 0 if it does not run.
    pub fn view_len(&self, node: usize) -> usize {
        self.nodes[node].core.as_ref().map_or(0, Core::member_count)
    }

    /// The view node `node` publishes (built as the node builds it), if it runs.
    pub fn view(&mut self, node: usize) -> Option<std::sync::Arc<super::view::View>> {
        self.nodes[node]
            .core
            .as_mut()
            .map(|core| core.view().clone())
    }

    /// How many members node `node`'s foca tracks, down ones included.
    pub fn tracked(&self, node: usize) -> usize {
        self.nodes[node].core.as_ref().map_or(0, Core::tracked)
    }

    /// How many updates wait to be gossiped at node `node`.
    pub fn backlog(&self, node: usize) -> usize {
        self.nodes[node].core.as_ref().map_or(0, Core::backlog)
    }

    /// Datagram bytes node `node` sent so far.
    pub fn sent_bytes(&self, node: usize) -> u64 {
        self.nodes[node].sent_bytes
    }

    /// The identity of node `node`'s current process, if it runs.
    pub fn identity(&self, node: usize) -> Option<&MemberId> {
        self.nodes[node].core.as_ref().map(Core::identity)
    }

    /// Whether every running node sees every running node, all alive, and nothing else.
    pub fn converged(&self) -> bool {
        self.complete_views == self.running()
    }

    /// The notifications recorded since the last call.
    pub fn take_log(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.log)
    }

    /// Adds a node and starts it now: it joins through the seeds (if it is not the only one).
    /// Returns its index.
    pub fn add_node(&mut self) -> usize {
        self.push_node()
    }

    /// A new node at the next address, started now.
    fn push_node(&mut self) -> usize {
        let index = self.nodes.len();
        let addr = node_addr(index);
        self.nodes.push(Node {
            addr,
            core: None,
            life: 0,
            group: 0,
            pending_joins: 0,
            join_pause: Duration::from_millis(200),
            sent_bytes: 0,
            complete: false,
            stall: None,
        });
        self.by_addr.insert(addr, index);
        self.start(index);
        index
    }

    /// Adds `count` nodes that already know each other, as a converged mesh whose gossip died
    /// down would: no bootstrap is simulated (for a thousand nodes it costs minutes of CPU).
    /// They started an hour ago, as such a mesh's members did (a joiner judges by members'
    /// start times which of a seed's answer may still be news). Their join loops start as a
    /// node's does, and find every seed known.
    pub fn add_converged(&mut self, count: usize) {
        let first = self.nodes.len();
        self.started_before = WARM_START_AGE;
        for _ in 0..count {
            self.push_node();
        }
        self.started_before = Duration::ZERO;
        let members: Vec<foca::Member<MemberId>> = (first..self.nodes.len())
            .filter_map(|node| self.identity(node).cloned())
            .map(|id| foca::Member::new(id, 0, foca::State::Alive))
            .collect();
        for node in first..self.nodes.len() {
            if let Some(core) = self.nodes[node].core.as_mut() {
                let effects = core.know(members.clone());
                self.carry_out(node, effects);
            }
        }
        self.recount();
    }

    /// Crashes node `node`: it stops at once, without a word to anyone.
    pub fn crash(&mut self, node: usize) {
        if self.nodes[node].core.take().is_some() {
            self.nodes[node].life += 1;
            self.recount();
        }
    }

    /// Starts node `node` again (a new process at the same address, a newer generation).
    pub fn restart(&mut self, node: usize) {
        self.crash(node);
        self.start(node);
    }

    /// Makes node `node` leave the cluster, as a draining node does on shutdown.
    pub fn leave(&mut self, node: usize) {
        if let Some(core) = self.nodes[node].core.as_mut() {
            let effects = core.leave();
            self.carry_out(node, effects);
        }
    }

    /// Puts the nodes for which `side` is true on one side of a partition and the others on
    /// the other: nothing crosses until [`Simulation::heal`].
    pub fn partition(&mut self, side: impl Fn(usize) -> bool) {
        for (index, node) in self.nodes.iter_mut().enumerate() {
            node.group = u8::from(side(index));
        }
    }

    /// Ends a partition.
    pub fn heal(&mut self) {
        for node in &mut self.nodes {
            node.group = 0;
        }
    }

    /// Runs events until virtual time `until`.
    pub fn run_until(&mut self, until: Duration) {
        while let Some(Reverse(next)) = self.queue.peek() {
            if next.at > until {
                break;
            }
            let Some(Reverse(scheduled)) = self.queue.pop() else {
                break;
            };
            self.now = scheduled.at;
            self.handle(scheduled.event);
        }
        self.now = self.now.max(until);
    }

    /// Runs for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        self.run_until(self.now + duration);
    }

    /// Runs until `done` holds (checked after every event) or `limit` of virtual time passed;
    /// returns how long it took, or `None` at the limit.
    pub fn run_until_true(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&mut Simulation) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        let until = start + limit;
        if done(self) {
            return Some(Duration::ZERO);
        }
        while let Some(Reverse(next)) = self.queue.peek() {
            if next.at > until {
                break;
            }
            let Some(Reverse(scheduled)) = self.queue.pop() else {
                break;
            };
            self.now = scheduled.at;
            self.handle(scheduled.event);
            if done(self) {
                return Some(self.now - start);
            }
        }
        self.now = self.now.max(until);
        None
    }

    fn start(&mut self, node: usize) {
        // As the node's: microseconds since the Unix epoch when it started (virtual time 0 is
        // 1_700_000_000 s), plus the node's index (under a millisecond). A warm start's nodes
        // started long before.
        let micros = self.now.as_micros() as u64;
        let generation = (START_EPOCH_MICROS + micros + node as u64)
            .saturating_sub(self.started_before.as_micros() as u64);
        let identity = MemberId {
            addr: self.nodes[node].addr,
            name: format!("node-{node:04}"),
            cluster: "sim".to_owned(),
            generation,
            draining: false,
            services: (0..self.services)
                .map(|service| Published {
                    name: if self.long_names {
                        format!(
                            "com.example.platform.{}.v1.Service{service:02}",
                            SERVICE_NAMES[(node + service) % SERVICE_NAMES.len()]
                        )
                    } else {
                        format!(
                            "{}.v1",
                            SERVICE_NAMES[(node + service) % SERVICE_NAMES.len()]
                        )
                    },
                    schema_hash: 0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(service as u64 + 1),
                })
                .collect(),
            http: Vec::new(),
            tags: match self.tags {
                1 => vec!["zone-a".to_owned()],
                tags => (0..tags)
                    .map(|tag| format!("label-{tag:02}=value-of-label-{tag:02}"))
                    .collect(),
            },
        };
        // Seeded as before generations were microseconds, so that a seed gives the runs it gave.
        let rng = StdRng::seed_from_u64(
            self.seed
                ^ (node as u64).wrapping_mul(0x2545_f491_4f6c_dd1d)
                ^ (START_EPOCH_MICROS + micros * 1000 + node as u64),
        );
        let mut core = Core::new(identity, self.config.clone(), rng);
        core.set_adaptive(self.adaptive);
        core.set_lifeguard(self.lifeguard);
        self.nodes[node].core = Some(core);
        self.nodes[node].join_pause = Duration::from_millis(200);
        self.nodes[node].pending_joins = 0;
        self.recount();
        let life = self.nodes[node].life;
        self.schedule(Duration::ZERO, Event::JoinLoop { node, life });
    }

    fn schedule(&mut self, after: Duration, event: Event) {
        self.order += 1;
        self.queue.push(Reverse(Scheduled {
            at: self.now + after,
            order: self.order,
            event,
        }));
    }

    fn reachable(&self, from: usize, to: usize) -> bool {
        self.nodes[from].group == self.nodes[to].group
    }

    /// When a stalled node next runs, if not now.
    fn stalled_until(&self, node: usize) -> Option<Duration> {
        let every = self.nodes[node].stall?.as_nanos();
        let now = self.now.as_nanos();
        let next = now.div_ceil(every) * every;
        (next > now).then(|| Duration::from_nanos(u64::try_from(next).unwrap_or(u64::MAX)))
    }

    fn handle(&mut self, event: Event) {
        let target = match &event {
            Event::Timer { node, .. } => Some(*node),
            Event::Datagram { to, .. } => self.by_addr.get(to).copied(),
            _ => None,
        };
        if let Some(until) = target.and_then(|node| self.stalled_until(node)) {
            self.schedule(until - self.now, event);
            return;
        }
        match event {
            Event::Timer {
                node,
                life,
                timer,
                due,
            } => {
                if self.nodes[node].life != life {
                    return;
                }
                if let Some(core) = self.nodes[node].core.as_mut() {
                    let effects = core.timer(timer, self.now - due);
                    self.carry_out(node, effects);
                }
            }
            Event::Datagram { to, data } => {
                let Some(&node) = self.by_addr.get(&to) else {
                    return;
                };
                match self.nodes[node].core.as_mut() {
                    Some(core) => {
                        let effects = core.datagram(&data);
                        self.carry_out(node, effects);
                    }
                    None => self.traffic.dropped += 1,
                }
            }
            Event::JoinLoop { node, life } => self.join_loop(node, life),
            Event::ExchangeOpen {
                from,
                life,
                seed,
                frame,
            } => {
                let answer = self.serve_exchange(seed, &frame);
                match answer {
                    Some(frame) => {
                        self.count_exchange(&frame);
                        let latency = self.network.latency;
                        self.schedule(
                            latency,
                            Event::ExchangeAnswer {
                                to: from,
                                life,
                                seed,
                                frame: Some(frame),
                            },
                        );
                    }
                    None => self.schedule(
                        EXCHANGE_TIMEOUT.saturating_sub(self.network.latency),
                        Event::ExchangeAnswer {
                            to: from,
                            life,
                            seed,
                            frame: None,
                        },
                    ),
                }
            }
            Event::ExchangeAnswer {
                to,
                life,
                seed,
                frame,
            } => {
                if self.nodes[to].life != life {
                    return;
                }
                let Some(core) = self.nodes[to].core.as_mut() else {
                    return;
                };
                let mut effects = Effects::default();
                if let Some(frame) = frame {
                    // The node applies what it could decode, then announces itself either way.
                    if let Ok(members) = decode_members_frame(&frame) {
                        effects = core.apply(members);
                    }
                }
                self.carry_out(to, effects);
                if let Some(core) = self.nodes[to].core.as_mut() {
                    let effects = core.announce(seed);
                    self.carry_out(to, effects);
                }
                self.nodes[to].pending_joins = self.nodes[to].pending_joins.saturating_sub(1);
                if self.nodes[to].pending_joins == 0 {
                    self.end_join_turn(to);
                }
            }
        }
    }

    /// One turn of the node's join loop (`node.rs`): exchange with every seed it does not see.
    fn join_loop(&mut self, node: usize, life: u32) {
        if self.nodes[node].life != life {
            return;
        }
        let Some(core) = self.nodes[node].core.as_ref() else {
            return;
        };
        let own = self.nodes[node].addr;
        let unknown: Vec<SocketAddr> = self
            .seeds
            .iter()
            .copied()
            .filter(|seed| *seed != own && !core.active_members().any(|(id, _)| id.addr == *seed))
            .collect();
        let Some(members) = core.members() else {
            return;
        };
        if unknown.is_empty() {
            if !self.seeds.is_empty() {
                self.end_join_turn(node);
            }
            return;
        }
        let frame = match encode_members(&members) {
            Ok(frame) => frame,
            Err(_) => Bytes::new(),
        };
        self.nodes[node].pending_joins = unknown.len();
        for seed in unknown {
            self.count_exchange(&frame);
            let reachable = self
                .by_addr
                .get(&seed)
                .is_some_and(|&to| self.reachable(node, to) && self.nodes[to].core.is_some());
            if reachable {
                let latency = self.network.latency;
                self.schedule(
                    latency,
                    Event::ExchangeOpen {
                        from: node,
                        life,
                        seed,
                        frame: frame.clone(),
                    },
                );
            } else {
                self.schedule(
                    EXCHANGE_TIMEOUT,
                    Event::ExchangeAnswer {
                        to: node,
                        life,
                        seed,
                        frame: None,
                    },
                );
            }
        }
    }

    fn end_join_turn(&mut self, node: usize) {
        let joined = self.view_len(node) > 1;
        let pause = if joined {
            RESEED_INTERVAL
        } else {
            (self.nodes[node].join_pause * 2).min(Duration::from_secs(2))
        };
        self.nodes[node].join_pause = pause;
        let life = self.nodes[node].life;
        self.schedule(pause, Event::JoinLoop { node, life });
    }

    /// The seed's side of an exchange: the answer, or `None` if it cannot answer.
    fn serve_exchange(&mut self, seed: SocketAddr, frame: &[u8]) -> Option<Bytes> {
        let &node = self.by_addr.get(&seed)?;
        let core = self.nodes[node].core.as_mut()?;
        let theirs = decode_members_frame(frame).ok()?;
        let effects = core.apply(theirs);
        let ours = core.members();
        self.carry_out(node, effects);
        encode_members(&ours?).ok()
    }

    fn count_exchange(&mut self, frame: &Bytes) {
        let len = frame.len() as u64;
        self.traffic.exchanges += 1;
        self.traffic.exchange_bytes += len;
        self.traffic.largest_exchange = self.traffic.largest_exchange.max(len);
    }

    fn carry_out(&mut self, node: usize, effects: Effects) {
        let life = self.nodes[node].life;
        for (to, data) in effects.sends {
            self.traffic.datagrams += 1;
            self.traffic.datagram_bytes += data.len() as u64;
            if data.len() > super::core::DATAGRAM_BUDGET {
                self.traffic.large_packets += 1;
            }
            self.traffic.largest_packet = self.traffic.largest_packet.max(data.len() as u64);
            self.nodes[node].sent_bytes += data.len() as u64;
            let receiver = self.by_addr.get(&to).copied();
            let delivered = receiver.is_some_and(|to| self.reachable(node, to))
                && !(self.network.loss > 0.0 && self.rng.random_bool(self.network.loss.min(1.0)));
            if !delivered {
                self.traffic.dropped += 1;
                continue;
            }
            let jitter = if self.network.jitter.is_zero() {
                Duration::ZERO
            } else {
                let micros = self.network.jitter.as_micros() as u64;
                Duration::from_micros(self.rng.random_range(0..micros))
            };
            self.schedule(self.network.latency + jitter, Event::Datagram { to, data });
        }
        for (timer, after) in effects.timers {
            let due = self.now + after;
            self.schedule(
                after,
                Event::Timer {
                    node,
                    life,
                    timer,
                    due,
                },
            );
        }
        for id in &effects.ups {
            self.log.push(Notice {
                at: self.now,
                observer: node,
                member: id.addr,
                generation: id.generation,
                seen: Seen::Up,
            });
        }
        for id in &effects.downs {
            self.log.push(Notice {
                at: self.now,
                observer: node,
                member: id.addr,
                generation: id.generation,
                seen: Seen::Down,
            });
        }
        if effects.view_changed {
            self.recheck(node);
        }
    }

    /// Rechecks every node's view: the set of running nodes changed.
    fn recount(&mut self) {
        let running: std::collections::HashSet<SocketAddr> = self
            .nodes
            .iter()
            .filter(|node| node.core.is_some())
            .map(|node| node.addr)
            .collect();
        for node in 0..self.nodes.len() {
            let complete = self.view_complete(node, &running);
            self.nodes[node].complete = complete;
        }
        self.complete_views = self.nodes.iter().filter(|node| node.complete).count();
        self.running = running;
    }

    /// Rechecks node `node`'s view after it changed.
    fn recheck(&mut self, node: usize) {
        let running = std::mem::take(&mut self.running);
        let complete = self.view_complete(node, &running);
        self.running = running;
        if complete != self.nodes[node].complete {
            self.nodes[node].complete = complete;
            if complete {
                self.complete_views += 1;
            } else {
                self.complete_views -= 1;
            }
        }
    }

    /// Whether node `node` runs and sees exactly the running nodes, all alive.
    fn view_complete(&self, node: usize, running: &std::collections::HashSet<SocketAddr>) -> bool {
        let Some(core) = self.nodes[node].core.as_ref() else {
            return false;
        };
        // Cheap first: during a bootstrap most views are short.
        core.member_count() == running.len()
            && core
                .active_members()
                .all(|(id, alive)| alive && running.contains(&id.addr))
    }
}

const SERVICE_NAMES: [&str; 6] = [
    "greeter.Greeter",
    "concierge.Concierge",
    "numbers.Numbers",
    "billing.Invoices",
    "catalog.Products",
    "accounts.Users",
];

/// The address of simulated node `index`.
pub fn node_addr(index: usize) -> SocketAddr {
    let index = index as u32;
    SocketAddr::from((
        [10, (index >> 16) as u8, (index >> 8) as u8, index as u8],
        7000,
    ))
}
