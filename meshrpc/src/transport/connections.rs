//! The pool of outgoing connections: one persistent QUIC connection per peer address, opened on
//! first use, shared by every call to that peer, and replaced when it dies.
//!
//! Membership probes and gossips every member in turn over this pool; so that a node does not
//! end up holding a connection to every member of the mesh, a connection that never carried a
//! stream (no call either way, only membership datagrams) is closed once membership has not
//! used it for [`GOSSIP_IDLE`], and reopened by the next probe. Connections that carried a call
//! stay. And a peer address holds at most [`MAX_PER_PEER`] live connections (the pooled one
//! and those it replaced, which a restarting or redialling peer leaves behind).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use quinn::{Connection, Endpoint};
use tokio::sync::OnceCell;

use crate::AddrMap;
use crate::status::{Code, Status};

/// How long a connection attempt may take before the peer is reported unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a connection that carried only membership datagrams stays open after membership
/// last used it. Longer than a probe round of a small mesh (members × 500 ms), so meshes of up
/// to ~30 members keep theirs.
pub const GOSSIP_IDLE: Duration = Duration::from_secs(15);

/// How often the pool looks for idle gossip-only connections.
const REAP_EVERY: Duration = Duration::from_secs(5);

/// The most live connections kept per peer address: the pooled one and the ones it replaced.
pub const MAX_PER_PEER: usize = 4;

/// A pooled connection, when it was established and when membership last used it.
#[derive(Debug, Clone)]
struct Pooled {
    connection: Connection,
    since: SystemTime,
    gossip: Arc<Mutex<Instant>>,
}

impl Pooled {
    fn new(connection: Connection) -> Pooled {
        Pooled {
            connection,
            since: SystemTime::now(),
            gossip: Arc::new(Mutex::new(Instant::now())),
        }
    }

    /// Records that membership sends on it.
    fn touch(&self) {
        *crate::lock(&self.gossip) = Instant::now();
    }

    /// Whether it never carried a stream (only datagrams) and membership has not used it for
    /// `idle`.
    fn idle_gossip_only(&self, idle: Duration) -> bool {
        let stats = self.connection.stats();
        stats.frame_tx.stream == 0
            && stats.frame_rx.stream == 0
            && crate::lock(&self.gossip).elapsed() >= idle
    }
}

type Slot = Arc<OnceCell<Pooled>>;

/// Called for every new connection, outgoing or adopted.
pub type ConnectHook = Arc<dyn Fn(&Connection) + Send + Sync>;

/// Outgoing connections by peer address.
#[derive(Clone)]
pub struct Connections {
    endpoint: Endpoint,
    server_name: Arc<str>,
    slots: Arc<Mutex<AddrMap<Slot>>>,
    /// Live connections that a newer one to the same address replaced in `slots`; kept so a
    /// restart of the peer can close them (calls on them would wait for their deadline).
    retired: Arc<Mutex<Vec<(SocketAddr, Pooled)>>>,
    on_connect: Arc<OnceLock<ConnectHook>>,
    /// See [`GOSSIP_IDLE`].
    gossip_idle: Arc<Mutex<Duration>>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("server_name", &self.server_name)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl Connections {
    /// A pool that connects through `endpoint`, expecting peers' certificates to carry
    /// `server_name` (the cluster's name, see [`crate::tls::cluster_server_name`]).
    ///
    /// Inside a tokio runtime, a task closes idle gossip-only connections every few seconds
    /// (see [`Connections::close_idle_gossip`]) for as long as the pool lives.
    pub fn new(endpoint: Endpoint, server_name: &str) -> Connections {
        let pool = Connections {
            endpoint,
            server_name: server_name.into(),
            slots: Arc::default(),
            retired: Arc::default(),
            on_connect: Arc::default(),
            gossip_idle: Arc::new(Mutex::new(GOSSIP_IDLE)),
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let slots = Arc::downgrade(&pool.slots);
            let weak = WeakPool {
                slots,
                retired: Arc::downgrade(&pool.retired),
                gossip_idle: pool.gossip_idle.clone(),
            };
            runtime.spawn(async move {
                let mut ticks = tokio::time::interval(REAP_EVERY);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    if !weak.close_idle_gossip() {
                        return;
                    }
                }
            });
        }
        pool
    }

