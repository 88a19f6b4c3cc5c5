//! A [`Node`]: one process's presence in the mesh. It owns the QUIC endpoint, serves what it
//! publishes, gossips membership, and hands out balanced clients for everyone's services.
//!
//! [`NodeBuilder`] configures and starts one (`builder.rs`); `clients.rs` builds the client
//! stacks it hands out; `join.rs` joins the mesh through the seeds; `signal.rs` waits for the
//! signal that drains it.
//!
//! ```no_run
//! # async fn example(server: impl meshrpc::Dispatch) -> Result<(), meshrpc::NodeError> {
//! let node = meshrpc::Node::builder("greeter")
//!     .cluster("default")
//!     .listen("127.0.0.1:0".parse().expect("address"))
//!     .seeds(["127.0.0.1:11999"])
//!     .publish(server)
//!     .start()
//!     .await?;
//! node.run_until_signal().await; // SIGTERM or Ctrl-C: drain, leave, return
//! # Ok(()) }
//! ```

mod builder;
mod clients;
mod join;
mod signal;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

pub use builder::NodeBuilder;
use clients::ClientFactory;
pub use signal::wait_for_signal;

#[cfg(feature = "admin")]
use crate::admin::Readiness;
use crate::channel::Channel;
#[cfg(feature = "http-tunnel")]
use crate::http_tunnel::HttpClient;
use crate::membership::{Membership, View};
use crate::metrics::Metrics;
use crate::options::CallOptions;
use crate::server::Server;
use crate::service::{Dispatch, ServiceClient};
use crate::spec::ServiceSpec;
use crate::tls::TlsError;
use crate::transport::Limits;
use crate::transport::client::PeerService;
use crate::transport::connections::Connections;
use crate::transport::endpoint::EndpointError;
use crate::transport::error_code;

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
    /// The node's identity (its services, tags and HTTP names) is too large to gossip.
    #[error(transparent)]
    Identity(#[from] crate::membership::IdentityTooLarge),
    /// The authorization policy names a service or method this node does not serve.
    #[error(transparent)]
    Policy(#[from] crate::server::authorize::PolicyError),
    /// The admin endpoint could not listen.
    #[cfg(feature = "admin")]
    #[error("could not listen for admin HTTP on {addr}: {source}")]
    Admin {
        /// The admin address.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// [`Node::wait_for`] gave up.
#[derive(Debug, Clone, thiserror::Error)]
#[error("gave up after {waited:?} waiting for {}", missing.join("; "))]
pub struct WaitError {
    /// How long it waited.
    pub waited: Duration,
    /// Each missing service with the reason.
    pub missing: Vec<String>,
}

impl std::fmt::Debug for dyn Dispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.spec().name)
    }
}

pub(crate) async fn count_members(membership: Membership, metrics: Arc<Metrics>) {
    let mut watch = membership.watch();
    loop {
        metrics.set_members(watch.borrow_and_update().members().len());
        if watch.changed().await.is_err() {
            return;
        }
    }
}

#[cfg_attr(not(feature = "admin"), allow(dead_code))]
pub(crate) struct NodeReadiness {
    pub(crate) membership: Membership,
    pub(crate) server: Arc<Server>,
    pub(crate) needs_peers: bool,
}

#[cfg(feature = "admin")]
impl Readiness for NodeReadiness {
    fn readiness(&self) -> (bool, String) {
        if self.server.is_draining() {
            return (false, "draining".to_owned());
        }
        let members = self.membership.view().members().len();
        if self.needs_peers && members < 2 {
            return (false, "not joined yet: no other member known".to_owned());
        }
        (true, format!("ready; {members} members in view"))
    }
}

/// A running node. Cheap to clone; every clone is the same node.
#[derive(Debug, Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

