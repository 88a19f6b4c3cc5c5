//! Transcoding specifications, on the greeter's real descriptor and on a hand-written one that
//! uses every shape the descriptor format has.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::*;
use crate::descriptors::{Descriptor, DescriptorExt};

fn greeter() -> Descriptor {
    Descriptor::parse(greeter::GREETER_SPEC.descriptor).expect("parses")
}

/// A service with bytes, integers, maps, tuples, options and enums.
fn vault() -> Descriptor {
    let descriptor = json!({
        "service": "vault",
        "doc": "",
        "schema_hash": "00000000000000aa",
        "methods": [{
            "name": "store",
            "doc": "",
            "idempotent": false,
            "timeout_ms": null,
            "result_field": "receipt",
            "request": {
                "type": "object",
                "properties": {
                    "blob": {"type": "string", "format": "byte"},
                    "note": {"type": "string", "format": "byte", "nullable": true},
                    "count": {"type": "integer", "format": "int32", "minimum": 0, "maximum": 255},
                    "ratio": {"type": "number", "format": "double"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "scores": {"type": "object", "additionalProperties": {"type": "integer", "format": "int64"}, "x-meshrpc-key": "u32"},
                    "pair": {"type": "array", "minItems": 2, "maxItems": 2, "items": {},
                             "x-meshrpc-tuple": [{"type": "string"}, {"type": "boolean"}]},
                    "weather": {"$ref": "#/components/schemas/vault.Weather"},
                    "mood": {"allOf": [{"$ref": "#/components/schemas/vault.Mood"}], "nullable": true},
                    "extra": {"description": "Rust type ::serde_json::Value"}
                },
                "required": ["blob", "count", "ratio", "tags", "scores", "pair", "weather"]
            },
            "response": {"type": "object", "properties": {"receipt": {"type": "string"}}, "required": ["receipt"]}
        }],
        "types": {
            "vault.Mood": {"type": "string", "enum": ["Happy", "Sad"]},
            "vault.Weather": {"oneOf": [
                {"type": "string", "enum": ["Sunny"]},
                {"type": "object", "properties": {"Rain": {"type": "object", "properties": {"mm": {"type": "number", "format": "float"}}, "required": ["mm"]}}, "required": ["Rain"], "additionalProperties": false},
                {"type": "object", "properties": {"Wind": {"type": "integer", "format": "int32", "minimum": 0, "maximum": 255}}, "required": ["Wind"], "additionalProperties": false}
            ]}
        }
    });
    serde_json::from_value(descriptor).expect("a descriptor")
}

fn request(descriptor: &Descriptor, method: &str, body: &str) -> Result<Vec<u8>, RequestError> {
    let method = descriptor.method(method).expect("method");
    json_to_msgpack(body.as_bytes(), descriptor.request_schema(method))
}

fn invalid(descriptor: &Descriptor, method: &str, body: &str) -> String {
    match request(descriptor, method, body) {
        Err(RequestError::Invalid(message)) => message,
        other => panic!("expected a schema error for {body}, got {other:?}"),
    }
}

#[derive(Debug, PartialEq, Deserialize, Serialize)]
struct Greet {
    name: String,
}

#[test]
fn a_greet_request_becomes_the_named_messagepack_map() {
    let bytes = request(&greeter(), "greet", r#"{"name": "Max"}"#).expect("transcodes");
    assert_eq!(bytes, b"\x81\xa4name\xa3Max");
}

#[test]
fn a_nested_postcard_round_trips_into_the_generated_type() {
    let body = r#"{"card": {"picture_url": "", "address": "World", "recipient": "Max", "message": "Hello"}}"#;
    let bytes = request(&greeter(), "send_postcard", body).expect("transcodes");
    #[derive(Deserialize)]
    struct SendPostcard {
        card: greeter::Postcard,
    }
    let decoded: SendPostcard =
        rmp_serde::from_slice(&bytes).expect("decodes as the service would");
    assert_eq!(decoded.card.recipient, "Max");
    assert_eq!(decoded.card.address, "World");
}

#[test]
fn a_field_of_the_wrong_type_is_named() {
    let message = invalid(&greeter(), "greet", r#"{"name": 5}"#);
    assert_eq!(
        message,
        "field `name`: expected a string, found the number 5"
    );
    let message = invalid(
        &greeter(),
        "send_postcard",
        r#"{"card": {"picture_url": "", "address": "World", "recipient": true, "message": "Hello"}}"#,
    );
    assert_eq!(
        message,
        "field `card.recipient`: expected a string, found the boolean true"
    );
}

#[test]
fn missing_and_unknown_fields_are_named() {
    assert_eq!(invalid(&greeter(), "greet", "{}"), "missing field `name`");
    assert_eq!(
        invalid(&greeter(), "greet", r#"{"nmae": "Max"}"#),
        "unknown field `nmae`; the fields are: `name`"
    );
    assert_eq!(
        invalid(
            &greeter(),
            "send_postcard",
            r#"{"card": {"recipient": "Max"}}"#
        ),
        "missing field `card.picture_url`"
    );
    assert_eq!(
        invalid(&greeter(), "greet", r#"{"name": "a", "name": "b"}"#),
        "field `name` is given twice"
    );
}

#[test]
fn a_body_that_is_not_an_object_is_refused_as_such() {
    let message = invalid(&greeter(), "greet", r#"["Max"]"#);
    assert!(
        message.starts_with("the request body must be a JSON object"),
        "{message}"
    );
    assert!(message.ends_with("found an array"), "{message}");
}

#[test]
fn a_body_that_is_not_json_is_told_apart_from_a_schema_mismatch() {
    for body in [
        r#"{"name": "Max""#,
        "name=Max",
        r#"{"name": "Max"} trailing"#,
    ] {
        match request(&greeter(), "greet", body) {
            Err(error @ RequestError::NotJson(_)) => {
                assert!(
                    error.to_string().starts_with("body is not valid JSON: "),
                    "{error}"
                );
            }
            other => panic!("{body}: {other:?}"),
        }
    }
}

#[test]
fn an_empty_body_is_an_empty_object() {
    assert_eq!(invalid(&greeter(), "greet", " \n"), "missing field `name`");
}

fn full_store() -> Value {
    json!({
        "blob": "AAEC/w==",
        "note": null,
        "count": 7,
        "ratio": 0.5,
        "tags": ["a", "b"],
        "scores": {"1": -3, "20": 4},
        "pair": ["x", true],
        "weather": {"Rain": {"mm": 2.5}},
        "mood": "Sad",
        "extra": {"anything": [1, "two", null]}
    })
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
enum Weather {
    Sunny,
    Rain { mm: f32 },
    Wind(u8),
}

#[derive(Debug, Deserialize, PartialEq)]
enum Mood {
    Happy,
    Sad,
}

#[derive(Debug, Deserialize)]
struct Store {
    #[serde(with = "serde_bytes")]
    blob: Vec<u8>,
    note: Option<serde_bytes::ByteBuf>,
    count: u8,
    ratio: f64,
    tags: Vec<String>,
    scores: std::collections::BTreeMap<u32, i64>,
    pair: (String, bool),
    weather: Weather,
    mood: Option<Mood>,
    extra: serde_json::Value,
}

#[test]
fn every_shape_transcodes_into_what_serde_expects_with_bytes_as_binaries() {
    let bytes = request(&vault(), "store", &full_store().to_string()).expect("transcodes");
    // The base64 field is a MessagePack bin 8 of 4 bytes.
    assert!(
        bytes
            .windows(6)
            .any(|window| window == b"\xc4\x04\x00\x01\x02\xff"),
        "{bytes:x?}"
    );
    let store: Store = rmp_serde::from_slice(&bytes).expect("decodes");
    assert_eq!(store.blob, [0, 1, 2, 255]);
    assert_eq!(store.note, None);
    assert_eq!(store.count, 7);
    assert_eq!(store.ratio, 0.5);
    assert_eq!(store.tags, ["a", "b"]);
    assert_eq!(store.scores.get(&20), Some(&4));
    assert_eq!(store.pair, ("x".to_owned(), true));
    assert!(matches!(store.weather, Weather::Rain { mm } if mm == 2.5));
    assert_eq!(store.mood, Some(Mood::Sad));
    assert_eq!(store.extra, json!({"anything": [1, "two", null]}));
}

fn store_with(field: &str, value: Value) -> String {
    let mut body = full_store();
    body[field] = value;
    body.to_string()
}

#[test]
fn values_outside_their_shape_are_refused_with_the_field_and_what_was_expected() {
    let cases = [
        (
            "count",
            json!(256),
            "field `count`: expected an integer from 0 to 255, found the number 256",
        ),
        (
            "count",
            json!(1.5),
            "field `count`: expected an integer from 0 to 255, found the number 1.5",
        ),
        (
            "blob",
            json!("not base64!"),
            "field `blob`: expected a base64 string of bytes",
        ),
        (
            "tags",
            json!(["a", 2]),
            "field `tags[1]`: expected a string, found the number 2",
        ),
        (
            "scores",
            json!({"x": 1}),
            "field `scores`: the key `x` is not an unsigned integer",
        ),
        (
            "pair",
            json!(["x"]),
            "field `pair`: expected an array of 2 elements, found 1",
        ),
        (
            "pair",
            json!(["x", true, 3]),
            "field `pair`: expected an array of 2 elements, found more",
        ),
        (
            "weather",
            json!("Snow"),
            "field `weather`: unknown variant `Snow`; expected one of `Sunny`, `Rain`, `Wind`",
        ),
        (
            "weather",
            json!({"Wind": 300}),
            "field `weather.Wind`: expected an integer from 0 to 255, found the number 300",
        ),
        (
            "weather",
            json!("Rain"),
            "field `weather`: variant `Rain` has fields",
        ),
        (
            "mood",
            json!("Angry"),
            "field `mood`: unknown variant `Angry`; expected one of `Happy`, `Sad`",
        ),
        (
            "ratio",
            json!(null),
            "field `ratio`: expected a number, found null",
        ),
    ];
    for (field, value, expected) in cases {
        let message = invalid(&vault(), "store", &store_with(field, value.clone()));
        assert!(
            message.starts_with(expected),
            "{field} = {value}: got {message:?}, expected {expected:?}"
        );
    }
}

#[test]
fn unit_variants_and_null_options_are_accepted() {
    let body = store_with("weather", json!("Sunny"));
    let mut body: Value = serde_json::from_str(&body).expect("json");
    body["mood"] = Value::Null;
    let bytes = request(&vault(), "store", &body.to_string()).expect("transcodes");
    let store: Store = rmp_serde::from_slice(&bytes).expect("decodes");
    assert!(matches!(store.weather, Weather::Sunny));
    assert_eq!(store.mood, None);
}

#[test]
fn a_response_becomes_the_envelope_with_error_first() {
    let payload = rmp_serde::to_vec_named(&json!({"message": "Hello, Max"})).expect("encodes");
    let json = msgpack_to_json_envelope(&payload).expect("transcodes");
    assert_eq!(
        String::from_utf8(json).expect("utf-8"),
        r#"{"error":"","message":"Hello, Max"}"#
    );
}

#[test]
fn a_response_without_result_is_the_bare_envelope() {
    let payload = rmp_serde::to_vec_named(&json!({})).expect("encodes");
    let json = msgpack_to_json_envelope(&payload).expect("transcodes");
    assert_eq!(json, br#"{"error":""}"#);
}

#[test]
fn binaries_in_a_response_become_base64_and_nesting_is_kept() {
    #[derive(Serialize)]
    struct Reply {
        receipt: Receipt,
    }
    #[derive(Serialize)]
    struct Receipt {
        #[serde(with = "serde_bytes")]
        digest: Vec<u8>,
        sizes: Vec<u64>,
        note: Option<String>,
        ratio: f32,
    }
    let payload = rmp_serde::to_vec_named(&Reply {
        receipt: Receipt {
            digest: vec![0, 1, 2, 255],
            sizes: vec![1, u64::MAX],
            note: None,
            ratio: 0.25,
        },
    })
    .expect("encodes");
    let json = msgpack_to_json_envelope(&payload).expect("transcodes");
    let value: Value = serde_json::from_slice(&json).expect("json");
    assert_eq!(
        value,
        json!({"error": "", "receipt": {"digest": "AAEC/w==", "sizes": [1, u64::MAX], "note": null, "ratio": 0.25}})
    );
}

#[test]
fn a_request_round_trips_through_a_service_and_back() {
    // JSON -> MessagePack -> (the service decodes and echoes) -> JSON.
    let bytes = request(&greeter(), "greet", r#"{"name":"Ada"}"#).expect("transcodes");
    let decoded: Greet = rmp_serde::from_slice(&bytes).expect("decodes");
    let reply = rmp_serde::to_vec_named(&json!({"message": format!("Hello, {}", decoded.name)}))
        .expect("encodes");
    assert_eq!(
        msgpack_to_json_envelope(&reply).expect("transcodes"),
        br#"{"error":"","message":"Hello, Ada"}"#
    );
}

#[test]
fn a_response_that_is_not_messagepack_is_an_error() {
    assert!(msgpack_to_json_envelope(b"\xc1").is_err());
    assert!(msgpack_to_json_envelope(b"\xa3abc").is_err());
}

/// A service whose `shipment` parameter is a `use` type with a schema, in the shapes schemars
/// writes (2020-12 and OpenAPI 3.0 alike), filed as `ServiceSpec::full_descriptor` files it.
fn depot() -> Descriptor {
    let descriptor = json!({
        "service": "depot",
        "schema_hash": "00000000000000bb",
        "methods": [{
            "name": "ship",
            "result_field": "result",
            "request": {
                "type": "object",
                "properties": {"shipment": {"$ref": "#/components/schemas/depot.Shipment"}},
                "required": ["shipment"]
            },
            "response": {"type": "object", "properties": {}}
        }],
        "types": {
            "depot.Shipment": {
                "title": "Shipment",
                "type": "object",
                "properties": {
                    "weight": {"type": "integer", "format": "uint16", "minimum": 0, "maximum": 65535},
                    "note": {"type": ["string", "null"]},
                    "route": {"anyOf": [{"$ref": "#/components/schemas/depot.Shipment.Route"}, {"type": "null"}]},
                    "crate": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer", "format": "uint8", "minimum": 0, "maximum": 255}], "minItems": 2, "maxItems": 2},
                    "speed": {"allOf": [{"$ref": "#/components/schemas/depot.Shipment.Speed"}], "description": "How fast."}
                },
                "required": ["weight", "crate", "speed"]
            },
            "depot.Shipment.Route": {
                "type": "object",
                "properties": {"stops": {"type": "array", "items": {"$ref": "#/components/schemas/depot.Shipment.Route"}}},
                "required": ["stops"]
            },
            "depot.Shipment.Speed": {"oneOf": [
                {"type": "string", "const": "Slow"},
                {"type": "object", "properties": {"Express": {"type": "object", "properties": {"hours": {"type": "integer", "format": "uint32", "minimum": 0}}, "required": ["hours"]}}, "required": ["Express"], "additionalProperties": false}
            ]}
        }
    });
    serde_json::from_value(descriptor).expect("a descriptor")
}

fn ship(shipment: Value) -> Result<Vec<u8>, RequestError> {
    request(
        &depot(),
        "ship",
        &json!({ "shipment": shipment }).to_string(),
    )
}

fn good_shipment() -> Value {
    json!({
        "weight": 12,
        "note": null,
        "route": {"stops": [{"stops": []}]},
        "crate": ["tea", 3],
        "speed": {"Express": {"hours": 4}}
    })
}

#[test]
fn a_schemars_schema_is_checked_like_a_declared_type() {
    ship(good_shipment()).expect("a good shipment transcodes");
    let mut slow = good_shipment();
    slow["speed"] = json!("Slow");
    slow["note"] = json!("fragile");
    slow["route"] = Value::Null;
    ship(slow).expect("a const variant, a string note and a null route transcode");
    for (field, value, message) in [
        (
            "weight",
            json!(70_000),
            "field `shipment.weight`: expected an integer from 0 to 65535, found the number 70000",
        ),
        (
            "note",
            json!(5),
            "field `shipment.note`: expected a string or null, found the number 5",
        ),
        (
            "crate",
            json!(["tea", "three"]),
            "field `shipment.crate[1]`: expected an integer from 0 to 255, found a string",
        ),
        (
            "speed",
            json!("Fast"),
            "field `shipment.speed`: unknown variant `Fast`; expected one of `Slow`, `Express`",
        ),
        (
            "speed",
            json!({"Express": {"hours": -1}}),
            "field `shipment.speed.Express.hours`: expected an integer, found the number -1",
        ),
        (
            "route",
            json!({"stops": [{"stops": [{"stop": []}]}]}),
            "unknown field `shipment.route.stops[0].stops[0].stop`; the fields are: `stops`",
        ),
    ] {
        let mut shipment = good_shipment();
        shipment[field] = value;
        let error = ship(shipment).expect_err(field);
        assert_eq!(error.to_string(), message);
    }
}

#[test]
fn the_places_a_schema_cannot_check_are_named_with_their_rust_type() {
    let descriptor = json!({
        "service": "post",
        "schema_hash": "00000000000000cc",
        "methods": [{
            "name": "send",
            "result_field": "result",
            "request": {
                "type": "object",
                "properties": {
                    "card": {"$ref": "#/components/schemas/post.Card"},
                    "moods": {"type": "array", "items": {"description": "Rust type crate::model::Mood"}},
                    "name": {"type": "string"}
                },
                "required": ["card", "moods", "name"]
            },
            "response": {"type": "object", "properties": {}}
        }],
        "types": {
            "post.Card": {
                "type": "object",
                "properties": {
                    "stamp": {"allOf": [{"$ref": "#/components/schemas/post.Stamp"}], "nullable": true},
                    "replies": {"type": "array", "items": {"$ref": "#/components/schemas/post.Card"}},
                    "extra": {"type": "object", "additionalProperties": {"description": "Rust type ::serde_json::Value"}}
                }
            },
            "post.Stamp": {"description": "Rust type crate::model::Stamp"}
        }
    });
    let descriptor: Descriptor = serde_json::from_value(descriptor).expect("a descriptor");
    let method = descriptor.method("send").expect("method");
    let unchecked = unchecked_fields(descriptor.request_schema(method));
    let found: Vec<(&str, &str)> = unchecked
        .iter()
        .map(|place| (place.path.as_str(), place.rust_type.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            ("card.extra.*", "::serde_json::Value"),
            ("card.stamp", "crate::model::Stamp"),
            ("moods[]", "crate::model::Mood"),
        ]
    );
    assert!(
        unchecked_fields(greeter().request_schema(greeter().method("greet").expect("greet")))
            .is_empty()
    );
}

#[test]
fn a_stream_line_becomes_the_item_alone_checked_against_the_item_schema() {
    let types = Map::new();
    let line = item_line_schema(&serde_json::json!({"type": "integer", "format": "int64"}));
    let schema = Schema {
        root: &line,
        types: &types,
    };
    assert_eq!(
        json_item_to_msgpack(br#"{"item": 7}"#, schema).expect("an item"),
        rmp_serde::to_vec(&7u64).expect("encodes")
    );
    assert_eq!(
        json_item_to_msgpack(br#"{"item": "seven"}"#, schema),
        Err(RequestError::Invalid(
            "field `item`: expected an integer, found a string".to_owned()
        ))
    );
    let extra = json_item_to_msgpack(br#"{"item": 7, "more": 1}"#, schema).expect_err("refused");
    assert!(extra.to_string().contains("more"), "{extra}");
    let missing = json_item_to_msgpack(b"{}", schema).expect_err("refused");
    assert!(missing.to_string().contains("item"), "{missing}");
}

#[test]
fn a_server_stream_item_becomes_a_json_line_object() {
    let item = rmp_serde::to_vec(&serde_json::json!({"n": 3, "tags": ["a"]})).expect("encodes");
    assert_eq!(
        String::from_utf8(msgpack_item_to_json(&item).expect("transcodes")).expect("utf-8"),
        r#"{"item":{"n":3,"tags":["a"]}}"#
    );
    assert_eq!(
        msgpack_item_to_json(&rmp_serde::to_vec(&5u8).expect("encodes")).expect("transcodes"),
        br#"{"item":5}"#
    );
    assert!(msgpack_item_to_json(&[0xc1]).is_err(), "a reserved marker");
}

/// A service whose `plant` parameter is a tree: each node's children are nodes again.
fn garden() -> Descriptor {
    let descriptor = json!({
        "service": "garden",
        "schema_hash": "00000000000000dd",
        "methods": [{
            "name": "plant",
            "result_field": "result",
            "request": {
                "type": "object",
                "properties": {
                    "tree": {"$ref": "#/components/schemas/garden.Node"},
                    "gnome": {"$ref": "#/components/schemas/garden.Gnome"},
                    "echo": {"$ref": "#/components/schemas/garden.Echo"}
                },
                "required": ["tree"]
            },
            "response": {"type": "object", "properties": {}}
        }],
        "types": {
            "garden.Node": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/components/schemas/garden.Node"}},
                    "parent": {"allOf": [{"$ref": "#/components/schemas/garden.Node"}], "nullable": true}
                },
                "required": ["name", "children"]
            },
            "garden.Echo": {"$ref": "#/components/schemas/garden.Echo"}
        }
    });
    serde_json::from_value(descriptor).expect("a descriptor")
}

fn plant(descriptor: &Descriptor, body: Value) -> Result<Vec<u8>, RequestError> {
    let compiled = CompiledSchema::compile(
        descriptor.request_schema(descriptor.method("plant").expect("plant")),
    );
    compiled.json_to_msgpack(body.to_string().as_bytes())
}

#[test]
fn a_recursive_type_compiles_and_checks_nested_values_with_their_path() {
    let garden = garden();
    let tree = json!({"tree": {"name": "oak", "children": [
        {"name": "branch", "children": [{"name": "twig", "children": [], "parent": null}]}
    ]}});
    let bytes = plant(&garden, tree).expect("a well-formed tree transcodes");
    #[derive(Deserialize)]
    struct Node {
        name: String,
        children: Vec<Node>,
    }
    #[derive(Deserialize)]
    struct Plant {
        tree: Node,
    }
    let decoded: Plant = rmp_serde::from_slice(&bytes).expect("decodes as the service would");
    assert_eq!(decoded.tree.children[0].children[0].name, "twig");
    assert_eq!(
        plant(
            &garden,
            json!({"tree": {"name": "oak", "children": [
                {"name": "branch", "children": [{"name": 7, "children": []}]}
            ]}})
        ),
        Err(RequestError::Invalid(
            "field `tree.children[0].children[0].name`: expected a string, found the number 7"
                .to_owned()
        ))
    );
    assert_eq!(
        plant(
            &garden,
            json!({"tree": {"name": "oak", "children": [], "parent": {"name": "seed"}}})
        ),
        Err(RequestError::Invalid(
            "missing field `tree.parent.children`".to_owned()
        ))
    );
}

#[test]
fn a_dangling_ref_and_a_ref_to_itself_take_anything() {
    let garden = garden();
    for anything in [json!(5), json!("x"), json!({"a": [1, null]}), Value::Null] {
        let body =
            json!({"tree": {"name": "oak", "children": []}, "gnome": anything, "echo": anything});
        let bytes = plant(&garden, body).expect("anything goes");
        let decoded: Value = rmp_serde::from_slice(&bytes).expect("decodes");
        assert_eq!(decoded["gnome"], anything);
        assert_eq!(decoded["echo"], anything);
    }
}

#[test]
fn one_compiled_schema_answers_request_after_request_as_a_fresh_one_does() {
    let vault = vault();
    let method = vault.method("store").expect("store");
    let compiled = CompiledSchema::compile(vault.request_schema(method));
    let bodies = [
        full_store().to_string(),
        store_with("count", json!(256)),
        store_with("weather", json!({"Rain": {"mm": "lots"}})),
        "{}".to_owned(),
        "[".to_owned(),
    ];
    for body in bodies.iter().chain(&bodies) {
        assert_eq!(
            compiled.json_to_msgpack(body.as_bytes()),
            json_to_msgpack(body.as_bytes(), vault.request_schema(method)),
            "{body}"
        );
    }
    assert_eq!(
        compiled.json_to_msgpack(store_with("count", json!(256)).as_bytes()),
        Err(RequestError::Invalid(
            "field `count`: expected an integer from 0 to 255, found the number 256".to_owned()
        ))
    );
}