    /// Sets how long gossip-only connections stay open after membership last used them
    /// ([`GOSSIP_IDLE`] by default).
    pub fn set_gossip_idle(&self, idle: Duration) {
        *crate::lock(&self.gossip_idle) = idle;
    }

    /// Closes and forgets the pooled connections that never carried a stream and that
    /// membership has not used for the gossip idle time; returns how many. The pool does this
    /// by itself every few seconds.
    pub fn close_idle_gossip(&self) -> usize {
        let idle = *crate::lock(&self.gossip_idle);
        close_idle_gossip(&self.slots, idle)
    }

    /// The pooled connection to `addr` for membership: as [`Connections::live`], and records
    /// the use, which keeps a gossip-only connection open for the gossip idle time.
    pub fn live_for_gossip(&self, addr: SocketAddr) -> Option<Connection> {
        let slots = self.lock();
        let pooled = slots.get(&addr)?.get()?;
        pooled.touch();
        let connection = &pooled.connection;
        connection
            .close_reason()
            .is_none()
            .then(|| connection.clone())
    }

    /// [`Connections::get`] for membership: connects if needed and records the use.
    pub async fn get_for_gossip(&self, addr: SocketAddr) -> Result<Connection, Status> {
        let connection = self.get(addr).await?;
        if let Some(pooled) = self.lock().get(&addr).and_then(|slot| slot.get()) {
            pooled.touch();
        }
        Ok(connection)
    }

    /// How many live connections the pool holds to `addr` (the pooled one and those it
    /// replaced), at most [`MAX_PER_PEER`].
    pub fn live_to(&self, addr: SocketAddr) -> usize {
        let pooled = self.live(addr).map_or(0, |_| 1);
        let retired = crate::lock(&self.retired)
            .iter()
            .filter(|(at, pooled)| *at == addr && pooled.connection.close_reason().is_none())
            .count();
        pooled + retired
    }

    /// Runs `hook` on every connection this pool opens or adopts (set once; later calls are
    /// ignored).
    pub fn set_on_connect(&self, hook: ConnectHook) {
        let _ = self.on_connect.set(hook);
    }

    /// The pooled connection to `addr` if it is established and open.
    pub fn live(&self, addr: SocketAddr) -> Option<Connection> {
        let slots = self.lock();
        let connection = &slots.get(&addr)?.get()?.connection;
        connection
            .close_reason()
            .is_none()
            .then(|| connection.clone())
    }

    /// Pools a connection the peer opened to us, so calls back to it reuse it instead of
    /// opening a second one.
    pub fn adopt(&self, connection: &Connection) {
        let addr = connection.remote_address();
        {
            let mut slots = self.lock();
            let slot = slots.entry(addr).or_default();
            match slot.get() {
                // Only an empty slot can be filled in place (one being connected is left be).
                None => {
                    let _ = slot.set(Pooled::new(connection.clone()));
                }
                Some(current) if current.connection.stable_id() == connection.stable_id() => {}
                // A new connection from a known address: the peer restarted, or both dialled
                // at once; the newest one is the one known to reach the peer's process.
                Some(current) => {
                    if current.connection.close_reason().is_none() {
                        let mut retired = crate::lock(&self.retired);
                        retired.push((addr, current.clone()));
                        cap_retired(&mut retired, addr);
                    }
                    *slot = Arc::new(OnceCell::new_with(Some(Pooled::new(connection.clone()))));
                }
            }
        }
        self.forget_when_closed(addr, connection.clone());
    }

