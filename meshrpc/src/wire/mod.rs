//! The wire format, free of I/O so it can be unit-tested, property-tested and fuzzed.
//!
//! A stream carries length-prefixed frames ([`frame`]). A call stream opens with a `CALL` frame
//! holding a [`CallHeader`], then one `DATA` frame with the request; the reply is zero or more
//! `DATA` frames and a final `STATUS` frame ([`StatusBody`]). `docs/PROTOCOL.md` is the
//! byte-level reference.

pub mod frame;
pub mod header;

pub use frame::{Frame, FrameDecoder, FrameError, FrameKind, encode_frame};
pub use header::{CallHeader, HttpHeader, StatusBody};
