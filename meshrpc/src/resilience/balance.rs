//! Client-side load balancing over the live members that publish a service.
//!
//! - **Round robin** (the default): members in address order, one after the other.
//! - **Sticky sessions**: a call with a sticky key goes to the member with the highest
//!   rendezvous hash of (key, member); it stays there while that member lives, and when it dies
//!   only its keys move.
//! - **Peak EWMA**: power of two choices between random members, by an exponentially weighted
//!   latency (peaks count at once, decay slowly) times the calls outstanding.
//!
//! Draining members and members ejected by the [breaker](super::breaker) are skipped; so are
//! members an earlier attempt of the same call already tried, while others remain.
//!
//! [`Balance`] sends each attempt to a per-endpoint service: the member's [`PeerService`]
//! under its [load](super::load) and [breaker](super::breaker) layers. The endpoints and their
//! state (loads, breaker records) follow the view: when a member leaves it, its endpoint is
//! dropped, so churn (every restart brings a new address in a container platform) does not
//! grow them without bound.

use rand::RngExt;
use smallvec::SmallVec;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tower::Service;

use super::breaker::{BreakerConfig, Breakers, Guarded};
use super::latency::Latencies;
use super::load::{LoadEstimate, Measured};
use crate::AddrMap;
use crate::channel::Call;
use crate::membership::{Liveness, MemberView, Membership, View};
use crate::spec::Fnv1a;
use crate::status::{Code, Status};
use crate::streaming::Body;
use crate::transport::client::PeerService;
use crate::transport::connections::Connections;

/// How a balancer chooses among the members that can serve a call. Also the values of the
/// `--balancing` flag ([`NodeArgs`](crate::cli::NodeArgs)): `round-robin` and `peak-ewma`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Strategy {
    /// One member after the other.
    #[default]
    #[cfg_attr(feature = "cli", value(help = "One replica after the other"))]
    RoundRobin,
    /// Power of two choices by peak-EWMA latency × outstanding calls.
    #[cfg_attr(
        feature = "cli",
        value(help = "Power of two choices by peak-EWMA latency")
    )]
    PeakEwma,
}

/// Picks the member for one attempt at an RPC of `service`, or says why none can take it.
pub fn pick<'a>(
    view: &'a View,
    service: &str,
    schema_hash: Option<u64>,
    sticky_key: Option<&str>,
    strategy: Strategy,
    state: &BalanceState,
    tried: &dyn Fn(SocketAddr) -> bool,
) -> Result<&'a MemberView, Status> {
    // Inline for up to eight members: no allocation per attempt.
    let serving: SmallVec<[&MemberView; 8]> = view
        .publishing(service)
        .filter(|member| {
            schema_hash.is_none_or(|hash| member.id.schema_hash(service) == Some(hash))
        })
        .filter(|member| member.accepts_calls())
        .collect();
    state.forget_departed(view);
    if serving.is_empty() {
        return Err(no_member(view, service, schema_hash));
    }
    Ok(choose(&serving, sticky_key, strategy, state, tried))
}

/// Chooses among `serving` (members that can take the call; not empty) by key or strategy.
pub fn choose<'a>(
    serving: &[&'a MemberView],
    sticky_key: Option<&str>,
    strategy: Strategy,
    state: &BalanceState,
    tried: &dyn Fn(SocketAddr) -> bool,
) -> &'a MemberView {
    // Prefer, in order: alive, not ejected, not tried; then relax one condition at a time.
    let tiers: [&dyn Fn(&MemberView) -> bool; 3] = [
        &|m| {
            m.liveness == Liveness::Alive
                && !state.breakers.is_ejected(m.id.addr)
                && !tried(m.id.addr)
        },
        &|m| m.liveness == Liveness::Alive && !tried(m.id.addr),
        &|m| !tried(m.id.addr),
    ];
    let kept: SmallVec<[&MemberView; 8]>;
    let candidates = match tiers.iter().find(|keep| serving.iter().any(|m| keep(m))) {
        // The first tier usually keeps everyone: no second list then.
        Some(keep) if serving.iter().all(|m| keep(m)) => serving,
        Some(keep) => {
            kept = serving.iter().copied().filter(|m| keep(m)).collect();
            &kept
        }
        None => serving,
    };
    match (sticky_key, strategy) {
        (Some(key), _) => rendezvous(key, candidates),
        (None, Strategy::RoundRobin) => {
            let turn = state.next_turn.fetch_add(1, Ordering::Relaxed);
            candidates[turn % candidates.len()]
        }
        (None, Strategy::PeakEwma) => state.pick_p2c(candidates),
    }
}

