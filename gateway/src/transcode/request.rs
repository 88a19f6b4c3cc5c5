//! Requests: a `serde_json::Deserializer` drives an `rmp_serde::Serializer` (as
//! `serde-transcode` does), each value checked against its node of a [`CompiledSchema`] on the
//! way. The first mismatch is kept, with the path of the field it is in, and becomes the
//! request's error.

use std::cell::RefCell;
use std::fmt::{self, Write as _};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{self, Serialize, SerializeMap, SerializeSeq, Serializer};

use super::RequestError;
use super::compile::{CompiledSchema, KeyType, Kind, Node, NodeId, Object, Variant};

/// Transcodes the JSON `body` into MessagePack, checking it against `schema`. An empty body is
/// taken as `{}`.
pub(super) fn transcode(body: &[u8], schema: &CompiledSchema) -> Result<Vec<u8>, RequestError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let ctx = Ctx {
        schema,
        path: RefCell::new(Vec::new()),
        failure: RefCell::new(None),
    };
    let mut out = Vec::with_capacity(body.len());
    let mut json = serde_json::Deserializer::from_slice(body);
    let result = {
        let mut msgpack = rmp_serde::Serializer::new(&mut out).with_struct_map();
        Guided::new(&mut json, schema.root(), &ctx).serialize(&mut msgpack)
    };
    if let Some(failure) = ctx.failure.into_inner() {
        return Err(RequestError::Invalid(failure));
    }
    result.map_err(|error| RequestError::NotJson(error.to_string()))?;
    json.end()
        .map_err(|error| RequestError::NotJson(error.to_string()))?;
    Ok(out)
}

/// What `node` accepts, as an error says it: `an integer from 0 to 255`, `a string or null`.
fn expected(node: &Node) -> String {
    let what = match &node.kind {
        Kind::Any => "anything".to_owned(),
        Kind::Null => "null".to_owned(),
        Kind::Bool => "a boolean".to_owned(),
        Kind::Integer { min, max } => match (min, max) {
            (Some(min), Some(max)) => format!("an integer from {min} to {max}"),
            _ => "an integer".to_owned(),
        },
        Kind::Number => "a number".to_owned(),
        Kind::String { one_char: true, .. } => "a string of one character".to_owned(),
        Kind::String {
            variants: Some(variants),
            ..
        } => format!("one of {}", list(variants.iter().map(|name| &**name))),
        Kind::String { .. } => "a string".to_owned(),
        Kind::Bytes => "a base64 string".to_owned(),
        Kind::Array { .. } => "an array".to_owned(),
        Kind::Tuple { elems } => format!("an array of {} elements", elems.len()),
        Kind::Object(_) | Kind::Map { .. } => "an object".to_owned(),
        Kind::OneOf(variants) => format!("one of {}", list(variant_names(variants))),
    };
    if node.nullable && !matches!(node.kind, Kind::Null | Kind::Any) {
        format!("{what} or null")
    } else {
        what
    }
}

/// `a, b, c` with backticks.
fn list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let mut text = String::new();
    for name in names {
        if !text.is_empty() {
            text.push_str(", ");
        }
        let _ = write!(text, "`{name}`");
    }
    text
}

fn variant_names(variants: &[Variant]) -> impl Iterator<Item = &str> {
    variants.iter().map(|variant| &*variant.name)
}

/// One step of the path to the value being transcoded.
enum Segment<'s> {
    /// A field the schema names (the name is the schema's).
    Known(&'s str),
    /// A map key, or a field the schema does not know, as the request wrote it.
    Key(String),
    Index(usize),
}

/// State shared by one request's transcoding: where it is, and the first mismatch found.
struct Ctx<'s> {
    schema: &'s CompiledSchema,
    path: RefCell<Vec<Segment<'s>>>,
    failure: RefCell<Option<String>>,
}

impl<'s> Ctx<'s> {
    fn push(&self, segment: Segment<'s>) {
        self.path.borrow_mut().push(segment);
    }

    fn pop(&self) {
        self.path.borrow_mut().pop();
    }

    /// The current path: `card.recipient`, `guests[2]`.
    fn path(&self) -> String {
        let mut text = String::new();
        for segment in self.path.borrow().iter() {
            let name = match segment {
                Segment::Known(name) => name,
                Segment::Key(name) => name.as_str(),
                Segment::Index(index) => {
                    let _ = write!(text, "[{index}]");
                    continue;
                }
            };
            if !text.is_empty() {
                text.push('.');
            }
            text.push_str(name);
        }
        text
    }

    /// Records the first mismatch and returns an error that unwinds the transcoding.
    fn fail<E: de::Error>(&self, message: String) -> E {
        let mut failure = self.failure.borrow_mut();
        if failure.is_none() {
            *failure = Some(message.clone());
        }
        E::custom(message)
    }

