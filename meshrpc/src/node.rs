//! A [`Node`]: one process's presence in the mesh. It owns the QUIC endpoint, serves the
//! services it publishes and hands out clients for the services of others.
//!
//! ```no_run
//! # async fn example(server: impl meshrpc::Dispatch) -> Result<(), meshrpc::NodeError> {
//! let node = meshrpc::Node::builder("greeter")
//!     .cluster("default")
//!     .listen("127.0.0.1:0".parse().expect("address"))
//!     .publish(server)
//!     .start()
//!     .await?;
//! println!("serving on {}", node.local_addr());
//! node.shutdown().await;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::info;

use crate::channel::Channel;
use crate::service::{Dispatch, ServiceClient};
use crate::tls::{self, TlsError, TlsMaterial};
use crate::transport::Limits;
use crate::transport::client::PeerService;
use crate::transport::connections::Connections;
use crate::transport::endpoint::{EndpointError, build_endpoint};
use crate::transport::error_code;
use crate::transport::server::Server;

/// The cluster joined when none is named.
pub const DEFAULT_CLUSTER: &str = "default";

/// How long [`Node::shutdown`] waits for calls in flight by default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// TLS material was missing or unusable.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// The endpoint could not be created.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// Two published services share a name.
    #[error("service `{0}` is published twice; publish each service once per node")]
    DuplicateService(String),
}

/// Where a node's certificates come from.
#[derive(Debug, Clone)]
enum TlsSource {
    /// The cluster's development CA in this state directory (minted on first use).
    Dev(Option<PathBuf>),
    /// Material supplied by the application.
    Material(TlsMaterial),
}

/// Configures and starts a [`Node`].
#[derive(Debug)]
#[must_use = "a builder does nothing until `start` is awaited"]
pub struct NodeBuilder {
    name: String,
    cluster: String,
    listen: SocketAddr,
    tls: TlsSource,
    limits: Limits,
    drain_timeout: Duration,
    services: Vec<Arc<dyn Dispatch>>,
}

impl std::fmt::Debug for dyn Dispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.spec().name)
    }
}

impl NodeBuilder {
    fn new(name: impl Into<String>) -> NodeBuilder {
        NodeBuilder {
            name: name.into(),
            cluster: DEFAULT_CLUSTER.to_owned(),
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            tls: TlsSource::Dev(None),
            limits: Limits::default(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            services: Vec::new(),
        }
    }

    /// The cluster to join (default `default`). Nodes of different clusters never talk.
    pub fn cluster(mut self, cluster: impl Into<String>) -> NodeBuilder {
        self.cluster = cluster.into();
        self
    }

    /// The UDP address to listen on (default `0.0.0.0:0`, any free port).
    pub fn listen(mut self, addr: SocketAddr) -> NodeBuilder {
        self.listen = addr;
        self
    }

    /// Uses this TLS material instead of the development CA.
    pub fn tls(mut self, material: TlsMaterial) -> NodeBuilder {
        self.tls = TlsSource::Material(material);
        self
    }

    /// Keeps the development CA in `dir` instead of [`tls::default_state_dir`].
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> NodeBuilder {
        self.tls = TlsSource::Dev(Some(dir.into()));
        self
    }

    /// Replaces the default limits.
    pub fn limits(mut self, limits: Limits) -> NodeBuilder {
        self.limits = limits;
        self
    }

    /// How long [`Node::shutdown`] waits for calls in flight (default 10 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> NodeBuilder {
        self.drain_timeout = timeout;
        self
    }

    /// Publishes a service (a generated server such as `GreeterServer::new(MyGreeter)`).
    pub fn publish(mut self, server: impl Dispatch) -> NodeBuilder {
        self.services.push(Arc::new(server));
        self
    }

    /// Binds the endpoint and starts serving.
    pub async fn start(self) -> Result<Node, NodeError> {
        let mut names: Vec<&str> = self.services.iter().map(|s| s.spec().name).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(NodeError::DuplicateService(pair[0].to_owned()));
        }
        let server_name = tls::cluster_server_name(&self.cluster)?;
        let material = match self.tls {
            TlsSource::Material(material) => material,
            TlsSource::Dev(dir) => {
                let dir = dir.unwrap_or_else(tls::default_state_dir);
                TlsMaterial::dev(&dir, &self.cluster, &self.name)?
            }
        };
        let endpoint = build_endpoint(self.listen, &material, &self.cluster, &self.limits)?;
        let local_addr = endpoint.local_addr().map_err(|source| EndpointError::Bind {
            addr: self.listen,
            source,
        })?;
        let server = Arc::new(Server::new(self.services, self.limits));
        let accept = tokio::spawn(server.clone().accept_loop(endpoint.clone()));
        let connections = Connections::new(endpoint.clone(), &server_name.to_str());
        info!(node = %self.name, cluster = %self.cluster, %local_addr, "node started");
        Ok(Node {
            inner: Arc::new(NodeInner {
                name: self.name,
                cluster: self.cluster,
                local_addr,
                endpoint,
                connections,
                server,
                limits: self.limits,
                drain_timeout: self.drain_timeout,
                accept,
            }),
        })
    }
}

/// A running node. Cheap to clone; every clone is the same node.
#[derive(Debug, Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

#[derive(Debug)]
struct NodeInner {
    name: String,
    cluster: String,
    local_addr: SocketAddr,
    endpoint: quinn::Endpoint,
    connections: Connections,
    server: Arc<Server>,
    limits: Limits,
    drain_timeout: Duration,
    accept: JoinHandle<()>,
}

impl Node {
    /// Starts configuring a node called `name` (used in logs and certificates).
    pub fn builder(name: impl Into<String>) -> NodeBuilder {
        NodeBuilder::new(name)
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The cluster the node belongs to.
    pub fn cluster(&self) -> &str {
        &self.inner.cluster
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The pool of outgoing connections.
    pub fn connections(&self) -> &Connections {
        &self.inner.connections
    }

    /// Calls this node is serving right now.
    pub fn calls_in_flight(&self) -> usize {
        self.inner.server.calls_in_flight()
    }

    /// A channel that sends every call to the node at `addr`.
    pub fn channel_to(&self, addr: SocketAddr) -> Channel {
        Channel::new(PeerService::new(
            self.inner.connections.clone(),
            addr,
            self.inner.limits.max_message_size,
        ))
    }

    /// A generated client whose calls go to the node at `addr`.
    pub fn client_to<C: ServiceClient>(&self, addr: SocketAddr) -> C {
        C::from_channel(self.channel_to(addr))
    }

    /// Drains and stops: refuses new calls (callers retry them elsewhere), waits for calls in
    /// flight up to the drain timeout, then closes every connection.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.server.start_draining();
        let drained = inner.server.wait_idle(inner.drain_timeout).await;
        if !drained {
            tracing::warn!(
                in_flight = inner.server.calls_in_flight(),
                "drain timeout passed with calls in flight; closing anyway"
            );
        }
        inner.server.stop_accepting();
        inner.endpoint.close(error_code::SHUTDOWN, b"node shut down");
        let _ = tokio::time::timeout(Duration::from_secs(1), inner.endpoint.wait_idle()).await;
        inner.accept.abort();
        info!(node = %inner.name, "node stopped");
    }
}