    /// Closes and forgets the pooled connection to `addr` if it was established before `time`
    /// (a peer process that started at `time` cannot be at its other end).
    pub fn close_if_older(&self, addr: SocketAddr, time: SystemTime) {
        let stale = {
            let mut slots = self.lock();
            let stale = slots
                .get(&addr)
                .and_then(|slot| slot.get())
                .is_some_and(|pooled| pooled.since < time);
            if stale { slots.remove(&addr) } else { None }
        };
        if let Some(pooled) = stale.as_ref().and_then(|slot| slot.get()) {
            pooled
                .connection
                .close(super::error_code::SHUTDOWN, b"peer restarted");
        }
        let mut retired = crate::lock(&self.retired);
        retired.retain(|(at, pooled)| {
            let stale = *at == addr && pooled.since < time;
            if stale {
                pooled
                    .connection
                    .close(super::error_code::SHUTDOWN, b"peer restarted");
            }
            !stale
        });
    }

    /// Removes the slot of `connection` once it closes, so connections of departed peers and
    /// one-off clients do not accumulate.
    fn forget_when_closed(&self, addr: SocketAddr, connection: Connection) {
        let slots = Arc::downgrade(&self.slots);
        let retired = Arc::downgrade(&self.retired);
        tokio::spawn(async move {
            connection.closed().await;
            if let Some(retired) = retired.upgrade() {
                crate::lock(&retired)
                    .retain(|(_, pooled)| pooled.connection.stable_id() != connection.stable_id());
            }
            let Some(slots) = slots.upgrade() else { return };
            let mut slots = crate::lock(&slots);
            let holds_it = slots
                .get(&addr)
                .and_then(|slot| slot.get())
                .is_some_and(|pooled| pooled.connection.stable_id() == connection.stable_id());
            if holds_it {
                slots.remove(&addr);
            }
        });
    }

    /// The live connection to `addr`, connecting first if there is none. Concurrent callers
    /// share one connection attempt. A failure is a refusal: nothing was sent.
    pub async fn get(&self, addr: SocketAddr) -> Result<Connection, Status> {
        let slot = self.slot(addr);
        let result = slot
            .get_or_try_init(|| self.connect(addr))
            .await
            .map(|pooled| pooled.connection.clone());
        match result {
            Ok(connection) if connection.close_reason().is_none() => Ok(connection),
            Ok(_) => {
                // The pooled connection died; forget it and connect afresh once.
                self.forget(addr, &slot);
                let slot = self.slot(addr);
                let connection = slot
                    .get_or_try_init(|| self.connect(addr))
                    .await
                    .map(|pooled| pooled.connection.clone());
                if connection.is_err() {
                    self.forget(addr, &slot);
                }
                connection
            }
            Err(status) => {
                self.forget(addr, &slot);
                Err(status)
            }
        }
    }

    /// Closes and forgets the connection to `addr`, if any.
    pub fn close(&self, addr: SocketAddr) {
        let slot = self.lock().remove(&addr);
        if let Some(pooled) = slot.as_ref().and_then(|slot| slot.get()) {
            pooled
                .connection
                .close(super::error_code::SHUTDOWN, b"closed");
        }
    }

    /// The number of pooled connections (live or not yet pruned).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AddrMap<Slot>> {
        crate::lock(&self.slots)
    }

    fn slot(&self, addr: SocketAddr) -> Slot {
        self.lock().entry(addr).or_default().clone()
    }

    fn forget(&self, addr: SocketAddr, slot: &Slot) {
        let mut slots = self.lock();
        if slots
            .get(&addr)
            .is_some_and(|current| Arc::ptr_eq(current, slot))
        {
            slots.remove(&addr);
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Pooled, Status> {
        let refused = |what: String| Status::refused(Code::Unavailable, what);
        let connect = || self.endpoint.connect(addr, &self.server_name);
        // quinn runs the connection's driver in the span current when it connects: the span of
        // the call that happened to open the connection would then stay open (and unexported)
        // for as long as the connection lives.
        #[cfg(feature = "otel")]
        let connect = || crate::telemetry::outside_spans(connect);
        let connecting =
            connect().map_err(|error| refused(format!("cannot connect to {addr}: {error}")))?;
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(connection)) => {
                if let Some(hook) = self.on_connect.get() {
                    hook(&connection);
                }
                self.forget_when_closed(addr, connection.clone());
                Ok(Pooled::new(connection))
            }
            Ok(Err(error)) => Err(refused(format!("cannot connect to {addr}: {error}"))),
            Err(_) => Err(refused(format!(
                "cannot connect to {addr}: no answer within {CONNECT_TIMEOUT:?}"
            ))),
        }
    }
}

