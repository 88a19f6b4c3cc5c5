#![warn(missing_docs)]
//! The meshrpc API gateway (binary `mesh-api`): an axum server that joins the mesh and serves
//!
//! - the routes of the [`Extension`]s the binary mounts (`mesh-api` mounts the original
//!   gateway's REST routes for the greeter, `GET /greeter/greet/{name}` and
//!   `POST /greeter/sendPostcard/{recipient}/{address}/{message}`, from `greeter::rest`); the
//!   library itself depends on no service;
//! - every published method as `POST /{service}/{method}`, JSON in and out, transcoded to and
//!   from MessagePack and checked against the service's descriptor (and as
//!   `GET /{service}/{method}?param=...` when it is idempotent with scalar parameters);
//! - the legacy HTTP handlers services publish, under `/{service}/...`;
//! - `/healthz`, `/readyz`, `/metrics` and `/openapi.json`;
//! - a live dashboard at `/dashboard` (members, services, calls/s, errors, p50/p99), fed by
//!   `/dashboard/state` ([`dashboard`]);
//!
//! with optional API keys, one access-log line per request, bounds on what clients can make it
//! hold ([`admission`]), and one JSON error shape for everything that fails ([`error`]). [`serve`] runs it on a started
//! [`meshrpc::Node`], so tests can run the gateway in-process too.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let node = meshrpc::Node::builder("mesh-api").start().await?;
//! let gateway = gateway::serve(gateway::Config::default(), node.clone()).await?;
//! println!("serving on http://{}", gateway.local_addr());
//! meshrpc::node::wait_for_signal().await;
//! gateway.shutdown().await;
//! node.shutdown().await;
//! # Ok(()) }
//! ```

pub mod access_log;
pub mod admission;
pub mod auth;
pub mod config;
pub mod dashboard;
pub mod descriptors;
pub mod error;
pub mod extension;
pub mod framing;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod routes;
pub mod stream_end;
pub mod trace;
pub mod transcode;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::{any, get};
use meshrpc::Node;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::{Config, GatewayArgs};
pub use extension::{Extension, ExtensionContext};

use crate::admission::Admission;
use crate::auth::ApiKeys;
use crate::dashboard::Dashboard;
use crate::descriptors::Descriptors;
use crate::metrics::HttpMetrics;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The HTTP address could not be bound.
    #[error("could not listen for HTTP on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// What every route shares.
#[derive(Debug)]
pub struct Shared {
    node: Node,
    config: Config,
    keys: ApiKeys,
    descriptors: Arc<Descriptors>,
    metrics: Arc<HttpMetrics>,
    admission: Admission,
    extensions: Vec<Extension>,
    dashboard: Arc<Dashboard>,
}

impl Shared {
    /// State for a gateway on `node`, with no extensions.
    pub fn new(config: Config, node: Node) -> Arc<Shared> {
        Shared::with_extensions(config, node, Vec::new())
    }

    /// State for a gateway on `node` that mounts `extensions`: their services are known from
    /// the start.
    pub fn with_extensions(config: Config, node: Node, extensions: Vec<Extension>) -> Arc<Shared> {
        let builtin: Vec<_> = extensions.iter().map(Extension::spec).collect();
        let descriptors = Descriptors::new(node.clone(), &builtin);
        let admission = Admission::new(config.max_in_flight, config.max_buffered, config.max_body);
        Arc::new(Shared {
            keys: ApiKeys::new(&config.api_keys),
            admission,
            node,
            config,
            descriptors,
            metrics: Arc::new(HttpMetrics::new()),
            extensions,
            dashboard: Arc::new(Dashboard::default()),
        })
    }

    /// The node the gateway calls through.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The descriptor cache.
    pub fn descriptors(&self) -> &Arc<Descriptors> {
        &self.descriptors
    }

    /// The dashboard's stats history.
    pub fn dashboard(&self) -> &Arc<Dashboard> {
        &self.dashboard
    }
}