    /// `field `path`: message`, or the message alone at the top.
    fn fail_here<E: de::Error>(&self, message: impl fmt::Display) -> E {
        let path = self.path();
        if path.is_empty() {
            self.fail(message.to_string())
        } else {
            self.fail(format!("field `{path}`: {message}"))
        }
    }

    fn mismatch<E: de::Error>(&self, node: &Node, found: impl fmt::Display) -> E {
        if self.path.borrow().is_empty() && matches!(node.kind, Kind::Object(_)) {
            return self.fail(format!(
                "the request body must be a JSON object with the method's parameters as \
                 fields, found {found}"
            ));
        }
        self.fail_here(format!("expected {}, found {found}", expected(node)))
    }
}

/// A value still in the JSON deserializer, serializable into MessagePack under a node.
struct Guided<'c, 's, D> {
    de: RefCell<Option<D>>,
    node: NodeId,
    ctx: &'c Ctx<'s>,
}

impl<'c, 's, D> Guided<'c, 's, D> {
    fn new(de: D, node: NodeId, ctx: &'c Ctx<'s>) -> Self {
        Guided {
            de: RefCell::new(Some(de)),
            node,
            ctx,
        }
    }
}

impl<'de, D: Deserializer<'de>> Serialize for Guided<'_, '_, D> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let de = self
            .de
            .borrow_mut()
            .take()
            .ok_or_else(|| ser::Error::custom("a value was transcoded twice"))?;
        let node = self.ctx.schema.node(self.node);
        if let Kind::Any = node.kind {
            return serde_transcode::Transcoder::new(de).serialize(s);
        }
        de.deserialize_any(GuidedVisitor {
            s,
            node,
            ctx: self.ctx,
        })
        .map_err(ser::Error::custom)
    }
}

struct GuidedVisitor<'c, 's, S> {
    s: S,
    node: &'s Node,
    ctx: &'c Ctx<'s>,
}

fn describe_number(value: impl fmt::Display) -> String {
    format!("the number {value}")
}

/// The elements of an array: all of one node, or one node each (a tuple).
enum Elements<'s> {
    All(NodeId),
    Each(&'s [NodeId]),
}

/// Which fields of an object were given.
struct Seen {
    small: u64,
    large: Vec<bool>,
}

impl Seen {
    fn new(fields: usize) -> Seen {
        Seen {
            small: 0,
            large: if fields > 64 {
                vec![false; fields]
            } else {
                Vec::new()
            },
        }
    }

    fn contains(&self, index: usize) -> bool {
        match self.large.get(index) {
            Some(seen) => *seen,
            None => index < 64 && self.small & (1 << index) != 0,
        }
    }

    fn insert(&mut self, index: usize) {
        match self.large.get_mut(index) {
            Some(seen) => *seen = true,
            None if index < 64 => self.small |= 1 << index,
            None => {}
        }
    }
}

