//! The membership core: the foca state machine and the agent's decisions, free of I/O.
//!
//! Every input (a gossip datagram, an expired timer, a seed to announce to, a member list from
//! a full-state exchange, draining, leaving) goes in through one method and comes back as
//! [`Effects`]: datagrams to send and to whom, timers to set, connections to close, and the new
//! [`View`] when the mesh changed. The node's agent (`agent.rs`) carries those effects out over
//! QUIC and tokio timers; the simulation (`sim.rs`) carries them out in virtual time. Both run
//! this code, so what the simulation measures is what the node does.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use foca::{
    Config, Foca, Header, Incarnation, Member, Message, NoCustomBroadcast, Notification, State,
    Timer,
};
use rand::rngs::StdRng;
use tracing::{debug, error, info, warn};

use super::codec::MsgPackCodec;
use super::exchange_error::ExchangeError;
use super::health::LocalHealth;
use super::identity::MemberId;
use super::reports::{REPORT_COOLDOWN, REPORT_PROBE_RTTS, Reports};
use super::view::{Liveness, MemberView, View};
use crate::wire::{FrameDecoder, FrameKind, encode_frame};

/// The size gossip packets are filled to while every identity is small: below the QUIC
/// datagram payload limit at the minimum MTU, so they travel as datagrams.
pub(crate) const DATAGRAM_BUDGET: usize = 1100;

/// The largest membership packet a node sends or accepts. A packet over the connection's
/// datagram limit travels on a stream of its own (`agent.rs`); one whose probe cannot fit even
/// this is refused at start ([`check_identity`]).
pub(crate) const MAX_GOSSIP_PACKET: usize = 16 * 1024;

/// Room a packet keeps for updates beyond the probe's three identities, in identities of the
/// largest size known.
const UPDATE_ROOM: usize = 2;

/// The largest full-state sync message accepted.
pub(crate) const MAX_SYNC_MESSAGE: usize = 1024 * 1024;

/// How many known members a node announces itself to after foca renewed its identity.
const REJOIN_ANNOUNCEMENTS: usize = 3;

/// How long before a joining node's own start a member must have started for the joiner to
/// take its news as known to the mesh: members that started since are gossiped on from the
/// seed's answer (see [`Core::apply`]). Generations are start times in microseconds since the
/// Unix epoch, so this compares two hosts' clocks: a joiner whose clock is ahead gossips less
/// of the answer, one whose clock is behind gossips more (at most all of it, as before).
const RECENT_START: Duration = Duration::from_secs(30);

type Swim = Foca<MemberId, MsgPackCodec, StdRng, NoCustomBroadcast>;

/// The SWIM timings used on a LAN: a dead member is noticed in about two seconds.
pub(crate) fn swim_config() -> Config {
    let mut config = Config::new_lan(NonZeroU32::new(16).unwrap_or(NonZeroU32::MIN));
    config.max_transmissions = transmissions_for(1);
    // Five members relay a missed probe, not three: at 5 % loss a probe then fails (direct
    // and every indirect path) about 0.002 % of the time instead of 0.06 %. With three, a
    // 1,000-node mesh declared two live members down in 15 s at 5 % loss (docs/SCALE.md).
    config.num_indirect_probes = NonZeroUsize::new(5).unwrap_or(NonZeroUsize::MIN);
    config.probe_period = Duration::from_millis(500);
    config.probe_rtt = Duration::from_millis(200);
    config.suspect_to_down_after = Duration::from_millis(1500);
    config.remove_down_after = Duration::from_secs(30).into();
    config.max_packet_size = NonZeroUsize::new(DATAGRAM_BUDGET).unwrap_or(NonZeroUsize::MIN);
    config.periodic_gossip = Some(foca::PeriodicParams {
        frequency: Duration::from_millis(200),
        num_members: NonZeroUsize::new(3).unwrap_or(NonZeroUsize::MIN),
    });
    config.periodic_announce = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(10),
        num_members: NonZeroUsize::MIN,
    });
    config
}

/// How many times an update rides outgoing messages for a mesh of `members`: memberlist's
/// `retransmit_mult × ⌈log10(n + 1)⌉` with its multiplier 4. foca's `Config::new_lan` drops the
/// ceiling (4 × log10(17) = 4.9, rounded down to 4 for 16 members), and an update sent 4 times
/// per node misses a member of a 30-node mesh in some runs, which then learns of it only when
/// probed, up to a probe round (`members × probe_period`) later.
pub(crate) fn transmissions_for(members: usize) -> NonZeroU8 {
    let digits = ((members as f64) + 1.0).log10().ceil().max(1.0);
    let count = (4.0 * digits).min(f64::from(u8::MAX));
    NonZeroU8::new(count as u8).unwrap_or(NonZeroU8::MIN)
}

/// A timer the core asks its shell for: foca's own, or one of the core's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CoreTimer {
    /// A foca timer.
    Swim(Timer<MemberId>),
    /// The ping a caller's report started is due: suspect the member if it did not answer.
    ReportProbe(SocketAddr),
    /// The cool-down of a report is over.
    ReportCooled(SocketAddr),
    /// Tell a member this node suspects so again, if it still does (`remaining` more times).
    Buddy {
        /// The suspect.
        member: MemberId,
        /// Its incarnation when suspected.
        incarnation: Incarnation,
        /// How many more times after this one.
        remaining: u8,
    },
}

/// How many suspicion timeouts a node waits before declaring down a member whose suspicion it
/// only heard of (15 s): long, so that the node that raised it decides, and a late refutation
/// has time to arrive; it only clears suspicions nobody times out any more.
const GOSSIPED_SUSPICION_TIMEOUTS: u32 = 10;

/// How many times a node tells a member it suspects so (at once, then every probe period while
/// the suspicion lasts): Lifeguard's "buddy system".
const BUDDY_PINGS: u8 = 3;