/// The gateway's routes and middleware over `shared`.
pub fn router(shared: Arc<Shared>) -> Router {
    let middleware = middleware::Middleware::new(
        shared.keys.clone(),
        shared.admission.clone(),
        shared.metrics.clone(),
    );
    // One `Router::layer` call per set of routes (see `middleware`), before the extensions
    // are merged in, so each route is wrapped once.
    let stack = |middleware: middleware::Middleware| {
        tower::ServiceBuilder::new()
            .layer(trace::layer())
            .layer(middleware)
    };
    let context = ExtensionContext::new(shared.node.clone(), shared.config.request_timeout);
    let extensions: Vec<Router> = shared
        .extensions
        .iter()
        .map(|extension| {
            extension
                .routes(&context)
                // Their other methods get the gateway's 405, JSON, with `Allow`.
                .method_not_allowed_fallback(routes::method_not_allowed)
                .layer(stack(middleware.for_extension(extension.spec().name)))
        })
        .collect();
    let mut app = Router::new()
        .route("/healthz", get(routes::ops::healthz))
        .route("/readyz", get(routes::ops::readyz))
        .route("/metrics", get(routes::ops::metrics))
        .route("/openapi.json", get(routes::ops::openapi))
        .route("/dashboard", get(routes::dashboard::page))
        .route("/dashboard/state", get(routes::dashboard::state))
        // After the routes it applies to: their other methods get 405, JSON, with `Allow`.
        .method_not_allowed_fallback(routes::method_not_allowed)
        .route("/{service}/{*rest}", any(routes::dispatch))
        .fallback(routes::not_found)
        .with_state(shared)
        .layer(stack(middleware));
    for extension in extensions {
        app = app.merge(extension);
    }
    app
}

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<std::io::Result<()>>,
    refresher: JoinHandle<()>,
    poller: JoinHandle<()>,
}

impl Gateway {
    /// The address HTTP is served on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops taking connections and waits for requests in flight.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.server).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "HTTP server stopped with an error"),
            Err(error) => tracing::warn!(%error, "HTTP server task failed"),
        }
        self.refresher.abort();
        self.poller.abort();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.refresher.abort();
        self.poller.abort();
        self.server.abort();
    }
}

/// How long a client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepts HTTP/1.1 connections until `stopped`, then lets the open ones finish. Each
/// connection has a header read timeout (a client dribbling its headers is cut off), and
/// handlers see the client's address as `ConnectInfo`.
async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    mut stopped: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    // Raised to stop the connections gracefully; closed once every connection is done.
    let (stop_all, _) = tokio::sync::watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(%error, "accepting an HTTP connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stopped => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(remote));
                routes::normalize_path(&mut request);
                tower::ServiceExt::oneshot(app.clone(), request)
            });
        // Upgrades: the WebSocket routes of bidirectional methods. A WebSocket runs on in its
        // own task once upgraded; a graceful stop waits for the HTTP connections only.
        let connection = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut stop = stop_all.subscribe();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                _ = stop.changed() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = ended {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
            drop(stop);
        });
    }
    drop(listener);
    let _ = stop_all.send(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), stop_all.closed()).await;
    Ok(())
}

/// Binds `config.http` and serves the gateway on `node` in the background. Returns as soon as
/// the socket listens: routes answer 503 for services no member serves yet, and start working
/// the moment one joins.
pub async fn serve(config: Config, node: Node) -> Result<Gateway, GatewayError> {
    serve_with(config, node, Vec::new()).await
}

/// [`serve`], with the routes of `extensions` mounted beside the generic ones.
pub async fn serve_with(
    config: Config,
    node: Node,
    extensions: Vec<Extension>,
) -> Result<Gateway, GatewayError> {
    let listener = tokio::net::TcpListener::bind(config.http)
        .await
        .map_err(|source| GatewayError::Bind {
            addr: config.http,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| GatewayError::Bind {
        addr: config.http,
        source,
    })?;
    let shared = Shared::with_extensions(config, node, extensions);
    let refresher = shared.descriptors.spawn_refresher();
    let poller = dashboard::poller::spawn(shared.node.clone(), shared.dashboard.clone());
    let app = router(shared);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve_connections(listener, app, stopped));
    tracing::info!(%addr, "gateway serving HTTP");
    Ok(Gateway {
        addr,
        stop: Some(stop),
        server,
        refresher,
        poller,
    })
}