impl<'s, S: Serializer> GuidedVisitor<'_, 's, S> {
    fn integer<E: de::Error>(self, value: i128) -> Result<S::Ok, E> {
        match self.node.kind {
            Kind::Integer { min, max } => {
                if min.is_some_and(|min| value < min) || max.is_some_and(|max| value > max) {
                    return Err(self.ctx.mismatch(self.node, describe_number(value)));
                }
            }
            Kind::Number => {}
            _ => return Err(self.ctx.mismatch(self.node, describe_number(value))),
        }
        let result = match (i64::try_from(value), u64::try_from(value)) {
            (Ok(value), _) => self.s.serialize_i64(value),
            (_, Ok(value)) => self.s.serialize_u64(value),
            _ => return Err(self.ctx.fail_here("the number is out of range")),
        };
        result.map_err(E::custom)
    }

    fn transcode_seq<'de, A: SeqAccess<'de>>(self, mut seq: A) -> Result<S::Ok, A::Error> {
        let elements = match &self.node.kind {
            Kind::Array { items } => Elements::All(*items),
            Kind::Tuple { elems } => Elements::Each(elems),
            _ => return Err(self.ctx.mismatch(self.node, "an array")),
        };
        let mut out = self
            .s
            .serialize_seq(seq.size_hint())
            .map_err(de::Error::custom)?;
        let mut index = 0;
        loop {
            let node = match elements {
                Elements::All(items) => items,
                Elements::Each(elems) => match elems.get(index) {
                    Some(node) => *node,
                    // One more element than the tuple holds: is there one?
                    None => {
                        if seq.next_element::<IgnoredAny>()?.is_some() {
                            return Err(self.ctx.fail_here(format!(
                                "expected an array of {} elements, found more",
                                elems.len()
                            )));
                        }
                        break;
                    }
                },
            };
            self.ctx.push(Segment::Index(index));
            let next = seq.next_element_seed(ElementSeed {
                out: &mut out,
                node,
                ctx: self.ctx,
            });
            self.ctx.pop();
            if next?.is_none() {
                break;
            }
            index += 1;
        }
        if let Elements::Each(elems) = elements {
            if index < elems.len() {
                return Err(self.ctx.fail_here(format!(
                    "expected an array of {} elements, found {index}",
                    elems.len()
                )));
            }
        }
        out.end().map_err(de::Error::custom)
    }

    fn transcode_object<'de, A: MapAccess<'de>>(
        self,
        mut map: A,
        object: &'s Object,
    ) -> Result<S::Ok, A::Error> {
        let mut out = self.s.serialize_map(None).map_err(de::Error::custom)?;
        let mut seen = Seen::new(object.fields.len());
        while let Some(key) = map.next_key_seed(FieldKey { object })? {
            let index = match key {
                FoundField::Known(index) => index,
                FoundField::Unknown(name) => {
                    self.ctx.push(Segment::Key(name));
                    return Err(self.ctx.fail(format!(
                        "unknown field `{}`; the fields are: {}",
                        self.ctx.path(),
                        list(object.fields.iter().map(|field| &*field.name))
                    )));
                }
            };
            let field = &object.fields[index];
            self.ctx.push(Segment::Known(&field.name));
            if seen.contains(index) {
                return Err(self
                    .ctx
                    .fail(format!("field `{}` is given twice", self.ctx.path())));
            }
            seen.insert(index);
            out.serialize_key(&*field.name).map_err(de::Error::custom)?;
            map.next_value_seed(ValueSeed {
                out: &mut out,
                node: field.node,
                ctx: self.ctx,
            })?;
            self.ctx.pop();
        }
        for required in &object.required {
            if !required.field.is_some_and(|index| seen.contains(index)) {
                self.ctx.push(Segment::Known(&required.name));
                let error = self
                    .ctx
                    .fail(format!("missing field `{}`", self.ctx.path()));
                return Err(error);
            }
        }
        out.end().map_err(de::Error::custom)
    }

    fn transcode_map<'de, A: MapAccess<'de>>(
        self,
        mut map: A,
        values: NodeId,
        key_type: &KeyType,
    ) -> Result<S::Ok, A::Error> {
        let mut out = self.s.serialize_map(None).map_err(de::Error::custom)?;
        while let Some(key) = map.next_key::<String>()? {
            let written = match key_type {
                KeyType::Unsigned(name) => match key.parse::<u64>() {
                    Ok(number) => out.serialize_key(&number),
                    Err(_) => {
                        return Err(self.ctx.fail_here(format!(
                            "the key `{key}` is not an unsigned integer (keys are {name})"
                        )));
                    }
                },
                KeyType::Signed(name) => match key.parse::<i64>() {
                    Ok(number) => out.serialize_key(&number),
                    Err(_) => {
                        return Err(self.ctx.fail_here(format!(
                            "the key `{key}` is not an integer (keys are {name})"
                        )));
                    }
                },
                KeyType::Bool => match key.parse::<bool>() {
                    Ok(flag) => out.serialize_key(&flag),
                    Err(_) => {
                        return Err(self.ctx.fail_here(format!(
                            "the key `{key}` is not `true` or `false` (keys are bool)"
                        )));
                    }
                },
                KeyType::String => out.serialize_key(&key),
            };
            written.map_err(de::Error::custom)?;
            self.ctx.push(Segment::Key(key));
            map.next_value_seed(ValueSeed {
                out: &mut out,
                node: values,
                ctx: self.ctx,
            })?;
            self.ctx.pop();
        }
        out.end().map_err(de::Error::custom)
    }

    fn transcode_variant<'de, A: MapAccess<'de>>(
        self,
        mut map: A,
        variants: &'s [Variant],
    ) -> Result<S::Ok, A::Error> {
        let Some(name) = map.next_key::<String>()? else {
            return Err(self.ctx.mismatch(self.node, "an empty object"));
        };
        // The first variant of that name decides, as a deserializer would.
        let found = variants.iter().find(|variant| *variant.name == *name);
        let Some((name, payload)) =
            found.and_then(|variant| Some((&*variant.name, variant.payload?)))
        else {
            return Err(self.ctx.fail_here(format!(
                "unknown variant `{name}`; expected one of {}",
                list(variant_names(variants))
            )));
        };
        let mut out = self.s.serialize_map(Some(1)).map_err(de::Error::custom)?;
        out.serialize_key(name).map_err(de::Error::custom)?;
        self.ctx.push(Segment::Known(name));
        map.next_value_seed(ValueSeed {
            out: &mut out,
            node: payload,
            ctx: self.ctx,
        })?;
        if map.next_key::<IgnoredAny>()?.is_some() {
            self.ctx.pop();
            return Err(self
                .ctx
                .fail_here("an enum value is an object with exactly one key, the variant"));
        }
        self.ctx.pop();
        out.end().map_err(de::Error::custom)
    }
}

