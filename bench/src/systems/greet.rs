//! The gateway scenario's parts: `GET /greeter/greet/{name}` answered with the JSON string
//! `"Hello, {name}"`, either
//!
//! - **direct**: by the same handler served by axum in one process (the bench's own server), or
//! - **through the gateway**: by the real gateway (`gateway::serve_with` and the greeter's REST
//!   extension, what `mesh-api` runs) on a meshrpc node, which calls a real greeter replica
//!   (`greeter::GreeterService` published on a node of its own process, seeded to the gateway's
//!   node) over meshrpc;
//!
//! and the load generator's client: hyper's keep-alive pool over HTTP/1.1, as for `http-json`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::Path;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use meshrpc::Node;

use super::meshrpc_node::{CLUSTER, state_dir};
use super::{Rendezvous, Result, Tls};

/// The name the client greets.
pub(crate) const NAME: &str = "Max";

/// The request path.
pub(crate) fn path() -> String {
    format!("/greeter/greet/{NAME}")
}

/// The body both servers must answer with.
fn expected() -> String {
    format!("\"Hello, {NAME}\"")
}

/// How long a client waits for the route to answer 200 (the greeter joining the gateway's
/// mesh) before it gives up.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// The direct handler: what `greeter::GreeterService::greet` answers, as axum JSON.
async fn greet(Path(name): Path<String>) -> Json<String> {
    Json(format!("Hello, {name}"))
}

/// Serves the greet handler directly with axum until the process stops.
pub(crate) async fn serve_direct(listen: SocketAddr, rendezvous: Rendezvous) -> Result<()> {
    use axum::serve::ListenerExt as _;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    rendezvous(listener.local_addr()?)?;
    let app = Router::new().route("/greeter/greet/{name}", get(greet));
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}

/// Starts the gateway on a meshrpc node of the bench cluster, its HTTP server on `listen`.
pub(crate) async fn start_gateway(
    listen: SocketAddr,
    tls: &Tls,
) -> Result<(Node, gateway::Gateway)> {
    let node = Node::builder(format!("bench-gateway-{}", std::process::id()))
        .cluster(CLUSTER)
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .state_dir(state_dir(tls))
        .start()
        .await?;
    let config = gateway::Config {
        http: listen,
        ..gateway::Config::default()
    };
    // The original REST routes, mounted as `mesh-api` mounts them.
    let greeter_rest = gateway::Extension::new(&greeter::GREETER_SPEC, |context| {
        greeter::rest::router(
            context
                .node()
                .client::<greeter::GreeterClient>()
                .with_options(context.call_options()),
        )
    });
    let gateway = gateway::serve_with(config, node.clone(), vec![greeter_rest]).await?;
    Ok((node, gateway))
}

/// Runs the gateway on a meshrpc node of the bench cluster: says `mesh <node addr>` (where a
/// greeter seeds to), then reports the HTTP address through the rendezvous.
pub(crate) async fn serve_gateway(
    listen: SocketAddr,
    tls: Tls,
    rendezvous: Rendezvous,
) -> Result<()> {
    let (node, gateway) = start_gateway(listen, &tls).await?;
    crate::say(&format!("mesh {}", node.local_addr()))?;
    rendezvous(gateway.local_addr())?;
    std::future::pending::<()>().await;
    gateway.shutdown().await;
    Ok(())
}

/// Starts a greeter replica on a node seeded to `seed` (the gateway's node).
pub(crate) async fn start_greeter(listen: SocketAddr, seed: SocketAddr, tls: &Tls) -> Result<Node> {
    Ok(
        Node::builder(format!("bench-greeter-{}", std::process::id()))
            .cluster(CLUSTER)
            .listen(listen)
            .state_dir(state_dir(tls))
            .seeds([seed.to_string()])
            .publish(greeter::GreeterServer::new(greeter::GreeterService))
            .start()
            .await?,
    )
}

/// Publishes a greeter replica on a node seeded to `seed` (the gateway's node).
pub(crate) async fn serve_greeter(
    listen: SocketAddr,
    seed: Option<SocketAddr>,
    tls: Tls,
    rendezvous: Rendezvous,
) -> Result<()> {
    let seed = seed.ok_or("the greeter needs --seed <the gateway's mesh address>")?;
    let node = start_greeter(listen, seed, &tls).await?;
    rendezvous(node.local_addr())?;
    std::future::pending::<()>().await;
    Ok(())
}

/// The load generator's client: GETs the greet route over a keep-alive pool (one connection
/// per call in flight) and checks every answer.
#[derive(Clone, Debug)]
pub(crate) struct Client {
    http: HyperClient<HttpConnector, Empty<Bytes>>,
    uri: http::Uri,
    expected: Bytes,
}

impl Client {
    /// A client of the server at `addr`, returned once the route answers 200 (within
    /// [`READY_WITHIN`]: a gateway answers 503 until a greeter has joined its mesh).
    pub(crate) async fn connect(addr: SocketAddr) -> Result<Client> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client {
            http: HyperClient::builder(TokioExecutor::new()).build(connector),
            uri: format!("http://{addr}{}", path()).parse()?,
            expected: Bytes::from(expected()),
        };
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            match client.get().await {
                Ok(()) => return Ok(client),
                Err(error) if Instant::now() >= deadline => {
                    return Err(format!(
                        "{} did not answer 200 within {READY_WITHIN:?}: {error}",
                        client.uri
                    )
                    .into());
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// One GET; an error unless it is a 200 with the expected body.
    pub(crate) async fn get(&self) -> Result<()> {
        let request = http::Request::get(self.uri.clone()).body(Empty::new())?;
        let response = self.http.request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if status != http::StatusCode::OK {
            return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)).into());
        }
        if body != self.expected {
            return Err(format!(
                "answered {:?}, expected {:?}",
                String::from_utf8_lossy(&body),
                String::from_utf8_lossy(&self.expected)
            )
            .into());
        }
        Ok(())
    }
}
