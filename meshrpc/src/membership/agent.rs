//! The membership agent: the async shell around the I/O-free [`Core`]. One task owns the core
//! and carries out its effects — datagrams out over pooled connections, datagrams in from every
//! connection, tokio timers, seed joins and full-state syncs on streams — and publishes the
//! core's [`View`] whenever the mesh changes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use foca::Member;
use futures_util::StreamExt;
use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::time::DelayQueue;
use tracing::{debug, info};

use super::core::{
    Core, CoreTimer, Effects, MAX_SYNC_MESSAGE, decode_members, encode_members, swim_config,
};
use super::exchange_error::ExchangeError;
use super::identity::MemberId;
use super::view::View;
use crate::transport::connections::Connections;
use crate::transport::io::read_frame;
use crate::wire::{Frame, FrameDecoder, FrameKind};

/// How long a joining node waits for a seed's member list.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(3);

enum Input {
    Datagram(Bytes),
    Announce(SocketAddr),
    Unresponsive(SocketAddr),
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
    reported: Arc<ReportFilter>,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Input::Datagram(_) => "Datagram",
            Input::Announce(_) => "Announce",
            Input::Unresponsive(_) => "Unresponsive",
            Input::Apply(_) => "Apply",
            Input::Snapshot(_) => "Snapshot",
            Input::SetDraining(_) => "SetDraining",
            Input::Leave(_) => "Leave",
        })
    }
}

