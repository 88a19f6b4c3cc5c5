//! JSON ⇄ MessagePack for the generic routes, streamed value by value, never through a value
//! tree.
//!
//! Requests: a `serde_json::Deserializer` drives an `rmp_serde::Serializer` the way
//! `serde-transcode` does, except that every value is checked against the method's request
//! schema from the service descriptor on the way (types, integer ranges, enum variants, unknown,
//! repeated and missing fields), so a mistake is a 400 that names the field instead of a
//! decoding error from the handler. Fields with `{"type":"string","format":"byte"}` (`Vec<u8>`)
//! are base64 strings in JSON and MessagePack binaries on the wire. Besides the descriptor's own
//! dialect, the checks understand what schemars writes for `use` types with a schema (`const`
//! unit variants, `type` arrays with `"null"`, `anyOf` with a null branch, tuples as `items` or
//! `prefixItems` arrays). Parts of a schema the gateway does not understand (a `use` type
//! described only by its Rust name, an untagged enum's `anyOf`) are transcoded unchecked with
//! `serde_transcode` and left to the service to judge.
//!
//! Responses: the MessagePack response map `{<result field>: value}` becomes the JSON envelope
//! `{"error":"", <result field>: value}` (`error` first, as the original gateway answered), and
//! binaries become base64 strings.

use std::cell::RefCell;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{self, Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Value};

/// Why a JSON request body could not be turned into a MessagePack request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The body is not JSON at all.
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    /// The body is JSON but does not match the method's request schema.
    #[error("{0}")]
    Invalid(String),
}

/// Why a MessagePack response could not be turned into JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the service's response could not be turned into JSON: {0}")]
pub struct ResponseError(String);

/// The schemas a request is checked against: the method's request schema, and the
/// descriptor's named types that `$ref`s point at (`#/components/schemas/<service>.<Type>`).
#[derive(Debug, Clone, Copy)]
pub struct Schema<'a> {
    /// The schema of the request map.
    pub root: &'a Value,
    /// The descriptor's `types`.
    pub types: &'a Map<String, Value>,
}

/// Transcodes a JSON request body into the MessagePack request map, checking it against
/// `schema`. An empty body is taken as `{}`.
pub fn json_to_msgpack(body: &[u8], schema: Schema<'_>) -> Result<Vec<u8>, RequestError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let ctx = Ctx {
        types: schema.types,
        path: RefCell::new(Vec::new()),
        failure: RefCell::new(None),
    };
    let mut out = Vec::with_capacity(body.len());
    let mut json = serde_json::Deserializer::from_slice(body);
    let result = {
        let mut msgpack = rmp_serde::Serializer::new(&mut out).with_struct_map();
        Guided::new(&mut json, schema.root, &ctx).serialize(&mut msgpack)
    };
    if let Some(failure) = ctx.failure.into_inner() {
        return Err(RequestError::Invalid(failure));
    }
    result.map_err(|error| RequestError::NotJson(error.to_string()))?;
    json.end()
        .map_err(|error| RequestError::NotJson(error.to_string()))?;
    Ok(out)
}

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

/// The MessagePack prefix of the one-entry map `{"item": ...}`.
const ITEM_PREFIX: [u8; 6] = [0x81, 0xa4, b'i', b't', b'e', b'm'];

/// The schema of one stream line, `{"item": <value>}`, for items of schema `item`: what
/// [`json_item_to_msgpack`] checks a line against.
pub fn item_line_schema(item: &Value) -> Value {
    serde_json::json!({
        "type": "object",
        "properties": { "item": item },
        "required": ["item"],
        "additionalProperties": false
    })
}

/// Transcodes one client-stream line, the JSON object `{"item": <value>}`, into the MessagePack
/// encoding of the value alone (what a stream item is on the wire), checking the value against
/// `line` (from [`item_line_schema`]). Errors name the field as `item` or `item.<field>`.
pub fn json_item_to_msgpack(line: &[u8], schema: Schema<'_>) -> Result<Vec<u8>, RequestError> {
    let map = json_to_msgpack(line, schema)?;
    map.strip_prefix(&ITEM_PREFIX[..])
        .map(<[u8]>::to_vec)
        .ok_or_else(|| {
            RequestError::Invalid("a stream line must be the object {\"item\": <value>}".to_owned())
        })
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

/// A place in a request the gateway passes through unchecked: a `use` type without a schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unchecked {
    /// Where it is: `card.mood`, `moods[]` (any element), `by_name.*` (any value),
    /// `weather.Rain` (a variant's payload).
    pub path: String,
    /// The Rust type the descriptor names, e.g. `crate::model::Mood`.
    pub rust_type: String,
}

