//! The systems under test. Each one serves the same two calls and offers a client for them:
//!
//! - `echo(payload, sleep_ms) -> payload`: returns the payload, after sleeping `sleep_ms` on the
//!   server (0 for every scenario except the memory one, which holds calls in flight);
//! - `relay(hops_left, state) -> state`: the hop ring. A peer with `hops_left > 0` bumps the hop
//!   counter in the state and calls `relay(hops_left - 1, state)` on the next peer of the ring,
//!   nested and synchronous, and returns what that call returned.
//!
//! Those with server streaming (meshrpc, bare quinn, tonic) also serve
//!
//! - `stream(size, count) -> stream of payloads`: `count` messages of `size` bytes, each produced
//!   only when the transport asks for the next ([`Producer`]), for the streaming scenario.
//!
//! Servers share [`Handler`] and [`Producer`] for the behaviour, so systems differ only in
//! transport and codec.

mod counted;
pub(crate) mod greet;
pub(crate) mod http_json;
pub(crate) mod meshrpc_node;
pub(crate) mod producer;
pub(crate) mod quinn_raw;
pub(crate) mod tarpc_tcp;
pub(crate) mod tonic_grpc;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

pub(crate) use counted::counted;
pub(crate) use producer::Producer;

/// Errors of the harness: boxed, since every one ends up as a line in the report.
pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;
/// Result with the harness error.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

/// Largest message any system accepts (the 1 MiB payload plus framing).
pub(crate) const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// Concurrent calls a connection must accept: the memory scenario holds 10,000.
pub(crate) const MAX_IN_FLIGHT: u32 = 20_000;
/// Server name the self-signed certificate is issued for.
pub(crate) const SERVER_NAME: &str = "localhost";

/// A system under test, by its name on the command line and in the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum System {
    /// meshrpc: generated client and server over its QUIC transport.
    Meshrpc,
    /// Raw quinn, one bidirectional stream per call, length-prefixed: the floor.
    Quinn,
    /// tonic + prost over TLS 1.3.
    TonicTls,
    /// tonic + prost over plaintext HTTP/2 (h2c).
    TonicH2c,
    /// tarpc with bincode over TCP.
    Tarpc,
    /// axum server, hyper pooled client, JSON bodies over HTTP/1.1.
    HttpJson,
}

impl System {
    /// Every system, meshrpc first (the others are its baselines).
    pub(crate) const ALL: [System; 6] = [
        System::Meshrpc,
        System::Quinn,
        System::TonicTls,
        System::TonicH2c,
        System::Tarpc,
        System::HttpJson,
    ];

    /// The name used on the command line and in reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            System::Meshrpc => "meshrpc",
            System::Quinn => "quinn",
            System::TonicTls => "tonic-tls",
            System::TonicH2c => "tonic-h2c",
            System::Tarpc => "tarpc",
            System::HttpJson => "http-json",
        }
    }

    /// One line saying what the system is, for the report.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            System::Meshrpc => "meshrpc: generated client/server, QUIC + mutual TLS, MessagePack",
            System::Quinn => {
                "bare quinn 0.11, TLS 1.3, one bidi stream per call, raw bytes (the floor)"
            }
            System::TonicTls => "tonic 0.14 + prost, HTTP/2 over TLS 1.3 (rustls, ring)",
            System::TonicH2c => "tonic 0.14 + prost, plaintext HTTP/2 (h2c)",
            System::Tarpc => "tarpc 0.38, bincode over TCP (no TLS)",
            System::HttpJson => {
                "axum 0.8 server, hyper 1 pooled client, HTTP/1.1 + JSON (base64 bytes), no TLS"
            }
        }
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for System {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        System::ALL
            .into_iter()
            .find(|system| system.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = System::ALL.iter().map(|s| s.name()).collect();
                format!("unknown system `{s}`; expected one of {}", names.join(", "))
            })
    }
}

/// What a `bench serve` or `bench client` process plays: one of the systems, or a part of the
/// gateway scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Target {
    /// A system's echo server, or its client.
    System(System),
    /// The gateway (`gateway::serve` on a meshrpc node), or the HTTP GET client against it.
    Gateway,
    /// A greeter replica on a meshrpc node seeded to the gateway's (serve only).
    Greeter,
    /// The greet handler served directly by axum, or the HTTP GET client against it.
    Direct,
}