impl Membership {
    /// Starts the agent for the local identity `local`; it sends over `connections`.
    pub(crate) fn start(local: MemberId, connections: Connections) -> Membership {
        let (inputs, receiver) = mpsc::unbounded_channel();
        let (cluster, local_addr) = (local.cluster.as_str().into(), local.addr);
        let mut core = Core::new(local, swim_config(), rand::make_rng());
        let (view_sender, view) = watch::channel(core.view().clone());
        let membership = Membership {
            inputs,
            view,
            cluster,
            local_addr,
            reported: Arc::default(),
        };
        let agent = Agent {
            core,
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

    /// Reports that the member at `addr` stopped answering calls (they time out): membership
    /// pings it at once instead of waiting for its turn in the probe round, and suspects it if
    /// it does not answer; the member refutes the suspicion if it is alive, and is declared
    /// down only when the suspicion runs out, as for any failed probe. Never declares a member
    /// dead by itself.
    ///
    /// Cheap to call on every timed-out call: each member is acted on at most once per cool-down
    /// (5 s), so callers cannot flood the member or the mesh; addresses that are not members
    /// are ignored.
    pub fn report_unresponsive(&self, addr: SocketAddr) {
        if self.reported.admit(addr) {
            let _ = self.inputs.send(Input::Unresponsive(addr));
        }
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

    async fn exchange(
        &self,
        connections: &Connections,
        addr: SocketAddr,
    ) -> Result<usize, ExchangeError> {
        let connection = connections
            .get(addr)
            .await
            .map_err(ExchangeError::Connect)?;
        let ours = self.snapshot().await?;
        let (mut send, mut recv) = connection.open_bi().await?;
        send.write_chunk(encode_members(&ours)?).await?;
        let _ = send.finish();
        let decoder = FrameDecoder::new(MAX_SYNC_MESSAGE);
        let mut buffer = crate::wire::FrameBuffer::default();
        let frame = tokio::time::timeout(
            EXCHANGE_TIMEOUT,
            read_frame(&mut recv, &decoder, &mut buffer),
        )
        .await
        .map_err(|_| ExchangeError::Timeout(EXCHANGE_TIMEOUT))?
        .map_err(|error| ExchangeError::Read(error.to_status()))?
        .ok_or(ExchangeError::NoAnswer)?;
        if frame.kind != FrameKind::Gossip {
            return Err(ExchangeError::WrongFrame(frame.kind));
        }
        let theirs = decode_members(&frame.body)?;
        let count = theirs.len();
        let _ = self.inputs.send(Input::Apply(theirs));
        Ok(count)
    }

    /// The handler of streams that open with a `GOSSIP` frame: full-state exchanges opened by
    /// joining peers.
    pub(crate) fn exchange_handler(&self) -> crate::server::StreamHandler {
        let membership = self.clone();
        std::sync::Arc::new(move |_connection, frame, send, recv, _read_ahead| {
            let membership = membership.clone();
            Box::pin(async move { membership.serve_exchange(frame, send, recv).await })
        })
    }

    /// Serves a stream that opened with a `GOSSIP` frame: a membership packet too large for a
    /// datagram (its body is a foca header, a MessagePack map; nothing is answered), or a
    /// full-state exchange opened by a joining peer (a member list, an array).
    pub(crate) async fn serve_exchange(
        &self,
        frame: Frame,
        mut send: SendStream,
        recv: RecvStream,
    ) {
        drop(recv);
        if is_packet(&frame.body) {
            self.datagram(frame.body);
            let _ = send.finish();
            return;
        }
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

    async fn snapshot(&self) -> Result<Vec<Member<MemberId>>, ExchangeError> {
        let (reply, answer) = oneshot::channel();
        self.inputs
            .send(Input::Snapshot(reply))
            .map_err(|_| ExchangeError::Stopped)?;
        answer.await.map_err(|_| ExchangeError::Stopped)
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

struct Agent {
    core: Core,
    inputs: mpsc::UnboundedReceiver<Input>,
    timers: DelayQueue<CoreTimer>,
    connections: Connections,
    view: watch::Sender<Arc<View>>,
}

impl Agent {
    async fn run(mut self) {
        loop {
            let effects = tokio::select! {
                input = self.inputs.recv() => match input {
                    Some(input) => self.handle(input),
                    None => return,
                },
                Some(expired) = self.timers.next() => {
                    let late = tokio::time::Instant::now().saturating_duration_since(expired.deadline());
                    self.core.timer(expired.into_inner(), late)
                }
            };
            self.carry_out(effects);
        }
    }

    fn handle(&mut self, input: Input) -> Effects {
        match input {
            Input::Datagram(data) => self.core.datagram(&data),
            Input::Announce(addr) => self.core.announce(addr),
            Input::Unresponsive(addr) => self.core.report_unresponsive(addr),
            Input::Apply(members) => self.core.apply(members),
            Input::Snapshot(reply) => {
                // Once the node left, the reply is dropped: it answers no exchange.
                if let Some(members) = self.core.members() {
                    let _ = reply.send(members);
                }
                Effects::default()
            }
            Input::SetDraining(reply) => {
                let effects = self.core.set_draining();
                self.carry_out(effects);
                let _ = reply.send(());
                Effects::default()
            }
            Input::Leave(reply) => {
                let effects = self.core.leave();
                self.carry_out(effects);
                let _ = reply.send(());
                Effects::default()
            }
        }
    }

    fn carry_out(&mut self, effects: Effects) {
        for (addr, data) in effects.sends {
            self.send_datagram(addr, data);
        }
        for (timer, after) in effects.timers {
            self.timers.insert(timer, after);
        }
        for (addr, started) in effects.close_if_older {
            self.connections.close_if_older(addr, started);
        }
        for addr in effects.close {
            self.connections.close(addr);
        }
        if effects.view_changed {
            self.view.send_replace(self.core.view().clone());
        }
    }

    fn send_datagram(&self, addr: SocketAddr, data: Bytes) {
        if let Some(connection) = self.connections.live_for_gossip(addr)
            && fits_datagram(&connection, &data)
        {
            let _ = connection.send_datagram(data);
            return;
        }
        let connections = self.connections.clone();
        tokio::spawn(async move {
            if let Ok(connection) = connections.get_for_gossip(addr).await {
                if fits_datagram(&connection, &data) {
                    let _ = connection.send_datagram(data);
                } else {
                    send_on_stream(&connection, &data).await;
                }
            }
        });
    }
}

/// Whether `data` fits a datagram on `connection` (the path's MTU decides).
fn fits_datagram(connection: &Connection, data: &[u8]) -> bool {
    connection
        .max_datagram_size()
        .is_some_and(|limit| data.len() <= limit)
}

/// Sends a membership packet too large for a datagram on a stream of its own: one `GOSSIP`
/// frame holding the packet, then the end of the stream. Lost like a datagram if the stream
/// fails (membership retries by itself).
async fn send_on_stream(connection: &Connection, data: &[u8]) {
    let Ok((mut send, recv)) = connection.open_bi().await else {
        return;
    };
    drop(recv);
    let mut frame = BytesMut::with_capacity(data.len() + 5);
    crate::wire::encode_frame(FrameKind::Gossip, data, &mut frame);
    if send.write_chunk(frame.freeze()).await.is_ok() {
        let _ = send.finish();
    }
}

/// Whether a `GOSSIP` frame's body is a membership packet (a foca header: a MessagePack map)
/// rather than a member list (an array).
fn is_packet(body: &[u8]) -> bool {
    matches!(body.first(), Some(0x80..=0x8f | 0xde | 0xdf))
}

/// The handle's side of report rate-limiting: at most one report per address per
/// [`ReportFilter::WINDOW`] reaches the agent, so a caller reporting on every failed call does
/// not queue thousands of inputs. (The core rate-limits again, per member, over a longer
/// cool-down.)
#[derive(Debug, Default)]
struct ReportFilter {
    last: std::sync::Mutex<std::collections::HashMap<SocketAddr, std::time::Instant>>,
}

impl ReportFilter {
    const WINDOW: Duration = Duration::from_secs(1);
    /// More addresses than a view holds only if callers report non-members: the old ones go.
    const MAX_ADDRESSES: usize = 4096;

    fn admit(&self, addr: SocketAddr) -> bool {
        let now = std::time::Instant::now();
        let mut last = crate::lock(&self.last);
        if last
            .get(&addr)
            .is_some_and(|at| now.duration_since(*at) < Self::WINDOW)
        {
            return false;
        }
        if last.len() >= Self::MAX_ADDRESSES {
            last.retain(|_, at| now.duration_since(*at) < Self::WINDOW);
            if last.len() >= Self::MAX_ADDRESSES {
                return false;
            }
        }
        last.insert(addr, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_reporting_on_every_failure_reaches_the_agent_once_a_second_per_member() {
        let filter = ReportFilter::default();
        let member: SocketAddr = "127.0.0.1:7000".parse().expect("addr");
        let other: SocketAddr = "127.0.0.1:7001".parse().expect("addr");
        assert!(filter.admit(member));
        for _ in 0..10_000 {
            assert!(!filter.admit(member));
        }
        assert!(filter.admit(other), "another member is reported on its own");
        // Once the window passed, the next report goes through.
        crate::lock(&filter.last).insert(member, std::time::Instant::now() - ReportFilter::WINDOW);
        assert!(filter.admit(member));
    }

    #[test]
    fn reports_of_ever_new_addresses_hold_a_bounded_table() {
        let filter = ReportFilter::default();
        for port in 0..(ReportFilter::MAX_ADDRESSES as u16 + 100) {
            let _ = filter.admit(SocketAddr::from(([10, 0, 0, 1], port)));
        }
        assert!(crate::lock(&filter.last).len() <= ReportFilter::MAX_ADDRESSES);
    }
}
