//! The membership core: the foca state machine and the agent's decisions, free of I/O.
//!
//! Every input (a gossip datagram, an expired timer, a seed to announce to, a member list from
//! a full-state exchange, draining, leaving) goes in through one method and comes back as
//! [`Effects`]: datagrams to send and to whom, timers to set, connections to close, and the new
//! [`View`] when the mesh changed. The node's agent (`agent.rs`) carries those effects out over
//! QUIC and tokio timers; the simulation (`sim.rs`) carries them out in virtual time. Both run
//! this code, so what the simulation measures is what the node does.

use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use foca::{Config, Foca, Member, NoCustomBroadcast, Notification, State, Timer};
use rand::rngs::StdRng;
use tracing::{debug, info, warn};

use super::codec::MsgPackCodec;
use super::identity::MemberId;
use super::view::{Liveness, MemberView, View};
use crate::wire::{FrameDecoder, FrameKind, encode_frame};

/// The largest gossip datagram: below the QUIC datagram payload limit at the minimum MTU.
pub(crate) const MAX_GOSSIP_PACKET: usize = 1100;

/// The largest full-state sync message accepted.
pub(crate) const MAX_SYNC_MESSAGE: usize = 1024 * 1024;

type Swim = Foca<MemberId, MsgPackCodec, StdRng, NoCustomBroadcast>;

/// The SWIM timings used on a LAN: a dead member is noticed in about two seconds.
pub(crate) fn swim_config() -> Config {
    let mut config = Config::new_lan(NonZeroU32::new(16).unwrap_or(NonZeroU32::MIN));
    config.probe_period = Duration::from_millis(500);
    config.probe_rtt = Duration::from_millis(200);
    config.suspect_to_down_after = Duration::from_millis(1500);
    config.remove_down_after = Duration::from_secs(30).into();
    config.max_packet_size = NonZeroUsize::new(MAX_GOSSIP_PACKET).unwrap_or(NonZeroUsize::MIN);
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
/// `4 × log10(n + 1)` (foca's `Config::new_lan` formula, rounded down as foca does), at least the
/// value for 16 members that [`swim_config`] starts with.
pub(crate) fn transmissions_for(members: usize) -> NonZeroU8 {
    let members = members.max(16) as f64;
    let count = (4.0 * (members + 1.0).log10()).min(f64::from(u8::MAX));
    NonZeroU8::new(count as u8).unwrap_or(NonZeroU8::MIN)
}

/// What the core asks its shell to do after one input.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// Gossip datagrams to send, by destination address.
    pub(crate) sends: Vec<(SocketAddr, Bytes)>,
    /// Timers to set: hand the timer back to [`Core::timer`] after the delay.
    pub(crate) timers: Vec<(Timer<MemberId>, Duration)>,
    /// Addresses whose pooled connection should close: their member went down.
    pub(crate) close: Vec<SocketAddr>,
    /// Addresses whose pooled connection should close if it was established before the time:
    /// a new process came up there.
    pub(crate) close_if_older: Vec<(SocketAddr, SystemTime)>,
    /// Members this node now sees up.
    pub(crate) ups: Vec<MemberId>,
    /// Members this node declared (or learnt to be) down.
    pub(crate) downs: Vec<MemberId>,
    /// The new view, when it changed.
    pub(crate) view: Option<Arc<View>>,
}

/// What foca asked for while handling one input.
#[derive(Default)]
struct Outbox {
    sends: Vec<(SocketAddr, Bytes)>,
    timers: Vec<(Timer<MemberId>, Duration)>,
    ups: Vec<MemberId>,
    downs: Vec<MemberId>,
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
            Notification::Defunct => debug!("declared down by the cluster"),
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
    /// A digest of what the view is built from, so the view is rebuilt only when it changed.
    digest: u64,
    /// The config foca runs with.
    config: Config,
    /// Whether `max_transmissions` follows the mesh's size (see [`Core::set_adaptive`]).
    adaptive: bool,
    /// The member count `max_transmissions` was last tuned for.
    tuned_for: usize,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("identity", self.foca.identity())
            .field("members", &self.view.members().len())
            .field("left", &self.left)
            .finish_non_exhaustive()
    }
}

