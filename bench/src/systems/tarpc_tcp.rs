//! tarpc 0.38: `#[tarpc::service]`, bincode over TCP through its serde transport (length
//! delimited frames), with `TCP_NODELAY` on both ends like every other TCP system here.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use serde_bytes::ByteBuf;
use tarpc::server::Channel as _;
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::codec::LengthDelimitedCodec;
use tarpc::{client, context, serde_transport};

use super::{BenchClient, Handler, MAX_IN_FLIGHT, MAX_MESSAGE, Rendezvous, Result, Tls};

#[allow(unreachable_pub, missing_debug_implementations)]
mod service {
    use serde_bytes::ByteBuf;

    /// The bench service.
    #[tarpc::service]
    pub trait BenchService {
        /// Echo.
        async fn echo(payload: ByteBuf, sleep_ms: u32) -> ByteBuf;
        /// One hop of the ring.
        async fn relay(hops_left: u32, state: ByteBuf) -> Result<ByteBuf, String>;
    }
}

use service::{BenchService, BenchServiceClient};

fn framed(
    stream: tokio::net::TcpStream,
) -> tarpc::tokio_util::codec::Framed<tokio::net::TcpStream, LengthDelimitedCodec> {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_MESSAGE)
        .new_framed(stream)
}

/// A client over one TCP connection.
#[derive(Clone, Debug)]
pub(crate) struct Client {
    inner: Arc<BenchServiceClient>,
}

impl BenchClient for Client {
    async fn connect(addr: SocketAddr, _tls: &Tls) -> Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let transport = serde_transport::new(framed(stream), Bincode::default());
        let mut config = client::Config::default();
        config.max_in_flight_requests = MAX_IN_FLIGHT as usize;
        config.pending_request_buffer = 1024;
        let inner = BenchServiceClient::new(config, transport).spawn();
        Ok(Client {
            inner: Arc::new(inner),
        })
    }

    async fn echo(&self, payload: Bytes, sleep_ms: u32) -> Result<Bytes> {
        let reply = self
            .inner
            .echo(
                context::current(),
                ByteBuf::from(Vec::from(payload)),
                sleep_ms,
            )
            .await?;
        Ok(Bytes::from(reply.into_vec()))
    }

    async fn relay(&self, hops_left: u32, state: Bytes) -> Result<Bytes> {
        let reply = self
            .inner
            .relay(
                context::current(),
                hops_left,
                ByteBuf::from(Vec::from(state)),
            )
            .await??;
        Ok(Bytes::from(reply.into_vec()))
    }
}

#[derive(Clone)]
struct Server(Arc<Handler<Client>>);

impl BenchService for Server {
    async fn echo(self, _: context::Context, payload: ByteBuf, sleep_ms: u32) -> ByteBuf {
        let reply = self.0.echo(Bytes::from(payload.into_vec()), sleep_ms).await;
        ByteBuf::from(Vec::from(reply))
    }

    async fn relay(
        self,
        _: context::Context,
        hops_left: u32,
        state: ByteBuf,
    ) -> Result<ByteBuf, String> {
        match self.0.relay(hops_left, Bytes::from(state.into_vec())).await {
            Ok(state) => Ok(ByteBuf::from(Vec::from(state))),
            Err(error) => Err(error.to_string()),
        }
    }
}

/// Serves until the process stops.
pub(crate) async fn serve(listen: SocketAddr, tls: Tls, rendezvous: Rendezvous) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let next = rendezvous(listener.local_addr()?)?;
    let server = Server(Handler::new(next, tls));
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let transport = serde_transport::new(framed(stream), Bincode::default());
        let server = server.clone();
        tokio::spawn(
            tarpc::server::BaseChannel::with_defaults(transport)
                .execute(server.serve())
                .for_each(|call| async move {
                    tokio::spawn(call);
                }),
        );
    }
}
