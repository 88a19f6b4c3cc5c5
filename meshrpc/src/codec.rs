//! Payload encoding: MessagePack with named fields (maps), so fields can be added without
//! breaking older peers and JSON can be transcoded without knowing the Rust types.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Status;

/// The deepest nesting accepted in protocol bodies (call headers, statuses, gossip).
pub const MAX_HEADER_DEPTH: usize = 16;

/// The deepest nesting accepted in payloads. Deeper input is refused before it can exhaust the
/// stack of the task decoding it.
pub const MAX_PAYLOAD_DEPTH: usize = 128;

/// Decodes MessagePack from a slice, refusing nesting deeper than `max_depth`.
pub fn from_slice_bounded<'de, T: serde::Deserialize<'de>>(
    bytes: &'de [u8],
    max_depth: usize,
) -> Result<T, rmp_serde::decode::Error> {
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(bytes);
    deserializer.set_max_depth(max_depth);
    T::deserialize(&mut deserializer)
}

/// Decodes MessagePack from a reader (consuming exactly one value), refusing nesting deeper
/// than `max_depth`.
pub fn from_read_bounded<R: std::io::Read, T: DeserializeOwned>(
    reader: R,
    max_depth: usize,
) -> Result<T, rmp_serde::decode::Error> {
    let mut deserializer = rmp_serde::Deserializer::new(reader);
    deserializer.set_max_depth(max_depth);
    T::deserialize(&mut deserializer)
}

/// Encodes a value as a MessagePack map payload.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, Status> {
    rmp_serde::to_vec_named(value)
        .map(Bytes::from)
        .map_err(|error| Status::internal(format!("could not encode payload: {error}")))
}

/// Decodes a request payload; a payload of the wrong shape is the caller's fault
/// (`invalid_argument`, naming the offending field where MessagePack tells it).
pub fn decode_request<T: DeserializeOwned>(method: &str, payload: &[u8]) -> Result<T, Status> {
    from_slice_bounded(payload, MAX_PAYLOAD_DEPTH).map_err(|error| {
        Status::invalid_argument(format!(
            "the request for `{method}` does not match its signature: {error}"
        ))
    })
}

/// Decodes a response payload; a response of the wrong shape means the two sides disagree on
/// the schema (`internal`).
pub fn decode_response<T: DeserializeOwned>(method: &str, payload: &[u8]) -> Result<T, Status> {
    from_slice_bounded(payload, MAX_PAYLOAD_DEPTH).map_err(|error| {
        Status::internal(format!(
            "the response of `{method}` does not match its signature \
             (do caller and callee run the same services.toml?): {error}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::Code;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Greet {
        name: String,
    }

    #[test]
    fn payloads_are_maps_with_named_fields() {
        let bytes = encode(&Greet { name: "Max".into() }).expect("encodes");
        // fixmap of 1, fixstr "name", fixstr "Max"
        assert_eq!(&bytes[..], b"\x81\xa4name\xa3Max");
        let back: Greet = decode_request("greet", &bytes).expect("decodes");
        assert_eq!(back, Greet { name: "Max".into() });
    }

    #[test]
    fn nesting_beyond_the_limit_is_refused() {
        let mut deep = vec![0x91u8; 1000];
        deep.push(0xc0);
        let error = decode_request::<Vec<serde::de::IgnoredAny>>("m", &deep).expect_err("too deep");
        assert!(error.message().contains("depth"), "{error}");
    }

    #[test]
    fn a_request_of_the_wrong_shape_is_an_invalid_argument() {
        let bytes = encode(&42u32).expect("encodes");
        let error = decode_request::<Greet>("greet", &bytes).expect_err("wrong shape");
        assert_eq!(error.code(), Code::InvalidArgument);
        assert!(error.message().contains("`greet`"), "{error}");
    }
}