impl<'de, 's, S: Serializer> Visitor<'de> for GuidedVisitor<'_, 's, S> {
    type Value = S::Ok;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&expected(self.node))
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<S::Ok, E> {
        match self.node.kind {
            Kind::Bool => self.s.serialize_bool(value).map_err(E::custom),
            _ => Err(self.ctx.mismatch(self.node, format!("the boolean {value}"))),
        }
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<S::Ok, E> {
        self.integer(i128::from(value))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<S::Ok, E> {
        self.integer(i128::from(value))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<S::Ok, E> {
        match self.node.kind {
            Kind::Number => self.s.serialize_f64(value).map_err(E::custom),
            _ => Err(self.ctx.mismatch(self.node, describe_number(value))),
        }
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<S::Ok, E> {
        match &self.node.kind {
            Kind::String { one_char, variants } => {
                if *one_char && value.chars().count() != 1 {
                    return Err(self.ctx.mismatch(self.node, format!("{value:?}")));
                }
                if let Some(variants) = variants {
                    if !variants.iter().any(|variant| **variant == *value) {
                        return Err(self.ctx.fail_here(format!(
                            "unknown variant `{value}`; expected one of {}",
                            list(variants.iter().map(|name| &**name))
                        )));
                    }
                }
                self.s.serialize_str(value).map_err(E::custom)
            }
            Kind::Bytes => match BASE64.decode(value) {
                Ok(bytes) => self.s.serialize_bytes(&bytes).map_err(E::custom),
                Err(error) => Err(self
                    .ctx
                    .fail_here(format!("expected a base64 string of bytes: {error}"))),
            },
            Kind::OneOf(variants) => {
                match variants.iter().find(|variant| *variant.name == *value) {
                    Some(Variant { payload: None, .. }) => {
                        self.s.serialize_str(value).map_err(E::custom)
                    }
                    Some(Variant {
                        payload: Some(_), ..
                    }) => Err(self.ctx.fail_here(format!(
                        "variant `{value}` has fields: write {{\"{value}\": ...}}"
                    ))),
                    None => Err(self.ctx.fail_here(format!(
                        "unknown variant `{value}`; expected one of {}",
                        list(variant_names(variants))
                    ))),
                }
            }
            _ => Err(self.ctx.mismatch(self.node, "a string")),
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<S::Ok, E> {
        if self.node.nullable || matches!(self.node.kind, Kind::Null) {
            self.s.serialize_unit().map_err(E::custom)
        } else {
            Err(self.ctx.mismatch(self.node, "null"))
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<S::Ok, A::Error> {
        self.transcode_seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<S::Ok, A::Error> {
        match &self.node.kind {
            Kind::Object(object) => self.transcode_object(map, object),
            Kind::Map { values, key } => self.transcode_map(map, *values, key),
            Kind::OneOf(variants) => self.transcode_variant(map, variants),
            _ => Err(self.ctx.mismatch(self.node, "an object")),
        }
    }
}

/// A struct's key: the index of the field it names, or the unknown name.
enum FoundField {
    Known(usize),
    Unknown(String),
}

/// Reads a struct's key and looks it up among the fields without copying it.
struct FieldKey<'s> {
    object: &'s Object,
}

impl<'de> DeserializeSeed<'de> for FieldKey<'_> {
    type Value = FoundField;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<FoundField, D::Error> {
        de.deserialize_str(self)
    }
}

impl Visitor<'_> for FieldKey<'_> {
    type Value = FoundField;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<FoundField, E> {
        Ok(match self.object.field(name) {
            Some(index) => FoundField::Known(index),
            None => FoundField::Unknown(name.to_owned()),
        })
    }
}

struct ElementSeed<'o, 'c, 's, T> {
    out: &'o mut T,
    node: NodeId,
    ctx: &'c Ctx<'s>,
}

impl<'de, T: SerializeSeq> DeserializeSeed<'de> for ElementSeed<'_, '_, '_, T> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        self.out
            .serialize_element(&Guided::new(de, self.node, self.ctx))
            .map_err(de::Error::custom)
    }
}

struct ValueSeed<'o, 'c, 's, T> {
    out: &'o mut T,
    node: NodeId,
    ctx: &'c Ctx<'s>,
}

impl<'de, T: SerializeMap> DeserializeSeed<'de> for ValueSeed<'_, '_, '_, T> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        self.out
            .serialize_value(&Guided::new(de, self.node, self.ctx))
            .map_err(de::Error::custom)
    }
}
