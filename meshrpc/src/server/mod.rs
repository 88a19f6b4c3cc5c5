//! The callee's half: accept connections, read each stream's opening frame, and serve calls
//! through the **server stack** — a tower stack every call goes through, top to bottom:
//!
//! ```text
//! connection   read CALL header, route to a method, read the first message  (request.rs)
//!   Admit        limit of calls in flight, refusals while draining            (admission.rs)
//!   Observe      metrics, access log, trace span                               (observe.rs)
//!   Authorize    the node's caller policy (`--allow`)                          (authorize.rs)
//!   Deadline     cut the handler (and its stream) off at the deadline          (deadline.rs)
//!   CatchPanic   a panicking handler answers `internal`                        (catch_panic.rs)
//!   [layers added with NodeBuilder::layer]
//!   Route        the published service's Dispatch, inside the call's context   (route.rs)
//! connection   write the reply: one message, or a stream item by item         (reply.rs)
//! ```
//!
//! Streams that are not calls (HTTP tunnels, membership exchanges) are routed by the kind of
//! their opening frame to a [`StreamHandler`]; tunnels take their permit from the same
//! [`Admission`].

pub mod admission;
mod answer;
pub mod authorize;
pub mod call;
pub mod catch_panic;
mod connection;
pub mod deadline;
pub mod observe;
mod reply;
mod request;
pub mod route;
mod stream_limit;

#[cfg(test)]
pub(crate) mod tests;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::watch;
use tower::Layer;

pub use admission::{Admission, Refusal};
pub use call::{Caller, IncomingCall, PeerIdentity};
pub use route::BoxServerService;

use crate::metrics::Metrics;
use crate::service::Dispatch;
use crate::spec::ServiceSpec;
use crate::transport::Limits;
use crate::wire::{Frame, FrameKind};

/// A handler for streams that are not calls (HTTP tunnels, membership exchanges): it receives
/// the connection, the opening frame, the stream, and any bytes already read past the opening
/// frame (they come first in what the handler reads).
pub type StreamHandler = Arc<
    dyn Fn(
            Connection,
            Frame,
            SendStream,
            RecvStream,
            Bytes,
        ) -> Pin<Box<dyn Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// Called for every accepted connection.
pub type ConnectionHook = Arc<dyn Fn(&Connection) + Send + Sync>;

/// A layer a user adds to every call the node serves (`NodeBuilder::layer`), boxed.
pub type UserLayer = Arc<dyn Fn(BoxServerService) -> BoxServerService + Send + Sync>;

/// Boxes a tower layer over the server stack into a [`UserLayer`].
pub fn user_layer<L>(layer: L) -> UserLayer
where
    L: Layer<BoxServerService> + Send + Sync + 'static,
    L::Service: tower::Service<IncomingCall, Response = crate::Body, Error = crate::Status>
        + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as tower::Service<IncomingCall>>::Future: Send + 'static,
{
    Arc::new(move |inner| BoxServerService::new(layer.layer(inner)))
}

/// The server stack every call goes through (see the [module documentation](self)).
pub(crate) type ServerStack = admission::Admit<
    observe::Observe<
        authorize::Authorize<deadline::Deadline<catch_panic::CatchPanic<route::Handlers>>>,
    >,
>;