/// What the core asks its shell to do after one input.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// Gossip datagrams to send, by destination address.
    pub(crate) sends: Vec<(SocketAddr, Bytes)>,
    /// Timers to set: hand the timer back to [`Core::timer`] after the delay.
    pub(crate) timers: Vec<(CoreTimer, Duration)>,
    /// Addresses whose pooled connection should close: their member went down.
    pub(crate) close: Vec<SocketAddr>,
    /// Addresses whose pooled connection should close if it was established before the time:
    /// a new process came up there.
    pub(crate) close_if_older: Vec<(SocketAddr, SystemTime)>,
    /// Members this node now sees up.
    pub(crate) ups: Vec<MemberId>,
    /// Members this node declared (or learnt to be) down.
    pub(crate) downs: Vec<MemberId>,
    /// Whether the view changed: [`Core::view`] builds the new one.
    pub(crate) view_changed: bool,
}

/// What foca asked for while handling one input.
#[derive(Default)]
struct Outbox {
    sends: Vec<(SocketAddr, Bytes)>,
    timers: Vec<(Timer<MemberId>, Duration)>,
    ups: Vec<MemberId>,
    downs: Vec<MemberId>,
    /// Identities replaced by a newer one at the same address: (old, new).
    renames: Vec<(MemberId, MemberId)>,
    /// Foca renewed the local identity because the cluster declared it down.
    rejoined: bool,
}

impl foca::Runtime<MemberId> for Outbox {
    fn notify(&mut self, notification: Notification<'_, MemberId>) {
        match notification {
            Notification::MemberUp(id) => {
                info!(member = %id.name, addr = %id.addr, "member up");
                self.ups.push(id.clone());
            }
            Notification::MemberDown(id) => {
                info!(member = %id.name, addr = %id.addr, "member down");
                self.downs.push(id.clone());
            }
            Notification::Rename(old, new) => self.renames.push((old.clone(), new.clone())),
            Notification::Defunct => debug!("declared down by the cluster"),
            Notification::Rejoin(id) => {
                info!(
                    generation = id.generation,
                    "declared down by the cluster; rejoining"
                );
                self.rejoined = true;
            }
            _ => {}
        }
    }

    fn send_to(&mut self, to: MemberId, data: &[u8]) {
        self.sends.push((to.addr, Bytes::copy_from_slice(data)));
    }

    fn submit_after(&mut self, event: Timer<MemberId>, after: Duration) {
        self.timers.push((event, after));
    }
}

/// One node's membership, without I/O.
pub(crate) struct Core {
    foca: Swim,
    cluster: String,
    /// Set once the node left: it then ignores the cluster instead of rejoining it.
    left: bool,
    outbox: Outbox,
    view: Arc<View>,
    /// Whether `view` is out of date (it is built when asked for, not on every change).
    stale: bool,
    /// A digest of what the view is built from, so the view is rebuilt only when it changed.
    digest: u64,
    /// The config foca runs with.
    config: Config,
    /// Whether `max_transmissions` follows the mesh's size (see [`Core::set_adaptive`]).
    adaptive: bool,
    /// The member count `max_transmissions` was last tuned for.
    tuned_for: usize,
    /// How far behind this node runs, and how much its timeouts stretch for it.
    health: LocalHealth,
    /// Callers' reports of unresponsive members under way or cooling down.
    reports: Reports,
    /// Suspicions whose expiry was put off because this node runs late, by member address and
    /// incarnation: how long they were put off so far. At most one entry per suspect member.
    deferred: HashMap<(SocketAddr, Incarnation), Duration>,
    /// foca's current timer token, as carried by the timers it sets: a suspicion the core
    /// raises is timed out by foca's own `ChangeSuspectToDown`, which needs it.
    token: Option<foca::TimerToken>,
    /// The probe number of the next buddy ping.
    buddy_probe: u8,
    /// Whether buddy pings are sent (see [`Core::set_lifeguard`]).
    lifeguard: bool,
    /// Suspicions this node heard of (by member address and incarnation) and times out itself:
    /// foca times out only the suspicions its own probes raised, and one whose raiser renewed
    /// its identity (dropping its timers) or died would otherwise linger everywhere until
    /// another probe of the member fails. At most one entry per suspect member.
    heard: HashSet<(SocketAddr, Incarnation)>,
    /// The encoded size of the largest identity seen (this node's and its members'): packets
    /// are sized so that a probe naming it fits.
    largest_identity: usize,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("identity", self.foca.identity())
            .field("members", &self.member_count())
            .field("left", &self.left)
            .finish_non_exhaustive()
    }
}

impl Core {
    /// The membership of the node `local`, alone so far.
    pub(crate) fn new(local: MemberId, config: Config, rng: StdRng) -> Core {
        if let Err(error) = check_identity(&local) {
            error!("{error}");
        }
        let own_size = identity_size(&local);
        let cluster = local.cluster.clone();
        let view = Arc::new(local_view(&local, Vec::new()));
        let mut core = Core {
            foca: Foca::new(local, config.clone(), rng, MsgPackCodec),
            health: LocalHealth::new(config.probe_rtt),
            config,
            cluster,
            left: false,
            outbox: Outbox::default(),
            view,
            stale: false,
            digest: 0,
            adaptive: true,
            tuned_for: 0,
            reports: Reports::default(),
            deferred: HashMap::new(),
            token: None,
            buddy_probe: 0,
            lifeguard: true,
            heard: HashSet::new(),
            largest_identity: 0,
        };
        core.fit_identity(own_size);
        core.digest = core.digest();
        core
    }

    /// Whether `max_transmissions` grows with the mesh (the default); off, foca keeps the value
    /// of the config it started with (the simulation compares both).
    pub(crate) fn set_adaptive(&mut self, adaptive: bool) {
        self.adaptive = adaptive;
    }

    /// The local identity.
    pub(crate) fn identity(&self) -> &MemberId {
        self.foca.identity()
    }

    /// The current view, built now if the mesh changed since it was last asked for.
    pub(crate) fn view(&mut self) -> &Arc<View> {
        if self.stale {
            self.view = Arc::new(self.build_view());
            self.stale = false;
        }
        &self.view
    }

