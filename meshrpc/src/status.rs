//! The outcome of a call, in the gRPC vocabulary.
//!
//! Every failure a caller can see is a [`Status`]: a [`Code`] that says *who* failed
//! (the caller's input, the mesh, or the handler) and a message that says *what* failed.
//! The numeric codes are gRPC's, so operators and dashboards read them the same way.

use std::fmt;
use std::net::SocketAddr;

use bytes::Bytes;

/// A status code, numbered as in gRPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Code {
    /// Not an error: the call succeeded.
    Ok = 0,
    /// The caller cancelled the call.
    Cancelled = 1,
    /// An error that fits no other code.
    Unknown = 2,
    /// The caller's input was wrong (undecodable payload, bad argument).
    InvalidArgument = 3,
    /// The deadline passed before the call completed.
    DeadlineExceeded = 4,
    /// The requested entity (or service) does not exist.
    NotFound = 5,
    /// The entity the caller tried to create already exists.
    AlreadyExists = 6,
    /// The caller may not do this.
    PermissionDenied = 7,
    /// A limit was hit: message size, concurrency, quota.
    ResourceExhausted = 8,
    /// The system is not in a state that allows the call.
    FailedPrecondition = 9,
    /// The operation was aborted, typically by a concurrency conflict.
    Aborted = 10,
    /// An argument was out of its valid range.
    OutOfRange = 11,
    /// The service or method is not implemented by the callee.
    Unimplemented = 12,
    /// An invariant of the system broke (a bug, on one side or the other).
    Internal = 13,
    /// The callee could not be reached or refused to serve; retrying may help.
    Unavailable = 14,
    /// Unrecoverable data loss or corruption.
    DataLoss = 15,
    /// The caller did not prove who it is.
    Unauthenticated = 16,
}

impl Code {
    /// All codes, in numeric order.
    pub const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The code for a number read off the wire; numbers this version does not know map to
    /// [`Code::Unknown`].
    pub fn from_u32(value: u32) -> Code {
        Code::ALL
            .get(value as usize)
            .copied()
            .unwrap_or(Code::Unknown)
    }

