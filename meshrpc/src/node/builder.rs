//! [`NodeBuilder`]: a node's configuration, and [`NodeBuilder::start`], which binds the
//! endpoint, starts the membership, builds the server (the server stack and the handlers of
//! the other stream kinds) and the client factory, and spawns the node's tasks.

#[cfg(feature = "http-tunnel")]
use std::collections::HashMap;
use std::net::SocketAddr;
#[cfg(feature = "dev-ca")]
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tracing::info;

#[cfg(feature = "admin")]
use super::NodeReadiness;
use super::clients::{ClientFactory, LateChannel};
use super::join::{advertised_addr, initial_generation, join_loop};
use super::{DEFAULT_CLUSTER, DEFAULT_DRAIN_TIMEOUT, Node, NodeError, NodeInner, count_members};
#[cfg(feature = "admin")]
use crate::admin::{bind_admin, serve_admin};
use crate::channel::Channel;
#[cfg(feature = "http-tunnel")]
use crate::http_tunnel::{BoxError, HttpService, box_http_service, tunnel_handler};
use crate::membership::{MemberId, Membership, Published};
use crate::metrics::Metrics;
use crate::node_service::NodeService;
use crate::resilience::attempts::TailConfig;
use crate::resilience::balance::Strategy;
use crate::resilience::breaker::BreakerConfig;
use crate::resilience::retry::{RetryConfig, RetryPolicy};
use crate::server::Server;
use crate::service::{Dispatch, ServiceClient};
use crate::spec::ServiceSpec;
use crate::tls::{self, TlsMaterial};
use crate::transport::Limits;
use crate::transport::connections::Connections;
use crate::transport::endpoint::{EndpointError, build_endpoint};
use crate::wire::FrameKind;

/// Where a node's certificates come from.
#[derive(Debug, Clone)]
enum TlsSource {
    /// The development CA, in this state directory or the default one.
    #[cfg(feature = "dev-ca")]
    Dev(Option<PathBuf>),
    /// None given (and no development CA compiled in): `start` says what to do.
    #[cfg(not(feature = "dev-ca"))]
    Missing,
    Material(TlsMaterial),
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
    tail: TailConfig,
    #[cfg(feature = "admin")]
    admin: Option<SocketAddr>,
    services: Vec<Arc<dyn Dispatch>>,
    layers: Vec<crate::server::UserLayer>,
    policy: crate::server::authorize::Policy,
    #[cfg(feature = "http-tunnel")]
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
            .field("http", &self.http_services())
            .finish_non_exhaustive()
    }
}