    /// How many members the view holds (the local node included), without building it.
    pub(crate) fn member_count(&self) -> usize {
        self.foca.num_members() + 1
    }

    /// The active members (the local node excluded) and whether each is alive (else suspect),
    /// without building the view.
    pub(crate) fn active_members(&self) -> impl Iterator<Item = (&MemberId, bool)> {
        self.foca
            .iter_members()
            .map(|member| (member.id(), member.state() == State::Alive))
    }

    /// How many members foca tracks, down ones included (its memory grows with this).
    pub(crate) fn tracked(&self) -> usize {
        self.foca.iter_membership_state().len()
    }

    /// How many updates wait to be gossiped.
    pub(crate) fn backlog(&self) -> usize {
        self.foca.updates_backlog()
    }

    /// Handles a gossip datagram received from any peer.
    pub(crate) fn datagram(&mut self, data: &[u8]) -> Effects {
        if self.left {
            // A node that left answers nothing: it must not be declared back alive.
            return Effects::default();
        }
        // Defence in depth: TLS already keeps other clusters out.
        let mut peek = data;
        match foca::Codec::decode_header(&mut MsgPackCodec, &mut peek) {
            Ok(header) if header.src.cluster == self.cluster => {
                if let Message::Ack(probe) = header.message {
                    // An answer to a report's ping (foca ignores it unless it is probing the
                    // member with the same number).
                    self.reports.ack(header.src.addr, probe);
                }
            }
            Ok(header) => {
                debug!(from = %header.src.cluster, "dropped gossip of another cluster");
                return Effects::default();
            }
            Err(error) => {
                debug!(%error, "dropped a malformed gossip datagram");
                return Effects::default();
            }
        }
        let limit = self.config.max_packet_size.get();
        if data.len() > limit && data.len() <= MAX_GOSSIP_PACKET {
            // A packet of a member with a larger identity than any this node knows: accepted
            // up to the hard limit (foca checks the size against its config).
            let mut wide = self.config.clone();
            wide.max_packet_size =
                NonZeroUsize::new(MAX_GOSSIP_PACKET).unwrap_or(NonZeroUsize::MIN);
            let _ = self.foca.set_config(wide);
            let result = self.foca.handle_data(data, &mut self.outbox);
            let _ = self.foca.set_config(self.config.clone());
            if let Err(error) = result {
                debug!(%error, "gossip packet rejected");
            }
        } else if let Err(error) = self.foca.handle_data(data, &mut self.outbox) {
            debug!(%error, "gossip datagram rejected");
        }
        self.effects()
    }

    /// Sizes packets for an identity of `size` encoded bytes: a probe names the sender and the
    /// receiver and carries updates, so once three such identities overflow the datagram budget
    /// the packet limit grows to three plus [`UPDATE_ROOM`] of them (never beyond
    /// [`MAX_GOSSIP_PACKET`], never lowered).
    fn fit_identity(&mut self, size: usize) {
        if size <= self.largest_identity {
            return;
        }
        self.largest_identity = size;
        // While a probe (three copies and the rest) fits the budget, packets stay datagrams.
        let wanted = if size * 3 + PACKET_OVERHEAD <= DATAGRAM_BUDGET {
            DATAGRAM_BUDGET
        } else {
            (size * (3 + UPDATE_ROOM) + PACKET_OVERHEAD).min(MAX_GOSSIP_PACKET)
        };
        if wanted > self.config.max_packet_size.get() {
            let mut config = self.config.clone();
            config.max_packet_size = NonZeroUsize::new(wanted).unwrap_or(NonZeroUsize::MIN);
            match self.foca.set_config(config.clone()) {
                Ok(()) => {
                    debug!(bytes = wanted, "gossip packets grow for a larger identity");
                    self.config = config;
                }
                Err(error) => debug!(%error, "could not grow gossip packets"),
            }
        }
    }

    /// The largest packet this node sends now.
    pub(crate) fn packet_limit(&self) -> usize {
        self.config.max_packet_size.get()
    }

    /// Handles a timer set by an earlier [`Effects::timers`], which fired `late` after its
    /// deadline (how far behind the node's event loop runs: see [`LocalHealth`]).
    pub(crate) fn timer(&mut self, timer: CoreTimer, late: Duration) -> Effects {
        if self.left {
            return Effects::default();
        }
        self.health.observe(late);
        match timer {
            CoreTimer::Swim(timer) => self.swim_timer(timer),
            CoreTimer::ReportProbe(addr) => self.conclude_report(addr),
            CoreTimer::ReportCooled(addr) => {
                self.reports.forget(addr);
                Effects::default()
            }
            CoreTimer::Buddy {
                member,
                incarnation,
                remaining,
            } => {
                let still = self.foca.iter_members().any(|known| {
                    known.id() == &member
                        && known.state() == State::Suspect
                        && known.incarnation() == incarnation
                });
                let mut effects = Effects::default();
                if still {
                    self.buddy(member, incarnation, remaining, &mut effects);
                }
                effects
            }
        }
    }

    /// Tells `suspect` that this node suspects it, in a ping whose only update is the
    /// suspicion (Lifeguard's buddy system): foca gossips a suspicion to random members, and
    /// the suspect may learn of it only after the suspicion ran out. A live suspect refutes at
    /// once and its ack carries the refutation straight back to this node, which holds the
    /// suspicion's timer. Repeated every probe period while the suspicion lasts, `remaining`
    /// more times.
    fn buddy(
        &mut self,
        suspect: MemberId,
        incarnation: Incarnation,
        remaining: u8,
        effects: &mut Effects,
    ) {
        let addr = suspect.addr;
        let update = Member::new(suspect.clone(), incarnation, State::Suspect);
        let header = Header {
            src: self.foca.identity().clone(),
            src_incarnation: 0,
            dst: suspect.clone(),
            message: Message::Ping(self.buddy_probe),
        };
        self.buddy_probe = self.buddy_probe.wrapping_add(1);
        let mut codec = MsgPackCodec;
        let mut wire = Vec::with_capacity(512);
        let encoded = foca::Codec::encode_header(&mut codec, &header, &mut wire).is_ok() && {
            wire.extend_from_slice(&1u16.to_be_bytes());
            foca::Codec::encode_member(&mut codec, &update, &mut wire).is_ok()
        };
        if encoded && wire.len() <= self.config.max_packet_size.get() {
            effects.sends.push((addr, Bytes::from(wire)));
        }
        if let Some(remaining) = remaining.checked_sub(1) {
            let timer = CoreTimer::Buddy {
                member: suspect,
                incarnation,
                remaining,
            };
            effects
                .timers
                .push((timer, self.health.scale(self.config.probe_period)));
        }
    }

