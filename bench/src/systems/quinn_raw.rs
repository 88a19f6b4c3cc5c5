//! Bare quinn: our floor. One bidirectional stream per call; the request is a one-byte method,
//! a little-endian `u32` argument and the payload up to the end of the stream; the reply is the
//! payload up to the end of the stream. Same socket buffers and windows as meshrpc's endpoint,
//! so the difference to meshrpc is the framework, not the tuning.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{TransportConfig, VarInt};

use super::{
    BenchClient, Handler, MAX_IN_FLIGHT, MAX_MESSAGE, Rendezvous, Result, SERVER_NAME, Tls,
};

const ECHO: u8 = 1;
const RELAY: u8 = 2;
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

fn transport() -> Arc<TransportConfig> {
    let window: u64 = 4 * 1024 * 1024 + 64 * 1024;
    let mut config = TransportConfig::default();
    config
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_IN_FLIGHT))
        .initial_rtt(Duration::from_millis(10))
        .keep_alive_interval(Some(Duration::from_secs(5)))
        .stream_receive_window(VarInt::from_u64(window).unwrap_or(VarInt::MAX))
        .receive_window(VarInt::from_u64(window * 4).unwrap_or(VarInt::MAX))
        .send_window(window * 4)
        .mtu_discovery_config(Some({
            let mut discovery = quinn::MtuDiscoveryConfig::default();
            discovery.upper_bound(meshrpc::transport::endpoint::MTU_UPPER_BOUND);
            discovery
        }));
    Arc::new(config)
}

fn endpoint(bind: SocketAddr, server: Option<quinn::ServerConfig>) -> Result<quinn::Endpoint> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(bind),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&bind.into())?;
    Ok(quinn::Endpoint::new(
        // meshrpc's: accepts datagrams as large as MTU discovery may climb to.
        meshrpc::transport::endpoint::endpoint_config(),
        server,
        socket.into(),
        Arc::new(quinn::TokioRuntime),
    )?)
}

/// A client: one connection, a stream per call.
#[derive(Clone, Debug)]
pub(crate) struct Client {
    connection: quinn::Connection,
    // Keeps the client's endpoint driver alive with the connection.
    _endpoint: quinn::Endpoint,
}

impl Client {
    async fn call(&self, method: u8, arg: u32, payload: Bytes) -> Result<Bytes> {
        let (mut send, mut recv) = self.connection.open_bi().await?;
        let mut head = [0u8; 5];
        head[0] = method;
        head[1..].copy_from_slice(&arg.to_le_bytes());
        send.write_all(&head).await?;
        send.write_chunk(payload).await?;
        send.finish()?;
        Ok(Bytes::from(recv.read_to_end(MAX_MESSAGE).await?))
    }
}

impl BenchClient for Client {
    async fn connect(addr: SocketAddr, tls: &Tls) -> Result<Self> {
        let crypto = QuicClientConfig::try_from(tls.client_config()?)?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(transport());
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        }
        .parse()?;
        let endpoint = endpoint(bind, None)?;
        let connection = endpoint.connect_with(config, addr, SERVER_NAME)?.await?;
        Ok(Client {
            connection,
            _endpoint: endpoint,
        })
    }

    async fn echo(&self, payload: Bytes, sleep_ms: u32) -> Result<Bytes> {
        self.call(ECHO, sleep_ms, payload).await
    }

    async fn relay(&self, hops_left: u32, state: Bytes) -> Result<Bytes> {
        self.call(RELAY, hops_left, state).await
    }
}

/// Serves until the process stops.
pub(crate) async fn serve(listen: SocketAddr, tls: Tls, rendezvous: Rendezvous) -> Result<()> {
    let crypto = QuicServerConfig::try_from(tls.server_config()?)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport());
    let endpoint = endpoint(listen, Some(config))?;
    let next = rendezvous(endpoint.local_addr()?)?;
    let handler = Handler::<Client>::new(next, tls);
    while let Some(incoming) = endpoint.accept().await {
        let handler = handler.clone();
        tokio::spawn(async move {
            let Ok(connection) = incoming.await else {
                return;
            };
            while let Ok((send, recv)) = connection.accept_bi().await {
                tokio::spawn(answer(handler.clone(), send, recv));
            }
        });
    }
    Ok(())
}

async fn answer(
    handler: Arc<Handler<Client>>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let Ok(request) = recv.read_to_end(MAX_MESSAGE).await else {
        return;
    };
    if request.len() < 5 {
        let _ = send.reset(VarInt::from_u32(1));
        return;
    }
    let method = request[0];
    let arg = u32::from_le_bytes([request[1], request[2], request[3], request[4]]);
    let payload = Bytes::from(request).slice(5..);
    let reply = match method {
        ECHO => Ok(handler.echo(payload, arg).await),
        RELAY => handler.relay(arg, payload).await,
        _ => Err("unknown method".into()),
    };
    match reply {
        Ok(reply) => {
            if send.write_chunk(reply).await.is_ok() {
                let _ = send.finish();
            }
        }
        Err(_) => {
            let _ = send.reset(VarInt::from_u32(2));
        }
    }
}
