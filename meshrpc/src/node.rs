//! A [`Node`]: one process's presence in the mesh. It owns the QUIC endpoint, serves what it
//! publishes, gossips membership, and hands out balanced clients for everyone's services.
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

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::retry::Retry;
use tracing::{info, warn};

use crate::channel::Channel;
use crate::http_tunnel::{
    BoxError, HttpClient, HttpService, box_http_service, refuse_tunnel, serve_tunnel,
};
use crate::membership::{MemberId, Membership, Published, View};
use crate::metrics::{Metrics, Readiness, bind_admin, serve_admin};
use crate::node_service::{NODE_SPEC, NodeService};
use crate::options::CallOptions;
use crate::resilience::balance::{Balance, BalanceState, Strategy};
use crate::resilience::breaker::BreakerConfig;
use crate::resilience::retry::{RetryConfig, RetryPolicy};
use crate::seeds;
use crate::server::Server;
use crate::service::{Dispatch, ServiceClient};
use crate::spec::ServiceSpec;
use crate::tls::{self, TlsError, TlsMaterial};
use crate::transport::Limits;
use crate::transport::client::PeerService;
use crate::transport::connections::Connections;
use crate::transport::endpoint::{EndpointError, build_endpoint};
use crate::transport::error_code;
use crate::wire::FrameKind;

/// The cluster joined when none is named.
pub const DEFAULT_CLUSTER: &str = "default";

/// How long [`Node::shutdown`] waits for calls in flight by default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How often seeds are resolved again once the node has joined.
const RESEED_INTERVAL: Duration = Duration::from_secs(10);

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
    /// The admin endpoint could not listen.
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

/// Where a node's certificates come from.
#[derive(Debug, Clone)]
enum TlsSource {
    Dev(Option<PathBuf>),
    Material(TlsMaterial),
}

impl std::fmt::Debug for dyn Dispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.spec().name)
    }
}

/// Configures and starts a [`Node`].
#[must_use = "a builder does nothing until `start` is awaited"]
pub struct NodeBuilder {
    name: String,
    cluster: String,
    listen: SocketAddr,
    advertise: Option<SocketAddr>,
    seeds: Vec<String>,
    tags: Vec<String>,
    tls: TlsSource,
    limits: Limits,
    drain_timeout: Duration,
    strategy: Strategy,
    breaker: BreakerConfig,
    retry: RetryConfig,
    admin: Option<SocketAddr>,
    services: Vec<Arc<dyn Dispatch>>,
    layers: Vec<crate::server::UserLayer>,
    http: HashMap<String, HttpService>,
    clients: Arc<OnceLock<Arc<ClientFactory>>>,
}

