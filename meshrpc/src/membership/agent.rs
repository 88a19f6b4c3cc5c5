//! The membership agent: one task that owns the foca state machine and does its I/O —
//! datagrams out over pooled connections, datagrams in from every connection, timers, seed
//! joins and full-state syncs — and publishes a fresh [`View`] whenever the mesh changes.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use foca::{Config, Foca, Member, NoCustomBroadcast, Notification, State, Timer};
use futures_util::StreamExt;
use quinn::{Connection, RecvStream, SendStream};
use rand::rngs::StdRng;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::time::DelayQueue;
use tracing::{debug, info, warn};

use super::codec::MsgPackCodec;
use super::identity::MemberId;
use super::view::{Liveness, MemberView, View};
use crate::transport::connections::Connections;
use crate::transport::io::read_frame;
use crate::wire::{Frame, FrameDecoder, FrameKind, encode_frame};

/// The largest gossip datagram: below the QUIC datagram payload limit at the minimum MTU.
const MAX_GOSSIP_PACKET: usize = 1100;

/// The largest full-state sync message accepted.
const MAX_SYNC_MESSAGE: usize = 1024 * 1024;

type Swim = Foca<MemberId, MsgPackCodec, StdRng, NoCustomBroadcast>;

enum Input {
    Datagram(Bytes),
    Announce(SocketAddr),
    Apply(Vec<Member<MemberId>>),
    Snapshot(oneshot::Sender<Vec<Member<MemberId>>>),
    SetDraining(oneshot::Sender<()>),
    Leave(oneshot::Sender<()>),
}

/// A handle to the node's membership: the current [`View`] and the agent behind it.
#[derive(Debug, Clone)]
pub struct Membership {
    inputs: mpsc::UnboundedSender<Input>,
    view: watch::Receiver<Arc<View>>,
    cluster: Arc<str>,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Input::Datagram(_) => "Datagram",
            Input::Announce(_) => "Announce",
            Input::Apply(_) => "Apply",
            Input::Snapshot(_) => "Snapshot",
            Input::SetDraining(_) => "SetDraining",
            Input::Leave(_) => "Leave",
        })
    }
}

