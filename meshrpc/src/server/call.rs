//! [`IncomingCall`], the request type of the server stack: a call whose header and first
//! request message have arrived, routed to one method of a published service.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;

use crate::context::CallContext;
use crate::spec::MethodSpec;
use crate::streaming::Streaming;

/// Who is calling: the peer's address and, when its certificate names one, its verified
/// identity in the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The peer's address, as seen when the connection was made.
    pub addr: SocketAddr,
    /// The identity the peer's certificate proves (its SAN URI `meshrpc://<cluster>/<name>`),
    /// if the certificate carries one. Shared by every call of the connection.
    pub identity: Option<Arc<PeerIdentity>>,
}

/// The identity a node's certificate proves: `meshrpc://<cluster>/<name>` in its subject
/// alternative names, signed by the cluster CA.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// The cluster the certificate was issued for.
    pub cluster: String,
    /// The node's name (`--name`), e.g. `concierge`.
    pub name: String,
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "meshrpc://{}/{}", self.cluster, self.name)
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.identity {
            Some(identity) => write!(f, "{} ({})", identity.name, self.addr),
            None => write!(f, "{} (no identity in its certificate)", self.addr),
        }
    }
}

/// A call on its way through the server stack: the method it resolved to, its context
/// (deadline, metadata), who sent it, its first request message and, for methods with a client
/// stream, the stream of items that follows.
///
/// Layers added with `NodeBuilder::layer` see every call the node serves as one of these, and
/// answer it with a [`Body`](crate::Body) or a [`Status`](crate::Status).
pub struct IncomingCall {
    /// The method called (with its service's name in `method.service`).
    pub method: &'static MethodSpec,
    /// The call's deadline and metadata; handlers read it through
    /// [`CallContext::current`].
    pub context: CallContext,
    /// Who sent the call: one value per connection, shared by all of its calls.
    pub caller: Arc<Caller>,
    /// The first request message (the parameters, MessagePack-encoded).
    pub request: Bytes,
    /// The encoded items of a client stream, for methods that have one.
    pub stream: Option<Streaming<Bytes>>,
}

impl fmt::Debug for IncomingCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingCall")
            .field("service", &self.method.service)
            .field("method", &self.method.name)
            .field("caller", &self.caller)
            .field("request_len", &self.request.len())
            .field("stream", &self.stream.is_some())
            .finish_non_exhaustive()
    }
}
