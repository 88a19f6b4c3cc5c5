//! HTTP/1.1 + JSON, the original Go project's approach: an axum server and a hyper client with
//! a keep-alive connection pool. Bytes travel base64-encoded, as Go's `encoding/json` does for
//! `[]byte`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use super::{BenchClient, Handler, Rendezvous, Result, Tls};

#[derive(Serialize, Deserialize)]
struct EchoRequest {
    payload: String,
    sleep_ms: u32,
}

#[derive(Serialize, Deserialize)]
struct EchoReply {
    payload: String,
}

#[derive(Serialize, Deserialize)]
struct RelayRequest {
    hops_left: u32,
    state: String,
}

#[derive(Serialize, Deserialize)]
struct RelayReply {
    state: String,
}

/// A client with hyper's keep-alive pool (one connection per call in flight).
#[derive(Clone, Debug)]
pub(crate) struct Client {
    http: HyperClient<HttpConnector, Full<Bytes>>,
    base: String,
}

impl Client {
    async fn post<Q: Serialize, A: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        body: &Q,
    ) -> Result<A> {
        let request = http::Request::post(format!("{}{path}", self.base))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(body)?)))?;
        let response = self.http.request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            return Err(
                format!("{path}: HTTP {status}: {}", String::from_utf8_lossy(&body)).into(),
            );
        }
        Ok(serde_json::from_slice(&body)?)
    }
}

impl BenchClient for Client {
    async fn connect(addr: SocketAddr, _tls: &Tls) -> Result<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = HyperClient::builder(TokioExecutor::new()).build(connector);
        Ok(Client {
            http,
            base: format!("http://{addr}"),
        })
    }

    async fn echo(&self, payload: Bytes, sleep_ms: u32) -> Result<Bytes> {
        let request = EchoRequest {
            payload: BASE64.encode(&payload),
            sleep_ms,
        };
        let reply: EchoReply = self.post("/echo", &request).await?;
        Ok(Bytes::from(BASE64.decode(reply.payload)?))
    }

    async fn relay(&self, hops_left: u32, state: Bytes) -> Result<Bytes> {
        let request = RelayRequest {
            hops_left,
            state: BASE64.encode(&state),
        };
        let reply: RelayReply = self.post("/relay", &request).await?;
        Ok(Bytes::from(BASE64.decode(reply.state)?))
    }
}

type AppState = Arc<Handler<Client>>;

async fn echo(
    State(handler): State<AppState>,
    Json(request): Json<EchoRequest>,
) -> Result<Json<EchoReply>, (http::StatusCode, String)> {
    let payload = BASE64
        .decode(request.payload)
        .map_err(|e| (http::StatusCode::BAD_REQUEST, e.to_string()))?;
    let payload = handler.echo(Bytes::from(payload), request.sleep_ms).await;
    Ok(Json(EchoReply {
        payload: BASE64.encode(&payload),
    }))
}

async fn relay(
    State(handler): State<AppState>,
    Json(request): Json<RelayRequest>,
) -> Result<Json<RelayReply>, (http::StatusCode, String)> {
    let state = BASE64
        .decode(request.state)
        .map_err(|e| (http::StatusCode::BAD_REQUEST, e.to_string()))?;
    match handler.relay(request.hops_left, Bytes::from(state)).await {
        Ok(state) => Ok(Json(RelayReply {
            state: BASE64.encode(&state),
        })),
        Err(error) => Err((http::StatusCode::BAD_GATEWAY, error.to_string())),
    }
}

/// Serves until the process stops.
pub(crate) async fn serve(listen: SocketAddr, tls: Tls, rendezvous: Rendezvous) -> Result<()> {
    use axum::serve::ListenerExt as _;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let next = rendezvous(listener.local_addr()?)?;
    let handler: AppState = Handler::new(next, tls);
    let app = Router::new()
        .route("/echo", post(echo))
        .route("/relay", post(relay))
        // The 1 MiB payload is 1.4 MB as base64: lift axum's 2 MB default with room to spare.
        .layer(axum::extract::DefaultBodyLimit::max(super::MAX_MESSAGE))
        .with_state(handler);
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}
