//! What a service looks like to tools that do not know its Rust types: the schema hash nodes
//! compare to agree on the wire format, and the JSON descriptor the gateway builds its OpenAPI
//! document and JSON transcoding from (format in `docs/MANIFEST.md`, "The service descriptor").

use meshrpc_descriptor::KEY_EXTENSION;
use serde_json::{Map, Value, json};

use crate::manifest::{Body, Declared, Field, Method, Service, VariantFields};
use crate::types::Ty;

/// 64-bit FNV-1a: tiny, stable across platforms and releases, good enough to tell schemas apart.
// The runtime's `meshrpc::spec::Fnv1a` is the same function; this crate keeps its own few lines
// because a code generator must not depend on the runtime (nor the runtime on it).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

/// The canonical text of everything that shapes the service's wire format: its name, each
/// method's signature (types by canonical name, `use` types by full path) and response field,
/// and the declared types. Docs, timeouts and flags are left out: they do not change the wire.
/// Streams are written `Stream<T>`, so turning a `Stream<T>` into a `T` changes the hash (and
/// the lines of methods without streams are what they always were).
pub(crate) fn canonical_schema(service: &Service) -> String {
    let mut text = format!("service {}\n", service.name);
    for method in &service.methods {
        let mut params: Vec<String> = method.params.iter().map(field_text).collect();
        if let Some(stream) = &method.stream {
            params.push(format!(
                "{}: Stream<{}>",
                stream.name,
                stream.ty.canonical()
            ));
        }
        let (result, returns) = if method.result_streams {
            (format!("Stream<{}>", method.result.canonical()), "")
        } else if method.result == Ty::Unit {
            (method.result.canonical(), "")
        } else {
            (method.result.canonical(), method.returns.as_str())
        };
        text.push_str(&format!(
            "method {}({}) -> {result} returns {returns}\n",
            method.name,
            params.join(", "),
        ));
    }
    for declared in &service.types {
        match &declared.body {
            Body::Struct(fields) => {
                let fields: Vec<String> = fields.iter().map(field_text).collect();
                text.push_str(&format!(
                    "struct {} {{ {} }}\n",
                    declared.name,
                    fields.join(", ")
                ));
            }
            // New kinds of body get lines of their own, so the hashes of manifests without
            // them stay what they were.
            Body::Newtype(field) => {
                text.push_str(&format!(
                    "newtype {}({})\n",
                    declared.name,
                    field.ty.canonical()
                ));
            }
            Body::Tuple(fields) => {
                text.push_str(&format!(
                    "tuple {}({})\n",
                    declared.name,
                    types_text(fields)
                ));
            }
            Body::Enum(variants) => {
                let variants: Vec<String> = variants
                    .iter()
                    .map(|variant| match &variant.fields {
                        VariantFields::Unit => variant.name.clone(),
                        VariantFields::Tuple(fields) => {
                            format!("{}({})", variant.name, types_text(fields))
                        }
                        VariantFields::Named(fields) => {
                            let fields: Vec<String> = fields.iter().map(field_text).collect();
                            format!("{} {{ {} }}", variant.name, fields.join(", "))
                        }
                    })
                    .collect();
                text.push_str(&format!(
                    "enum {} {{ {} }}\n",
                    declared.name,
                    variants.join(", ")
                ));
            }
        }
    }
    text
}

fn types_text(fields: &[Field]) -> String {
    let types: Vec<String> = fields.iter().map(|field| field.ty.canonical()).collect();
    types.join(", ")
}

fn field_text(field: &Field) -> String {
    format!("{}: {}", field.name, field.ty.canonical())
}

/// The service's schema hash.
pub(crate) fn schema_hash(service: &Service) -> u64 {
    fnv1a(canonical_schema(service).as_bytes())
}

/// The JSON descriptor of a service.
pub(crate) fn descriptor(service: &Service) -> Value {
    let methods: Vec<Value> = service
        .methods
        .iter()
        .map(|method| method_descriptor(service, method))
        .collect();
    let mut types = Map::new();
    for declared in &service.types {
        types.insert(
            format!("{}.{}", service.name, declared.name),
            type_schema(service, declared),
        );
    }
    let mut methods = methods;
    for method in &mut methods {
        key_primitives(service, method);
    }
    for schema in types.values_mut() {
        key_primitives(service, schema);
    }
    json!({
        "service": service.name,
        "doc": service.doc,
        "schema_hash": format!("{:016x}", schema_hash(service)),
        "methods": methods,
        "types": types,
    })
}

/// Rewrites `"x-meshrpc-key": "<Declared>"` (a map keyed by a declared newtype) to the
/// newtype's primitive, which is what the key is on the wire and what the gateway converts JSON
/// keys to; a newtype of `String` needs no key annotation at all.
fn key_primitives(service: &Service, schema: &mut Value) {
    match schema {
        Value::Object(object) => {
            let key = object
                .get(KEY_EXTENSION)
                .and_then(Value::as_str)
                .and_then(|name| service.types.iter().find(|declared| declared.name == name))
                .and_then(|declared| match &declared.body {
                    Body::Newtype(field) => Some(field.ty.clone()),
                    _ => None,
                });
            match key {
                Some(Ty::String) => {
                    object.remove(KEY_EXTENSION);
                }
                Some(primitive) => {
                    object.insert(
                        KEY_EXTENSION.to_owned(),
                        Value::String(primitive.canonical()),
                    );
                }
                None => {}
            }
            object
                .values_mut()
                .for_each(|value| key_primitives(service, value));
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| key_primitives(service, item)),
        _ => {}
    }
}