/// The pool's state as its reaper task holds it: the task ends once the pool is dropped.
struct WeakPool {
    slots: std::sync::Weak<Mutex<AddrMap<Slot>>>,
    retired: std::sync::Weak<Mutex<Vec<(SocketAddr, Pooled)>>>,
    gossip_idle: Arc<Mutex<Duration>>,
}

impl WeakPool {
    /// Closes idle gossip-only connections; `false` once the pool is gone.
    fn close_idle_gossip(&self) -> bool {
        let (Some(slots), Some(_retired)) = (self.slots.upgrade(), self.retired.upgrade()) else {
            return false;
        };
        let idle = *crate::lock(&self.gossip_idle);
        close_idle_gossip(&slots, idle);
        true
    }
}

/// Closes and removes the pooled connections of `slots` that never carried a stream and that
/// membership has not used for `idle`; returns how many.
fn close_idle_gossip(slots: &Mutex<AddrMap<Slot>>, idle: Duration) -> usize {
    let idle: Vec<Pooled> = {
        let mut slots = crate::lock(slots);
        let addrs: Vec<SocketAddr> = slots
            .iter()
            .filter(|(_, slot)| {
                slot.get()
                    .is_some_and(|pooled| pooled.idle_gossip_only(idle))
            })
            .map(|(addr, _)| *addr)
            .collect();
        addrs
            .iter()
            .filter_map(|addr| slots.remove(addr))
            .filter_map(|slot| slot.get().cloned())
            .collect()
    };
    for pooled in &idle {
        pooled
            .connection
            .close(super::error_code::SHUTDOWN, b"idle membership connection");
    }
    idle.len()
}