/// The places of a request that the gateway cannot check, because the descriptor gives only
/// the Rust type there (a `use` type without `json_schema = true`). A service that refuses a
/// request the gateway let through most likely stumbled on one of them; naming them lets an
/// error say so instead of repeating the service's decoding error alone. Each declared type is
/// entered once, so recursive types end.
pub fn unchecked_fields(schema: Schema<'_>) -> Vec<Unchecked> {
    let mut found = Vec::new();
    let mut entered = Vec::new();
    walk_unchecked(
        schema.root,
        schema.types,
        String::new(),
        &mut entered,
        &mut found,
    );
    found
}

fn walk_unchecked<'a>(
    schema: &'a Value,
    types: &'a Map<String, Value>,
    path: String,
    entered: &mut Vec<&'a str>,
    found: &mut Vec<Unchecked>,
) {
    let join = |path: &str, next: &str| {
        if path.is_empty() {
            next.to_owned()
        } else {
            format!("{path}.{next}")
        }
    };
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        if let Some((name, target)) = reference
            .strip_prefix("#/components/schemas/")
            .and_then(|name| types.get_key_value(name))
        {
            if !entered.contains(&name.as_str()) {
                entered.push(name);
                walk_unchecked(target, types, path, entered, found);
            }
        }
        return;
    }
    if let Some(rust_type) = schema
        .get("description")
        .and_then(Value::as_str)
        .and_then(|text| text.strip_prefix("Rust type "))
        .filter(|_| schema.get("type").is_none() && schema.get("properties").is_none())
    {
        found.push(Unchecked {
            path,
            rust_type: rust_type.to_owned(),
        });
        return;
    }
    for key in ["allOf", "anyOf", "oneOf", "x-meshrpc-tuple"] {
        for branch in schema
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            walk_unchecked(branch, types, path.clone(), entered, found);
        }
    }
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (name, property) in properties {
            walk_unchecked(property, types, join(&path, name), entered, found);
        }
    }
    if let Some(items) = schema.get("items").filter(|items| items.is_object()) {
        walk_unchecked(items, types, format!("{path}[]"), entered, found);
    }
    if let Some(values) = schema
        .get("additionalProperties")
        .filter(|values| values.is_object())
    {
        walk_unchecked(values, types, join(&path, "*"), entered, found);
    }
}

// ---------------------------------------------------------------------------------------------
// Schemas

/// A schema that accepts anything (used where a schema says nothing).
static ANY: Value = Value::Null;

/// What a schema asks of a value, after `$ref`s and `allOf` wrappers are resolved.
#[derive(Debug, Clone, Copy)]
enum Kind<'a> {
    /// Anything: transcoded unchecked.
    Any,
    /// Only `null` (the unit type).
    Null,
    Bool,
    Integer {
        min: Option<i128>,
        max: Option<i128>,
    },
    Number,
    String {
        variants: Option<&'a [Value]>,
        one_char: bool,
    },
    /// A base64 string in JSON, a binary in MessagePack.
    Bytes,
    Array {
        items: &'a Value,
    },
    Tuple {
        elems: &'a [Value],
    },
    /// A struct: known fields only.
    Object {
        properties: &'a Map<String, Value>,
        required: &'a [Value],
    },
    /// A map with any keys (`key` is the Rust key type when it is not `String`).
    Map {
        values: &'a Value,
        key: Option<&'a str>,
    },
    /// An enum in serde's external tagging.
    OneOf(&'a [Value]),
}

#[derive(Debug, Clone, Copy)]
struct Shape<'a> {
    kind: Kind<'a>,
    nullable: bool,
}

fn is_true(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool) == Some(true)
}

fn bound(schema: &Value, key: &str) -> Option<i128> {
    let value = schema.get(key)?;
    value
        .as_i64()
        .map(i128::from)
        .or_else(|| value.as_u64().map(i128::from))
}

/// `x` of `{"anyOf": [x, {"type": "null"}]}` (either order): how JSON Schema 2020-12 writes an
/// optional value.
fn or_null(schema: &Value) -> Option<&Value> {
    let [first, second] = schema.get("anyOf").and_then(Value::as_array)?.as_slice() else {
        return None;
    };
    let is_null = |branch: &Value| branch.get("type").and_then(Value::as_str) == Some("null");
    match (is_null(first), is_null(second)) {
        (false, true) => Some(first),
        (true, false) => Some(second),
        _ => None,
    }
}

