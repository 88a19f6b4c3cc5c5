//! Builds a node's quinn endpoint: TLS from [`TlsMaterial`], transport parameters for a mesh
//! on a LAN, and a UDP socket with large buffers (small ones overflow under large payloads and
//! the resulting loss costs far more than the memory).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use socket2::{Domain, Protocol, Socket, Type};

use super::Limits;
use crate::tls::{TlsError, TlsMaterial};

/// UDP socket buffer size requested for both directions.
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// The largest UDP payload MTU discovery may climb to, and the largest this endpoint accepts.
/// Loopback and jumbo-frame LANs carry it, and large messages need far fewer packets; on an
/// ordinary path discovery settles at the path's MTU. Kept under ~6.5 KB: quinn batches 10 segments per GSO send, and a batch
/// over 64 KiB is dropped.
pub const MTU_UPPER_BOUND: u16 = 6400;

/// Why an endpoint could not be created.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// TLS material was unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The UDP socket could not be bound.
    #[error("could not listen on {addr}: {source} (is another process using this port?)")]
    Bind {
        /// The listen address.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Streams a peer may open at first on a new connection (see [`Limits::max_concurrent_streams`]).
pub const INITIAL_STREAM_LIMIT: u32 = 64;

/// The stream limit a connection starts with under `limits`.
pub fn initial_stream_limit(limits: &Limits) -> u32 {
    INITIAL_STREAM_LIMIT.min(limits.max_concurrent_streams)
}

/// The transport parameters of every meshrpc connection.
pub fn transport_config(limits: &Limits) -> TransportConfig {
    let mut config = TransportConfig::default();
    let window = (limits.max_message_size as u64)
        .saturating_add(64 * 1024)
        .max(1024 * 1024);
    config
        // quinn reserves state for every stream a peer may open, so a connection starts small
        // and the server raises the limit as the peer uses it (`Server::serve_connection`).
        .max_concurrent_bidi_streams(VarInt::from_u32(initial_stream_limit(limits)))
        .max_concurrent_uni_streams(VarInt::from_u32(16))
        // Keep-alives well inside the idle timeout keep idle mesh connections open.
        .keep_alive_interval(Some(Duration::from_secs(5)))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(20_000))))
        // A LAN-sized first guess, so the first lost packet is retried in milliseconds.
        .initial_rtt(Duration::from_millis(10))
        .stream_receive_window(VarInt::from_u64(window).unwrap_or(VarInt::MAX))
        .receive_window(VarInt::from_u64(window.saturating_mul(4)).unwrap_or(VarInt::MAX))
        .send_window(window.saturating_mul(4))
        .datagram_receive_buffer_size(Some(1024 * 1024))
        .mtu_discovery_config(Some({
            let mut discovery = quinn::MtuDiscoveryConfig::default();
            discovery.upper_bound(MTU_UPPER_BOUND);
            discovery
        }));
    config
}

/// The endpoint settings of every meshrpc node: it accepts datagrams up to
/// [`MTU_UPPER_BOUND`], so that a peer's discovery may climb that far (peers never send
/// datagrams larger than the size the receiver announces, whatever their own bound).
pub fn endpoint_config() -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    // In range (1200..=65527) by construction; the default stays if quinn ever refuses it.
    let _ = config.max_udp_payload_size(MTU_UPPER_BOUND);
    config
}

/// Creates the endpoint bound to `listen`, serving and connecting with `tls`.
pub fn build_endpoint(
    listen: SocketAddr,
    tls: &TlsMaterial,
    cluster: &str,
    limits: &Limits,
) -> Result<quinn::Endpoint, EndpointError> {
    let transport = Arc::new(transport_config(limits));

    let server_tls = QuicServerConfig::try_from(tls.server_config(cluster)?)
        .map_err(|error| TlsError::Rustls(rustls::Error::General(error.to_string())))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
    server.transport_config(transport.clone());

    let client_tls = QuicClientConfig::try_from(tls.client_config()?)
        .map_err(|error| TlsError::Rustls(rustls::Error::General(error.to_string())))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_tls));
    client.transport_config(transport);

    let socket = bind_socket(listen).map_err(|source| EndpointError::Bind {
        addr: listen,
        source,
    })?;
    let runtime = Arc::new(quinn::TokioRuntime);
    let mut endpoint = quinn::Endpoint::new(endpoint_config(), Some(server), socket, runtime)
        .map_err(|source| EndpointError::Bind {
            addr: listen,
            source,
        })?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

fn bind_socket(listen: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if listen.is_ipv6() {
        // Accept IPv4 peers too when listening on [::].
        let _ = socket.set_only_v6(false);
    }
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&listen.into())?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that kept a session ticket from its first connection and offers 0-RTT on the
    /// second: the node must not take early data, which a captured first flight could replay.
    #[tokio::test]
    async fn a_resuming_client_cannot_send_early_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let material = TlsMaterial::dev(dir.path(), "test", "node").expect("mint");
        let node = build_endpoint(
            "127.0.0.1:0".parse().expect("addr"),
            &material,
            "test",
            &Limits::default(),
        )
        .expect("endpoint");
        let addr = node.local_addr().expect("local addr");
        let serve = tokio::spawn(async move {
            while let Some(incoming) = node.accept().await {
                let Ok(connection) = incoming.await else {
                    continue;
                };
                // Some application data after the handshake, so the session ticket has
                // reached the client by the time it reads it.
                if let Ok(mut stream) = connection.open_uni().await {
                    let _ = stream.write_all(b"hi").await;
                    let _ = stream.finish();
                }
                connection.closed().await;
            }
        });

        let client_material = TlsMaterial::dev(dir.path(), "test", "client").expect("mint");
        let mut tls = client_material.client_config().expect("client config");
        tls.enable_early_data = true;
        let tls = QuicClientConfig::try_from(tls).expect("quic client config");
        let mut client =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
        client.set_default_client_config(quinn::ClientConfig::new(Arc::new(tls)));

        let first = client
            .connect(addr, "test.meshrpc")
            .expect("connect")
            .await
            .expect("first handshake");
        let mut stream = first.accept_uni().await.expect("stream");
        stream.read_to_end(16).await.expect("read");
        first.close(0u32.into(), b"done");

        let second = client.connect(addr, "test.meshrpc").expect("connect");
        match second.into_0rtt() {
            Ok((connection, accepted)) => {
                assert!(!accepted.await, "the node accepted 0-RTT data");
                drop(connection);
            }
            Err(connecting) => {
                connecting.await.expect("the full handshake still succeeds");
            }
        }
        serve.abort();
    }
}