impl Core {
    /// The membership of the node `local`, alone so far.
    pub(crate) fn new(local: MemberId, config: Config, rng: StdRng) -> Core {
        let cluster = local.cluster.clone();
        let view = Arc::new(local_view(&local, Vec::new()));
        let mut core = Core {
            foca: Foca::new(local, config.clone(), rng, MsgPackCodec),
            config,
            cluster,
            left: false,
            outbox: Outbox::default(),
            view,
            digest: 0,
            adaptive: true,
            tuned_for: 0,
        };
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

    /// The current view.
    pub(crate) fn view(&self) -> &Arc<View> {
        &self.view
    }

    /// Whether the node left the cluster.
    pub(crate) fn has_left(&self) -> bool {
        self.left
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
            Ok(header) if header.src.cluster == self.cluster => {}
            Ok(header) => {
                debug!(from = %header.src.cluster, "dropped gossip of another cluster");
                return Effects::default();
            }
            Err(error) => {
                debug!(%error, "dropped a malformed gossip datagram");
                return Effects::default();
            }
        }
        if let Err(error) = self.foca.handle_data(data, &mut self.outbox) {
            debug!(%error, "gossip datagram rejected");
        }
        self.effects()
    }

    /// Handles a timer set by an earlier [`Effects::timers`].
    pub(crate) fn timer(&mut self, timer: Timer<MemberId>) -> Effects {
        if self.left {
            return Effects::default();
        }
        if let Err(error) = self.foca.handle_timer(timer, &mut self.outbox) {
            debug!(%error, "gossip timer failed");
        }
        self.effects()
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

    /// Applies a member list learnt from a full-state exchange.
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
        if let Err(error) = self.foca.apply_many(members, true, &mut self.outbox) {
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
        let outbox = std::mem::take(&mut self.outbox);
        let mut effects = Effects {
            sends: outbox.sends,
            timers: outbox.timers,
            ups: outbox.ups,
            downs: outbox.downs,
            ..Effects::default()
        };
        let digest = self.digest();
        if digest != self.digest {
            self.digest = digest;
            let view = Arc::new(self.build_view());
            self.restarted_members(&view, &mut effects.close_if_older);
            self.view = view.clone();
            effects.view = Some(view);
            self.tune();
        }
        for down in &effects.downs {
            // A newer identity at the same address (a restart) keeps the connection.
            if self.view.member_at(down.addr).is_none() {
                effects.close.push(down.addr);
            }
        }
        effects
    }

    /// Raises `max_transmissions` as the mesh grows (never lowers it), so updates reach every
    /// member: foca's value is fixed at start, for 16 members.
    fn tune(&mut self) {
        let members = self.view.members().len();
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

    /// A member that comes back at the same address with a generation that is not one step
    /// on (a step is a draining or renewed identity of the same process) is a new process: a
    /// pooled connection established before it started leads to the dead one.
    fn restarted_members(&self, view: &View, close: &mut Vec<(SocketAddr, SystemTime)>) {
        for member in view.members().iter().filter(|member| !member.local) {
            let Some(before) = self.view.member_at(member.id.addr) else {
                continue;
            };
            let (old, new) = (before.id.generation, member.id.generation);
            if new > old.saturating_add(1) {
                let started = std::time::UNIX_EPOCH + Duration::from_micros(new);
                close.push((member.id.addr, started));
            }
        }
    }
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
pub(crate) fn encode_members(members: &[Member<MemberId>]) -> Result<Bytes, String> {
    let body = rmp_serde::to_vec_named(members).map_err(|e| e.to_string())?;
    if body.len() > MAX_SYNC_MESSAGE {
        return Err(format!(
            "a member list of {} bytes exceeds the {MAX_SYNC_MESSAGE}-byte exchange limit",
            body.len()
        ));
    }
    let mut buffer = BytesMut::with_capacity(body.len() + 5);
    encode_frame(FrameKind::Gossip, &body, &mut buffer);
    Ok(buffer.freeze())
}

/// The member list of a `GOSSIP` frame's body.
pub(crate) fn decode_members(body: &[u8]) -> Result<Vec<Member<MemberId>>, String> {
    crate::codec::from_slice_bounded(body, crate::codec::MAX_HEADER_DEPTH)
        .map_err(|error| format!("malformed member list: {error}"))
}

/// The member list of a whole `GOSSIP` frame, judged as the joining node judges a seed's
/// answer (at most [`MAX_SYNC_MESSAGE`] bytes).
pub(crate) fn decode_members_frame(frame: &[u8]) -> Result<Vec<Member<MemberId>>, String> {
    let decoder = FrameDecoder::new(MAX_SYNC_MESSAGE);
    let mut buffer = BytesMut::from(frame);
    let frame = decoder
        .decode(&mut buffer)
        .map_err(|error| error.to_string())?
        .ok_or("a truncated member list")?;
    if frame.kind != FrameKind::Gossip {
        return Err(format!("a {:?} frame instead of a member list", frame.kind));
    }
    decode_members(&frame.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transmissions_grow_with_the_mesh() {
        let start = swim_config().max_transmissions;
        assert_eq!(transmissions_for(3), start);
        assert_eq!(transmissions_for(16), start);
        assert_eq!(start.get(), 4);
        assert_eq!(transmissions_for(100).get(), 8);
        assert_eq!(transmissions_for(1000).get(), 12);
    }
}
