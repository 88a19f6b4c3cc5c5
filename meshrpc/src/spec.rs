//! Static descriptions of services, emitted by `meshrpc-build` for each service in a manifest.
//!
//! A [`ServiceSpec`] is what a node advertises to the mesh (name and schema hash), what a client
//! needs to address a call (method names, flags, default timeouts) and what the gateway needs to
//! expose a service over HTTP without knowing its Rust types (the JSON [`ServiceSpec::descriptor`]).

use std::borrow::Cow;
use std::hash::Hasher;
use std::time::Duration;

/// 64-bit FNV-1a, the hash [`ServiceSpec::schema_hash`] is computed with (by `meshrpc-build`,
/// over the service's canonical schema text) and the one meshrpc uses wherever a hash must be
/// the same in every process and release, unlike the std hasher.
///
/// ```
/// use std::hash::Hasher;
/// let mut hash = meshrpc::spec::Fnv1a::default();
/// hash.write(b"foobar");
/// assert_eq!(hash.finish(), 0x8594_4171_f739_67e8);
/// ```
// meshrpc-build keeps its own copy of these few lines: it is a build dependency of service
// crates and must not pull in the runtime, and the runtime must not depend on a code generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Fnv1a {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// A service: its name, methods and schema fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The service's name in the mesh, e.g. `greeter`.
    pub name: &'static str,
    /// The manifest's doc string for the service.
    pub doc: &'static str,
    /// The service's methods, in manifest order.
    pub methods: &'static [MethodSpec],
    /// A stable fingerprint of every signature and type of the service: two nodes agree on the
    /// wire schema exactly when their hashes are equal.
    pub schema_hash: u64,
    /// The manifest text the service was generated from (for introspection).
    pub manifest: &'static str,
    /// A JSON document describing the service for tools that do not know its Rust types: the
    /// gateway's generic routes and its OpenAPI document. Its format is given in
    /// `docs/MANIFEST.md` ("The service descriptor").
    pub descriptor: &'static str,
    /// The schemas of the `use` types marked `json_schema = true` in the manifest, computed at
    /// run time from their `schemars::JsonSchema` implementations; empty for other services.
    /// [`ServiceSpec::full_descriptor`] adds them to the descriptor.
    pub use_schemas: &'static [UseSchema],
}

/// The JSON Schema of a `use` type of a service, as its `schemars::JsonSchema` derive describes it.
///
/// Two are equal when their names are: a name stands for one type of one service, and function
/// addresses are not comparable.
#[derive(Debug, Clone, Copy)]
pub struct UseSchema {
    /// The type's name in the descriptor's `types`: `<service>.<Type>`.
    pub name: &'static str,
    /// The type's schema in the OpenAPI 3.0 dialect, with the schemas it refers to under
    /// `components/schemas` (what [`crate::schema::openapi3`] returns).
    pub schema: fn() -> serde_json::Value,
}

impl PartialEq for UseSchema {
    fn eq(&self, other: &UseSchema) -> bool {
        self.name == other.name
    }
}

impl Eq for UseSchema {}

impl ServiceSpec {
    /// The method with this name, if the service has one.
    pub fn method(&self, name: &str) -> Option<&'static MethodSpec> {
        self.methods.iter().find(|method| method.name == name)
    }

    /// The service descriptor to advertise: [`ServiceSpec::descriptor`] with the schemas of
    /// the `use` types that have one ([`ServiceSpec::use_schemas`]) added to its `types`.
    /// Borrowed when there are none.
    pub fn full_descriptor(&self) -> Cow<'static, str> {
        if self.use_schemas.is_empty() {
            return Cow::Borrowed(self.descriptor);
        }
        let Ok(mut descriptor) = serde_json::from_str::<serde_json::Value>(self.descriptor) else {
            return Cow::Borrowed(self.descriptor);
        };
        if let Some(types) = descriptor
            .get_mut("types")
            .and_then(serde_json::Value::as_object_mut)
        {
            for schema in self.use_schemas {
                crate::schema::insert(types, schema.name, (schema.schema)());
            }
        }
        Cow::Owned(descriptor.to_string())
    }

    /// The names of all methods, for error messages.
    pub fn method_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.methods.iter().map(|method| method.name)
    }
}

/// One method of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodSpec {
    /// The name of the service this method belongs to.
    pub service: &'static str,
    /// The method's name, as written in the manifest (snake_case).
    pub name: &'static str,
    /// The manifest's doc string for the method.
    pub doc: &'static str,
    /// Whether a call may safely run more than once (retried on another replica after a
    /// failure). Set with `idempotent = true` in the manifest.
    pub idempotent: bool,
    /// The default timeout of a call, if the manifest sets one (`timeout = "2s"`).
    pub timeout: Option<Duration>,
    /// How long one attempt of an idempotent unary call may go unanswered before it is
    /// abandoned and retried on another replica (`attempt_timeout = "50ms"` in the manifest);
    /// `None`: adaptive, from the service's observed latency.
    pub attempt_timeout: Option<Duration>,
    /// When an idempotent unary call that has not been answered yet is sent to a second
    /// replica as well (`hedge_after = "20ms"` in the manifest); `None`: the service's
    /// observed p95 latency.
    pub hedge_after: Option<Duration>,
    /// The parameters: the fields of the request map, in signature order.
    pub params: &'static [FieldSpec],
    /// The name of the single field of the response map that carries the result
    /// (`returns = "message"` in the manifest; `result` by default).
    pub result_field: &'static str,
    /// The Rust type of the result, as written in the manifest (`()` for none; the item
    /// type for a `Stream<T>` result).
    pub result_type: &'static str,
    /// Whether requests, replies or both are streams (`Stream<T>` in the manifest).
    pub kind: MethodKind,
    /// The method's position in [`ServiceSpec::methods`]: generated servers dispatch on it.
    pub index: usize,
}

/// Whether a method's request, reply or both are streams of messages: `Unary`,
/// `ServerStreaming` (`-> Stream<T>`), `ClientStreaming` (`(items: Stream<T>) -> R`) or
/// `Bidirectional`. A client stream's items follow the first request message (the other
/// parameters); a server stream is zero or more items, then the call's status. The same type
/// as the service descriptor's `kind`.
pub use meshrpc_descriptor::Kind as MethodKind;

/// One named, typed field of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    /// The field name (the key in the MessagePack and JSON maps).
    pub name: &'static str,
    /// The Rust type, as written in the manifest.
    pub rust_type: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors meshrpc-build's schema hash is checked against: both must stay equal.
    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        let hash = |bytes: &[u8]| {
            let mut hasher = Fnv1a::default();
            hasher.write(bytes);
            hasher.finish()
        };
        assert_eq!(hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
