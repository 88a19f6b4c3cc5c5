//! Static descriptions of services, emitted by `meshrpc-build` for each service in a manifest.
//!
//! A [`ServiceSpec`] is what a node advertises to the mesh (name and schema hash), what a client
//! needs to address a call (method names, flags, default timeouts) and what the gateway needs to
//! expose a service over HTTP without knowing its Rust types (the JSON [`ServiceSpec::descriptor`]).

use std::time::Duration;

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
}

impl ServiceSpec {
    /// The method with this name, if the service has one.
    pub fn method(&self, name: &str) -> Option<&'static MethodSpec> {
        self.methods.iter().find(|method| method.name == name)
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
    /// The parameters: the fields of the request map, in signature order.
    pub params: &'static [FieldSpec],
    /// The name of the single field of the response map that carries the result
    /// (`returns = "message"` in the manifest; `result` by default).
    pub result_field: &'static str,
    /// The Rust type of the result, as written in the manifest (`()` for none).
    pub result_type: &'static str,
}

/// One named, typed field of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    /// The field name (the key in the MessagePack and JSON maps).
    pub name: &'static str,
    /// The Rust type, as written in the manifest.
    pub rust_type: &'static str,
}
