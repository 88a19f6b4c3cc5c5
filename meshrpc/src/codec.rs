//! Payload encoding: MessagePack with named fields (maps), so fields can be added without
//! breaking older peers and JSON can be transcoded without knowing the Rust types.
//!
//! Payloads are decoded from the [`Bytes`] of the frame they arrived in, so large `Bytes` fields
//! (see [`shared_bytes`]) point into that frame instead of being copied out of it.

use std::cell::RefCell;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Status;

/// The deepest nesting accepted in protocol bodies (call headers, statuses, gossip).
pub const MAX_HEADER_DEPTH: usize = 16;

/// The deepest nesting accepted in payloads. Deeper input is refused before it can exhaust the
/// stack of the task decoding it.
pub const MAX_PAYLOAD_DEPTH: usize = 128;

mod strict;

/// Decodes MessagePack from a slice, refusing nesting deeper than `max_depth`, and refusing a
/// struct written as anything but a map keyed by field names (an array of positional fields,
/// binary or integer keys): see docs/PROTOCOL.md, section 5.
pub fn from_slice_bounded<'de, T: serde::Deserialize<'de>>(
    bytes: &'de [u8],
    max_depth: usize,
) -> Result<T, rmp_serde::decode::Error> {
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(bytes);
    deserializer.set_max_depth(max_depth);
    T::deserialize(strict::Strict(&mut deserializer))
}

/// Decodes MessagePack from a reader (consuming exactly one value), refusing nesting deeper
/// than `max_depth` and structs that are not maps keyed by field names, as
/// [`from_slice_bounded`] does.
pub fn from_read_bounded<R: std::io::Read, T: DeserializeOwned>(
    reader: R,
    max_depth: usize,
) -> Result<T, rmp_serde::decode::Error> {
    let mut deserializer = rmp_serde::Deserializer::new(reader);
    deserializer.set_max_depth(max_depth);
    T::deserialize(strict::Strict(&mut deserializer))
}

/// Encodes a value as a MessagePack map payload.
///
/// A first pass only counts the bytes, so the payload is written once into a buffer of its
/// exact size: a large binary is copied once, never again by a growing buffer.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, Status> {
    let failed = |error: rmp_serde::encode::Error| {
        Status::internal(format!("could not encode payload: {error}"))
    };
    let mut counter = ByteCounter(0);
    value
        .serialize(&mut rmp_serde::Serializer::new(&mut counter).with_struct_map())
        .map_err(failed)?;
    let mut payload = Vec::with_capacity(counter.0);
    value
        .serialize(&mut rmp_serde::Serializer::new(&mut payload).with_struct_map())
        .map_err(failed)?;
    Ok(Bytes::from(payload))
}

/// Appends the MessagePack map payload of `value` to `out`, as [`encode`] encodes it: how
/// the items of a stream are encoded, straight into the frames that carry them. On an error,
/// what was appended is left for the caller to cut off.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), Status> {
    value
        .serialize(&mut rmp_serde::Serializer::new(out).with_struct_map())
        .map_err(|error| Status::internal(format!("could not encode payload: {error}")))
}

/// Appends `bytes` to `out` as one MessagePack binary (its marker, length and the bytes): how
/// `Bytes` items travel.
pub fn encode_binary_into(bytes: &[u8], out: &mut Vec<u8>) -> Result<(), Status> {
    let len = bytes.len();
    out.reserve(5 + len);
    if let Ok(len) = u8::try_from(len) {
        out.extend_from_slice(&[0xc4, len]);
    } else if let Ok(len) = u16::try_from(len) {
        let [a, b] = len.to_be_bytes();
        out.extend_from_slice(&[0xc5, a, b]);
    } else {
        let [a, b, c, d] = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
        out.extend_from_slice(&[0xc6, a, b, c, d]);
    }
    out.extend_from_slice(bytes);
    Ok(())
}