impl std::fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("name", &self.name)
            .field("cluster", &self.cluster)
            .field("listen", &self.listen)
            .field("seeds", &self.seeds)
            .field("services", &self.services)
            .field("http", &self.http.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl NodeBuilder {
    fn new(name: impl Into<String>) -> NodeBuilder {
        NodeBuilder {
            name: name.into(),
            cluster: DEFAULT_CLUSTER.to_owned(),
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            advertise: None,
            seeds: Vec::new(),
            tags: Vec::new(),
            tls: TlsSource::Dev(None),
            limits: Limits::default(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            strategy: Strategy::RoundRobin,
            breaker: BreakerConfig::default(),
            retry: RetryConfig::default(),
            admin: None,
            services: Vec::new(),
            layers: Vec::new(),
            http: HashMap::new(),
            clients: Arc::default(),
        }
    }

    /// A client of `C`'s service for the services this node will publish: calls made before
    /// [`start`](NodeBuilder::start) fail with `unavailable`; afterwards it behaves exactly
    /// like [`Node::client`].
    ///
    /// ```no_run
    /// # fn example<C: meshrpc::ServiceClient, S: meshrpc::Dispatch>(make: impl FnOnce(C) -> S) {
    /// let builder = meshrpc::Node::builder("concierge");
    /// let downstream: C = builder.client();
    /// let builder = builder.publish(make(downstream));
    /// # }
    /// ```
    pub fn client<C: ServiceClient>(&self) -> C {
        C::from_channel(Channel::new(LateChannel {
            clients: self.clients.clone(),
            service: C::SPEC.name,
            schema_hash: C::SPEC.schema_hash,
            channel: Arc::default(),
        }))
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

    /// The address other members reach this node at. By default: the listen address, or,
    /// when listening on all interfaces, this host's address on the route to the first seed
    /// (loopback without seeds).
    pub fn advertise(mut self, addr: SocketAddr) -> NodeBuilder {
        self.advertise = Some(addr);
        self
    }

    /// Seeds to join through: `host[:port]` entries (default port 11999). Names resolve to all
    /// their addresses and are re-resolved periodically.
    pub fn seeds<I, S>(mut self, seeds: I) -> NodeBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.seeds.extend(seeds.into_iter().map(Into::into));
        self
    }

    /// Free-form tags gossiped with the node's identity.
    pub fn tags<I, S>(mut self, tags: I) -> NodeBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags.extend(tags.into_iter().map(Into::into));
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

    /// How clients of this node choose replicas (default round robin).
    pub fn balancing(mut self, strategy: Strategy) -> NodeBuilder {
        self.strategy = strategy;
        self
    }

    /// When clients of this node eject a replica that keeps failing, and for how long
    /// (default [`BreakerConfig::default`]: 5 failures in a row, 1 s doubling up to 30 s, at
    /// most half of a service's replicas at once).
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// use meshrpc::resilience::breaker::BreakerConfig;
    ///
    /// let builder = meshrpc::Node::builder("web").breaker(BreakerConfig {
    ///     consecutive_failures: 3,
    ///     max_ejection: Duration::from_secs(10),
    ///     ..BreakerConfig::default()
    /// });
    /// ```
    pub fn breaker(mut self, config: BreakerConfig) -> NodeBuilder {
        self.breaker = config;
        self
    }

    /// Retry tuning for clients of this node.
    pub fn retries(mut self, config: RetryConfig) -> NodeBuilder {
        self.retry = config;
        self
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` over HTTP on `addr`.
    pub fn admin(mut self, addr: SocketAddr) -> NodeBuilder {
        self.admin = Some(addr);
        self
    }

    /// Adds a tower layer to every call this node serves, below the node's own layers
    /// (admission, metrics, deadline, panic catching) and above the services. Its service
    /// sees each call as an [`IncomingCall`](crate::server::IncomingCall) — the method, the
    /// context (deadline, metadata) and the caller's verified identity — and answers a
    /// [`Body`](crate::Body) or a [`Status`](crate::Status). Layers added first are outermost.
    ///
    /// ```no_run
    /// use meshrpc::server::{BoxServerService, IncomingCall};
    /// use meshrpc::{Code, Status};
    ///
    /// // Refuses calls that carry no `tenant` metadata.
    /// let require_tenant = tower::layer::layer_fn(|inner: BoxServerService| {
    ///     tower::service_fn(move |call: IncomingCall| {
    ///         let mut inner = inner.clone();
    ///         async move {
    ///             if call.context.metadata().get("tenant").is_none() {
    ///                 return Err(Status::new(Code::InvalidArgument, "send a `tenant`"));
    ///             }
    ///             tower::ServiceExt::ready(&mut inner).await?;
    ///             tower::Service::call(&mut inner, call).await
    ///         }
    ///     })
    /// });
    /// let builder = meshrpc::Node::builder("billing").layer(require_tenant);
    /// ```
    pub fn layer<L>(mut self, layer: L) -> NodeBuilder
    where
        L: tower::Layer<crate::server::BoxServerService> + Send + Sync + 'static,
        L::Service: tower::Service<
                crate::server::IncomingCall,
                Response = crate::Body,
                Error = crate::Status,
            > + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as tower::Service<crate::server::IncomingCall>>::Future: Send + 'static,
    {
        self.layers.push(crate::server::user_layer(layer));
        self
    }

    /// Publishes a service (a generated server such as `GreeterServer::new(MyGreeter)`).
    pub fn publish(mut self, server: impl Dispatch) -> NodeBuilder {
        self.services.push(Arc::new(server));
        self
    }

    /// Publishes legacy HTTP handlers (an axum `Router`, any tower HTTP service) under
    /// `service`; other nodes reach them with [`Node::http_client`], the gateway under
    /// `/{service}/...`.
    pub fn publish_http<S, B>(mut self, service: impl Into<String>, handler: S) -> NodeBuilder
    where
        S: tower::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.http.insert(service.into(), box_http_service(handler));
        self
    }

    /// Binds the endpoint, starts serving and joins the mesh through the seeds.
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
        let local_addr = endpoint
            .local_addr()
            .map_err(|source| EndpointError::Bind {
                addr: self.listen,
                source,
            })?;
        let advertised = match self.advertise {
            Some(addr) => addr,
            None => advertised_addr(local_addr, &self.seeds).await,
        };
        let admin_listener = match self.admin {
            Some(addr) => Some(
                bind_admin(addr)
                    .await
                    .map_err(|source| NodeError::Admin { addr, source })?,
            ),
            None => None,
        };

        let published: Vec<&'static ServiceSpec> =
            self.services.iter().map(|service| service.spec()).collect();
        let identity = MemberId {
            addr: advertised,
            name: self.name.clone(),
            cluster: self.cluster.clone(),
            generation: initial_generation(),
            draining: false,
            services: published
                .iter()
                .map(|spec| Published {
                    name: spec.name.to_owned(),
                    schema_hash: spec.schema_hash,
                })
                .collect(),
            http: {
                let mut http: Vec<String> = self.http.keys().cloned().collect();
                http.sort_unstable();
                http
            },
            tags: self.tags.clone(),
        };

        let connections = Connections::new(endpoint.clone(), &server_name.to_str());
        let membership = Membership::start(identity, connections.clone());

        let metrics = Arc::new(Metrics::new());
        let node_service =
            NodeService::new(&self.name, &published, membership.clone(), metrics.clone());
        let mut services = self.services;
        services.push(Arc::new(node_service));
        let mut server = Server::new(services, self.limits, metrics.clone(), &self.layers);
        server.set_cluster(&self.cluster);
        let http_services = Arc::new(self.http);
        {
            let http_services = http_services.clone();
            let admission = server.admission();
            server.set_stream_handler(
                FrameKind::Http,
                Arc::new(move |_connection, frame, send, recv, read_ahead| {
                    let http_services = http_services.clone();
                    let admission = admission.clone();
                    Box::pin(async move {
                        // Tunnels count against the call limit, and drain like calls.
                        match admission.admit() {
                            Ok(_permit) => {
                                serve_tunnel(&http_services, frame, send, recv, read_ahead).await;
                            }
                            Err(refusal) => refuse_tunnel(send, recv, refusal),
                        }
                    })
                }),
            );
        }
        {
            let membership = membership.clone();
            server.set_stream_handler(
                FrameKind::Gossip,
                Arc::new(move |_connection, frame, send, recv, _read_ahead| {
                    let membership = membership.clone();
                    Box::pin(async move { membership.serve_exchange(frame, send, recv).await })
                }),
            );
        }
        {
            let connections = connections.clone();
            let membership = membership.clone();
            server.set_connection_hook(Arc::new(move |connection| {
                connections.adopt(connection);
                membership.listen_to(connection.clone());
            }));
        }
        let server = Arc::new(server);
        {
            // Connections this node opens carry the peer's calls too.
            let membership = membership.clone();
            let server = server.clone();
            connections.set_on_connect(Arc::new(move |connection| {
                membership.listen_to(connection.clone());
                tokio::spawn(server.clone().serve_connection(connection.clone()));
            }));
        }
        let clients = Arc::new(ClientFactory {
            membership: membership.clone(),
            connections: connections.clone(),
            strategy: self.strategy,
            breaker: self.breaker,
            retry: RetryPolicy::new(self.retry),
            max_message_size: self.limits.max_message_size,
            states: Mutex::default(),
        });
        let _ = self.clients.set(clients.clone());
        let mut tasks = vec![tokio::spawn(server.clone().accept_loop(endpoint.clone()))];
        tasks.push(tokio::spawn(join_loop(
            membership.clone(),
            connections.clone(),
            self.seeds.clone(),
            advertised,
        )));
        tasks.push(tokio::spawn(count_members(
            membership.clone(),
            metrics.clone(),
        )));
        let admin_addr = admin_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok());
        if let Some(listener) = admin_listener {
            let readiness = Arc::new(NodeReadiness {
                membership: membership.clone(),
                server: server.clone(),
                needs_peers: !self.seeds.is_empty(),
            });
            tasks.push(tokio::spawn(serve_admin(
                listener,
                metrics.clone(),
                readiness,
            )));
        }
        info!(
            node = %self.name, cluster = %self.cluster, %local_addr, %advertised,
            services = ?names, "node started"
        );
        Ok(Node {
            inner: Arc::new(NodeInner {
                name: self.name,
                cluster: self.cluster,
                local_addr,
                advertised,
                endpoint,
                connections,
                membership,
                server,
                metrics,
                limits: self.limits,
                drain_timeout: self.drain_timeout,
                admin_addr,
                clients,
                tasks,
            }),
        })
    }
}

