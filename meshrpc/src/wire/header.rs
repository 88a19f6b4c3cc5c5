//! The MessagePack bodies of `CALL`, `STATUS` and `HTTP` frames.
//!
//! Every body is a map with named keys; decoders ignore keys they do not know, so later
//! versions can add fields without breaking older peers.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::metadata::Metadata;
use crate::status::{Code, Status};

/// The body of a `CALL` frame: which method, by when, with what metadata. Names borrow from
/// the frame when decoded, so routing a call allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallHeader<'a> {
    /// The service's name.
    #[serde(borrow)]
    pub service: Cow<'a, str>,
    /// The method's name.
    #[serde(borrow)]
    pub method: Cow<'a, str>,
    /// Milliseconds the caller still waits, counted from when the frame is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Metadata pairs (including W3C `traceparent`).
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    pub metadata: Metadata,
    /// The caller's sticky-session key, if any (informational for the callee).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_key: Option<String>,
}

/// The body of a `STATUS` frame: how the call ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusBody {
    /// The numeric status code (0 = ok).
    pub code: u32,
    /// A human-readable message (empty when ok).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Optional machine-readable details.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::codec::shared_bytes::option"
    )]
    pub details: Option<Bytes>,
    /// True when the callee guarantees the handler never ran (safe to retry anywhere).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refused: bool,
}

impl StatusBody {
    /// The body of a successful reply.
    pub fn ok() -> StatusBody {
        StatusBody {
            code: 0,
            message: String::new(),
            details: None,
            refused: false,
        }
    }

    /// Decodes a `STATUS` frame's body: the `ok` of every successful call recognised by its
    /// bytes, anything else read by the general decoder.
    pub fn decode(body: &[u8]) -> Result<StatusBody, rmp_serde::decode::Error> {
        if body == super::fast::OK_STATUS_BODY {
            return Ok(StatusBody::ok());
        }
        crate::codec::from_slice_bounded(body, crate::codec::MAX_HEADER_DEPTH)
    }

    /// Whether this ends the call successfully.
    pub fn is_ok(&self) -> bool {
        self.code == 0
    }

    /// The [`Status`] this body describes (callers check [`StatusBody::is_ok`] first).
    pub fn into_status(self) -> Status {
        let mut status = Status::new(Code::from_u32(self.code), self.message);
        if let Some(details) = self.details {
            status = status.with_details(details);
        }
        status.with_refused(self.refused)
    }
}

impl From<&Status> for StatusBody {
    fn from(status: &Status) -> StatusBody {
        StatusBody {
            code: status.code().as_u32(),
            message: status.message().to_owned(),
            details: status.details().cloned(),
            refused: status.is_refused(),
        }
    }
}

/// The body of an `HTTP` frame: which service's HTTP handler the tunnel reaches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpHeader {
    /// The service whose legacy HTTP handler serves the tunnelled requests.
    pub service: String,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_call_header_is_a_map_with_named_keys() {
        let header = CallHeader {
            service: "greeter".into(),
            method: "greet".into(),
            deadline_ms: Some(250),
            metadata: Metadata::new(),
            sticky_key: None,
        };
        let bytes = rmp_serde::to_vec_named(&header).expect("encodes");
        assert_eq!(
            bytes,
            b"\x83\xa7service\xa7greeter\xa6method\xa5greet\xabdeadline_ms\xcc\xfa"
        );
    }

    #[test]
    fn unknown_keys_are_ignored_for_forward_compatibility() {
        #[derive(Serialize)]
        struct Newer<'a> {
            service: &'a str,
            method: &'a str,
            priority: u8,
        }
        let bytes = rmp_serde::to_vec_named(&Newer {
            service: "s",
            method: "m",
            priority: 3,
        })
        .expect("encodes");
        let header: CallHeader = rmp_serde::from_slice(&bytes).expect("decodes");
        assert_eq!(header.service, "s");
        assert_eq!(header.deadline_ms, None);
    }

    #[test]
    fn an_ok_status_is_one_byte_of_map_and_one_key() {
        let bytes = rmp_serde::to_vec_named(&StatusBody::ok()).expect("encodes");
        assert_eq!(bytes, b"\x81\xa4code\x00");
    }

    proptest! {
        #[test]
        fn headers_round_trip(
            service in "[a-z_]{1,20}",
            method in "[a-z_]{1,20}",
            deadline in proptest::option::of(any::<u64>()),
            pairs in proptest::collection::vec(("[a-z-]{1,8}", ".{0,16}"), 0..4),
            sticky in proptest::option::of(".{0,12}"),
        ) {
            let header = CallHeader {
                service: service.into(), method: method.into(), deadline_ms: deadline,
                metadata: pairs.into_iter().collect(),
                sticky_key: sticky,
            };
            let bytes = rmp_serde::to_vec_named(&header).expect("encodes");
            let back: CallHeader = rmp_serde::from_slice(&bytes).expect("decodes");
            prop_assert_eq!(back, header);
        }

        #[test]
        fn statuses_round_trip(code in 0u32..20, message in ".{0,30}", details in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)), refused: bool) {
            let body = StatusBody { code, message, details: details.map(Bytes::from), refused };
            let bytes = rmp_serde::to_vec_named(&body).expect("encodes");
            let back: StatusBody = rmp_serde::from_slice(&bytes).expect("decodes");
            prop_assert_eq!(back, body);
        }

        #[test]
        fn garbage_never_panics_the_header_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = rmp_serde::from_slice::<CallHeader>(&bytes);
            let _ = rmp_serde::from_slice::<StatusBody>(&bytes);
        }
    }
}
