//! How a stream's messages are framed for HTTP clients. Every message is one JSON object:
//! `{"item": <value>}` for each item, then exactly one final `{"status":"ok"}`, or
//! `{"status":"<code name>","error":"<message>"}` (with `"details"`, base64, when the service
//! attached some) when the stream failed, so a client can tell a complete stream from a cut
//! one. The objects travel as
//!
//! - [`Framing::NdJson`] (`application/x-ndjson`, the default): one object per line;
//! - [`Framing::Sse`] (`text/event-stream`, when the client accepts it): Server-Sent Events,
//!   `event: item` / `data: {"item": ...}` per item and `event: end` / `data: {"status": ...}`
//!   last;
//! - and on a WebSocket one text message per object (no framing of their own).

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use crate::error::ApiError;

/// The content type of newline-delimited JSON.
pub const NDJSON: &str = "application/x-ndjson";

/// The content type of Server-Sent Events.
pub const EVENT_STREAM: &str = "text/event-stream";

/// How a server stream's messages are written to the HTTP body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One JSON object per line.
    NdJson,
    /// Server-Sent Events.
    Sse,
}

impl Framing {
    /// Server-Sent Events when `Accept` names `text/event-stream`, else NDJSON.
    pub fn negotiate(headers: &http::HeaderMap) -> Framing {
        let wants_sse = headers
            .get_all(http::header::ACCEPT)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|range| {
                range
                    .split(';')
                    .next()
                    .is_some_and(|kind| kind.trim().eq_ignore_ascii_case(EVENT_STREAM))
            });
        if wants_sse {
            Framing::Sse
        } else {
            Framing::NdJson
        }
    }

    /// The body's content type.
    pub fn content_type(self) -> &'static str {
        match self {
            Framing::NdJson => NDJSON,
            Framing::Sse => EVENT_STREAM,
        }
    }

    /// One item, `item_json` being its `{"item": ...}` object.
    pub fn item(self, item_json: &[u8]) -> Bytes {
        self.frame("item", item_json)
    }

    /// The final message for `outcome`.
    pub fn end(self, outcome: &Result<(), ApiError>) -> Bytes {
        self.frame("end", &status_object(outcome))
    }

    fn frame(self, event: &str, json: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(json.len() + 24);
        if self == Framing::Sse {
            out.put_slice(b"event: ");
            out.put_slice(event.as_bytes());
            out.put_slice(b"\ndata: ");
        }
        // JSON from serde_json has no raw newline, so the object is one line (one `data:`).
        out.put_slice(json);
        out.put_slice(if self == Framing::Sse { b"\n\n" } else { b"\n" });
        out.freeze()
    }
}

#[derive(Serialize)]
struct StatusObject<'a> {
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a str>,
}

/// The final object of a stream: `{"status":"ok"}`, or the error's code name and message.
pub fn status_object(outcome: &Result<(), ApiError>) -> Vec<u8> {
    let object = match outcome {
        Ok(()) => StatusObject {
            status: "ok",
            error: None,
            details: None,
        },
        Err(error) => StatusObject {
            status: error.code,
            error: Some(&error.message),
            details: error.details.as_deref(),
        },
    };
    // A struct of strings always serializes.
    serde_json::to_vec(&object).unwrap_or_else(|_| br#"{"status":"internal"}"#.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshrpc::Code;

    #[test]
    fn ndjson_is_one_object_per_line_and_ends_with_the_status() {
        let framing = Framing::NdJson;
        assert_eq!(&framing.item(br#"{"item":1}"#)[..], b"{\"item\":1}\n");
        assert_eq!(&framing.end(&Ok(()))[..], b"{\"status\":\"ok\"}\n");
        let failed = Err(ApiError::new(Code::NotFound, "no \"such\" key"));
        assert_eq!(
            &framing.end(&failed)[..],
            b"{\"status\":\"not_found\",\"error\":\"no \\\"such\\\" key\"}\n"
        );
    }

    #[test]
    fn sse_names_items_and_the_end_as_events() {
        let framing = Framing::Sse;
        assert_eq!(
            &framing.item(br#"{"item":"a"}"#)[..],
            b"event: item\ndata: {\"item\":\"a\"}\n\n"
        );
        assert_eq!(
            &framing.end(&Ok(()))[..],
            b"event: end\ndata: {\"status\":\"ok\"}\n\n"
        );
    }

    #[test]
    fn event_streams_are_chosen_by_accept_and_ndjson_is_the_default() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(Framing::negotiate(&headers), Framing::NdJson);
        headers.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/json, Text/Event-Stream;q=0.9"),
        );
        assert_eq!(Framing::negotiate(&headers), Framing::Sse);
        headers.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/x-ndjson"),
        );
        assert_eq!(Framing::negotiate(&headers), Framing::NdJson);
    }
}