    fn swim_timer(&mut self, timer: Timer<MemberId>) -> Effects {
        match &timer {
            Timer::ProbeRandomMember(_) => {
                let before = self.health.score();
                self.health.tick();
                let after = self.health.score();
                if before == 0 && after > 0 {
                    info!(
                        score = after,
                        "this node's timers run late (CPU starvation?): probing more slowly and \
                         waiting longer before declaring suspects down"
                    );
                } else if before > 0 && after == 0 {
                    info!("this node's timers run on time again: normal probing");
                }
            }
            Timer::ChangeSuspectToDown {
                member_id,
                incarnation,
                ..
            } => {
                // A node that runs late may not have read the refutation yet: it gives the
                // suspect `score` more suspicion timeouts before declaring it down.
                let key = (member_id.addr, *incarnation);
                let wanted = self
                    .config
                    .suspect_to_down_after
                    .saturating_mul(self.health.score());
                let granted = self.deferred.get(&key).copied().unwrap_or_default();
                if granted < wanted {
                    self.deferred.insert(key, wanted);
                    return Effects {
                        timers: vec![(CoreTimer::Swim(timer), wanted - granted)],
                        ..Effects::default()
                    };
                }
                self.deferred.remove(&key);
            }
            _ => {}
        }
        if let Err(error) = self.foca.handle_timer(timer, &mut self.outbox) {
            debug!(%error, "gossip timer failed");
        }
        self.effects()
    }

    /// A caller reports that the member at `addr` stopped answering calls: ping it now and,
    /// unless it answers within [`REPORT_PROBE_RTTS`] probe round-trips, suspect it (it refutes
    /// the suspicion if it is alive). A member is acted on at most once per
    /// [`REPORT_COOLDOWN`]; addresses outside the view are ignored.
    pub(crate) fn report_unresponsive(&mut self, addr: SocketAddr) -> Effects {
        if self.left {
            return Effects::default();
        }
        let Some(member) = self
            .foca
            .iter_members()
            .find(|member| member.id().addr == addr && member.state() == State::Alive)
        else {
            return Effects::default();
        };
        let target = member.id().clone();
        let Some(probe) = self.reports.start(addr) else {
            return Effects::default();
        };
        debug!(member = %target.name, %addr, "a caller reports the member unresponsive; probing it");
        let header = Header {
            src: self.foca.identity().clone(),
            // The receiver only learns that this node is at least at incarnation 0, which it
            // knows already: the ping changes nothing it holds about this node.
            src_incarnation: 0,
            dst: target,
            message: Message::Ping(probe),
        };
        let mut wire = Vec::with_capacity(256);
        let mut effects = Effects::default();
        match foca::Codec::encode_header(&mut MsgPackCodec, &header, &mut wire) {
            Ok(()) => effects.sends.push((addr, Bytes::from(wire))),
            Err(error) => debug!(%error, "could not encode a report's ping"),
        }
        let wait = self
            .health
            .scale(self.config.probe_rtt.saturating_mul(REPORT_PROBE_RTTS));
        effects.timers.push((CoreTimer::ReportProbe(addr), wait));
        effects
            .timers
            .push((CoreTimer::ReportCooled(addr), REPORT_COOLDOWN));
        effects
    }

    /// The wait for a report's ack is over: suspects the member if it did not answer.
    fn conclude_report(&mut self, addr: SocketAddr) -> Effects {
        if !self.reports.unanswered(addr) {
            return Effects::default();
        }
        let Some(member) = self
            .foca
            .iter_members()
            .find(|member| member.id().addr == addr && member.state() == State::Alive)
        else {
            return Effects::default();
        };
        let (id, incarnation) = (member.id().clone(), member.incarnation());
        info!(member = %id.name, %addr, "a reported member did not answer a ping; suspecting it");
        let suspect = Member::new(id.clone(), incarnation, State::Suspect);
        if let Err(error) = self
            .foca
            .apply_many(std::iter::once(suspect), true, &mut self.outbox)
        {
            debug!(%error, "could not suspect a reported member");
        }
        // foca times out only the suspicions of its own probes: the member is declared down
        // if the suspicion runs out unrefuted, exactly as after a failed probe.
        if let Some(token) = self.token {
            let timer = Timer::ChangeSuspectToDown {
                member_id: id,
                incarnation,
                token,
            };
            self.outbox
                .timers
                .push((timer, self.config.suspect_to_down_after));
        }
        self.effects()
    }

    /// Whether the node runs Lifeguard's additions (the default): local health, which
    /// stretches its timeouts when it runs late, and buddy pings, which tell a suspect it is
    /// suspected. Off, it runs foca alone (the simulation compares both).
    pub(crate) fn set_lifeguard(&mut self, enabled: bool) {
        self.health.set_enabled(enabled);
        self.lifeguard = enabled;
    }

    /// This node's local health score (0 when its timers fire on time).
    pub(crate) fn health(&self) -> u32 {
        self.health.score()
    }

    /// How many members are within a report's cool-down.
    #[cfg(test)]
    pub(crate) fn reports_pending(&self) -> usize {
        self.reports.len()
    }

    /// Announces this node to the member at `addr` (a seed known only by address).
    pub(crate) fn announce(&mut self, addr: SocketAddr) -> Effects {
        if self.left {
            return Effects::default();
        }
        if let Err(error) = self
            .foca
            .announce(MemberId::seed(addr, &self.cluster), &mut self.outbox)
        {
            debug!(%error, "announce failed");
        }
        self.effects()
    }

