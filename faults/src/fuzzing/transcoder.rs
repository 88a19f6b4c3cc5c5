//! Checks for the `json_transcoder` fuzz target: the gateway's JSON ⇄ MessagePack transcoder
//! (`gateway::transcode`) on hostile input.
//!
//! The first input byte picks a method of the greeter's descriptor; the rest is the JSON body
//! of `POST /greeter/<method>`. It must never panic; what it accepts must be a MessagePack map
//! whose keys the method's request schema names, holding the same data as the JSON. The same
//! bytes are also fed to the response direction as if a service had answered them: what it
//! accepts must be a JSON object that starts with `"error":""`.
//!
//! Shared by `fuzz/fuzz_targets/json_transcoder.rs` (through `#[path]`) and the replay test.
#![allow(dead_code, unreachable_pub)]

use gateway::descriptors::{Descriptor, DescriptorExt};
use gateway::transcode::{json_to_msgpack, msgpack_to_json_envelope};
use serde_json::Value;

/// What became of the input.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The request direction accepted it.
    pub request: bool,
    /// The response direction accepted it.
    pub response: bool,
}

/// The greeter's descriptor, as its nodes serve it.
pub fn descriptor() -> Descriptor {
    Descriptor::parse(greeter::GREETER_SPEC.descriptor).expect("the greeter's descriptor parses")
}

/// Runs the checks on `data`; panics if one fails.
pub fn check(descriptor: &Descriptor, data: &[u8]) -> Outcome {
    let mut outcome = Outcome::default();
    let Some((selector, body)) = data.split_first() else {
        return outcome;
    };
    let method = &descriptor.methods[usize::from(*selector) % descriptor.methods.len()];
    let schema = descriptor.request_schema(method);
    if let Ok(msgpack) = json_to_msgpack(body, schema) {
        outcome.request = true;
        let decoded: Value =
            meshrpc::codec::from_slice_bounded(&msgpack, meshrpc::codec::MAX_PAYLOAD_DEPTH)
                .unwrap_or_else(|error| panic!("accepted JSON became bad MessagePack: {error}"));
        let Value::Object(fields) = &decoded else {
            panic!("a request became {decoded}, not a map");
        };
        let properties = schema.root["properties"].as_object();
        for key in fields.keys() {
            assert!(
                properties.is_some_and(|properties| properties.contains_key(key)),
                "field `{key}` is not in the schema of `{}`",
                method.name
            );
        }
        let blank = body.iter().all(u8::is_ascii_whitespace);
        if !blank {
            let json: Value = serde_json::from_slice(body).expect("accepted JSON parses");
            assert_eq!(
                same_data(&json, &decoded),
                Ok(()),
                "JSON {json} became {decoded}"
            );
        }
    }
    if let Ok(json) = msgpack_to_json_envelope(body) {
        outcome.response = true;
        let text = std::str::from_utf8(&json).expect("the envelope is UTF-8");
        assert!(text.starts_with(r#"{"error":"""#), "{text}");
        let value: Value = serde_json::from_str(text).expect("the envelope is JSON");
        assert!(value.is_object(), "{text}");
    }
    outcome
}

/// Whether `b` holds the data of `a`, numbers compared by value (JSON `1.0` may travel as a
/// MessagePack integer and back).
fn same_data(a: &Value, b: &Value) -> Result<(), String> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let equal = match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(x), Some(y), _, _) => x == y,
                (_, _, Some(x), Some(y)) => x == y,
                _ => x.as_f64() == y.as_f64(),
            };
            equal.then_some(()).ok_or_else(|| format!("{x} != {y}"))
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).try_for_each(|(x, y)| same_data(x, y))
        }
        (Value::Object(x), Value::Object(y)) if x.len() == y.len() => {
            x.iter().try_for_each(|(k, v)| {
                y.get(k)
                    .ok_or_else(|| format!("`{k}` missing"))
                    .and_then(|w| same_data(v, w))
            })
        }
        _ if a == b => Ok(()),
        _ => Err(format!("{a} != {b}")),
    }
}