#[derive(Debug)]
pub(crate) struct NodeInner {
    pub(crate) name: String,
    pub(crate) cluster: String,
    pub(crate) local_addr: SocketAddr,
    pub(crate) advertised: SocketAddr,
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) connections: Connections,
    pub(crate) membership: Membership,
    pub(crate) server: Arc<Server>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) limits: Limits,
    pub(crate) drain_timeout: Duration,
    pub(crate) admin_addr: Option<SocketAddr>,
    pub(crate) clients: Arc<ClientFactory>,
    pub(crate) tasks: Vec<JoinHandle<()>>,
}

impl Drop for NodeInner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Node {
    /// Starts configuring a node called `name` (used in logs, membership and certificates).
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

    /// The address other members reach this node at.
    pub fn advertised_addr(&self) -> SocketAddr {
        self.inner.advertised
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The address the admin endpoint (`/metrics`, `/healthz`, `/readyz`) listens on, if any.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.inner.admin_addr
    }

    /// The pool of outgoing connections (the runtime's inside, for tests).
    #[doc(hidden)]
    pub fn connections(&self) -> &Connections {
        &self.inner.connections
    }

    /// The membership agent (the runtime's inside, for tests and tools).
    #[doc(hidden)]
    pub fn membership(&self) -> &Membership {
        &self.inner.membership
    }

    /// The metrics registry (the runtime's inside, for tests and tools).
    #[doc(hidden)]
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The current view of the mesh: every member this node knows, with its services and
    /// liveness.
    pub fn view(&self) -> Arc<View> {
        self.inner.membership.view()
    }

    /// A watch of the view: it changes whenever a member joins, leaves, dies, drains or
    /// changes what it publishes.
    pub fn watch_view(&self) -> tokio::sync::watch::Receiver<Arc<View>> {
        self.inner.membership.watch()
    }

    /// The node's metrics in the Prometheus text format (what the admin endpoint's `/metrics`
    /// serves).
    pub fn render_metrics(&self) -> String {
        self.inner.metrics.render()
    }

    /// The calls counters and latency histograms of every method this node served or called
    /// (what `meshrpc.node.stats` answers).
    pub fn stats(&self) -> Vec<crate::metrics::MethodStats> {
        self.inner.metrics.snapshot()
    }

    /// Calls this node is serving right now.
    pub fn calls_in_flight(&self) -> usize {
        self.inner.server.calls_in_flight()
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.inner.server.is_draining()
    }

    /// A generated client for `C`'s service, balanced over the live members that publish it
    /// with the same schema, with retries and the node's balancing strategy.
    pub fn client<C: ServiceClient>(&self) -> C {
        C::from_channel(self.balanced_channel(C::SPEC.name, Some(C::SPEC.schema_hash)))
    }

    /// A channel to `service` whatever its schema, balanced and retried like
    /// [`Node::client`]; for callers that know services only by name (the gateway).
    pub fn channel(&self, service: &str) -> Channel {
        self.balanced_channel(service, None)
    }

    /// A channel to the members that publish `service` with exactly this schema hash: what a
    /// caller that validated a request against one schema must use during a rolling upgrade.
    pub fn channel_with_schema(&self, service: &str, schema_hash: u64) -> Channel {
        self.balanced_channel(service, Some(schema_hash))
    }

    fn balanced_channel(&self, service: &str, schema_hash: Option<u64>) -> Channel {
        self.inner.clients.channel(service, schema_hash)
    }

    /// A client for the legacy HTTP handlers that members publish under `service` (feature
    /// `http-tunnel`).
    #[cfg(feature = "http-tunnel")]
    pub fn http_client(&self, service: &str) -> HttpClient {
        self.inner.clients.http_client(service)
    }

    /// A channel that sends every call to the node at `addr`, bypassing discovery.
    pub fn channel_to(&self, addr: SocketAddr) -> Channel {
        Channel::new(PeerService::new(
            self.inner.connections.clone(),
            addr,
            self.inner.limits.max_message_size,
        ))
    }

