//! Payload encoding: MessagePack with named fields (maps), so fields can be added without
//! breaking older peers and JSON can be transcoded without knowing the Rust types.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Status;

/// Encodes a value as a MessagePack map payload.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, Status> {
    rmp_serde::to_vec_named(value)
        .map(Bytes::from)
        .map_err(|error| Status::internal(format!("could not encode payload: {error}")))
}

/// Decodes a request payload; a payload of the wrong shape is the caller's fault
/// (`invalid_argument`, naming the offending field where MessagePack tells it).
pub fn decode_request<T: DeserializeOwned>(method: &str, payload: &[u8]) -> Result<T, Status> {
    rmp_serde::from_slice(payload).map_err(|error| {
        Status::invalid_argument(format!(
            "the request for `{method}` does not match its signature: {error}"
        ))
    })
}

/// Decodes a response payload; a response of the wrong shape means the two sides disagree on
/// the schema (`internal`).
pub fn decode_response<T: DeserializeOwned>(method: &str, payload: &[u8]) -> Result<T, Status> {
    rmp_serde::from_slice(payload).map_err(|error| {
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
    fn a_request_of_the_wrong_shape_is_an_invalid_argument() {
        let bytes = encode(&42u32).expect("encodes");
        let error = decode_request::<Greet>("greet", &bytes).expect_err("wrong shape");
        assert_eq!(error.code(), Code::InvalidArgument);
        assert!(error.message().contains("`greet`"), "{error}");
    }
}
