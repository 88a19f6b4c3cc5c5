//! The pool of outgoing connections: one persistent QUIC connection per peer address, opened on
//! first use, shared by every call to that peer, and replaced when it dies.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use quinn::{Connection, Endpoint};
use tokio::sync::OnceCell;

use crate::status::{Code, Status};

/// How long a connection attempt may take before the peer is reported unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

type Slot = Arc<OnceCell<Connection>>;

/// Called for every new connection, outgoing or adopted.
pub type ConnectHook = Arc<dyn Fn(&Connection) + Send + Sync>;

/// Outgoing connections by peer address.
#[derive(Clone)]
pub struct Connections {
    endpoint: Endpoint,
    server_name: Arc<str>,
    slots: Arc<Mutex<HashMap<SocketAddr, Slot>>>,
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
        let connection = slots.get(&addr)?.get()?;
        connection
            .close_reason()
            .is_none()
            .then(|| connection.clone())
    }

    /// Pools a connection the peer opened to us, so calls back to it reuse it instead of
    /// opening a second one. A live pooled connection is kept.
    pub fn adopt(&self, connection: &Connection) {
        let addr = connection.remote_address();
        let mut slots = self.lock();
        let slot = slots.entry(addr).or_default();
        let usable = slot.get().is_some_and(|c| c.close_reason().is_none());
        if !usable && slot.get().is_none() {
            // Only an empty slot can be filled; a dead one is replaced.
            let _ = slot.set(connection.clone());
        } else if !usable {
            *slot = Arc::new(OnceCell::new_with(Some(connection.clone())));
        }
    }

    /// The endpoint connections are made from.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The live connection to `addr`, connecting first if there is none. Concurrent callers
    /// share one connection attempt. A failure is a refusal: nothing was sent.
    pub async fn get(&self, addr: SocketAddr) -> Result<Connection, Status> {
        let slot = self.slot(addr);
        let result = slot.get_or_try_init(|| self.connect(addr)).await.cloned();
        match result {
            Ok(connection) if connection.close_reason().is_none() => Ok(connection),
            Ok(_) => {
                // The pooled connection died; forget it and connect afresh once.
                self.forget(addr, &slot);
                let slot = self.slot(addr);
                let connection = slot.get_or_try_init(|| self.connect(addr)).await.cloned();
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
        if let Some(connection) = slot.as_ref().and_then(|slot| slot.get()) {
            connection.close(super::error_code::SHUTDOWN, b"closed");
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
        // A poisoned lock only means another thread panicked mid-insert; the map is still sound.
        self.slots
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
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

    async fn connect(&self, addr: SocketAddr) -> Result<Connection, Status> {
        let refused = |what: String| Status::refused(Code::Unavailable, what);
        let connecting = self
            .endpoint
            .connect(addr, &self.server_name)
            .map_err(|error| refused(format!("cannot connect to {addr}: {error}")))?;
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(connection)) => {
                if let Some(hook) = self.on_connect.get() {
                    hook(&connection);
                }
                Ok(connection)
            }
            Ok(Err(error)) => Err(refused(format!("cannot connect to {addr}: {error}"))),
            Err(_) => Err(refused(format!(
                "cannot connect to {addr}: no answer within {CONNECT_TIMEOUT:?}"
            ))),
        }
    }
}