    /// A generated client whose calls all go to the node at `addr`, bypassing discovery.
    pub fn client_to<C: ServiceClient>(&self, addr: SocketAddr) -> C {
        C::from_channel(self.channel_to(addr))
    }

    /// Waits until every service in `specs` has a live member publishing the same schema
    /// that answers a ping. On timeout the error names each missing service and why.
    pub async fn wait_for(
        &self,
        specs: &[&ServiceSpec],
        timeout: Duration,
    ) -> Result<(), WaitError> {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut watch = self.inner.membership.watch();
        loop {
            let view = watch.borrow_and_update().clone();
            let mut missing = Vec::new();
            for spec in specs {
                match self.ping_one(spec, &view).await {
                    Ok(()) => {}
                    Err(reason) => missing.push(format!("`{}` ({reason})", spec.name)),
                }
            }
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(WaitError {
                    waited: started.elapsed(),
                    missing,
                });
            }
            let next_look = (Instant::now() + Duration::from_millis(250)).min(deadline);
            tokio::select! {
                _ = watch.changed() => {}
                _ = tokio::time::sleep_until(next_look) => {}
            }
        }
    }

    async fn ping_one(&self, spec: &ServiceSpec, view: &View) -> Result<(), String> {
        let candidates: Vec<SocketAddr> = view
            .publishing(spec.name)
            .filter(|member| member.accepts_calls())
            .filter(|member| member.id.schema_hash(spec.name) == Some(spec.schema_hash))
            .map(|member| member.id.addr)
            .collect();
        if candidates.is_empty() {
            return Err(if view.publishing(spec.name).next().is_some() {
                "members publish it, but draining or with another schema".to_owned()
            } else {
                "no member publishes it yet".to_owned()
            });
        }
        let ping = crate::node_service::node_methods::PING;
        let options = CallOptions::new().timeout(Duration::from_secs(1));
        let mut last = String::new();
        for addr in candidates {
            match self
                .channel_to(addr)
                .unary::<_, crate::node_service::PingReply>(ping, &(), &options)
                .await
            {
                Ok(_) => return Ok(()),
                Err(status) => last = format!("{addr} did not answer a ping: {status}"),
            }
        }
        Err(last)
    }

    /// Drains and stops: gossips "draining" so callers stop choosing this node, refuses new
    /// calls with a refusal callers retry elsewhere, waits for calls in flight (up to the
    /// drain timeout), leaves the cluster and closes every connection.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        if inner.server.is_draining() {
            return;
        }
        info!(node = %inner.name, in_flight = inner.server.calls_in_flight(), "draining");
        inner.membership.set_draining().await;
        inner.server.start_draining();
        if !inner.server.wait_idle(inner.drain_timeout).await {
            warn!(
                in_flight = inner.server.calls_in_flight(),
                "drain timeout passed with calls in flight; ending them with `unavailable`"
            );
            // Open streams end with an error their callers see, never with a clean end.
            inner.server.end_calls();
            let _ = inner.server.wait_idle(Duration::from_millis(500)).await;
        }
        inner.membership.leave().await;
        // Let the leave announcement reach the wire before the connections close.
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Every connection answers what it accepted and closes, naming the streams it never
        // read (their callers retry them elsewhere); whatever is left is closed here.
        inner.server.stop_accepting();
        inner
            .server
            .wait_connections_closed(Duration::from_secs(2))
            .await;
        inner
            .endpoint
            .close(error_code::SHUTDOWN, b"node shut down");
        let _ = tokio::time::timeout(Duration::from_secs(1), inner.endpoint.wait_idle()).await;
        for task in &inner.tasks {
            task.abort();
        }
        info!(node = %inner.name, "node stopped");
    }

    /// Serves until SIGTERM or Ctrl-C, then [`Node::shutdown`]s.
    pub async fn run_until_signal(&self) {
        wait_for_signal().await;
        self.shutdown().await;
    }
}