/// The schema's `type`: a string, or (JSON Schema 2020-12) an array of them where `"null"`
/// means nullable. `None` when absent or when several non-null types are allowed.
fn type_of(schema: &Value) -> (Option<&str>, bool) {
    match schema.get("type") {
        Some(Value::String(name)) => (Some(name.as_str()), false),
        Some(Value::Array(names)) => {
            let names: Vec<&str> = names.iter().filter_map(Value::as_str).collect();
            let nullable = names.contains(&"null");
            let rest: Vec<&str> = names.into_iter().filter(|name| *name != "null").collect();
            match rest.as_slice() {
                [only] => (Some(*only), nullable),
                _ => (None, nullable),
            }
        }
        _ => (None, false),
    }
}

fn shape<'a>(mut schema: &'a Value, types: &'a Map<String, Value>) -> Shape<'a> {
    let mut nullable = is_true(schema, "nullable");
    // `$ref`s, `{"allOf": [x], "nullable": true}` and `{"anyOf": [x, {"type": "null"}]}`
    // wrappers; bounded against cycles.
    for _ in 0..32 {
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            match reference
                .strip_prefix("#/components/schemas/")
                .and_then(|name| types.get(name))
            {
                Some(target) => {
                    schema = target;
                    nullable |= is_true(schema, "nullable");
                    continue;
                }
                None => {
                    return Shape {
                        kind: Kind::Any,
                        nullable: true,
                    };
                }
            }
        }
        if let Some([inner]) = schema
            .get("allOf")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
        {
            schema = inner;
            nullable |= is_true(schema, "nullable");
            continue;
        }
        if let Some(inner) = or_null(schema) {
            schema = inner;
            nullable = true;
            continue;
        }
        break;
    }
    let (type_name, null_type) = type_of(schema);
    nullable |= null_type;
    let kind = if let Some(elems) = schema.get("x-meshrpc-tuple").and_then(Value::as_array) {
        Kind::Tuple { elems }
    } else if let Some(branches) = schema.get("oneOf").and_then(Value::as_array) {
        Kind::OneOf(branches)
    } else if let Some(value @ Value::String(_)) = schema.get("const") {
        // One allowed string, as schemars writes a unit variant.
        Kind::String {
            variants: Some(std::slice::from_ref(value)),
            one_char: false,
        }
    } else {
        match type_name {
            Some("boolean") => Kind::Bool,
            Some("integer") => Kind::Integer {
                min: bound(schema, "minimum"),
                max: bound(schema, "maximum"),
            },
            Some("number") => Kind::Number,
            Some("string") if schema.get("format").and_then(Value::as_str) == Some("byte") => {
                Kind::Bytes
            }
            Some("string") => Kind::String {
                variants: schema
                    .get("enum")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice),
                one_char: schema.get("maxLength").and_then(Value::as_u64) == Some(1),
            },
            // `items` as an array (or `prefixItems`): a tuple, as JSON Schema dialects write one.
            Some("array") => match schema
                .get("prefixItems")
                .or_else(|| schema.get("items"))
                .and_then(Value::as_array)
            {
                Some(elems) => Kind::Tuple { elems },
                None => Kind::Array {
                    items: schema.get("items").unwrap_or(&ANY),
                },
            },
            Some("object") => match schema.get("properties").and_then(Value::as_object) {
                Some(properties)
                    if !schema.get("additionalProperties").is_some_and(|extra| {
                        extra.is_object() || extra.as_bool() == Some(true)
                    }) =>
                {
                    Kind::Object {
                        properties,
                        required: schema
                            .get("required")
                            .and_then(Value::as_array)
                            .map_or(&[], Vec::as_slice),
                    }
                }
                _ => Kind::Map {
                    values: schema
                        .get("additionalProperties")
                        .filter(|extra| extra.is_object())
                        .unwrap_or(&ANY),
                    key: schema.get("x-meshrpc-key").and_then(Value::as_str),
                },
            },
            None if schema.get("enum").and_then(Value::as_array) == Some(&vec![Value::Null]) => {
                Kind::Null
            }
            _ => Kind::Any,
        }
    };
    Shape { kind, nullable }
}

