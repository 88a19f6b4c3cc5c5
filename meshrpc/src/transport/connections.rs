//! The pool of outgoing connections: one persistent QUIC connection per peer address, opened on
//! first use, shared by every call to that peer, and replaced when it dies.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use quinn::{Connection, Endpoint};
use tokio::sync::OnceCell;

use crate::status::{Code, Status};

/// How long a connection attempt may take before the peer is reported unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A pooled connection and when it was established.
#[derive(Debug, Clone)]
struct Pooled {
    connection: Connection,
    since: SystemTime,
}

impl Pooled {
    fn new(connection: Connection) -> Pooled {
        Pooled {
            connection,
            since: SystemTime::now(),
        }
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
    slots: Arc<Mutex<HashMap<SocketAddr, Slot>>>,
    /// Live connections that a newer one to the same address replaced in `slots`; kept so a
    /// restart of the peer can close them (calls on them would wait for their deadline).
    retired: Arc<Mutex<Vec<(SocketAddr, Pooled)>>>,
    on_connect: Arc<OnceLock<ConnectHook>>,
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
    pub fn new(endpoint: Endpoint, server_name: &str) -> Connections {
        Connections {
            endpoint,
            server_name: server_name.into(),
            slots: Arc::default(),
            retired: Arc::default(),
            on_connect: Arc::default(),
        }
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
                        crate::lock(&self.retired).push((addr, current.clone()));
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Slot>> {
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
