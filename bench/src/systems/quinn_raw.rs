//! Bare quinn: our floor. One bidirectional stream per call; the request is a one-byte method,
//! a little-endian `u32` argument and the payload up to the end of the stream; the reply is the
//! payload up to the end of the stream. `produce` (method 3, the argument is the message size and
//! the payload the count, a little-endian `u64`) answers raw frames on the same stream: a
//! little-endian `u32` length and the payload, per message. Same socket buffers and windows as
//! meshrpc's endpoint, so the difference to meshrpc is the framework, not the tuning.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{TransportConfig, VarInt};

use super::{
    BenchClient, Handler, MAX_IN_FLIGHT, MAX_MESSAGE, MessageStream, Producer, Received,
    Rendezvous, Result, SERVER_NAME, Tls,
};

const ECHO: u8 = 1;
const RELAY: u8 = 2;
const PRODUCE: u8 = 3;
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
        let mut recv = self.request(method, arg, payload).await?;
        Ok(Bytes::from(recv.read_to_end(MAX_MESSAGE).await?))
    }

    /// Opens a stream and sends a whole request on it; answers the receiving side.
    async fn request(&self, method: u8, arg: u32, payload: Bytes) -> Result<quinn::RecvStream> {
        let (mut send, recv) = self.connection.open_bi().await?;
        let mut head = [0u8; 5];
        head[0] = method;
        head[1..].copy_from_slice(&arg.to_le_bytes());
        send.write_all(&head).await?;
        send.write_chunk(payload).await?;
        send.finish()?;
        Ok(recv)
    }
}

/// Counts the length-prefixed frames of a `produce` answer across chunk boundaries.
#[derive(Debug, Default)]
struct Frames {
    head: [u8; 4],
    head_len: usize,
    body_left: usize,
}

impl Frames {
    /// The messages completed and payload bytes in `chunk`.
    fn feed(&mut self, mut chunk: &[u8]) -> Received {
        let mut received = Received::default();
        while !chunk.is_empty() {
            if self.body_left > 0 {
                let take = self.body_left.min(chunk.len());
                self.body_left -= take;
                received.bytes += take as u64;
                chunk = &chunk[take..];
                if self.body_left == 0 {
                    received.messages += 1;
                }
            } else {
                let take = (4 - self.head_len).min(chunk.len());
                self.head[self.head_len..self.head_len + take].copy_from_slice(&chunk[..take]);
                self.head_len += take;
                chunk = &chunk[take..];
                if self.head_len == 4 {
                    self.head_len = 0;
                    self.body_left = u32::from_le_bytes(self.head) as usize;
                    if self.body_left == 0 {
                        received.messages += 1;
                    }
                }
            }
        }
        received
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

    async fn server_stream(&self, size: u32, count: u64) -> Result<MessageStream> {
        let count = Bytes::copy_from_slice(&count.to_le_bytes());
        let recv = self.request(PRODUCE, size, count).await?;
        // Dropping the receiving side stops the sender (STOP_SENDING), as a cancel does.
        Ok(
            futures::stream::unfold((recv, Frames::default()), |(mut recv, mut frames)| async {
                match recv.read_chunk(usize::MAX, true).await {
                    Ok(Some(chunk)) => {
                        let received = frames.feed(&chunk.bytes);
                        Some((Ok(received), (recv, frames)))
                    }
                    Ok(None) => None,
                    Err(error) => Some((Err(error.into()), (recv, frames))),
                }
            })
            .boxed(),
        )
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
    if method == PRODUCE {
        return produce(send, arg, &payload).await;
    }
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

/// Small frames are written in batches of about this many bytes, as any framing layer would.
const BATCH: usize = 32 * 1024;

/// Writes `count` (a little-endian `u64` in `payload`) frames of `size` bytes, until done or
/// until the reader stops the stream. Frames smaller than [`BATCH`] are gathered into one
/// write; larger ones are written as they are, without a copy.
async fn produce(mut send: quinn::SendStream, size: u32, payload: &[u8]) {
    let Ok(count) = <[u8; 8]>::try_from(payload) else {
        let _ = send.reset(VarInt::from_u32(1));
        return;
    };
    let producer = Producer::new(size, u64::from_le_bytes(count));
    let head = (size as usize).min(MAX_MESSAGE) as u32;
    let head = Bytes::copy_from_slice(&head.to_le_bytes());
    let mut batch = bytes::BytesMut::new();
    for message in producer {
        let written = if message.len() >= BATCH {
            send.write_all_chunks(&mut [head.clone(), message]).await
        } else {
            batch.extend_from_slice(&head);
            batch.extend_from_slice(&message);
            if batch.len() < BATCH {
                continue;
            }
            send.write_chunk(batch.split().freeze()).await
        };
        if written.is_err() {
            return;
        }
    }
    if !batch.is_empty() && send.write_chunk(batch.freeze()).await.is_err() {
        return;
    }
    let _ = send.finish();
}