/// A fresh generation: later starts at the same address win over earlier ones.
fn initial_generation() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |elapsed| elapsed.as_micros() as u64)
}

/// The address to advertise when none was given.
async fn advertised_addr(local: SocketAddr, seed_entries: &[String]) -> SocketAddr {
    if !local.ip().is_unspecified() {
        return local;
    }
    let seeds = seeds::resolve(seed_entries).await;
    let ip = seeds
        .iter()
        .find_map(|seed| route_ip(*seed))
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    SocketAddr::new(ip, local.port())
}

/// The local IP on the route to `peer` (a connected UDP socket sends nothing).
fn route_ip(peer: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if peer.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(bind).ok()?;
    socket.connect(peer).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// Joins through the seeds: quickly until some member is known, then every
/// [`RESEED_INTERVAL`] to pick up new seed addresses and heal partitions.
async fn join_loop(
    membership: Membership,
    connections: Connections,
    entries: Vec<String>,
    advertised: SocketAddr,
) {
    if entries.is_empty() {
        return;
    }
    let mut pause = Duration::from_millis(200);
    loop {
        let view = membership.view();
        let addrs = seeds::resolve(&entries).await;
        let unknown: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|addr| *addr != advertised && view.member_at(*addr).is_none())
            .collect();
        let joins = unknown
            .iter()
            .map(|addr| membership.join(&connections, *addr));
        futures_util::future::join_all(joins).await;
        let joined = membership.view().members().len() > 1;
        pause = if joined {
            RESEED_INTERVAL
        } else {
            (pause * 2).min(Duration::from_secs(2))
        };
        tokio::time::sleep(pause).await;
    }
}

