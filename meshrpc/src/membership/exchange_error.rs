//! Why a full-state membership exchange (a seed join, or its answer) failed.

use crate::status::Status;
use crate::wire::{FrameError, FrameKind};

/// Why a full-state exchange with a seed, or the encoding or decoding of its member list,
/// failed. Logged where a join is retried; never sent to the peer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    /// No connection to the seed could be made.
    #[error("no connection to the seed: {0}")]
    Connect(Status),
    /// The connection could not open a stream.
    #[error("could not open a stream to the seed: {0}")]
    Open(#[from] quinn::ConnectionError),
    /// The member list could not be written.
    #[error("could not send the member list: {0}")]
    Write(#[from] quinn::WriteError),
    /// The seed's answer did not arrive in time.
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// Reading the answer failed, or it broke the wire format.
    #[error("could not read the seed's answer: {0}")]
    Read(Status),
    /// The seed finished the stream without answering.
    #[error("the seed closed the stream without an answer")]
    NoAnswer,
    /// The answer was cut off inside its frame.
    #[error("a truncated member list")]
    Truncated,
    /// The answer was another kind of frame.
    #[error("a {0:?} frame instead of a member list")]
    WrongFrame(FrameKind),
    /// The frame around the answer broke the wire format.
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// The member list did not decode.
    #[error("malformed member list: {0}")]
    Malformed(#[from] rmp_serde::decode::Error),
    /// The member list could not be encoded.
    #[error("could not encode the member list: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// The member list is larger than an exchange may be.
    #[error("a member list of {size} bytes exceeds the {limit}-byte exchange limit")]
    TooLarge {
        /// The encoded list's size.
        size: usize,
        /// [`super::core::MAX_SYNC_MESSAGE`].
        limit: usize,
    },
    /// The node's membership agent has stopped (the node is shutting down).
    #[error("membership stopped")]
    Stopped,
}