impl Shape<'_> {
    fn expected(&self, types: &Map<String, Value>) -> String {
        let what = match self.kind {
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
            } => format!("one of {}", list(variants.iter().filter_map(Value::as_str))),
            Kind::String { .. } => "a string".to_owned(),
            Kind::Bytes => "a base64 string".to_owned(),
            Kind::Array { .. } => "an array".to_owned(),
            Kind::Tuple { elems } => format!("an array of {} elements", elems.len()),
            Kind::Object { .. } | Kind::Map { .. } => "an object".to_owned(),
            Kind::OneOf(branches) => format!("one of {}", list(variant_names(branches, types))),
        };
        if self.nullable && !matches!(self.kind, Kind::Null | Kind::Any) {
            format!("{what} or null")
        } else {
            what
        }
    }
}

/// `a, b, c` with backticks.
fn list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names
        .into_iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The variant names of an externally tagged enum's `oneOf`.
fn variant_names<'a>(branches: &'a [Value], types: &'a Map<String, Value>) -> Vec<&'a str> {
    let mut names = Vec::new();
    for branch in branches {
        match shape(branch, types).kind {
            Kind::String {
                variants: Some(variants),
                ..
            } => names.extend(variants.iter().filter_map(Value::as_str)),
            Kind::Object { properties, .. } => names.extend(properties.keys().map(String::as_str)),
            _ => {}
        }
    }
    names
}