fn no_member(view: &View, service: &str, schema_hash: Option<u64>) -> Status {
    let matching = |member: &&MemberView| {
        schema_hash.is_none_or(|hash| member.id.schema_hash(service) == Some(hash))
    };
    let message = if view.publishing(service).any(|m| matching(&m)) {
        format!("every member publishing `{service}` is draining; try again shortly")
    } else if let (Some(hash), Some(other)) = (
        schema_hash,
        view.publishing(service)
            .find_map(|m| m.id.schema_hash(service)),
    ) {
        format!(
            "members publish `{service}` with another schema (hash {other:016x}, this client \
             was built for {hash:016x}); build caller and callee from the same services.toml"
        )
    } else {
        format!("no live member publishes `{service}`")
    };
    Status::refused(Code::Unavailable, message)
}

/// The member with the highest hash of (key, member): stable while the member lives, and
/// only that member's keys move when it goes.
fn rendezvous<'a>(key: &str, candidates: &[&'a MemberView]) -> &'a MemberView {
    candidates
        .iter()
        .copied()
        .max_by_key(|member| {
            let mut hasher = Fnv64::default();
            key.hash(&mut hasher);
            member.id.addr.hash(&mut hasher);
            member.id.name.hash(&mut hasher);
            hasher.finish()
        })
        .unwrap_or(candidates[0])
}

/// [`Fnv1a`], stable across processes and versions, with a final avalanche.
#[derive(Clone, Copy, Default)]
struct Fnv64(Fnv1a);

impl Hasher for Fnv64 {
    fn finish(&self) -> u64 {
        // A final avalanche (from splitmix64) so nearby inputs spread across replicas.
        let mut z = self.0.finish();
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }
}

/// One member's endpoint: its load estimate and, for RPCs, its peer service (made on first
/// use).
#[derive(Debug, Clone, Default)]
struct Slot {
    load: Arc<LoadEstimate>,
    peer: Option<PeerService>,
}

/// State shared by the calls of one service (or of its HTTP handlers): the round-robin turn,
/// the endpoints with their loads, the breakers, and the service's observed latency.
#[derive(Debug, Default)]
pub struct BalanceState {
    next_turn: AtomicUsize,
    endpoints: Mutex<AddrMap<Slot>>,
    breakers: Arc<Breakers>,
    latencies: Latencies,
    /// A digest of the member addresses of the view the state was last pruned for.
    pruned_for: AtomicU64,
}

impl BalanceState {
    /// Fresh state whose breakers eject replicas as `breaker` says.
    pub fn new(breaker: BreakerConfig) -> BalanceState {
        BalanceState {
            breakers: Arc::new(Breakers::new(breaker)),
            ..BalanceState::default()
        }
    }

    /// How many members have some state here (an endpoint or a breaker record).
    pub fn tracked(&self) -> usize {
        crate::lock(&self.endpoints).len() + self.breakers.len()
    }

    /// The breakers of the service's replicas.
    pub fn breakers(&self) -> &Arc<Breakers> {
        &self.breakers
    }

    /// The service's observed latency (successful attempts).
    pub fn latencies(&self) -> &Latencies {
        &self.latencies
    }

    /// The load estimate of the member at `addr` (made on first use).
    pub fn load(&self, addr: SocketAddr) -> Arc<LoadEstimate> {
        crate::lock(&self.endpoints)
            .entry(addr)
            .or_default()
            .load
            .clone()
    }

    /// What one more attempt to `addr` costs (0 for a member never called).
    fn cost(&self, addr: SocketAddr) -> f64 {
        let load = crate::lock(&self.endpoints)
            .get(&addr)
            .map(|slot| slot.load.clone());
        load.map_or(0.0, |load| load.cost())
    }

    /// The endpoint service of the member at `addr`, one of `replicas`: its peer service
    /// (made with `peer` on first use) under its load and breaker layers.
    fn endpoint(
        &self,
        addr: SocketAddr,
        replicas: usize,
        peer: impl FnOnce() -> PeerService,
    ) -> Endpoint {
        let (service, load) = {
            let mut endpoints = crate::lock(&self.endpoints);
            let slot = endpoints.entry(addr).or_default();
            let service = slot.peer.get_or_insert_with(peer).clone();
            (service, slot.load.clone())
        };
        Guarded::new(
            Measured::new(service, load),
            addr,
            replicas,
            self.breakers.clone(),
        )
    }