impl NodeBuilder {
    pub(crate) fn new(name: impl Into<String>) -> NodeBuilder {
        NodeBuilder {
            name: name.into(),
            cluster: DEFAULT_CLUSTER.to_owned(),
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            advertise: None,
            seeds: Vec::new(),
            tags: Vec::new(),
            #[cfg(feature = "dev-ca")]
            tls: TlsSource::Dev(None),
            #[cfg(not(feature = "dev-ca"))]
            tls: TlsSource::Missing,
            limits: Limits::default(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            strategy: Strategy::RoundRobin,
            breaker: BreakerConfig::default(),
            retry: RetryConfig::default(),
            tail: TailConfig::default(),
            #[cfg(feature = "admin")]
            admin: None,
            services: Vec::new(),
            layers: Vec::new(),
            policy: crate::server::authorize::Policy::new(),
            #[cfg(feature = "http-tunnel")]
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
    #[cfg(feature = "dev-ca")]
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
    /// (default [`BreakerConfig::default`]: 5 failures or 3 unanswered attempts in a row, or a
    /// success rate 20 points under the other replicas'; 1 s doubling up to 30 s; at most 10 %
    /// of a service's replicas at once, at least one from two replicas up).
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// use meshrpc::BreakerConfig;
    ///
    /// let builder = meshrpc::Node::builder("web").breaker(
    ///     BreakerConfig::default()
    ///         .consecutive_failures(3)
    ///         .max_ejection(Duration::from_secs(10)),
    /// );
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

    /// Tail tolerance of this node's clients for idempotent unary calls: per-attempt
    /// timeouts and hedges (default [`TailConfig::default`]: both on, hedges at the observed
    /// p95 within a budget of 5 % of the calls, attempt timeouts at 4 × p99 and at least
    /// 50 ms). The manifest's `attempt_timeout` and `hedge_after` override the adaptive
    /// timings per method.
    ///
    /// ```no_run
    /// use meshrpc::TailConfig;
    ///
    /// let builder = meshrpc::Node::builder("web").tail(TailConfig::default().hedging(false));
    /// ```
    pub fn tail(mut self, config: TailConfig) -> NodeBuilder {
        self.tail = config;
        self
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` over HTTP on `addr` (feature `admin`).
    #[cfg(feature = "admin")]
    pub fn admin(mut self, addr: SocketAddr) -> NodeBuilder {
        self.admin = Some(addr);
        self
    }

    /// Lets only the callers `policy` names call this node's services (see
    /// [`Policy`](crate::server::authorize::Policy)); the default allows every member.
    pub fn authorize(mut self, policy: crate::server::authorize::Policy) -> NodeBuilder {
        self.policy = policy;
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
    /// `/{service}/...` (feature `http-tunnel`).
    #[cfg(feature = "http-tunnel")]
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

    /// The names legacy HTTP handlers are published under, sorted.
    fn http_services(&self) -> Vec<String> {
        #[cfg(feature = "http-tunnel")]
        let mut names: Vec<String> = self.http.keys().cloned().collect();
        #[cfg(not(feature = "http-tunnel"))]
        let mut names: Vec<String> = Vec::new();
        names.sort_unstable();
        names
    }

    /// Binds the endpoint, starts serving and joins the mesh through the seeds.
    pub async fn start(self) -> Result<Node, NodeError> {
        let mut names: Vec<&str> = self.services.iter().map(|s| s.spec().name).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(NodeError::DuplicateService(pair[0].to_owned()));
        }
        self.policy
            .check(self.services.iter().map(|service| service.spec()))?;
        let server_name = tls::cluster_server_name(&self.cluster)?;
        let http_services = self.http_services();
        let material = match self.tls {
            TlsSource::Material(material) => material,
            #[cfg(feature = "dev-ca")]
            TlsSource::Dev(dir) => {
                let dir = dir.unwrap_or_else(tls::default_state_dir);
                TlsMaterial::dev(&dir, &self.cluster, &self.name)?
            }
            #[cfg(not(feature = "dev-ca"))]
            TlsSource::Missing => return Err(NodeError::Tls(tls::TlsError::NoMaterial)),
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
        #[cfg(feature = "admin")]
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
            http: http_services,
            tags: self.tags.clone(),
        };

        crate::membership::check_identity(&identity)?;
        let connections = Connections::new(endpoint.clone(), &server_name.to_str());
        let membership = Membership::start(identity, connections.clone());

        let metrics = Arc::new(Metrics::new());
        let node_service =
            NodeService::new(&self.name, &published, membership.clone(), metrics.clone());
        let mut services = self.services;
        services.push(Arc::new(node_service));
        let mut server = Server::new(
            services,
            self.limits,
            metrics.clone(),
            &self.layers,
            self.policy,
        );
        server.set_cluster(&self.cluster);
        // Streams that are not calls, by the kind of their opening frame.
        #[cfg(feature = "http-tunnel")]
        server.set_stream_handler(
            FrameKind::Http,
            tunnel_handler(Arc::new(self.http), server.admission()),
        );
        server.set_stream_handler(FrameKind::Gossip, membership.exchange_handler());
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
            tail: self.tail,
            metrics: metrics.clone(),
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
        #[cfg(feature = "admin")]
        let admin_addr = serve_admin_if_asked(
            admin_listener,
            &mut tasks,
            NodeReadiness {
                membership: membership.clone(),
                server: server.clone(),
                needs_peers: !self.seeds.is_empty(),
            },
            metrics.clone(),
        );
        #[cfg(not(feature = "admin"))]
        let admin_addr = None;
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

/// Serves the admin endpoint on `listener`, if the node was asked for one; its address.
#[cfg(feature = "admin")]
fn serve_admin_if_asked(
    listener: Option<tokio::net::TcpListener>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
    readiness: NodeReadiness,
    metrics: Arc<Metrics>,
) -> Option<SocketAddr> {
    let listener = listener?;
    let addr = listener.local_addr().ok();
    tasks.push(tokio::spawn(serve_admin(
        listener,
        metrics,
        Arc::new(readiness),
    )));
    addr
}