impl Target {
    /// The name used on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Target::System(system) => system.name(),
            Target::Gateway => "gateway",
            Target::Greeter => "greeter",
            Target::Direct => "greet-axum",
        }
    }
}

impl From<System> for Target {
    fn from(system: System) -> Target {
        Target::System(system)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gateway" => Ok(Target::Gateway),
            "greeter" => Ok(Target::Greeter),
            "greet-axum" => Ok(Target::Direct),
            _ => s.parse().map(Target::System).map_err(|_| {
                let names: Vec<_> = System::ALL.iter().map(|s| s.name()).collect();
                format!(
                    "unknown part `{s}`; expected one of {}, gateway, greeter, greet-axum",
                    names.join(", ")
                )
            }),
        }
    }
}

/// The self-signed certificate every TLS system serves and trusts, shared by all processes.
#[derive(Clone, Debug)]
pub(crate) struct Tls {
    /// The directory the certificate lives in (meshrpc keeps its development CA below it).
    pub(crate) dir: PathBuf,
    /// PEM certificate, issued for [`SERVER_NAME`].
    pub(crate) cert_pem: String,
    /// PEM PKCS#8 private key.
    pub(crate) key_pem: String,
}

impl Tls {
    /// Mints a certificate for [`SERVER_NAME`] and writes it into `dir`.
    pub(crate) fn create(dir: &Path) -> Result<Tls> {
        let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])?;
        let tls = Tls {
            dir: dir.to_owned(),
            cert_pem: certified.cert.pem(),
            key_pem: certified.signing_key.serialize_pem(),
        };
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("cert.pem"), &tls.cert_pem)?;
        std::fs::write(dir.join("key.pem"), &tls.key_pem)?;
        Ok(tls)
    }

    /// Reads what [`Tls::create`] wrote.
    pub(crate) fn load(dir: &Path) -> Result<Tls> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .map_err(|e| format!("reading {}: {e}", dir.join(name).display()))
        };
        Ok(Tls {
            dir: dir.to_owned(),
            cert_pem: read("cert.pem")?,
            key_pem: read("key.pem")?,
        })
    }

    /// The certificate in DER form.
    pub(crate) fn cert_der(&self) -> Result<rustls::pki_types::CertificateDer<'static>> {
        use rustls::pki_types::pem::PemObject;
        Ok(rustls::pki_types::CertificateDer::from_pem_slice(
            self.cert_pem.as_bytes(),
        )?)
    }

    /// The private key in DER form.
    pub(crate) fn key_der(&self) -> Result<rustls::pki_types::PrivateKeyDer<'static>> {
        use rustls::pki_types::pem::PemObject;
        Ok(rustls::pki_types::PrivateKeyDer::from_pem_slice(
            self.key_pem.as_bytes(),
        )?)
    }

    /// A rustls client configuration trusting only this certificate.
    pub(crate) fn client_config(&self) -> Result<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert_der()?)?;
        Ok(rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth())
    }

    /// A rustls server configuration serving this certificate.
    pub(crate) fn server_config(&self) -> Result<rustls::ServerConfig> {
        Ok(rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![self.cert_der()?], self.key_der()?)?)
    }
}

/// A client of one system. Futures are `Send` because ring peers call it from inside server
/// handlers, which the servers spawn.
pub(crate) trait BenchClient: Clone + Send + Sync + Sized + 'static {
    /// Connects to a server of this system at `addr`.
    fn connect(addr: SocketAddr, tls: &Tls) -> impl Future<Output = Result<Self>> + Send;

    /// Calls `echo`.
    fn echo(&self, payload: Bytes, sleep_ms: u32) -> impl Future<Output = Result<Bytes>> + Send;

    /// Calls `relay`.
    fn relay(&self, hops_left: u32, state: Bytes) -> impl Future<Output = Result<Bytes>> + Send;

    /// Opens `stream(size, count)`: what arrives, as [`Received`] steps. Dropping the stream
    /// cancels the call. Systems without server streaming answer an error saying so.
    fn server_stream(
        &self,
        size: u32,
        count: u64,
    ) -> impl Future<Output = Result<MessageStream>> + Send {
        let _ = (size, count);
        async { Err(NO_STREAMING.into()) }
    }
}