/// Keeps at most `MAX_PER_PEER - 1` live replaced connections to `addr` (the pooled one is the
/// last): the oldest go first. Closed ones are dropped from the list.
fn cap_retired(retired: &mut Vec<(SocketAddr, Pooled)>, addr: SocketAddr) {
    retired.retain(|(_, pooled)| pooled.connection.close_reason().is_none());
    let mut excess = retired
        .iter()
        .filter(|(at, _)| *at == addr)
        .count()
        .saturating_sub(MAX_PER_PEER - 1);
    retired.retain(|(at, pooled)| {
        if excess > 0 && *at == addr {
            excess -= 1;
            pooled.connection.close(
                super::error_code::SHUTDOWN,
                b"too many connections from this peer",
            );
            return false;
        }
        true
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use quinn::crypto::rustls::QuicClientConfig;

    use super::*;
    use crate::Limits;
    use crate::tls::TlsMaterial;
    use crate::transport::endpoint::build_endpoint;

    /// A node endpoint on loopback whose accepted connections are handed to `on_accept`, and
    /// which reads (and drops) every stream opened to it.
    fn node(
        dir: &std::path::Path,
        name: &str,
        on_accept: impl Fn(Connection) + Send + 'static,
    ) -> Endpoint {
        let material = TlsMaterial::dev(dir, "test", name).expect("mint");
        let endpoint = build_endpoint(
            "127.0.0.1:0".parse().expect("addr"),
            &material,
            "test",
            &Limits::default(),
        )
        .expect("endpoint");
        let accepting = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                let Ok(connection) = incoming.await else {
                    continue;
                };
                on_accept(connection.clone());
                tokio::spawn(async move {
                    while let Ok((_send, mut recv)) = connection.accept_bi().await {
                        let _ = recv.read_to_end(1024).await;
                    }
                });
            }
        });
        endpoint
    }

    #[tokio::test]
    async fn a_connection_that_carried_only_gossip_is_closed_when_idle_and_one_with_a_call_stays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let gossip_peer = node(dir.path(), "gossip", |_| {});
        let called_peer = node(dir.path(), "called", |_| {});
        let caller = node(dir.path(), "caller", |_| {});
        let pool = Connections::new(caller.clone(), "test.meshrpc");
        let gossip_addr = gossip_peer.local_addr().expect("addr");
        let called_addr = called_peer.local_addr().expect("addr");

        let gossip = pool.get_for_gossip(gossip_addr).await.expect("connects");
        gossip
            .send_datagram(bytes::Bytes::from_static(b"probe"))
            .expect("datagram");
        let called = pool.get_for_gossip(called_addr).await.expect("connects");
        called
            .send_datagram(bytes::Bytes::from_static(b"probe"))
            .expect("datagram");
        // A call: a stream on the connection membership opened.
        let (mut send, _recv) = pool
            .get(called_addr)
            .await
            .expect("pooled")
            .open_bi()
            .await
            .expect("stream");
        send.write_all(b"call").await.expect("write");
        send.finish().expect("finish");
        tokio::time::sleep(Duration::from_millis(100)).await;

        pool.set_gossip_idle(Duration::from_secs(60));
        assert_eq!(pool.close_idle_gossip(), 0, "used just now");
        pool.set_gossip_idle(Duration::from_millis(50));
        assert!(pool.live_for_gossip(gossip_addr).is_some(), "a use");
        assert_eq!(pool.close_idle_gossip(), 0, "the use counts");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(pool.close_idle_gossip(), 1);
        assert!(gossip.close_reason().is_some(), "closed");
        assert!(pool.live(gossip_addr).is_none());
        assert!(
            pool.live(called_addr).is_some(),
            "the connection of a call stays"
        );
        assert_eq!(pool.len(), 1);
        // The next probe reconnects.
        let again = pool.get_for_gossip(gossip_addr).await.expect("reconnects");
        assert_ne!(again.stable_id(), gossip.stable_id());
    }

    #[tokio::test]
    async fn a_peer_that_redials_keeps_at_most_four_live_connections() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
        let server = node(dir.path(), "server", move |connection| {
            let _ = accepted_tx.send(connection);
        });
        let pool = Connections::new(server.clone(), "test.meshrpc");
        let addr = server.local_addr().expect("addr");

        // One peer process (one address) dialling ten times, as a peer whose connections keep
        // breaking on its side would.
        let material = TlsMaterial::dev(dir.path(), "test", "peer").expect("mint");
        let tls = QuicClientConfig::try_from(material.client_config().expect("client config"))
            .expect("quic client config");
        let mut peer = Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
        peer.set_default_client_config(quinn::ClientConfig::new(Arc::new(tls)));
        let mut dialled = Vec::new();
        let mut adopted = Vec::new();
        for _ in 0..10 {
            let connection = peer
                .connect(addr, "test.meshrpc")
                .expect("connect")
                .await
                .expect("handshake");
            dialled.push(connection);
            let incoming = accepted.recv().await.expect("accepted");
            pool.adopt(&incoming);
            adopted.push(incoming);
        }
        let peer_addr = peer.local_addr().expect("addr");
        assert_eq!(pool.live_to(peer_addr), MAX_PER_PEER);
        let open = adopted
            .iter()
            .filter(|c| c.close_reason().is_none())
            .count();
        assert_eq!(open, MAX_PER_PEER, "the oldest were closed");
        assert!(
            adopted[9].close_reason().is_none(),
            "the newest is the pooled one"
        );
        assert!(adopted[0].close_reason().is_some(), "the oldest went first");
    }
}