/// One method: `request` is the schema of the first request message (the parameters other
/// than a client stream), `request_stream` the schema of one client-stream item (only with a
/// client stream), `response` the schema of the response map (only without a server stream)
/// and `response_stream` the schema of one server-stream item (only with one).
fn method_descriptor(service: &Service, method: &Method) -> Value {
    let response = (!method.result_streams).then(|| {
        let response_fields = if method.result == Ty::Unit {
            Vec::new()
        } else {
            vec![Field {
                name: method.returns.clone(),
                doc: String::new(),
                ty: method.result.clone(),
                at: 0,
            }]
        };
        object_schema(&service.name, &response_fields)
    });
    let descriptor = meshrpc_descriptor::Method {
        name: method.name.clone(),
        doc: method.doc.clone(),
        kind: method.kind(),
        idempotent: method.idempotent,
        timeout_ms: method
            .timeout
            .map(|timeout| u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
        result_field: method.returns.clone(),
        request: object_schema(&service.name, &method.params),
        request_stream: method
            .stream
            .as_ref()
            .map(|stream| item_schema(&service.name, &stream.ty)),
        response,
        response_stream: method
            .result_streams
            .then(|| item_schema(&service.name, &method.result)),
    };
    // Through a `Value`, so keys are written in sorted order as for the whole descriptor.
    serde_json::to_value(descriptor).unwrap_or(Value::Null)
}

/// The schema of one stream item: the value itself, not a map. Items of `Vec<u8>` and `Bytes`
/// travel as binaries, as fields do, so they are strings of format `byte` in JSON.
fn item_schema(service: &str, ty: &Ty) -> Value {
    ty.schema(service, true)
}

/// The schema of a map with named fields; `Option` fields may be absent, the others are required.
fn object_schema(service: &str, fields: &[Field]) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for field in fields {
        let mut schema = field.ty.schema(service, true);
        if !field.doc.is_empty() && schema.get("$ref").is_none() {
            schema["description"] = Value::String(field.doc.clone());
        }
        properties.insert(field.name.clone(), schema);
        if !field.ty.is_optional() {
            required.push(Value::String(field.name.clone()));
        }
    }
    let mut schema = json!({ "type": "object", "properties": properties });
    // OpenAPI 3.0 requires `required` to be non-empty when present.
    if !required.is_empty() {
        schema["required"] = Value::Array(required);
    }
    schema
}

fn type_schema(service: &Service, declared: &Declared) -> Value {
    let mut schema = match &declared.body {
        Body::Struct(fields) => object_schema(&service.name, fields),
        // Transparent: the wrapped value's schema. A `$ref` cannot carry a description beside
        // it in OpenAPI 3.0, so it is wrapped in `allOf`.
        Body::Newtype(field) => {
            let inner = field.ty.schema(&service.name, true);
            if inner.get("$ref").is_some() {
                json!({ "allOf": [inner] })
            } else {
                inner
            }
        }
        // An array, like a tuple; its elements are fields, so `Vec<u8>` is a binary there.
        Body::Tuple(fields) => json!({
            "type": "array",
            "minItems": fields.len(),
            "maxItems": fields.len(),
            "items": {},
            "x-meshrpc-tuple": fields.iter().map(|field| field.ty.schema(&service.name, true)).collect::<Vec<_>>(),
        }),
        Body::Enum(variants)
            if variants
                .iter()
                .all(|variant| matches!(variant.fields, VariantFields::Unit)) =>
        {
            let names: Vec<&str> = variants
                .iter()
                .map(|variant| variant.name.as_str())
                .collect();
            json!({ "type": "string", "enum": names })
        }
        // serde's external tagging: a unit variant is its name; any other is a map with one
        // key, the variant's name, holding its fields.
        Body::Enum(variants) => {
            let one_of: Vec<Value> = variants
                .iter()
                .map(|variant| {
                    let payload = match &variant.fields {
                        VariantFields::Unit => {
                            return json!({ "type": "string", "enum": [variant.name] });
                        }
                        VariantFields::Tuple(fields) if fields.len() == 1 => {
                            fields[0].ty.schema(&service.name, true)
                        }
                        VariantFields::Tuple(fields) => {
                            Ty::Tuple(fields.iter().map(|field| field.ty.clone()).collect())
                                .schema(&service.name, true)
                        }
                        VariantFields::Named(fields) => object_schema(&service.name, fields),
                    };
                    json!({
                        "type": "object",
                        "properties": { variant.name.clone(): payload },
                        "required": [variant.name],
                        "additionalProperties": false,
                    })
                })
                .collect();
            json!({ "oneOf": one_of })
        }
    };
    if !declared.doc.is_empty() {
        schema["description"] = Value::String(declared.doc.clone());
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