async fn count_members(membership: Membership, metrics: Arc<Metrics>) {
    let mut watch = membership.watch();
    loop {
        metrics.set_members(watch.borrow_and_update().members().len());
        if watch.changed().await.is_err() {
            return;
        }
    }
}

struct NodeReadiness {
    membership: Membership,
    server: Arc<Server>,
    needs_peers: bool,
}

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
struct NodeInner {
    name: String,
    cluster: String,
    local_addr: SocketAddr,
    advertised: SocketAddr,
    endpoint: quinn::Endpoint,
    connections: Connections,
    membership: Membership,
    server: Arc<Server>,
    metrics: Arc<Metrics>,
    limits: Limits,
    drain_timeout: Duration,
    admin_addr: Option<SocketAddr>,
    clients: Arc<ClientFactory>,
    tasks: Vec<JoinHandle<()>>,
}

/// Builds balanced, retried channels; shared by a node and the clients made from its builder.
#[derive(Debug)]
struct ClientFactory {
    membership: Membership,
    connections: Connections,
    strategy: Strategy,
    breaker: BreakerConfig,
    retry: RetryPolicy,
    max_message_size: usize,
    states: Mutex<HashMap<String, Arc<BalanceState>>>,
}

impl ClientFactory {
    /// The balancing state shared by every client of `key` (a service, or its HTTP handlers).
    fn state(&self, key: &str) -> Arc<BalanceState> {
        crate::lock(&self.states)
            .entry(key.to_owned())
            .or_insert_with(|| Arc::new(BalanceState::new(self.breaker)))
            .clone()
    }

    fn channel(&self, service: &str, schema_hash: Option<u64>) -> Channel {
        let state = self.state(service);
        let balance = Balance::new(
            self.membership.clone(),
            self.connections.clone(),
            self.strategy,
            schema_hash,
            self.max_message_size,
            state,
        );
        Channel::new(Retry::new(self.retry.clone(), balance))
    }
}

/// The channel of a client made before its node started: bound on first use after start.
#[derive(Clone)]
struct LateChannel {
    clients: Arc<OnceLock<Arc<ClientFactory>>>,
    service: &'static str,
    schema_hash: u64,
    channel: Arc<OnceLock<Channel>>,
}

impl tower::Service<crate::channel::Call> for LateChannel {
    type Response = crate::Body;
    type Error = crate::Status;
    type Future = crate::BoxFuture<'static, Result<crate::Body, crate::Status>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), crate::Status>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: crate::channel::Call) -> Self::Future {
        let Some(clients) = self.clients.get() else {
            let status = crate::Status::refused(
                crate::Code::Unavailable,
                format!(
                    "the node of this `{}` client has not started yet",
                    self.service
                ),
            );
            return Box::pin(std::future::ready(Err(status)));
        };
        let channel = self
            .channel
            .get_or_init(|| clients.channel(self.service, Some(self.schema_hash)))
            .service();
        Box::pin(tower::ServiceExt::oneshot(channel, call))
    }
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

    /// The pool of outgoing connections.
    pub fn connections(&self) -> &Connections {
        &self.inner.connections
    }

    /// The node's view of the mesh.
    pub fn membership(&self) -> &Membership {
        &self.inner.membership
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The current view of the mesh (shorthand for `membership().view()`).
    pub fn view(&self) -> Arc<View> {
        self.inner.membership.view()
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

    /// A client for the legacy HTTP handlers that members publish under `service`.
    pub fn http_client(&self, service: &str) -> HttpClient {
        HttpClient::new(
            service,
            self.inner.membership.clone(),
            self.inner.connections.clone(),
            self.inner.clients.state(&format!("{service} (HTTP)")),
        )
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
        let ping = &NODE_SPEC.methods[0];
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

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = terminate.recv() => info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => info!("Ctrl-C received"),
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