    /// Applies a member list learnt from a full-state exchange, and gossips what it teaches.
    ///
    /// A node that already knows members gossips whatever in the list is news to it: the peer
    /// knew something its side of the mesh may not (a peer that just joined, the other side of
    /// a healed partition). A node that knows nobody yet (it is joining) learns everything
    /// from the list, and its own ignorance says nothing about the mesh's: it gossips only the
    /// members that started less than [`RECENT_START`] before it, whose news may still be
    /// on its way through a mesh started at about the same time (a bootstrap), and learns
    /// the others quietly. Gossiping the whole list cost a joiner `members ×
    /// max_transmissions` updates, nearly all stale (18 KB/s for the joiner of a 1,000-node
    /// mesh); gossiping none of it left holes in a 100-node mesh started at once, repaired
    /// only by probing (47 s instead of 12 s to converge).
    pub(crate) fn apply(&mut self, members: Vec<Member<MemberId>>) -> Effects {
        if self.left {
            return Effects::default();
        }
        let own = self.foca.identity().addr;
        let cluster = &self.cluster;
        // A death is learnt by probing, not from a peer that may itself have been cut off:
        // `Down` entries of a member list are ignored.
        let members = members.into_iter().filter(|member| {
            &member.id().cluster == cluster
                && member.id().addr != own
                && member.state() != State::Down
        });
        let result = if self.foca.num_members() == 0 {
            let recent = RECENT_START.as_micros().try_into().unwrap_or(u64::MAX);
            let since = self.foca.identity().generation.saturating_sub(recent);
            let (news, known): (Vec<_>, Vec<_>) =
                members.partition(|member| member.id().generation >= since);
            self.foca
                .apply_many(known.into_iter(), false, &mut self.outbox)
                .and_then(|()| {
                    self.foca
                        .apply_many(news.into_iter(), true, &mut self.outbox)
                })
        } else {
            self.foca.apply_many(members, true, &mut self.outbox)
        };
        if let Err(error) = result {
            debug!(%error, "could not apply a member list");
        }
        self.effects()
    }

    /// Learns `members` as alive without gossiping them: the state a node reaches once a
    /// mesh converged and the news died down. Only the simulation's warm start uses it, to
    /// begin a large mesh's measurements without simulating its bootstrap.
    pub(crate) fn know(&mut self, members: Vec<Member<MemberId>>) -> Effects {
        let own = self.foca.identity().addr;
        let members = members.into_iter().filter(|member| member.id().addr != own);
        if let Err(error) = self.foca.apply_many(members, false, &mut self.outbox) {
            debug!(%error, "could not apply a member list");
        }
        self.effects()
    }

    /// The member list this node hands a peer in a full-state exchange (itself included), or
    /// `None` once it left.
    pub(crate) fn members(&self) -> Option<Vec<Member<MemberId>>> {
        if self.left {
            return None;
        }
        let mut members: Vec<Member<MemberId>> = self
            .foca
            .iter_membership_state()
            .filter(|member| member.state() != State::Down)
            .cloned()
            .collect();
        members.push(Member::alive(self.foca.identity().clone()));
        Some(members)
    }

    /// Gossips that this node is draining: a new identity, one generation on.
    pub(crate) fn set_draining(&mut self) -> Effects {
        if self.left {
            return Effects::default();
        }
        let mut identity = self.foca.identity().clone();
        if !identity.draining {
            identity.draining = true;
            identity.generation = identity.generation.wrapping_add(1);
            if let Err(error) = self.foca.change_identity(identity, &mut self.outbox) {
                warn!(%error, "could not gossip the draining state");
            }
        }
        self.effects()
    }

    /// Announces that this node leaves the cluster; afterwards it ignores every input.
    pub(crate) fn leave(&mut self) -> Effects {
        if self.left {
            return Effects::default();
        }
        if let Err(error) = self.foca.leave_cluster(&mut self.outbox) {
            debug!(%error, "leave failed");
        }
        let effects = self.effects();
        self.left = true;
        effects
    }

    /// Collects what foca asked for, and the view if it changed.
    fn effects(&mut self) -> Effects {
        if std::mem::take(&mut self.outbox.rejoined) {
            self.announce_rejoin();
        }
        let outbox = std::mem::take(&mut self.outbox);
        let suspicions: Vec<(MemberId, Incarnation)> = outbox
            .timers
            .iter()
            .filter_map(|(timer, _)| match timer {
                Timer::ChangeSuspectToDown {
                    member_id,
                    incarnation,
                    ..
                } => Some((member_id.clone(), *incarnation)),
                _ => None,
            })
            .collect();
        let health = self.health.clone();
        let timers = outbox
            .timers
            .into_iter()
            .map(|(timer, after)| {
                if let Timer::ProbeRandomMember(token) = &timer {
                    self.token = Some(*token);
                }
                // A node that runs late probes more slowly and waits longer for acks, so it
                // does not suspect members whose acks it has not read yet.
                let after = match timer {
                    Timer::ProbeRandomMember(_) | Timer::SendIndirectProbe { .. } => {
                        health.scale(after)
                    }
                    _ => after,
                };
                (CoreTimer::Swim(timer), after)
            })
            .collect();
        for id in outbox
            .ups
            .iter()
            .chain(outbox.renames.iter().map(|(_, new)| new))
        {
            self.fit_identity(identity_size(id));
        }
        let mut effects = Effects {
            sends: outbox.sends,
            timers,
            ups: outbox.ups,
            downs: outbox.downs,
            ..Effects::default()
        };
        let suspicions = if self.lifeguard {
            suspicions
        } else {
            Vec::new()
        };
        for (suspect, incarnation) in suspicions {
            // foca sets this timer when its probe (or a caller's report) raised a suspicion.
            self.buddy(suspect, incarnation, BUDDY_PINGS - 1, &mut effects);
        }
        for (old, new) in outbox.renames {
            // A generation more than one step on (a step is a draining or renewed identity of
            // the same process) is a new process: a pooled connection established before it
            // started leads to the dead one.
            if new.generation > old.generation.saturating_add(1) {
                let started = std::time::UNIX_EPOCH + Duration::from_micros(new.generation);
                effects.close_if_older.push((new.addr, started));
            }
        }
        let digest = self.digest();
        if digest != self.digest {
            self.digest = digest;
            self.stale = true;
            effects.view_changed = true;
            self.tune();
            self.time_out_heard_suspicions(&mut effects);
        }
        for down in &effects.downs {
            // A member that drained closes its connections itself, once it answered what it
            // accepted and named the streams it never read (their callers retry them
            // elsewhere); closing here would cut calls still on their way back, and a call
            // whose connection this side closed cannot tell whether it ran. A newer identity
            // at the same address (a restart) keeps the connection.
            if !down.draining && !self.active_members().any(|(id, _)| id.addr == down.addr) {
                effects.close.push(down.addr);
            }
        }
        effects
    }