    /// The numeric value sent on the wire.
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// The snake_case name used in JSON and logs, e.g. `deadline_exceeded`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Ok => "ok",
            Code::Cancelled => "cancelled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Aborted => "aborted",
            Code::OutOfRange => "out_of_range",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::DataLoss => "data_loss",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// The HTTP status that best describes this code at an HTTP edge.
    pub fn http_status(self) -> u16 {
        match self {
            Code::Ok => 200,
            Code::Cancelled => 499,
            Code::Unknown | Code::Internal | Code::DataLoss => 500,
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
            Code::DeadlineExceeded => 504,
            Code::NotFound | Code::Unimplemented => 404,
            Code::AlreadyExists | Code::Aborted => 409,
            Code::PermissionDenied => 403,
            Code::ResourceExhausted => 429,
            Code::Unavailable => 503,
            Code::Unauthenticated => 401,
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The failure of a call: a code, a message for humans and optional machine-readable details.
///
/// ```
/// use meshrpc::{Code, Status};
///
/// let status = Status::invalid_argument("a postcard needs a recipient");
/// assert_eq!(status.code(), Code::InvalidArgument);
/// assert_eq!(status.to_string(), "invalid_argument: a postcard needs a recipient");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Status {
    /// Boxed: a `Status` is one pointer, so every `Result<_, Status>` (a call's outcome, each
    /// item of a stream) stays small as it is returned through the stacks' layers. Building
    /// a status is the rare path.
    inner: Box<StatusInner>,
}

#[derive(Clone, PartialEq, Eq)]
struct StatusInner {
    code: Code,
    message: String,
    details: Option<Bytes>,
    refused: bool,
    peer: Option<SocketAddr>,
}

macro_rules! status_constructors {
    ($($(#[$doc:meta])* $name:ident => $code:ident;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(message: impl Into<String>) -> Status {
                Status::new(Code::$code, message)
            }
        )*
    };
}

impl Status {
    /// A status with the given code and message.
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status {
            inner: Box::new(StatusInner {
                code,
                message: message.into(),
                details: None,
                refused: false,
                peer: None,
            }),
        }
    }

    status_constructors! {
        /// The caller cancelled the call.
        cancelled => Cancelled;
        /// An error that fits no other code.
        unknown => Unknown;
        /// The caller's input was wrong.
        invalid_argument => InvalidArgument;
        /// The deadline passed.
        deadline_exceeded => DeadlineExceeded;
        /// Something the caller named does not exist.
        not_found => NotFound;
        /// The thing the caller tried to create exists already.
        already_exists => AlreadyExists;
        /// The caller may not do this.
        permission_denied => PermissionDenied;
        /// A limit was hit.
        resource_exhausted => ResourceExhausted;
        /// The system is not in a state that allows the call.
        failed_precondition => FailedPrecondition;
        /// The operation was aborted.
        aborted => Aborted;
        /// An argument was out of range.
        out_of_range => OutOfRange;
        /// The callee does not implement this.
        unimplemented => Unimplemented;
        /// An invariant broke.
        internal => Internal;
        /// The callee could not be reached or would not serve.
        unavailable => Unavailable;
        /// Data was lost or corrupted.
        data_loss => DataLoss;
        /// The caller did not authenticate.
        unauthenticated => Unauthenticated;
    }

    /// `deadline_exceeded` for a call whose deadline passed before it was answered. The caller
    /// (whose timer fires) and the callee (which drops the handler) use these same words, so
    /// an expired call reads the same whichever side noticed first.
    pub fn deadline_passed(service: &str, method: &str) -> Status {
        Status::deadline_exceeded(format!(
            "the deadline passed before `{service}.{method}` answered"
        ))
    }

    /// A refusal: the callee guarantees that the handler never started, so the call may be
    /// retried on another replica even if the method is not idempotent (a draining node, a
    /// shed call, a connection that failed before the request was sent).
    pub fn refused(code: Code, message: impl Into<String>) -> Status {
        Status::new(code, message).with_refused(true)
    }

    /// Attaches machine-readable details (sent as a MessagePack binary on the wire).
    pub fn with_details(mut self, details: impl Into<Bytes>) -> Status {
        self.inner.details = Some(details.into());
        self
    }

    /// Marks (or unmarks) this status as a refusal; see [`Status::refused`].
    pub fn with_refused(mut self, refused: bool) -> Status {
        self.inner.refused = refused;
        self
    }

    /// Records which replica answered with (or failed with) this status.
    pub fn with_peer(mut self, peer: SocketAddr) -> Status {
        self.inner.peer = Some(peer);
        self
    }

    /// The replica this status came from, when a balancer chose one.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.inner.peer
    }

    /// The code.
    pub fn code(&self) -> Code {
        self.inner.code
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// The machine-readable details, if any.
    pub fn details(&self) -> Option<&Bytes> {
        self.inner.details.as_ref()
    }

    /// Whether the callee guarantees the handler never ran (see [`Status::refused`]).
    pub fn is_refused(&self) -> bool {
        self.inner.refused
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Status");
        debug
            .field("code", &self.inner.code)
            .field("message", &self.inner.message);
        if let Some(details) = &self.inner.details {
            debug.field("details_len", &details.len());
        }
        if self.inner.refused {
            debug.field("refused", &true);
        }
        if let Some(peer) = self.inner.peer {
            debug.field("peer", &peer);
        }
        debug.finish()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.inner.code, self.inner.message)
    }
}

impl std::error::Error for Status {}

impl From<std::io::Error> for Status {
    fn from(error: std::io::Error) -> Status {
        Status::unavailable(format!("i/o error: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_their_numbers() {
        for code in Code::ALL {
            assert_eq!(Code::from_u32(code.as_u32()), code);
        }
        assert_eq!(Code::from_u32(17), Code::Unknown);
        assert_eq!(Code::from_u32(u32::MAX), Code::Unknown);
    }

    #[test]
    fn refusals_are_marked_and_displayed_like_any_status() {
        let status = Status::refused(Code::Unavailable, "node is draining");
        assert!(status.is_refused());
        assert!(!Status::unavailable("x").is_refused());
        assert_eq!(status.to_string(), "unavailable: node is draining");
    }
}
