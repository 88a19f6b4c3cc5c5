#![warn(missing_docs)]
//! The service descriptor: a JSON document that describes one service for tools that do not
//! know its Rust types. `meshrpc-build` writes it (into `ServiceSpec::descriptor`), every node
//! answers it from `meshrpc.node.describe`, and the gateway and `meshctl` read it to route,
//! check, transcode and document calls. This crate is its one model, shared by the writer and
//! the readers; `docs/MANIFEST.md` ("The service descriptor") documents the format.
//!
//! Schemas are JSON Schema in the OpenAPI 3.0 dialect (the gateway serves them as they are in
//! its OpenAPI document), so they stay [`serde_json::Value`]s; the two meshrpc extensions a
//! schema may carry are named by [`KEY_EXTENSION`] and [`TUPLE_EXTENSION`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Schema keyword on a map schema whose keys are not strings on the wire: the key's primitive
/// type (`u32`, `i64`, `bool`, ...), which JSON object keys are converted to.
pub const KEY_EXTENSION: &str = "x-meshrpc-key";

/// Schema keyword on the schema of a tuple (a tuple type or a tuple struct): the schemas of its
/// elements in order. The value travels as a MessagePack array of them, and as a JSON array.
pub const TUPLE_EXTENSION: &str = "x-meshrpc-tuple";

/// Whether a method's requests, replies or both are streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// One request, one reply.
    #[default]
    Unary,
    /// One request, a stream of replies.
    ServerStreaming,
    /// A stream of requests after the first message, one reply.
    ClientStreaming,
    /// Streams both ways.
    Bidirectional,
}

impl Kind {
    /// The name the descriptor writes.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Unary => "unary",
            Kind::ServerStreaming => "server_streaming",
            Kind::ClientStreaming => "client_streaming",
            Kind::Bidirectional => "bidirectional",
        }
    }

    /// Whether the caller sends a stream of items.
    pub fn client_streams(self) -> bool {
        matches!(self, Kind::ClientStreaming | Kind::Bidirectional)
    }

    /// Whether the callee answers with a stream of items.
    pub fn server_streams(self) -> bool {
        matches!(self, Kind::ServerStreaming | Kind::Bidirectional)
    }
}

/// One service's descriptor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Descriptor {
    /// The service's name.
    pub service: String,
    /// The manifest's doc string.
    #[serde(default)]
    pub doc: String,
    /// The schema hash, 16 hex digits.
    pub schema_hash: String,
    /// The methods, in manifest order.
    pub methods: Vec<Method>,
    /// The schemas of the service's declared (and schema-carrying `use`) types, by
    /// `<service>.<Type>`; method schemas refer to them as `#/components/schemas/<key>`.
    #[serde(default)]
    pub types: Map<String, Value>,
}

/// One method of a [`Descriptor`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Method {
    /// The method's name.
    pub name: String,
    /// The manifest's doc string.
    #[serde(default)]
    pub doc: String,
    /// Whether requests, replies or both are streams (absent in descriptors of nodes that
    /// predate streams: unary).
    #[serde(default)]
    pub kind: Kind,
    /// Whether a call may run more than once.
    #[serde(default)]
    pub idempotent: bool,
    /// The manifest's timeout, if it sets one.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// The name of the response map's single field.
    pub result_field: String,
    /// The schema of the request map (with a client stream: of the first message, the other
    /// parameters).
    pub request: Value,
    /// The schema of one client-stream item (only with a client stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_stream: Option<Value>,
    /// The schema of the response map (only without a server stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Value>,
    /// The schema of one server-stream item (only with a server stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_stream: Option<Value>,
}

impl Descriptor {
    /// Parses a descriptor's JSON text; the error says what is wrong with it.
    pub fn parse(json: &str) -> Result<Descriptor, String> {
        serde_json::from_str(json).map_err(|error| format!("unreadable descriptor: {error}"))
    }

    /// The descriptor as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }

    /// The schema hash as a number (0 when it is not hex).
    pub fn hash(&self) -> u64 {
        u64::from_str_radix(&self.schema_hash, 16).unwrap_or(0)
    }

    /// The method called `name`.
    pub fn method(&self, name: &str) -> Option<&Method> {
        self.methods.iter().find(|method| method.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_descriptor_round_trips_and_old_ones_read_as_unary() {
        let text = r#"{"service":"greeter","schema_hash":"00000000000000ff","methods":[
            {"name":"greet","result_field":"message","request":{"type":"object"},
             "response":{"type":"object"}}]}"#;
        let descriptor = Descriptor::parse(text).expect("parses");
        assert_eq!(descriptor.hash(), 0xff);
        let greet = descriptor.method("greet").expect("a method");
        assert_eq!(greet.kind, Kind::Unary);
        assert!(greet.request_stream.is_none() && greet.response_stream.is_none());
        assert_eq!(Descriptor::parse(&descriptor.to_json()), Ok(descriptor));
    }

    #[test]
    fn kinds_are_written_in_snake_case() {
        for kind in [
            Kind::Unary,
            Kind::ServerStreaming,
            Kind::ClientStreaming,
            Kind::Bidirectional,
        ] {
            assert_eq!(
                serde_json::to_value(kind).expect("serializes"),
                Value::String(kind.as_str().to_owned())
            );
        }
        let unknown = serde_json::from_str::<Kind>("\"sideways\"").expect_err("unknown");
        assert!(unknown.to_string().contains("sideways"), "{unknown}");
    }
}