    /// Sets a timeout for every suspicion this node holds but did not set one for yet (see
    /// [`Core::heard`]): [`GOSSIPED_SUSPICION_TIMEOUTS`] suspicion timeouts, after which foca
    /// declares the member down unless it refuted (a newer incarnation) in the meantime. Without
    /// buddy pings: every node that hears of a suspicion would ping the suspect.
    fn time_out_heard_suspicions(&mut self, effects: &mut Effects) {
        let Some(token) = self.token else {
            return;
        };
        let suspects: HashSet<(SocketAddr, Incarnation)> = self
            .foca
            .iter_members()
            .filter(|member| member.state() == State::Suspect)
            .map(|member| (member.id().addr, member.incarnation()))
            .collect();
        self.heard.retain(|key| suspects.contains(key));
        let after = self
            .config
            .suspect_to_down_after
            .saturating_mul(GOSSIPED_SUSPICION_TIMEOUTS);
        for member in self.foca.iter_members() {
            let key = (member.id().addr, member.incarnation());
            if member.state() != State::Suspect || !self.heard.insert(key) {
                continue;
            }
            let timer = Timer::ChangeSuspectToDown {
                member_id: member.id().clone(),
                incarnation: member.incarnation(),
                token,
            };
            effects.timers.push((CoreTimer::Swim(timer), after));
        }
    }

    /// After foca renewed the identity, announces it to a few known members. A renewal leaves
    /// foca disconnected, without timers, until some member sends it a message, and members
    /// only message identities they know: the three members foca gossips the renewal to may
    /// drop it (a message addressed to an identity they no longer hold is dropped) and the node
    /// would then sit silent forever, its view frozen. An announcement is accepted by whatever
    /// identity holds the address, and its answer reconnects foca.
    fn announce_rejoin(&mut self) {
        let addrs: Vec<SocketAddr> = self
            .foca
            .iter_members()
            .take(REJOIN_ANNOUNCEMENTS)
            .map(|member| member.id().addr)
            .collect();
        for addr in addrs {
            let seed = MemberId::seed(addr, &self.cluster);
            if let Err(error) = self.foca.announce(seed, &mut self.outbox) {
                debug!(%error, "rejoin announce failed");
            }
        }
    }

    /// Raises `max_transmissions` as the mesh grows (never lowers it), so updates reach every
    /// member: foca's value is fixed at start, for 16 members.
    fn tune(&mut self) {
        let members = self.member_count();
        if !self.adaptive || members <= self.tuned_for {
            return;
        }
        let wanted = transmissions_for(members);
        if wanted > self.config.max_transmissions {
            let mut config = self.config.clone();
            config.max_transmissions = wanted;
            match self.foca.set_config(config.clone()) {
                Ok(()) => self.config = config,
                Err(error) => debug!(%error, "could not raise max_transmissions"),
            }
        }
        self.tuned_for = members;
    }

    /// An order-independent digest of every member's address, generation, draining flag and
    /// liveness, and of the local identity. Any change of what a member publishes comes with a
    /// new generation, so equal digests mean an equal view; computing it allocates nothing,
    /// unlike building and comparing the view after every datagram.
    fn digest(&self) -> u64 {
        fn mix(id: &MemberId, alive: bool) -> u64 {
            let addr = match id.addr {
                SocketAddr::V4(v4) => u64::from(v4.ip().to_bits()),
                SocketAddr::V6(v6) => {
                    let bits = v6.ip().to_bits();
                    (bits as u64) ^ ((bits >> 64) as u64)
                }
            };
            let mut x = addr
                ^ (u64::from(id.addr.port()) << 32)
                ^ id.generation.rotate_left(17)
                ^ (u64::from(id.draining) << 62)
                ^ (u64::from(alive) << 63);
            // splitmix64's finaliser: spreads every input bit over the digest.
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        }
        let members = self.foca.iter_members().fold(0u64, |sum, member| {
            sum.wrapping_add(mix(member.id(), member.state() == State::Alive))
        });
        members ^ mix(self.foca.identity(), true).rotate_left(1)
    }

    fn build_view(&self) -> View {
        let members: Vec<MemberView> = self
            .foca
            .iter_members()
            .map(|member| MemberView {
                id: member.id().clone(),
                liveness: if member.state() == State::Alive {
                    Liveness::Alive
                } else {
                    Liveness::Suspect
                },
                local: false,
            })
            .collect();
        local_view(self.foca.identity(), members)
    }
}

/// A packet's bytes besides its identities: the header's other fields, the update count and
/// each update's incarnation and state (a generous bound).
const PACKET_OVERHEAD: usize = 64;

/// The encoded size of `id` as it travels in headers and updates.
pub(crate) fn identity_size(id: &MemberId) -> usize {
    rmp_serde::to_vec_named(id).map_or(usize::MAX, |bytes| bytes.len())
}