/// What a node serves: its published services, stream handlers, limits and server stack.
pub struct Server {
    services: request::Services,
    stream_handlers: HashMap<u8, StreamHandler>,
    connection_hook: Option<ConnectionHook>,
    /// The cluster whose certificates name callers' identities.
    cluster: String,
    stack: ServerStack,
    limits: Limits,
    admission: Admission,
    /// Set to stop accepting connections and streams.
    shutdown: watch::Sender<bool>,
    /// Set to end the calls still in flight (after the drain timeout).
    ending: watch::Sender<bool>,
    /// Calls whose reply is still being written (a drain waits for them too).
    answering: Arc<connection::Answering>,
    /// Connections being served; they close themselves after [`Server::stop_accepting`].
    connections: watch::Sender<usize>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("services", &self.services.names().collect::<Vec<_>>())
            .field("limits", &self.limits)
            .field("draining", &self.is_draining())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server for `services` under `limits`, with `layers` (outermost first) between the
    /// node's own layers and the services.
    pub fn new(
        services: Vec<Arc<dyn Dispatch>>,
        limits: Limits,
        metrics: Arc<Metrics>,
        layers: &[UserLayer],
        policy: authorize::Policy,
    ) -> Server {
        let admission = Admission::new(limits.max_concurrent_calls).reporting_to(metrics.clone());
        let specs: Vec<&'static ServiceSpec> =
            services.iter().map(|service| service.spec()).collect();
        let route = route::Route::new(&services);
        let handlers = if layers.is_empty() {
            route::Handlers::Direct(route)
        } else {
            let mut service = BoxServerService::new(route);
            for layer in layers.iter().rev() {
                service = layer(service);
            }
            route::Handlers::Layered(service)
        };
        let stack = tower::ServiceBuilder::new()
            .layer(admission::AdmitLayer::new(admission.clone()))
            .layer(observe::ObserveLayer::new(&specs, metrics.clone()))
            .layer(authorize::AuthorizeLayer::new(
                policy,
                metrics.authorization_refusals().clone(),
            ))
            .layer(deadline::DeadlineLayer)
            .layer(catch_panic::CatchPanicLayer)
            .service(handlers);
        Server {
            services: route::Published::new(&services),
            stream_handlers: HashMap::new(),
            connection_hook: None,
            cluster: String::new(),
            stack,
            limits,
            admission,
            shutdown: watch::channel(false).0,
            ending: watch::channel(false).0,
            answering: Arc::default(),
            connections: watch::channel(0).0,
        }
    }

    /// Routes streams that open with a frame of `kind` to `handler`.
    pub fn set_stream_handler(&mut self, kind: FrameKind, handler: StreamHandler) {
        self.stream_handlers.insert(kind as u8, handler);
    }

    /// Reads callers' identities from certificates issued for `cluster`.
    pub fn set_cluster(&mut self, cluster: &str) {
        cluster.clone_into(&mut self.cluster);
    }

    /// Runs `hook` on every accepted connection (before its streams are served).
    pub fn set_connection_hook(&mut self, hook: ConnectionHook) {
        self.connection_hook = Some(hook);
    }

    /// The admission calls go through, for streams of other kinds to be admitted alike:
    /// under the same limit, refused while draining, and waited for by a drain.
    pub fn admission(&self) -> Admission {
        self.admission.clone()
    }

    /// The published services, by name.
    pub fn services(&self) -> impl Iterator<Item = &Arc<dyn Dispatch>> {
        self.services.services()
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Starts refusing new calls (with a refusal callers retry elsewhere).
    pub fn start_draining(&self) {
        self.admission.start_draining();
    }

    /// Whether new calls are refused.
    pub fn is_draining(&self) -> bool {
        self.admission.is_draining()
    }

    /// Calls being served right now.
    pub fn calls_in_flight(&self) -> usize {
        self.admission.in_flight()
    }

    /// Waits until no call is in flight and every reply has been written, or `timeout`
    /// passes; returns whether all finished.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        self.admission.wait_idle(timeout).await
            && tokio::time::timeout_at(deadline, self.answering.wait_idle())
                .await
                .is_ok()
    }

    /// Ends every call still in flight: handlers are dropped and their callers answered
    /// `unavailable` (a stream ends with it, never cleanly). For after the drain timeout.
    pub fn end_calls(&self) {
        self.ending.send_replace(true);
    }

    /// Resolves once the node ends its calls ([`Server::end_calls`]): what a streaming call
    /// that is still running watches for.
    pub(crate) fn calls_ended(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut ending = self.ending.subscribe();
        async move {
            let _ = ending.wait_for(|end| *end).await;
        }
    }

    /// Stops accepting connections and streams. Each connection then answers the streams it
    /// accepted and closes, telling the peer which of its streams were never read
    /// (docs/PROTOCOL.md, section 8.5): callers retry exactly those elsewhere.
    pub fn stop_accepting(&self) {
        self.shutdown.send_replace(true);
    }

    /// Waits until every connection served here has closed, or `timeout` passes; returns
    /// whether all closed.
    pub async fn wait_connections_closed(&self, timeout: Duration) -> bool {
        let mut connections = self.connections.subscribe();
        tokio::time::timeout(timeout, connections.wait_for(|open| *open == 0))
            .await
            .is_ok()
    }
}
