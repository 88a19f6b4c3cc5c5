//! The QUIC layer: one endpoint per node that both accepts and opens connections, one
//! persistent connection per peer, one bidirectional stream per call.
//!
//! [`endpoint`] builds the quinn endpoint tuned for a mesh, [`connections`] pools outgoing
//! connections, [`client`] runs a call on a stream and `streams` carries streams of items;
//! the callee's half is [`crate::server`].

pub mod client;
pub mod connections;
pub mod endpoint;
pub(crate) mod goaway;
pub(crate) mod io;
pub(crate) mod streams;

use std::time::Duration;

/// Limits that protect a node from its peers (and its peers from it).
///
/// ```
/// use std::time::Duration;
/// let limits = meshrpc::Limits::default()
///     .max_message_size(1024 * 1024)
///     .request_read_timeout(Duration::from_secs(2));
/// assert_eq!(limits.max_message_size, 1024 * 1024);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// The largest request or response payload accepted, in bytes; checked from the length
    /// prefix before any memory is reserved. Default 4 MiB.
    pub max_message_size: usize,
    /// Streams (calls) a peer may have open on one connection at once; further calls wait for
    /// a free stream. A connection starts at 64 and raises its limit to half as much again as
    /// is open whenever the peer keeps three quarters of it busy, or doubles it (up to 512)
    /// whenever the peer opens eight times the limit within a second, up to this ceiling.
    /// Default 4,096.
    pub max_concurrent_streams: u32,
    /// Calls this node serves at once across all peers; beyond it calls are refused with
    /// `resource_exhausted` (load shedding) and may be retried elsewhere. Default 16,384.
    pub max_concurrent_calls: usize,
    /// How long a peer may take to send a call's request once it opened the stream.
    /// Default 10 s.
    pub request_read_timeout: Duration,
}

impl Limits {
    /// Sets [`Limits::max_message_size`].
    pub fn max_message_size(mut self, bytes: usize) -> Limits {
        self.max_message_size = bytes;
        self
    }

    /// Sets [`Limits::max_concurrent_streams`].
    pub fn max_concurrent_streams(mut self, streams: u32) -> Limits {
        self.max_concurrent_streams = streams;
        self
    }

    /// Sets [`Limits::max_concurrent_calls`].
    pub fn max_concurrent_calls(mut self, calls: usize) -> Limits {
        self.max_concurrent_calls = calls;
        self
    }

    /// Sets [`Limits::request_read_timeout`].
    pub fn request_read_timeout(mut self, timeout: Duration) -> Limits {
        self.request_read_timeout = timeout;
        self
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_message_size: 4 * 1024 * 1024,
            max_concurrent_streams: 4096,
            max_concurrent_calls: 16_384,
            request_read_timeout: Duration::from_secs(10),
        }
    }
}

/// QUIC application error codes used to reset or stop streams and close connections.
pub mod error_code {
    use quinn::VarInt;

    /// The caller gave up on the call (its future was dropped).
    pub const CANCELLED: VarInt = VarInt::from_u32(0x01);
    /// The peer broke the wire protocol on this stream.
    pub const PROTOCOL: VarInt = VarInt::from_u32(0x02);
    /// A frame exceeded a size limit.
    pub const TOO_LARGE: VarInt = VarInt::from_u32(0x03);
    /// The node is shutting down.
    pub const SHUTDOWN: VarInt = VarInt::from_u32(0x04);
    /// The node is serving its limit of calls (load shedding).
    pub const OVERLOADED: VarInt = VarInt::from_u32(0x05);
    /// The sender failed (panicked) while producing a stream of items.
    pub const PANICKED: VarInt = VarInt::from_u32(0x06);
    /// The sender's deadline passed before it finished a stream of items.
    pub const DEADLINE: VarInt = VarInt::from_u32(0x07);
}