/// The error of a system that has no server streaming (its scenario row is a dash).
pub(crate) const NO_STREAMING: &str = "this system has no server streaming";

/// Messages received from a server stream since the previous step (one per message for the
/// RPC systems, one per chunk read for bare quinn).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Received {
    /// Whole messages completed.
    pub(crate) messages: u64,
    /// Payload bytes (framing excluded).
    pub(crate) bytes: u64,
}

/// A server stream as the bench client reads it.
pub(crate) type MessageStream = BoxStream<'static, Result<Received>>;

/// The server-side behaviour every system shares.
#[derive(Debug)]
pub(crate) struct Handler<C> {
    next: Option<SocketAddr>,
    tls: Tls,
    client: tokio::sync::OnceCell<C>,
}

impl<C: BenchClient> Handler<C> {
    /// A handler whose ring successor (if any) is `next`.
    pub(crate) fn new(next: Option<SocketAddr>, tls: Tls) -> Arc<Handler<C>> {
        Arc::new(Handler {
            next,
            tls,
            client: tokio::sync::OnceCell::new(),
        })
    }

    /// `echo`: the payload back, after `sleep_ms`.
    pub(crate) async fn echo(&self, payload: Bytes, sleep_ms: u32) -> Bytes {
        if sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(u64::from(sleep_ms))).await;
        }
        payload
    }

    /// `relay`: one hop of the ring.
    pub(crate) async fn relay(&self, hops_left: u32, state: Bytes) -> Result<Bytes> {
        if hops_left == 0 {
            return Ok(state);
        }
        let client = match self.client.get() {
            Some(client) => client,
            // Boxed: the connection is made once, so no hop's future carries its state (for
            // some systems over a kilobyte, which every nested hop would hold).
            None => Box::pin(self.connect()).await?,
        };
        client.relay(hops_left - 1, bump_hop_count(state)).await
    }

    /// The client to the ring successor, connected on first use.
    async fn connect(&self) -> Result<&C> {
        let next = self
            .next
            .ok_or("relay: this peer has no successor in a ring")?;
        self.client
            .get_or_try_init(|| C::connect(next, &self.tls))
            .await
    }
}

/// Adds one to the little-endian hop counter in the first four bytes of a ring state.
pub(crate) fn bump_hop_count(state: Bytes) -> Bytes {
    let mut state = Vec::from(state);
    if state.len() < 4 {
        state.resize(4, 0);
    }
    let count = hop_count(&state).wrapping_add(1);
    state[..4].copy_from_slice(&count.to_le_bytes());
    Bytes::from(state)
}

/// The hop counter of a ring state.
pub(crate) fn hop_count(state: &[u8]) -> u32 {
    match state.get(..4) {
        Some(head) => u32::from_le_bytes([head[0], head[1], head[2], head[3]]),
        None => 0,
    }
}

/// How a server learns where it listens and whom it relays to: it reports its bound address,
/// and gets back its ring successor (the parent writes it once every peer is bound).
pub(crate) type Rendezvous = Box<dyn FnOnce(SocketAddr) -> Result<Option<SocketAddr>> + Send>;

/// Runs `target`'s server on `listen` until the process is stopped (`seed`: the mesh address a
/// greeter joins through).
pub(crate) async fn serve(
    target: Target,
    listen: SocketAddr,
    seed: Option<SocketAddr>,
    tls: Tls,
    rendezvous: Rendezvous,
) -> Result<()> {
    let system = match target {
        Target::System(system) => system,
        Target::Gateway => return greet::serve_gateway(listen, tls, rendezvous).await,
        Target::Greeter => return greet::serve_greeter(listen, seed, tls, rendezvous).await,
        Target::Direct => return greet::serve_direct(listen, rendezvous).await,
    };
    match system {
        System::Meshrpc => meshrpc_node::serve(listen, tls, rendezvous).await,
        System::Quinn => quinn_raw::serve(listen, tls, rendezvous).await,
        System::TonicTls => tonic_grpc::serve(listen, tls, true, rendezvous).await,
        System::TonicH2c => tonic_grpc::serve(listen, tls, false, rendezvous).await,
        System::Tarpc => tarpc_tcp::serve(listen, tls, rendezvous).await,
        System::HttpJson => http_json::serve(listen, tls, rendezvous).await,
    }
}