/// The size of the smallest probe `id` sends to a member like it: a header naming both, and
/// one update about such a member.
pub(crate) fn probe_size(id: &MemberId) -> usize {
    let header = foca::Header {
        src: id.clone(),
        src_incarnation: 0,
        dst: id.clone(),
        message: foca::Message::Ping(0),
    };
    let mut codec = MsgPackCodec;
    let mut wire = Vec::with_capacity(DATAGRAM_BUDGET);
    let member = Member::new(id.clone(), 0, State::Alive);
    let encoded = foca::Codec::encode_header(&mut codec, &header, &mut wire).is_ok() && {
        wire.extend_from_slice(&[0, 1]);
        foca::Codec::encode_member(&mut codec, &member, &mut wire).is_ok()
    };
    if encoded { wire.len() } else { usize::MAX }
}

/// Whether `id` can take part in membership: its probes must fit [`MAX_GOSSIP_PACKET`]. An
/// identity that does not could never be probed, and the mesh would declare the node down.
pub fn check_identity(id: &MemberId) -> Result<(), IdentityTooLarge> {
    let probe = probe_size(id);
    if probe <= MAX_GOSSIP_PACKET {
        return Ok(());
    }
    Err(IdentityTooLarge {
        identity: identity_size(id),
        probe,
        services: id.services.len(),
        tags: id.tags.len(),
        http: id.http.len(),
    })
}

/// A node identity too large to be gossiped: see [`check_identity`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "this node's identity takes {identity} bytes ({services} services, {tags} tags, {http} HTTP \
     services): a probe carries it three times ({probe} bytes), over the {MAX_GOSSIP_PACKET}-byte \
     membership packet limit, so the mesh could never probe this node; publish fewer services \
     or tags, or shorter names (about {per_copy} bytes per copy fit)",
    per_copy = MAX_GOSSIP_PACKET / 3
)]
pub struct IdentityTooLarge {
    /// The identity's encoded size.
    pub identity: usize,
    /// The smallest probe's size.
    pub probe: usize,
    /// Services published.
    pub services: usize,
    /// Tags.
    pub tags: usize,
    /// Legacy HTTP services.
    pub http: usize,
}

/// The view of a node that knows `members` besides itself.
pub(crate) fn local_view(local: &MemberId, mut members: Vec<MemberView>) -> View {
    members.push(MemberView {
        id: local.clone(),
        liveness: Liveness::Alive,
        local: true,
    });
    View::new(members)
}

/// A member list as a `GOSSIP` frame: the message of a full-state exchange, both ways.
pub(crate) fn encode_members(members: &[Member<MemberId>]) -> Result<Bytes, ExchangeError> {
    let body = rmp_serde::to_vec_named(members)?;
    if body.len() > MAX_SYNC_MESSAGE {
        return Err(ExchangeError::TooLarge {
            size: body.len(),
            limit: MAX_SYNC_MESSAGE,
        });
    }
    let mut buffer = BytesMut::with_capacity(body.len() + 5);
    encode_frame(FrameKind::Gossip, &body, &mut buffer);
    Ok(buffer.freeze())
}

/// The member list of a `GOSSIP` frame's body.
pub(crate) fn decode_members(body: &[u8]) -> Result<Vec<Member<MemberId>>, ExchangeError> {
    Ok(crate::codec::from_slice_bounded(
        body,
        crate::codec::MAX_HEADER_DEPTH,
    )?)
}