/// The schema of variant `name`'s payload, or `None` for a unit variant or no such variant.
fn variant<'a>(
    branches: &'a [Value],
    types: &'a Map<String, Value>,
    name: &str,
) -> Option<Option<&'a Value>> {
    for branch in branches {
        match shape(branch, types).kind {
            Kind::String {
                variants: Some(variants),
                ..
            } if variants
                .iter()
                .any(|variant| variant.as_str() == Some(name)) =>
            {
                return Some(None);
            }
            Kind::Object { properties, .. } => {
                if let Some(payload) = properties.get(name) {
                    return Some(Some(payload));
                }
            }
            _ => {}
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Requests: JSON -> MessagePack, guided by the schema

enum Segment {
    Field(String),
    Index(usize),
}

/// State shared by one request's transcoding: where it is, and the first mismatch found.
struct Ctx<'a> {
    types: &'a Map<String, Value>,
    path: RefCell<Vec<Segment>>,
    failure: RefCell<Option<String>>,
}

impl Ctx<'_> {
    fn push(&self, segment: Segment) {
        self.path.borrow_mut().push(segment);
    }

    fn pop(&self) {
        self.path.borrow_mut().pop();
    }

    /// The current path: `card.recipient`, `guests[2]`.
    fn path(&self) -> String {
        let mut text = String::new();
        for segment in self.path.borrow().iter() {
            match segment {
                Segment::Field(name) => {
                    if !text.is_empty() {
                        text.push('.');
                    }
                    text.push_str(name);
                }
                Segment::Index(index) => text.push_str(&format!("[{index}]")),
            }
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

    fn mismatch<E: de::Error>(&self, shape: &Shape<'_>, found: impl fmt::Display) -> E {
        if self.path.borrow().is_empty() && matches!(shape.kind, Kind::Object { .. }) {
            return self.fail(format!(
                "the request body must be a JSON object with the method's parameters as \
                 fields, found {found}"
            ));
        }
        self.fail_here(format!(
            "expected {}, found {found}",
            shape.expected(self.types)
        ))
    }
}

/// A value still in the JSON deserializer, serializable into MessagePack under a schema.
struct Guided<'c, 'a, D> {
    de: RefCell<Option<D>>,
    schema: &'a Value,
    ctx: &'c Ctx<'a>,
}

impl<'c, 'a, D> Guided<'c, 'a, D> {
    fn new(de: D, schema: &'a Value, ctx: &'c Ctx<'a>) -> Self {
        Guided {
            de: RefCell::new(Some(de)),
            schema,
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
        let shape = shape(self.schema, self.ctx.types);
        if let Kind::Any = shape.kind {
            return serde_transcode::Transcoder::new(de).serialize(s);
        }
        de.deserialize_any(GuidedVisitor {
            s,
            shape,
            ctx: self.ctx,
        })
        .map_err(ser::Error::custom)
    }
}

struct GuidedVisitor<'c, 'a, S> {
    s: S,
    shape: Shape<'a>,
    ctx: &'c Ctx<'a>,
}

fn describe_number(value: impl fmt::Display) -> String {
    format!("the number {value}")
}

impl<'c, 'a, S: Serializer> GuidedVisitor<'c, 'a, S> {
    fn integer<E: de::Error>(self, value: i128) -> Result<S::Ok, E> {
        match self.shape.kind {
            Kind::Integer { min, max } => {
                if min.is_some_and(|min| value < min) || max.is_some_and(|max| value > max) {
                    return Err(self.ctx.mismatch(&self.shape, describe_number(value)));
                }
            }
            Kind::Number => {}
            _ => return Err(self.ctx.mismatch(&self.shape, describe_number(value))),
        }
        let result = match (i64::try_from(value), u64::try_from(value)) {
            (Ok(value), _) => self.s.serialize_i64(value),
            (_, Ok(value)) => self.s.serialize_u64(value),
            _ => return Err(self.ctx.fail_here("the number is out of range")),
        };
        result.map_err(E::custom)
    }

    fn transcode_seq<'de, A: SeqAccess<'de>>(self, mut seq: A) -> Result<S::Ok, A::Error> {
        let (items, elems) = match self.shape.kind {
            Kind::Array { items } => (Some(items), None),
            Kind::Tuple { elems } => (None, Some(elems)),
            _ => return Err(self.ctx.mismatch(&self.shape, "an array")),
        };
        let mut out = self
            .s
            .serialize_seq(seq.size_hint())
            .map_err(de::Error::custom)?;
        let mut index = 0;
        loop {
            let schema = match (items, elems) {
                (Some(items), _) => items,
                (None, Some(elems)) => match elems.get(index) {
                    Some(schema) => schema,
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
                (None, None) => &ANY,
            };
            self.ctx.push(Segment::Index(index));
            let next = seq.next_element_seed(ElementSeed {
                out: &mut out,
                schema,
                ctx: self.ctx,
            });
            self.ctx.pop();
            if next?.is_none() {
                break;
            }
            index += 1;
        }
        if let Some(elems) = elems {
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
        properties: &'a Map<String, Value>,
        required: &'a [Value],
    ) -> Result<S::Ok, A::Error> {
        let mut out = self.s.serialize_map(None).map_err(de::Error::custom)?;
        let mut seen: Vec<&str> = Vec::with_capacity(properties.len());
        while let Some(key) = map.next_key::<String>()? {
            let entry = properties
                .get_key_value(&key)
                .map(|(name, schema)| (name.as_str(), schema));
            self.ctx.push(Segment::Field(key));
            let Some((name, schema)) = entry else {
                return Err(self.ctx.fail(format!(
                    "unknown field `{}`; the fields are: {}",
                    self.ctx.path(),
                    list(properties.keys().map(String::as_str))
                )));
            };
            if seen.contains(&name) {
                return Err(self
                    .ctx
                    .fail(format!("field `{}` is given twice", self.ctx.path())));
            }
            seen.push(name);
            out.serialize_key(name).map_err(de::Error::custom)?;
            map.next_value_seed(ValueSeed {
                out: &mut out,
                schema,
                ctx: self.ctx,
            })?;
            self.ctx.pop();
        }
        for name in required.iter().filter_map(Value::as_str) {
            if !seen.contains(&name) {
                self.ctx.push(Segment::Field(name.to_owned()));
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
        values: &'a Value,
        key_type: Option<&str>,
    ) -> Result<S::Ok, A::Error> {
        let mut out = self.s.serialize_map(None).map_err(de::Error::custom)?;
        while let Some(key) = map.next_key::<String>()? {
            let key_type = key_type.unwrap_or("String");
            let written = if key_type.starts_with('u') {
                match key.parse::<u64>() {
                    Ok(number) => out.serialize_key(&number),
                    Err(_) => {
                        return Err(self.ctx.fail_here(format!(
                            "the key `{key}` is not an unsigned integer (keys are {key_type})"
                        )));
                    }
                }
            } else if key_type.starts_with('i') {
                match key.parse::<i64>() {
                    Ok(number) => out.serialize_key(&number),
                    Err(_) => {
                        return Err(self.ctx.fail_here(format!(
                            "the key `{key}` is not an integer (keys are {key_type})"
                        )));
                    }
                }
            } else if key_type == "bool" {
                match key.parse::<bool>() {
                    Ok(flag) => out.serialize_key(&flag),
                    Err(_) => {
                        return Err(self.ctx.fail_here(format!(
                            "the key `{key}` is not `true` or `false` (keys are bool)"
                        )));
                    }
                }
            } else {
                out.serialize_key(&key)
            };
            written.map_err(de::Error::custom)?;
            self.ctx.push(Segment::Field(key));
            map.next_value_seed(ValueSeed {
                out: &mut out,
                schema: values,
                ctx: self.ctx,
            })?;
            self.ctx.pop();
        }
        out.end().map_err(de::Error::custom)
    }

    fn transcode_variant<'de, A: MapAccess<'de>>(
        self,
        mut map: A,
        branches: &'a [Value],
    ) -> Result<S::Ok, A::Error> {
        let Some(name) = map.next_key::<String>()? else {
            return Err(self.ctx.mismatch(&self.shape, "an empty object"));
        };
        let payload = match variant(branches, self.ctx.types, &name) {
            Some(Some(payload)) => payload,
            _ => {
                return Err(self.ctx.fail_here(format!(
                    "unknown variant `{name}`; expected one of {}",
                    list(variant_names(branches, self.ctx.types))
                )));
            }
        };
        let mut out = self.s.serialize_map(Some(1)).map_err(de::Error::custom)?;
        out.serialize_key(&name).map_err(de::Error::custom)?;
        self.ctx.push(Segment::Field(name));
        map.next_value_seed(ValueSeed {
            out: &mut out,
            schema: payload,
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

impl<'de, S: Serializer> Visitor<'de> for GuidedVisitor<'_, '_, S> {
    type Value = S::Ok;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shape.expected(self.ctx.types))
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<S::Ok, E> {
        match self.shape.kind {
            Kind::Bool => self.s.serialize_bool(value).map_err(E::custom),
            _ => Err(self
                .ctx
                .mismatch(&self.shape, format!("the boolean {value}"))),
        }
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<S::Ok, E> {
        self.integer(i128::from(value))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<S::Ok, E> {
        self.integer(i128::from(value))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<S::Ok, E> {
        match self.shape.kind {
            Kind::Number => self.s.serialize_f64(value).map_err(E::custom),
            _ => Err(self.ctx.mismatch(&self.shape, describe_number(value))),
        }
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<S::Ok, E> {
        match self.shape.kind {
            Kind::String { one_char, variants } => {
                if one_char && value.chars().count() != 1 {
                    return Err(self.ctx.mismatch(&self.shape, format!("{value:?}")));
                }
                if let Some(variants) = variants {
                    if !variants
                        .iter()
                        .any(|variant| variant.as_str() == Some(value))
                    {
                        return Err(self.ctx.fail_here(format!(
                            "unknown variant `{value}`; expected one of {}",
                            list(variants.iter().filter_map(Value::as_str))
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
            Kind::OneOf(branches) => match variant(branches, self.ctx.types, value) {
                Some(None) => self.s.serialize_str(value).map_err(E::custom),
                Some(Some(_)) => Err(self.ctx.fail_here(format!(
                    "variant `{value}` has fields: write {{\"{value}\": ...}}"
                ))),
                None => Err(self.ctx.fail_here(format!(
                    "unknown variant `{value}`; expected one of {}",
                    list(variant_names(branches, self.ctx.types))
                ))),
            },
            _ => Err(self.ctx.mismatch(&self.shape, "a string")),
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<S::Ok, E> {
        if self.shape.nullable || matches!(self.shape.kind, Kind::Null) {
            self.s.serialize_unit().map_err(E::custom)
        } else {
            Err(self.ctx.mismatch(&self.shape, "null"))
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<S::Ok, A::Error> {
        self.transcode_seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<S::Ok, A::Error> {
        match self.shape.kind {
            Kind::Object {
                properties,
                required,
            } => self.transcode_object(map, properties, required),
            Kind::Map { values, key } => self.transcode_map(map, values, key),
            Kind::OneOf(branches) => self.transcode_variant(map, branches),
            _ => Err(self.ctx.mismatch(&self.shape, "an object")),
        }
    }
}

struct ElementSeed<'o, 'c, 'a, T> {
    out: &'o mut T,
    schema: &'a Value,
    ctx: &'c Ctx<'a>,
}

impl<'de, T: SerializeSeq> DeserializeSeed<'de> for ElementSeed<'_, '_, '_, T> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        self.out
            .serialize_element(&Guided::new(de, self.schema, self.ctx))
            .map_err(de::Error::custom)
    }
}

struct ValueSeed<'o, 'c, 'a, T> {
    out: &'o mut T,
    schema: &'a Value,
    ctx: &'c Ctx<'a>,
}

impl<'de, T: SerializeMap> DeserializeSeed<'de> for ValueSeed<'_, '_, '_, T> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        self.out
            .serialize_value(&Guided::new(de, self.schema, self.ctx))
            .map_err(de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Responses: MessagePack -> JSON

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

#[cfg(test)]
mod tests;
