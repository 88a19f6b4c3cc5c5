//! Responses: the MessagePack response map `{<result field>: value}` becomes the JSON envelope
//! `{"error":"", <result field>: value}` (`error` first, as the original gateway answered), a
//! server-stream item becomes the line `{"item": value}`, and binaries become base64 strings.
//! No schema is needed: MessagePack says what each value is.

use std::cell::RefCell;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{self, Serialize, SerializeMap, SerializeSeq, Serializer};

use super::ResponseError;

/// Transcodes a MessagePack response map into the JSON envelope
/// `{"error":"", <result field>: value}`.
pub fn msgpack_to_json_envelope(payload: &[u8]) -> Result<Vec<u8>, ResponseError> {
    let mut msgpack = rmp_serde::Deserializer::from_read_ref(payload);
    msgpack.set_max_depth(meshrpc::codec::MAX_PAYLOAD_DEPTH);
    let mut out = Vec::with_capacity(payload.len() * 2 + 16);
    let mut json = serde_json::Serializer::new(&mut out);
    (&mut msgpack)
        .deserialize_any(EnvelopeVisitor { ser: &mut json })
        .map_err(|error| ResponseError(error.to_string()))?;
    Ok(out)
}

/// Transcodes the MessagePack encoding of one server-stream item into the JSON line object
/// `{"item": <value>}` (binaries as base64 strings).
pub fn msgpack_item_to_json(payload: &[u8]) -> Result<Vec<u8>, ResponseError> {
    let mut rest = payload;
    let mut out = Vec::with_capacity(payload.len() * 2 + 16);
    {
        let mut msgpack = rmp_serde::Deserializer::new(&mut rest);
        msgpack.set_max_depth(meshrpc::codec::MAX_PAYLOAD_DEPTH);
        let mut json = serde_json::Serializer::new(&mut out);
        let mut map = json
            .serialize_map(Some(1))
            .map_err(|error| ResponseError(error.to_string()))?;
        map.serialize_entry("item", &Plain(RefCell::new(Some(&mut msgpack))))
            .map_err(|error| ResponseError(error.to_string()))?;
        SerializeMap::end(map).map_err(|error| ResponseError(error.to_string()))?;
    }
    if !rest.is_empty() {
        return Err(ResponseError(format!(
            "{} bytes after the stream item",
            rest.len()
        )));
    }
    Ok(out)
}

struct EnvelopeVisitor<'s, S> {
    ser: &'s mut S,
}

impl<'de, 's, S> Visitor<'de> for EnvelopeVisitor<'s, S>
where
    &'s mut S: Serializer<Ok = ()>,
{
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a response map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut out = self.ser.serialize_map(None).map_err(de::Error::custom)?;
        out.serialize_entry("error", "")
            .map_err(de::Error::custom)?;
        while map.next_key_seed(KeySeed { out: &mut out })?.is_some() {
            map.next_value_seed(PlainValueSeed { out: &mut out })?;
        }
        out.end().map_err(de::Error::custom)
    }
}

/// A MessagePack value serialized as it is, binaries as base64 strings.
struct Plain<D>(RefCell<Option<D>>);

impl<'de, D: Deserializer<'de>> Serialize for Plain<D> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let de = self
            .0
            .borrow_mut()
            .take()
            .ok_or_else(|| ser::Error::custom("a value was transcoded twice"))?;
        de.deserialize_any(PlainVisitor(s))
            .map_err(ser::Error::custom)
    }
}

struct PlainVisitor<S>(S);

macro_rules! forward {
    ($($visit:ident($ty:ty) => $serialize:ident;)*) => {$(
        fn $visit<E: de::Error>(self, value: $ty) -> Result<S::Ok, E> {
            self.0.$serialize(value).map_err(E::custom)
        }
    )*};
}

impl<'de, S: Serializer> Visitor<'de> for PlainVisitor<S> {
    type Value = S::Ok;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any MessagePack value")
    }

    forward! {
        visit_bool(bool) => serialize_bool;
        visit_i8(i8) => serialize_i8;
        visit_i16(i16) => serialize_i16;
        visit_i32(i32) => serialize_i32;
        visit_i64(i64) => serialize_i64;
        visit_u8(u8) => serialize_u8;
        visit_u16(u16) => serialize_u16;
        visit_u32(u32) => serialize_u32;
        visit_u64(u64) => serialize_u64;
        visit_f32(f32) => serialize_f32;
        visit_f64(f64) => serialize_f64;
        visit_str(&str) => serialize_str;
    }

    fn visit_bytes<E: de::Error>(self, value: &[u8]) -> Result<S::Ok, E> {
        self.0
            .serialize_str(&BASE64.encode(value))
            .map_err(E::custom)
    }

    fn visit_unit<E: de::Error>(self) -> Result<S::Ok, E> {
        self.0.serialize_unit().map_err(E::custom)
    }

    fn visit_none<E: de::Error>(self) -> Result<S::Ok, E> {
        self.0.serialize_unit().map_err(E::custom)
    }

    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<S::Ok, D::Error> {
        de.deserialize_any(self)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, de: D) -> Result<S::Ok, D::Error> {
        de.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<S::Ok, A::Error> {
        let mut out = self
            .0
            .serialize_seq(seq.size_hint())
            .map_err(de::Error::custom)?;
        while seq
            .next_element_seed(PlainElementSeed { out: &mut out })?
            .is_some()
        {}
        out.end().map_err(de::Error::custom)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<S::Ok, A::Error> {
        let mut out = self
            .0
            .serialize_map(map.size_hint())
            .map_err(de::Error::custom)?;
        while map.next_key_seed(KeySeed { out: &mut out })?.is_some() {
            map.next_value_seed(PlainValueSeed { out: &mut out })?;
        }
        out.end().map_err(de::Error::custom)
    }
}

struct KeySeed<'o, T> {
    out: &'o mut T,
}

impl<'de, T: SerializeMap> DeserializeSeed<'de> for KeySeed<'_, T> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        self.out
            .serialize_key(&Plain(RefCell::new(Some(de))))
            .map_err(de::Error::custom)
    }
}

struct PlainValueSeed<'o, T> {
    out: &'o mut T,
}

impl<'de, T: SerializeMap> DeserializeSeed<'de> for PlainValueSeed<'_, T> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        self.out
            .serialize_value(&Plain(RefCell::new(Some(de))))
            .map_err(de::Error::custom)
    }
}

struct PlainElementSeed<'o, T> {
    out: &'o mut T,
}

impl<'de, T: SerializeSeq> DeserializeSeed<'de> for PlainElementSeed<'_, T> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        self.out
            .serialize_element(&Plain(RefCell::new(Some(de))))
            .map_err(de::Error::custom)
    }
}
