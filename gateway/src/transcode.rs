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
//! A schema is read once: [`CompiledSchema::compile`] turns a method's JSON Schema (a
//! [`Schema`]) into resolved nodes (`compile.rs`), which the gateway does when it learns a
//! descriptor ([`crate::descriptors::CompiledDescriptor`]); each request then only walks the
//! nodes (`request.rs`). [`json_to_msgpack`] compiles on the spot, for one-off callers.
//!
//! Responses (`response.rs`): the MessagePack response map `{<result field>: value}` becomes the
//! JSON envelope `{"error":"", <result field>: value}` (`error` first, as the original gateway
//! answered), and binaries become base64 strings.

mod compile;
mod request;
mod response;

use serde_json::{Map, Value};

pub use compile::CompiledSchema;
pub use response::{msgpack_item_to_json, msgpack_to_json_envelope};

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

/// The schemas a request is checked against, as the descriptor has them: the method's request
/// schema, and the descriptor's named types that `$ref`s point at
/// (`#/components/schemas/<service>.<Type>`). [`CompiledSchema::compile`] reads it once.
#[derive(Debug, Clone, Copy)]
pub struct Schema<'a> {
    /// The schema of the request map.
    pub root: &'a Value,
    /// The descriptor's `types`.
    pub types: &'a Map<String, Value>,
}

impl CompiledSchema {
    /// Transcodes a JSON request body into the MessagePack request map, checking it against
    /// this schema. An empty body is taken as `{}`.
    pub fn json_to_msgpack(&self, body: &[u8]) -> Result<Vec<u8>, RequestError> {
        request::transcode(body, self)
    }

    /// Transcodes one client-stream line, the JSON object `{"item": <value>}`, into the
    /// MessagePack encoding of the value alone (what a stream item is on the wire), checking
    /// the value against this schema (from [`CompiledSchema::stream_line`]). Errors name the
    /// field as `item` or `item.<field>`.
    pub fn json_item_to_msgpack(&self, line: &[u8]) -> Result<Vec<u8>, RequestError> {
        let mut map = self.json_to_msgpack(line)?;
        if !map.starts_with(&ITEM_PREFIX) {
            return Err(RequestError::Invalid(
                "a stream line must be the object {\"item\": <value>}".to_owned(),
            ));
        }
        map.drain(..ITEM_PREFIX.len());
        Ok(map)
    }
}

/// Transcodes a JSON request body into the MessagePack request map, checking it against
/// `schema`. An empty body is taken as `{}`. This compiles `schema` for the one call: to
/// transcode many requests, compile it once and use [`CompiledSchema::json_to_msgpack`].
pub fn json_to_msgpack(body: &[u8], schema: Schema<'_>) -> Result<Vec<u8>, RequestError> {
    CompiledSchema::compile(schema).json_to_msgpack(body)
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
/// `line` (from [`item_line_schema`]). Errors name the field as `item` or `item.<field>`. This
/// compiles `schema` for the one call (see [`CompiledSchema::json_item_to_msgpack`]).
pub fn json_item_to_msgpack(line: &[u8], schema: Schema<'_>) -> Result<Vec<u8>, RequestError> {
    CompiledSchema::compile(schema).json_item_to_msgpack(line)
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

#[cfg(test)]
mod tests;