/// The member list of a whole `GOSSIP` frame, judged as the joining node judges a seed's
/// answer (at most [`MAX_SYNC_MESSAGE`] bytes).
pub(crate) fn decode_members_frame(frame: &[u8]) -> Result<Vec<Member<MemberId>>, ExchangeError> {
    let decoder = FrameDecoder::new(MAX_SYNC_MESSAGE);
    let mut buffer = BytesMut::from(frame);
    let frame = decoder
        .decode(&mut buffer)?
        .ok_or(ExchangeError::Truncated)?;
    if frame.kind != FrameKind::Gossip {
        return Err(ExchangeError::WrongFrame(frame.kind));
    }
    decode_members(&frame.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drained_member_that_leaves_keeps_its_connection_open_for_it_to_close() {
        let relay = |from: &mut Effects, to: &mut Core, to_addr: SocketAddr| -> Effects {
            let mut out = Effects::default();
            for (addr, data) in std::mem::take(&mut from.sends) {
                if addr == to_addr {
                    let effects = to.datagram(&data);
                    out.close.extend(effects.close);
                    out.sends.extend(effects.sends);
                }
            }
            out
        };
        for drained in [true, false] {
            let member = |index: u8| MemberId {
                addr: SocketAddr::from(([127, 0, 0, index], 7100)),
                name: format!("node-{index}"),
                cluster: "test".to_owned(),
                generation: 1_764_000_000_000_000 + u64::from(index),
                draining: false,
                services: Vec::new(),
                http: Vec::new(),
                tags: Vec::new(),
            };
            let (a_id, b_id) = (member(1), member(2));
            let (a_addr, b_addr) = (a_id.addr, b_id.addr);
            let mut a = Core::new(a_id, swim_config(), rand::SeedableRng::seed_from_u64(1));
            let mut b = Core::new(b_id, swim_config(), rand::SeedableRng::seed_from_u64(2));
            let mut announce = b.announce(a_addr);
            let mut answer = relay(&mut announce, &mut a, a_addr);
            relay(&mut answer, &mut b, b_addr);
            let knowing_b = a.member_count();
            assert!(
                a.active_members().any(|(id, _)| id.addr == b_addr),
                "a knows b"
            );
            let mut closes = Vec::new();
            if drained {
                let mut draining = b.set_draining();
                closes.extend(relay(&mut draining, &mut a, a_addr).close);
            }
            let mut left = b.leave();
            closes.extend(relay(&mut left, &mut a, a_addr).close);
            assert_eq!(
                a.member_count(),
                knowing_b - 1,
                "a saw b leave (drained: {drained})"
            );
            if drained {
                assert!(
                    closes.is_empty(),
                    "a drained member closes its own connections"
                );
            } else {
                assert_eq!(closes, vec![b_addr], "a member gone without draining");
            }
        }
    }

    #[test]
    fn transmissions_grow_with_the_mesh() {
        // memberlist's figures: 4 × ⌈log10(n + 1)⌉.
        assert_eq!(swim_config().max_transmissions.get(), 4);
        assert_eq!(transmissions_for(3).get(), 4);
        assert_eq!(transmissions_for(9).get(), 4);
        assert_eq!(transmissions_for(10).get(), 8);
        assert_eq!(transmissions_for(99).get(), 8);
        assert_eq!(transmissions_for(100).get(), 12);
        assert_eq!(transmissions_for(1000).get(), 16);
    }
}

#[cfg(test)]
mod bounds {
    //! Message sizes at scale: what a full-state exchange and a gossip datagram carry when
    //! identities hold realistic service lists.

    use foca::State;

    use super::*;
    use crate::membership::identity::Published;

    /// A member as a Kubernetes deployment names it: a pod name, an IPv6 address (the longest
    /// text form), `services` services with package-qualified names, two legacy HTTP services
    /// and three tags.
    fn realistic(index: usize, services: usize) -> MemberId {
        MemberId {
            addr: format!(
                "[fd00:10:244:{:x}::{:x}]:7100",
                index / 250,
                index % 250 + 2
            )
            .parse()
            .expect("addr"),
            name: format!("checkout-api-7f9c8d6b5-{index:05}"),
            cluster: "production-eu-west-1".to_owned(),
            generation: 1_764_000_000_000_000 + index as u64,
            draining: false,
            services: (0..services)
                .map(|service| Published {
                    name: format!("acme.checkout.v2.Service{service:02}"),
                    schema_hash: 0x9e37_79b9_7f4a_7c15 ^ service as u64,
                })
                .collect(),
            http: vec!["legacy-orders".to_owned(), "legacy-invoices".to_owned()],
            tags: vec![
                "zone=eu-west-1a".to_owned(),
                "version=2.14.3".to_owned(),
                "tier=backend".to_owned(),
            ],
        }
    }

    #[test]
    fn a_full_state_exchange_of_1000_members_fits_the_sync_limit() {
        let members: Vec<Member<MemberId>> = (0..1000)
            .map(|index| Member::new(realistic(index, 8), 3, State::Alive))
            .collect();
        let frame = encode_members(&members).expect("fits");
        // 535 KB: about half the limit, so about 1,900 such members fit (docs/SCALE.md).
        assert!(frame.len() < MAX_SYNC_MESSAGE, "{} bytes", frame.len());
        assert!(frame.len() > MAX_SYNC_MESSAGE / 2, "{} bytes", frame.len());
        let back = decode_members_frame(&frame).expect("decodes");
        assert_eq!(back, members);
    }

    #[test]
    fn a_member_list_over_the_sync_limit_is_refused_when_encoded() {
        let members: Vec<Member<MemberId>> = (0..2500)
            .map(|index| Member::new(realistic(index, 16), 3, State::Alive))
            .collect();
        let error = encode_members(&members).expect_err("too large");
        assert!(
            matches!(error, ExchangeError::TooLarge { size, limit } if size > limit),
            "{error}"
        );
        assert!(error.to_string().contains("exchange limit"), "{error}");
    }

    /// `realistic` with `tags` tags of 24 characters.
    fn tagged(index: usize, services: usize, tags: usize) -> MemberId {
        MemberId {
            tags: (0..tags)
                .map(|tag| format!("team=payments-label-{tag:04}"))
                .collect(),
            ..realistic(index, services)
        }
    }

    #[test]
    fn an_identity_of_up_to_three_such_services_travels_as_datagrams() {
        // A probe carries the sender's and the receiver's identity in its header and, with one
        // update, a third copy: 609 bytes without services, 123 more per service.
        let sizes: Vec<usize> = (0..=8)
            .map(|services| probe_size(&realistic(999, services)))
            .collect();
        let most = sizes
            .iter()
            .rposition(|size| *size <= DATAGRAM_BUDGET)
            .expect("an identity without services fits");
        assert_eq!(most, 3, "smallest probe by service count: {sizes:?}");
    }

    #[test]
    fn twenty_long_services_and_ten_tags_are_accepted_and_size_the_packets() {
        let id = tagged(999, 20, 10);
        assert!(check_identity(&id).is_ok());
        let size = identity_size(&id);
        assert!(probe_size(&id) > DATAGRAM_BUDGET, "rides a stream");
        assert!(probe_size(&id) <= MAX_GOSSIP_PACKET);
        let mut core = Core::new(id, swim_config(), rand::SeedableRng::seed_from_u64(1));
        assert_eq!(core.packet_limit(), 5 * size + PACKET_OVERHEAD);
        // A member with a smaller identity does not shrink them; none grows them past the cap.
        let _ = core.know(vec![Member::alive(realistic(1, 1))]);
        assert_eq!(core.packet_limit(), 5 * size + PACKET_OVERHEAD);
        let huge = tagged(2, 100, 10);
        assert!(check_identity(&huge).is_ok(), "{:?}", check_identity(&huge));
        let _ = core.know(vec![Member::alive(huge)]);
        assert_eq!(core.packet_limit(), MAX_GOSSIP_PACKET);
        // A small node keeps datagram-sized packets.
        let small = Core::new(
            realistic(3, 3),
            swim_config(),
            rand::SeedableRng::seed_from_u64(1),
        );
        assert_eq!(small.packet_limit(), DATAGRAM_BUDGET);
    }

    #[test]
    fn an_identity_that_can_never_fit_is_refused_with_what_to_do() {
        let error = check_identity(&tagged(999, 200, 10)).expect_err("too large");
        assert!(error.probe > MAX_GOSSIP_PACKET);
        assert_eq!(error.services, 200);
        let message = error.to_string();
        assert!(message.contains("200 services, 10 tags"), "{message}");
        assert!(message.contains("publish fewer services"), "{message}");
        assert!(
            message.contains(&format!("{MAX_GOSSIP_PACKET}-byte")),
            "{message}"
        );
    }
}