/// The binary that is the whole of `payload`, which it becomes; `Err(payload)` when it is
/// anything else (which the general decoder then reads or refuses).
pub(crate) fn whole_binary(mut payload: Bytes) -> Result<Bytes, Bytes> {
    let head = match payload.first() {
        Some(0xc4) => payload.get(1).map(|&len| (usize::from(len), 2)),
        Some(0xc5) => payload
            .get(1..3)
            .map(|len| (usize::from(u16::from_be_bytes([len[0], len[1]])), 3)),
        Some(0xc6) => payload.get(1..5).map(|len| {
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
            (usize::try_from(len).unwrap_or(usize::MAX), 5)
        }),
        _ => None,
    };
    match head {
        Some((len, head)) if payload.len().checked_sub(head) == Some(len) => {
            bytes::Buf::advance(&mut payload, head);
            Ok(payload)
        }
        _ => Err(payload),
    }
}

/// A `Bytes` item as the general decoder reads it.
#[derive(serde::Deserialize)]
#[serde(transparent)]
struct Binary(#[serde(with = "shared_bytes")] Bytes);

/// Decodes one `Bytes` item of a server stream, which shares `payload`'s memory; as
/// [`decode_item`] otherwise.
pub fn decode_binary_item(method: &str, payload: Bytes) -> Result<Bytes, Status> {
    whole_binary(payload)
        .or_else(|payload| decode_item::<Binary>(method, &payload).map(|binary| binary.0))
}

/// Decodes one `Bytes` item of a client stream, which shares `payload`'s memory; as
/// [`decode_request_item`] otherwise.
pub fn decode_request_binary_item(method: &str, payload: Bytes) -> Result<Bytes, Status> {
    whole_binary(payload)
        .or_else(|payload| decode_request_item::<Binary>(method, &payload).map(|binary| binary.0))
}

/// A writer that only counts what is written to it.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0 += bytes.len();
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

thread_local! {
    /// The payload being decoded on this thread, which `Bytes` fields share memory with.
    static DECODING: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Restores the previously decoded payload when a decode ends, even by unwinding.
struct Decoding(Option<Bytes>);

impl Decoding {
    fn enter(payload: &Bytes) -> Decoding {
        Decoding(DECODING.with(|current| current.replace(Some(payload.clone()))))
    }
}

impl Drop for Decoding {
    fn drop(&mut self) {
        let previous = self.0.take();
        DECODING.with(|current| *current.borrow_mut() = previous);
    }
}

/// Decodes a payload with [`shared_bytes`] fields sharing `payload`'s memory.
fn decode_shared<T: DeserializeOwned>(payload: &Bytes) -> Result<T, rmp_serde::decode::Error> {
    let _decoding = Decoding::enter(payload);
    from_slice_bounded(payload, MAX_PAYLOAD_DEPTH)
}

/// Decodes a request payload; a payload of the wrong shape is the caller's fault
/// (`invalid_argument`, naming the offending field where MessagePack tells it).
pub fn decode_request<T: DeserializeOwned>(method: &str, payload: &Bytes) -> Result<T, Status> {
    decode_shared(payload).map_err(|error| {
        Status::invalid_argument(format!(
            "the request for `{method}` does not match its signature: {error}"
        ))
    })
}

/// Decodes a response payload; a response of the wrong shape means the two sides disagree on
/// the schema (`internal`).
pub fn decode_response<T: DeserializeOwned>(method: &str, payload: &Bytes) -> Result<T, Status> {
    decode_shared(payload).map_err(|error| {
        Status::internal(format!(
            "the response of `{method}` does not match its signature \
             (do caller and callee run the same services.toml?): {error}"
        ))
    })
}

/// Decodes one item of a server stream (the callee's items); like [`decode_response`], a
/// wrong shape means the two sides disagree on the schema (`internal`).
pub fn decode_item<T: DeserializeOwned>(method: &str, payload: &Bytes) -> Result<T, Status> {
    decode_shared(payload).map_err(|error| {
        Status::internal(format!(
            "an item of the stream of `{method}` does not match its signature \
             (do caller and callee run the same services.toml?): {error}"
        ))
    })
}

/// Decodes one item of a client stream (the caller's items); like [`decode_request`], a wrong
/// shape is the caller's fault (`invalid_argument`).
pub fn decode_request_item<T: DeserializeOwned>(
    method: &str,
    payload: &Bytes,
) -> Result<T, Status> {
    decode_shared(payload).map_err(|error| {
        Status::invalid_argument(format!(
            "an item of the request stream of `{method}` does not match its signature: {error}"
        ))
    })
}

/// Serde for `Bytes` fields of generated messages (`#[serde(with = "...")]`): written as a
/// MessagePack binary, and read without a copy when the binary lies inside the payload being
/// decoded by [`decode_request`] or [`decode_response`] and is at least
/// [`DETACH_BELOW`](crate::wire::frame::DETACH_BELOW) bytes long (anything else is copied).
pub mod shared_bytes {
    use std::fmt;

    use bytes::Bytes;
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};
    use serde::ser::Serializer;

    use super::DECODING;

    /// Writes `bytes` as a binary.
    pub fn serialize<S: Serializer>(bytes: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    /// Reads a binary, sharing the payload's memory where it can.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
        deserializer.deserialize_bytes(SharedBytes)
    }

    /// `Option<Bytes>` fields: `None` is nil.
    pub mod option {
        use bytes::Bytes;
        use serde::de::{Deserializer, Visitor};
        use serde::ser::Serializer;

        /// Writes `Some` as a binary and `None` as nil.
        pub fn serialize<S: Serializer>(
            bytes: &Option<Bytes>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match bytes {
                Some(bytes) => serializer.serialize_bytes(bytes),
                None => serializer.serialize_none(),
            }
        }

        /// Reads nil as `None`, a binary as `Some`.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Bytes>, D::Error> {
            deserializer.deserialize_option(OptionalBytes)
        }

        struct OptionalBytes;

        impl<'de> Visitor<'de> for OptionalBytes {
            type Value = Option<Bytes>;

            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("a binary or nil")
            }

            fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_some<D: Deserializer<'de>>(
                self,
                deserializer: D,
            ) -> Result<Self::Value, D::Error> {
                super::deserialize(deserializer).map(Some)
            }
        }
    }

    struct SharedBytes;

    impl<'de> Visitor<'de> for SharedBytes {
        type Value = Bytes;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("a binary")
        }

        fn visit_borrowed_bytes<E: Error>(self, bytes: &'de [u8]) -> Result<Bytes, E> {
            // A small binary is copied: sharing would keep the whole payload alive, and with it
            // the batch of received packets it may share (up to 64 KiB), for as long as the
            // value is held.
            if bytes.len() < crate::wire::frame::DETACH_BELOW {
                return Ok(Bytes::copy_from_slice(bytes));
            }
            let shared = DECODING.with(|current| {
                let current = current.borrow();
                let payload = current.as_ref()?;
                let start = payload.as_ptr() as usize;
                let inner = bytes.as_ptr() as usize;
                let inside = inner >= start && inner + bytes.len() <= start + payload.len();
                inside.then(|| payload.slice_ref(bytes))
            });
            Ok(shared.unwrap_or_else(|| Bytes::copy_from_slice(bytes)))
        }

        fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Bytes, E> {
            Ok(Bytes::copy_from_slice(bytes))
        }

        fn visit_byte_buf<E: Error>(self, bytes: Vec<u8>) -> Result<Bytes, E> {
            Ok(Bytes::from(bytes))
        }

        fn visit_borrowed_str<E: Error>(self, text: &'de str) -> Result<Bytes, E> {
            self.visit_borrowed_bytes(text.as_bytes())
        }

        fn visit_str<E: Error>(self, text: &str) -> Result<Bytes, E> {
            Ok(Bytes::copy_from_slice(text.as_bytes()))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
            let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64 * 1024));
            while let Some(byte) = seq.next_element::<u8>()? {
                bytes.push(byte);
            }
            Ok(Bytes::from(bytes))
        }
    }
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

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Blob {
        #[serde(with = "shared_bytes")]
        data: Bytes,
        #[serde(default, with = "shared_bytes::option")]
        extra: Option<Bytes>,
    }

    fn inside(outer: &Bytes, inner: &Bytes) -> bool {
        let start = outer.as_ptr() as usize;
        let at = inner.as_ptr() as usize;
        at >= start && at + inner.len() <= start + outer.len()
    }

    #[test]
    fn binary_items_are_what_the_general_encoder_writes_and_decode_in_place() {
        // Every length class of a MessagePack binary: bin8, bin16, bin32.
        for len in [0, 1, 255, 256, 65_535, 65_536] {
            let item = Bytes::from(vec![9u8; len]);
            let mut out = Vec::new();
            encode_binary_into(&item, &mut out).expect("encodes");
            let general = rmp_serde::to_vec(&serde_bytes::Bytes::new(&item)).expect("encodes");
            assert_eq!(out, general, "{len} bytes");
            let payload = Bytes::from(out);
            let back = decode_binary_item("m", payload.clone()).expect("decodes");
            assert_eq!(back, item);
            assert!(inside(&payload, &back), "{len} bytes were copied");
            assert_eq!(
                decode_request_binary_item("m", payload).expect("decodes"),
                item
            );
        }
    }

    #[test]
    fn a_binary_item_of_another_shape_is_left_to_the_general_decoder() {
        // A binary with bytes after it, an array of bytes, and something else entirely.
        let mut trailing = Vec::new();
        encode_binary_into(b"ab", &mut trailing).expect("encodes");
        trailing.push(0xc0);
        let general: Bytes = decode_item::<Binary>("m", &Bytes::from(trailing.clone()))
            .expect("the general decoder reads the binary")
            .0;
        assert_eq!(
            decode_binary_item("m", Bytes::from(trailing)).expect("decodes"),
            general
        );
        let array = Bytes::from(rmp_serde::to_vec(&[1u8, 2, 3]).expect("encodes"));
        assert_eq!(
            decode_binary_item("m", array).expect("an array of bytes decodes"),
            Bytes::from_static(&[1, 2, 3])
        );
        let number = Bytes::from(rmp_serde::to_vec(&7u32).expect("encodes"));
        let error = decode_binary_item("m", number.clone()).expect_err("not bytes");
        assert_eq!(error.code(), crate::Code::Internal);
        let error = decode_request_binary_item("m", number).expect_err("not bytes");
        assert_eq!(error.code(), crate::Code::InvalidArgument);
        // A binary whose length runs past the payload is refused, never read past its end.
        let cut = Bytes::from_static(&[0xc5, 0x01, 0x00, 1, 2]);
        assert!(decode_binary_item("m", cut).is_err());
    }

    #[test]
    fn encode_into_appends_what_encode_writes() {
        let value = Blob {
            data: Bytes::from_static(b"abc"),
            extra: None,
        };
        let mut out = vec![1, 2];
        encode_into(&value, &mut out).expect("encodes");
        assert_eq!(&out[..2], &[1, 2]);
        assert_eq!(&out[2..], &encode(&value).expect("encodes")[..]);
    }

    #[test]
    fn large_bytes_fields_share_the_payload_and_small_ones_are_copied_out_of_it() {
        let sent = Blob {
            data: Bytes::from(vec![7u8; 4096]),
            extra: Some(Bytes::from_static(b"tail")),
        };
        let payload = encode(&sent).expect("encodes");
        assert_eq!(
            payload.len(),
            rmp_serde::to_vec_named(&sent).expect("encodes").len()
        );
        let back: Blob = decode_request("put", &payload).expect("decodes");
        assert_eq!(back, sent);
        assert!(inside(&payload, &back.data), "data was copied");
        // A small value must not keep the whole payload (and the packets it shares) alive.
        assert!(
            !inside(&payload, back.extra.as_ref().expect("some")),
            "extra shares the payload"
        );

        let none = encode(&Blob {
            data: Bytes::new(),
            extra: None,
        })
        .expect("encodes");
        let back: Blob = decode_response("put", &none).expect("decodes");
        assert_eq!(back.extra, None);
        // Outside a payload decode the same fields still decode, by copying.
        let copied: Blob = from_slice_bounded(&payload, MAX_PAYLOAD_DEPTH).expect("decodes");
        assert_eq!(copied, sent);
        assert!(!inside(&payload, &copied.data));
    }

    #[test]
    fn a_bytes_field_of_the_wrong_kind_is_an_invalid_argument() {
        #[derive(Serialize)]
        struct Wrong {
            data: u32,
        }
        let payload = encode(&Wrong { data: 5 }).expect("encodes");
        let error = decode_request::<Blob>("put", &payload).expect_err("not a binary");
        assert_eq!(error.code(), Code::InvalidArgument);
        assert!(error.message().contains("binary"), "{error}");
    }

    #[test]
    fn nesting_beyond_the_limit_is_refused() {
        let mut deep = vec![0x91u8; 1000];
        deep.push(0xc0);
        let error = decode_request::<Vec<serde::de::IgnoredAny>>("m", &Bytes::from(deep))
            .expect_err("too deep");
        assert!(error.message().contains("depth"), "{error}");
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Shape {
        Dot,
        Circle(u32),
        Pair(u8, u8),
        Square { side: u32 },
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Rich {
        names: Vec<String>,
        pair: (u8, String),
        inner: Option<Greet>,
        shapes: Vec<Shape>,
        table: std::collections::BTreeMap<u32, Greet>,
    }

    #[test]
    fn sequences_maps_and_enums_still_decode() {
        let sent = Rich {
            names: vec!["a".into(), "b".into()],
            pair: (7, "x".into()),
            inner: Some(Greet { name: "Max".into() }),
            shapes: vec![
                Shape::Dot,
                Shape::Circle(3),
                Shape::Pair(1, 2),
                Shape::Square { side: 4 },
            ],
            table: [(1, Greet { name: "one".into() })].into_iter().collect(),
        };
        let payload = encode(&sent).expect("encodes");
        let back: Rich = decode_request("rich", &payload).expect("decodes");
        assert_eq!(back, sent);
    }

    #[test]
    fn a_struct_sent_as_an_array_of_positional_fields_is_refused() {
        // ["Max"] where {"name": "Max"} is expected.
        let error = decode_request::<Greet>("greet", &Bytes::from_static(b"\x91\xa3Max"))
            .expect_err("positional");
        assert_eq!(error.code(), Code::InvalidArgument);
        assert!(error.message().contains("got an array"), "{error}");
        assert!(error.message().contains("`greet`"), "{error}");
        // Nested: {"names": [], "pair": [7, "x"], "inner": ["Max"], ...}.
        #[derive(Serialize)]
        struct Positional {
            inner: (String,),
        }
        let payload = encode(&Positional {
            inner: ("Max".into(),),
        })
        .expect("encodes");
        #[derive(Deserialize, Debug)]
        struct Nested {
            #[allow(dead_code)]
            inner: Greet,
        }
        let error = decode_request::<Nested>("nested", &payload).expect_err("positional");
        assert!(error.message().contains("got an array"), "{error}");
    }

    #[test]
    fn field_names_that_are_binaries_or_numbers_are_refused() {
        // {bin "name": "Max"}
        let error =
            decode_request::<Greet>("greet", &Bytes::from_static(b"\x81\xc4\x04name\xa3Max"))
                .expect_err("binary key");
        assert_eq!(error.code(), Code::InvalidArgument);
        assert!(
            error.message().contains("a field name is a binary"),
            "{error}"
        );
        // {0: "Max"}: the field's position.
        let error = decode_request::<Greet>("greet", &Bytes::from_static(b"\x81\x00\xa3Max"))
            .expect_err("integer key");
        assert!(
            error.message().contains("a field name is an integer"),
            "{error}"
        );
    }

    #[test]
    fn strings_sent_as_binaries_are_refused_in_values_and_map_keys() {
        // {"name": bin "Max"}
        let error =
            decode_request::<Greet>("greet", &Bytes::from_static(b"\x81\xa4name\xc4\x03Max"))
                .expect_err("binary string");
        assert!(
            error.message().contains("strings must be MessagePack str"),
            "{error}"
        );
        // {bin "k": "v"} as a map of strings.
        let error = decode_request::<std::collections::HashMap<String, String>>(
            "m",
            &Bytes::from_static(b"\x81\xc4\x01k\xa1v"),
        )
        .expect_err("binary key");
        assert!(
            error.message().contains("strings must be MessagePack str"),
            "{error}"
        );
    }

    #[test]
    fn a_request_of_the_wrong_shape_is_an_invalid_argument() {
        let bytes = encode(&42u32).expect("encodes");
        let error = decode_request::<Greet>("greet", &bytes).expect_err("wrong shape");
        assert_eq!(error.code(), Code::InvalidArgument);
        assert!(error.message().contains("`greet`"), "{error}");
    }
}
