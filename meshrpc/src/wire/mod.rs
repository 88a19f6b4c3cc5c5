//! The wire format, free of I/O so it can be unit-tested, property-tested and fuzzed.
//!
//! A stream carries length-prefixed frames ([`frame`]). A call stream opens with a `CALL` frame
//! holding a [`CallHeader`], then one `DATA` frame with the request; the reply is zero or more
//! `DATA` frames and a final `STATUS` frame ([`StatusBody`]). A streaming call carries a run of
//! `DATA` frames in either half, decoded by [`ItemDecoder`]. `docs/PROTOCOL.md` is the
//! byte-level reference.

pub mod fast;
pub mod frame;
pub mod header;
pub mod items;

pub use frame::{Frame, FrameBuffer, FrameDecoder, FrameError, FrameKind, encode_frame};
pub use header::{CallHeader, HttpHeader, StatusBody};
pub use items::{Direction, ItemAssembler, ItemDecoder, ItemEvent};