/// The SWIM timings used on a LAN: a dead member is noticed in about two seconds.
fn swim_config() -> Config {
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

impl Membership {
    /// Starts the agent for the local identity `local`; it sends over `connections`.
    pub(crate) fn start(local: MemberId, connections: Connections) -> Membership {
        let (inputs, receiver) = mpsc::unbounded_channel();
        let initial = Arc::new(local_view(&local, Vec::new()));
        let (view_sender, view) = watch::channel(initial);
        let membership = Membership {
            inputs,
            view,
            cluster: local.cluster.as_str().into(),
            local_addr: local.addr,
        };
        let foca = Foca::new(local, swim_config(), rand::make_rng(), MsgPackCodec);
        let agent = Agent {
            foca,
            left: false,
            inputs: receiver,
            timers: DelayQueue::new(),
            connections,
            view: view_sender,
        };
        tokio::spawn(agent.run());
        membership
    }

    /// The current view of the mesh.
    pub fn view(&self) -> Arc<View> {
        self.view.borrow().clone()
    }

    /// A receiver that sees every new view.
    pub fn watch(&self) -> watch::Receiver<Arc<View>> {
        self.view.clone()
    }

    /// The cluster's name.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Feeds a gossip datagram received on any connection.
    pub(crate) fn datagram(&self, data: Bytes) {
        let _ = self.inputs.send(Input::Datagram(data));
    }

    /// Reads gossip datagrams from `connection` until it closes.
    pub(crate) fn listen_to(&self, connection: Connection) {
        let membership = self.clone();
        tokio::spawn(async move {
            while let Ok(data) = connection.read_datagram().await {
                membership.datagram(data);
            }
        });
    }

    /// Joins through the member at `addr`: a full-state exchange on a stream, then a SWIM
    /// announcement. Returns whether the exchange succeeded.
    pub(crate) async fn join(&self, connections: &Connections, addr: SocketAddr) -> bool {
        if addr == self.local_addr {
            return false;
        }
        let result = self.exchange(connections, addr).await;
        let _ = self.inputs.send(Input::Announce(addr));
        match result {
            Ok(count) => {
                debug!(%addr, members = count, "synchronised membership with a seed");
                true
            }
            Err(error) => {
                info!(%addr, %error, "could not join through this seed yet");
                false
            }
        }
    }

    async fn exchange(&self, connections: &Connections, addr: SocketAddr) -> Result<usize, String> {
        let connection = connections.get(addr).await.map_err(|s| s.to_string())?;
        let ours = self.snapshot().await?;
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
        send.write_chunk(encode_members(&ours)?)
            .await
            .map_err(|e| e.to_string())?;
        let _ = send.finish();
        let decoder = FrameDecoder::new(MAX_SYNC_MESSAGE);
        let mut buffer = BytesMut::new();
        let frame = tokio::time::timeout(
            Duration::from_secs(3),
            read_frame(&mut recv, &decoder, &mut buffer),
        )
        .await
        .map_err(|_| "no answer within 3 s".to_owned())?
        .map_err(|error| error.to_status().to_string())?
        .ok_or("the seed closed the stream without an answer")?;
        if frame.kind != FrameKind::Gossip {
            return Err(format!("the seed answered a {:?} frame", frame.kind));
        }
        let theirs = decode_members(&frame.body)?;
        let count = theirs.len();
        let _ = self.inputs.send(Input::Apply(theirs));
        Ok(count)
    }

    /// Serves a full-state exchange opened by a joining peer.
    pub(crate) async fn serve_exchange(
        &self,
        frame: Frame,
        mut send: SendStream,
        recv: RecvStream,
    ) {
        drop(recv);
        let theirs = match decode_members(&frame.body) {
            Ok(members) => members,
            Err(error) => {
                debug!(%error, "dropped a malformed membership exchange");
                let _ = send.reset(crate::transport::error_code::PROTOCOL);
                return;
            }
        };
        let _ = self.inputs.send(Input::Apply(theirs));
        let Ok(ours) = self.snapshot().await else {
            return;
        };
        if let Ok(reply) = encode_members(&ours) {
            if send.write_chunk(reply).await.is_ok() {
                let _ = send.finish();
            }
        }
    }

    async fn snapshot(&self) -> Result<Vec<Member<MemberId>>, String> {
        let (reply, answer) = oneshot::channel();
        self.inputs
            .send(Input::Snapshot(reply))
            .map_err(|_| "membership stopped".to_owned())?;
        answer.await.map_err(|_| "membership stopped".to_owned())
    }

    /// Gossips that this node is draining; resolves once the new identity is in the view.
    pub(crate) async fn set_draining(&self) {
        let (reply, answer) = oneshot::channel();
        if self.inputs.send(Input::SetDraining(reply)).is_ok() {
            let _ = answer.await;
        }
    }

    /// Announces that this node leaves the cluster.
    pub(crate) async fn leave(&self) {
        let (reply, answer) = oneshot::channel();
        if self.inputs.send(Input::Leave(reply)).is_ok() {
            let _ = answer.await;
        }
    }
}

fn encode_members(members: &[Member<MemberId>]) -> Result<Bytes, String> {
    let body = rmp_serde::to_vec_named(members).map_err(|e| e.to_string())?;
    let mut buffer = BytesMut::with_capacity(body.len() + 5);
    encode_frame(FrameKind::Gossip, &body, &mut buffer);
    Ok(buffer.freeze())
}

fn decode_members(body: &[u8]) -> Result<Vec<Member<MemberId>>, String> {
    crate::codec::from_slice_bounded(body, crate::codec::MAX_HEADER_DEPTH)
        .map_err(|error| format!("malformed member list: {error}"))
}

fn local_view(local: &MemberId, mut members: Vec<MemberView>) -> View {
    members.push(MemberView {
        id: local.clone(),
        liveness: Liveness::Alive,
        local: true,
    });
    View::new(members)
}

/// What foca asked for while handling one input.
#[derive(Default)]
struct Outbox {
    sends: Vec<(SocketAddr, Bytes)>,
    timers: Vec<(Timer<MemberId>, Duration)>,
    downs: Vec<MemberId>,
}

impl foca::Runtime<MemberId> for Outbox {
    fn notify(&mut self, notification: Notification<'_, MemberId>) {
        match notification {
            Notification::MemberUp(id) => info!(member = %id.name, addr = %id.addr, "member up"),
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

struct Agent {
    foca: Swim,
    /// Set once the node left: it then ignores the cluster instead of rejoining it.
    left: bool,
    inputs: mpsc::UnboundedReceiver<Input>,
    timers: DelayQueue<Timer<MemberId>>,
    connections: Connections,
    view: watch::Sender<Arc<View>>,
}

impl Agent {
    async fn run(mut self) {
        let mut outbox = Outbox::default();
        loop {
            tokio::select! {
                input = self.inputs.recv() => match input {
                    Some(input) => self.handle(input, &mut outbox),
                    None => return,
                },
                Some(expired) = self.timers.next() => {
                    if self.left {
                        continue;
                    }
                    if let Err(error) = self.foca.handle_timer(expired.into_inner(), &mut outbox) {
                        debug!(%error, "gossip timer failed");
                    }
                }
            }
            self.flush(&mut outbox);
        }
    }

    fn handle(&mut self, input: Input, outbox: &mut Outbox) {
        let cluster = self.foca.identity().cluster.clone();
        if self.left {
            // A node that left answers nothing: it must not be declared back alive.
            match input {
                Input::Snapshot(reply) => drop(reply),
                Input::SetDraining(reply) | Input::Leave(reply) => {
                    let _ = reply.send(());
                }
                Input::Datagram(_) | Input::Announce(_) | Input::Apply(_) => {}
            }
            return;
        }
        match input {
            Input::Datagram(data) => {
                // Defence in depth: TLS already keeps other clusters out.
                let mut peek = &data[..];
                match foca::Codec::decode_header(&mut MsgPackCodec, &mut peek) {
                    Ok(header) if header.src.cluster == cluster => {}
                    Ok(header) => {
                        debug!(from = %header.src.cluster, "dropped gossip of another cluster");
                        return;
                    }
                    Err(error) => {
                        debug!(%error, "dropped a malformed gossip datagram");
                        return;
                    }
                }
                if let Err(error) = self.foca.handle_data(&data, outbox) {
                    debug!(%error, "gossip datagram rejected");
                }
            }
            Input::Announce(addr) => {
                if let Err(error) = self.foca.announce(MemberId::seed(addr, &cluster), outbox) {
                    debug!(%error, "announce failed");
                }
            }
            Input::Apply(members) => {
                let own = self.foca.identity().addr;
                // A death is learnt by probing, not from a peer that may itself have been cut
                // off: `Down` entries of a member list are ignored.
                let members = members.into_iter().filter(|member| {
                    member.id().cluster == cluster
                        && member.id().addr != own
                        && member.state() != State::Down
                });
                if let Err(error) = self.foca.apply_many(members, true, outbox) {
                    debug!(%error, "could not apply a member list");
                }
            }
            Input::Snapshot(reply) => {
                let mut members: Vec<Member<MemberId>> = self
                    .foca
                    .iter_membership_state()
                    .filter(|member| member.state() != State::Down)
                    .cloned()
                    .collect();
                members.push(Member::alive(self.foca.identity().clone()));
                let _ = reply.send(members);
            }
            Input::SetDraining(reply) => {
                let mut identity = self.foca.identity().clone();
                if !identity.draining {
                    identity.draining = true;
                    identity.generation = identity.generation.wrapping_add(1);
                    if let Err(error) = self.foca.change_identity(identity, &mut *outbox) {
                        warn!(%error, "could not gossip the draining state");
                    }
                }
                self.flush(outbox);
                let _ = reply.send(());
            }
            Input::Leave(reply) => {
                if let Err(error) = self.foca.leave_cluster(&mut *outbox) {
                    debug!(%error, "leave failed");
                }
                self.flush(outbox);
                self.left = true;
                let _ = reply.send(());
            }
        }
    }

    fn flush(&mut self, outbox: &mut Outbox) {
        for (addr, data) in outbox.sends.drain(..) {
            self.send_datagram(addr, data);
        }
        for (timer, after) in outbox.timers.drain(..) {
            self.timers.insert(timer, after);
        }
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
        let view = local_view(self.foca.identity(), members);
        self.close_connections_of_restarted_members(&view);
        for down in outbox.downs.drain(..) {
            // A newer identity at the same address (a restart) keeps the connection.
            if view.member_at(down.addr).is_none() {
                self.connections.close(down.addr);
            }
        }
        self.view.send_if_modified(|current| {
            if **current == view {
                false
            } else {
                *current = Arc::new(view);
                true
            }
        });
    }

    /// A member that comes back at the same address with a generation that is not one step
    /// on (a step is a draining or renewed identity of the same process) is a new process: a
    /// pooled connection established before it started leads to the dead one.
    fn close_connections_of_restarted_members(&self, view: &View) {
        let previous = self.view.borrow().clone();
        for member in view.members().iter().filter(|member| !member.local) {
            let Some(before) = previous.member_at(member.id.addr) else {
                continue;
            };
            let (old, new) = (before.id.generation, member.id.generation);
            if new > old.saturating_add(1) {
                let started = std::time::UNIX_EPOCH + Duration::from_micros(new);
                self.connections.close_if_older(member.id.addr, started);
            }
        }
    }

    fn send_datagram(&self, addr: SocketAddr, data: Bytes) {
        if let Some(connection) = self.connections.live(addr) {
            let _ = connection.send_datagram(data);
            return;
        }
        let connections = self.connections.clone();
        tokio::spawn(async move {
            if let Ok(connection) = connections.get(addr).await {
                let _ = connection.send_datagram(data);
            }
        });
    }
}