    /// Picks among `candidates` (not empty) by power of two choices on their costs.
    fn pick_p2c<'a>(&self, candidates: &[&'a MemberView]) -> &'a MemberView {
        if candidates.len() == 1 {
            return candidates[0];
        }
        let mut rng = rand::rng();
        let first = rng.random_range(0..candidates.len());
        let mut second = rng.random_range(0..candidates.len() - 1);
        if second >= first {
            second += 1;
        }
        let (a, b) = (candidates[first], candidates[second]);
        if self.cost(a.id.addr) <= self.cost(b.id.addr) {
            a
        } else {
            b
        }
    }

    /// Drops the endpoints and breaker records of members that left `view`. Costs one pass
    /// over the view; the maps are pruned only when the view's addresses changed since last
    /// time.
    pub(crate) fn forget_departed(&self, view: &View) {
        let digest = view.members().iter().fold(0u64, |sum, member| {
            let mut hasher = Fnv64::default();
            member.id.addr.hash(&mut hasher);
            sum.wrapping_add(hasher.finish())
        });
        if self.pruned_for.swap(digest, Ordering::Relaxed) == digest {
            return;
        }
        let present: HashSet<SocketAddr> =
            view.members().iter().map(|member| member.id.addr).collect();
        crate::lock(&self.endpoints).retain(|addr, _| present.contains(addr));
        self.breakers.retain(|addr| present.contains(&addr));
    }
}

/// The per-endpoint service of an RPC: the member's peer service under its load and breaker
/// layers.
pub type Endpoint = Guarded<Measured<PeerService>>;

/// The future of one attempt through an [`Endpoint`].
pub type EndpointFuture = <Endpoint as Service<Call>>::Future;

/// A tower service that sends each call to the endpoint of a member chosen by [`pick`].
#[derive(Debug, Clone)]
pub struct Balance {
    membership: Membership,
    connections: Connections,
    strategy: Strategy,
    schema_hash: Option<u64>,
    max_message_size: usize,
    state: Arc<BalanceState>,
}

impl Balance {
    /// Balances over `membership`'s view, sending over `connections`. With a `schema_hash`,
    /// only members publishing exactly that schema are used.
    pub fn new(
        membership: Membership,
        connections: Connections,
        strategy: Strategy,
        schema_hash: Option<u64>,
        max_message_size: usize,
        state: Arc<BalanceState>,
    ) -> Balance {
        Balance {
            membership,
            connections,
            strategy,
            schema_hash,
            max_message_size,
            state,
        }
    }

    /// The state shared by the calls of this balancer's service.
    pub fn state(&self) -> &Arc<BalanceState> {
        &self.state
    }

    /// Starts one attempt of `call` on a member chosen for it: returns the member's address
    /// and how many members serve the service, and the attempt (which does nothing until
    /// polled), or why no member can take the call.
    pub fn route(&self, call: Call) -> Result<(SocketAddr, usize, EndpointFuture), Status> {
        let view = self.membership.view();
        let tried = &call.tried;
        let member = pick(
            &view,
            &call.service,
            self.schema_hash,
            call.sticky_key.as_deref(),
            self.strategy,
            &self.state,
            &|addr| tried.contains(addr),
        )?;
        let addr = member.id.addr;
        let replicas = view.publishing(&call.service).count();
        let mut endpoint = self.state.endpoint(addr, replicas, || {
            PeerService::new(self.connections.clone(), addr, self.max_message_size)
        });
        Ok((addr, replicas, endpoint.call(call)))
    }
}

