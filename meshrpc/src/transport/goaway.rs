//! How a node that shuts down tells each peer which of its calls it never read, so the peer
//! can send exactly those elsewhere (HTTP/3's GOAWAY, carried in QUIC's close reason).
//!
//! A stopping node stops accepting streams on a connection, answers every stream it did
//! accept, waits until the peer has received those answers, and closes the connection with
//! [`error_code::SHUTDOWN`] and the reason `node shut down; streams from N unread`: `N` is
//! the index of the first stream the peer opened that this node never read. A caller whose
//! stream was lost with such a close, and whose stream index is `N` or above, knows that the
//! call never ran: it is refused, not failed.

use quinn::{ConnectionError, StreamId};

use super::error_code;

const PREFIX: &str = "node shut down; streams from ";
const SUFFIX: &str = " unread";

/// The close reason of a connection on which the peer's streams from `first_unread` on were
/// never read.
pub(crate) fn close_reason(first_unread: u64) -> String {
    format!("{PREFIX}{first_unread}{SUFFIX}")
}

/// The first stream index the closing peer never read, if `error` is such a close.
fn first_unread(error: &ConnectionError) -> Option<u64> {
    let ConnectionError::ApplicationClosed(close) = error else {
        return None;
    };
    if close.error_code != error_code::SHUTDOWN {
        return None;
    }
    std::str::from_utf8(&close.reason)
        .ok()?
        .strip_prefix(PREFIX)?
        .strip_suffix(SUFFIX)?
        .parse()
        .ok()
}

/// Whether the peer closed the connection with `error` without ever reading `stream` (one
/// this side opened).
pub(crate) fn never_read(error: &ConnectionError, stream: StreamId) -> bool {
    first_unread(error).is_some_and(|first| stream.index() >= first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn::VarInt;

    fn closed(code: VarInt, reason: &str) -> ConnectionError {
        ConnectionError::ApplicationClosed(quinn::ApplicationClose {
            error_code: code,
            reason: bytes::Bytes::copy_from_slice(reason.as_bytes()),
        })
    }

    #[test]
    fn the_reason_round_trips() {
        let error = closed(error_code::SHUTDOWN, &close_reason(42));
        assert_eq!(first_unread(&error), Some(42));
    }

    #[test]
    fn other_closes_say_nothing_about_unread_streams() {
        assert_eq!(first_unread(&closed(error_code::SHUTDOWN, "closed")), None);
        assert_eq!(
            first_unread(&closed(error_code::PROTOCOL, &close_reason(3))),
            None
        );
        assert_eq!(
            first_unread(&closed(
                error_code::SHUTDOWN,
                "node shut down; streams from x unread"
            )),
            None
        );
        assert_eq!(first_unread(&ConnectionError::TimedOut), None);
        assert_eq!(first_unread(&ConnectionError::Reset), None);
    }

    #[test]
    fn only_streams_from_the_first_unread_one_on_were_never_read() {
        let error = closed(error_code::SHUTDOWN, &close_reason(5));
        let stream = |index| StreamId::new(quinn::Side::Client, quinn::Dir::Bi, index);
        assert!(!never_read(&error, stream(4)));
        assert!(never_read(&error, stream(5)));
        assert!(never_read(&error, stream(6)));
        assert!(!never_read(&ConnectionError::TimedOut, stream(6)));
    }
}