impl Service<Call> for Balance {
    type Response = Body;
    type Error = Status;
    type Future =
        futures_util::future::Either<EndpointFuture, std::future::Ready<Result<Body, Status>>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        match self.route(call) {
            Ok((_, _, attempt)) => futures_util::future::Either::Left(attempt),
            Err(status) => futures_util::future::Either::Right(std::future::ready(Err(status))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::membership::{MemberId, Published};

    fn member(port: u16, draining: bool) -> MemberView {
        MemberView {
            id: MemberId {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                name: format!("greeter-{port}"),
                cluster: "test".into(),
                generation: 1,
                draining,
                services: vec![Published {
                    name: "greeter".into(),
                    schema_hash: 7,
                }],
                http: vec![],
                tags: vec![],
            },
            liveness: Liveness::Alive,
            local: false,
        }
    }

    fn pick_port(view: &View, key: Option<&str>, state: &BalanceState) -> u16 {
        pick(
            view,
            "greeter",
            Some(7),
            key,
            Strategy::RoundRobin,
            state,
            &|_| false,
        )
        .expect("a member")
        .id
        .addr
        .port()
    }

    #[test]
    fn round_robin_takes_each_member_in_turn_and_skips_draining_ones() {
        let view = View::new(vec![member(1, false), member(2, true), member(3, false)]);
        let state = BalanceState::default();
        let ports: Vec<u16> = (0..4).map(|_| pick_port(&view, None, &state)).collect();
        assert_eq!(ports, [1, 3, 1, 3]);
    }

    #[test]
    fn sticky_keys_move_only_when_their_member_leaves() {
        let full = View::new(vec![member(1, false), member(2, false), member(3, false)]);
        let state = BalanceState::default();
        let before: Vec<u16> = (0..100)
            .map(|key| pick_port(&full, Some(&format!("user-{key}")), &state))
            .collect();
        for port in [1, 2, 3] {
            let share = before.iter().filter(|p| **p == port).count();
            assert!(share > 15, "port {port} got {share} of 100 keys");
        }
        let without_2 = View::new(vec![member(1, false), member(3, false)]);
        for (key, port) in before.iter().enumerate() {
            let after = pick_port(&without_2, Some(&format!("user-{key}")), &state);
            if *port != 2 {
                assert_eq!(after, *port, "key {key} moved although its member lives");
            }
        }
    }

    #[test]
    fn a_retry_avoids_the_member_already_tried() {
        let view = View::new(vec![member(1, false), member(2, false)]);
        let state = BalanceState::default();
        let tried_1 = |addr: SocketAddr| addr.port() == 1;
        for key in ["a", "b", "c"] {
            let chosen = pick(
                &view,
                "greeter",
                None,
                Some(key),
                Strategy::RoundRobin,
                &state,
                &tried_1,
            )
            .expect("member");
            assert_eq!(chosen.id.addr.port(), 2);
        }
    }

    #[test]
    fn no_member_and_wrong_schema_are_explained() {
        let state = BalanceState::default();
        let empty = View::default();
        let error = pick(
            &empty,
            "greeter",
            None,
            None,
            Strategy::RoundRobin,
            &state,
            &|_| false,
        )
        .expect_err("nobody");
        assert!(error.is_refused());
        assert_eq!(error.message(), "no live member publishes `greeter`");
        let view = View::new(vec![member(1, false)]);
        let error = pick(
            &view,
            "greeter",
            Some(8),
            None,
            Strategy::RoundRobin,
            &state,
            &|_| false,
        )
        .expect_err("wrong schema");
        assert!(error.message().contains("another schema"), "{error}");
    }

    /// One attempt to `addr` that takes `latency` (with time paused).
    async fn record_latency(state: &BalanceState, addr: SocketAddr, latency: Duration) {
        let load = state.load(addr);
        let attempt = load.start();
        tokio::time::advance(latency).await;
        attempt.finish(false);
    }

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_prefers_the_faster_member() {
        let view = View::new(vec![member(1, false), member(2, false)]);
        let state = BalanceState::default();
        let slow = SocketAddr::from(([127, 0, 0, 1], 1));
        let fast = SocketAddr::from(([127, 0, 0, 1], 2));
        record_latency(&state, slow, Duration::from_millis(50)).await;
        record_latency(&state, fast, Duration::from_millis(1)).await;
        let fast_picks = (0..100)
            .filter(|_| {
                pick(
                    &view,
                    "greeter",
                    None,
                    None,
                    Strategy::PeakEwma,
                    &state,
                    &|_| false,
                )
                .expect("member")
                .id
                .addr
                    == fast
            })
            .count();
        assert_eq!(fast_picks, 100, "with two members p2c always compares both");
    }

    #[tokio::test(start_paused = true)]
    async fn state_of_members_that_left_is_forgotten() {
        // Churn: every round three new replicas replace the previous three (new addresses, as
        // restarted containers get), and each is called, timed and fails enough to be ejected.
        let state = BalanceState::default();
        for round in 0..100u16 {
            let ports = [round * 3 + 1, round * 3 + 2, round * 3 + 3];
            let view = View::new(ports.iter().map(|port| member(*port, false)).collect());
            for _ in 0..3 {
                let chosen = pick(
                    &view,
                    "greeter",
                    Some(7),
                    None,
                    Strategy::PeakEwma,
                    &state,
                    &|_| false,
                )
                .expect("a member")
                .id
                .addr;
                record_latency(&state, chosen, Duration::from_millis(1)).await;
                for _ in 0..5 {
                    state.breakers.record_failure(chosen, 3);
                }
            }
            assert!(
                state.tracked() <= 2 * ports.len(),
                "round {round}: state for {} members, the view has {}",
                state.tracked(),
                ports.len()
            );
        }
    }
}
