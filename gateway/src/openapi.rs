//! The OpenAPI 3.0 document of everything the gateway serves, built at run time from the
//! descriptors that members advertise.
//!
//! Descriptors already carry JSON Schemas in the OpenAPI 3.0 dialect (with `x-meshrpc-*`
//! extensions), so the document is assembled with `serde_json` directly: typed builders
//! (utoipa's) would have to parse those schemas into their own model and back, and would drop
//! the extensions on the way. Tests check the result with the `openapiv3` crate.
//!
//! Per method there is one `POST /{service}/{method}` operation: the request schema as the
//! body, the response envelope `{"error": "", <result field>: ...}` as the 200 answer, and the
//! error body `{"error", "code"}` for every other status.

use meshrpc::Code;
use serde_json::{Map, Value, json};

use crate::descriptors::Descriptor;

/// The name of the error body's schema under `components/schemas`.
pub const ERROR_SCHEMA: &str = "meshrpc.Error";

/// Builds the document for these descriptors; `secured` adds the bearer API-key scheme.
pub fn document(descriptors: &[impl AsRef<Descriptor>], secured: bool) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    let mut tags = Vec::new();
    schemas.insert(ERROR_SCHEMA.to_owned(), error_schema());
    for descriptor in descriptors {
        let descriptor = descriptor.as_ref();
        tags.push(json!({ "name": descriptor.service, "description": descriptor.doc }));
        for (name, schema) in &descriptor.types {
            schemas.insert(name.clone(), schema.clone());
        }
        for method in &descriptor.methods {
            let mut summary = method.doc.clone();
            if summary.is_empty() {
                summary = format!("Calls `{}.{}`.", descriptor.service, method.name);
            }
            let operation = json!({
                "operationId": format!("{}.{}", descriptor.service, method.name),
                "tags": [descriptor.service],
                "summary": summary,
                "description": description(method),
                "requestBody": {
                    "required": true,
                    "content": { "application/json": { "schema": method.request } }
                },
                "responses": {
                    "200": {
                        "description": format!(
                            "The result, in the `{}` field.", method.result_field
                        ),
                        "content": {
                            "application/json": { "schema": envelope(&method.response) }
                        }
                    },
                    "default": { "$ref": "#/components/responses/Error" }
                }
            });
            paths.insert(
                format!("/{}/{}", descriptor.service, method.name),
                json!({ "post": operation }),
            );
        }
    }
    let mut document = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "meshrpc gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every method published in the mesh, as `POST /{service}/{method}` \
                with JSON in and out. Generated from the services' descriptors."
        },
        "tags": tags,
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {
                "Error": {
                    "description": "The call failed; `code` says who failed (the caller, \
                        the mesh or the handler) and the HTTP status follows it.",
                    "content": {
                        "application/json": {
                            "schema": { "$ref": format!("#/components/schemas/{ERROR_SCHEMA}") }
                        }
                    }
                }
            }
        }
    });
    if secured {
        document["components"]["securitySchemes"] = json!({
            "apiKey": { "type": "http", "scheme": "bearer", "description": "An API key." }
        });
        document["security"] = json!([{ "apiKey": [] }]);
    }
    document
}

fn description(method: &crate::descriptors::MethodDescriptor) -> String {
    let mut text = String::new();
    if method.idempotent {
        text.push_str("Idempotent: retried on another replica after a failure. ");
    }
    if let Some(timeout) = method.timeout_ms {
        text.push_str(&format!("Times out after {timeout} ms. "));
    }
    text.trim_end().to_owned()
}

/// `{"error": "", <result field>: ...}` around a method's response schema.
pub fn envelope(response: &Value) -> Value {
    let mut properties = Map::new();
    properties.insert(
        "error".to_owned(),
        json!({ "type": "string", "enum": [""], "description": "Empty on success." }),
    );
    if let Some(fields) = response.get("properties").and_then(Value::as_object) {
        for (name, schema) in fields {
            properties.insert(name.clone(), schema.clone());
        }
    }
    let mut required = vec![Value::from("error")];
    if let Some(fields) = response.get("required").and_then(Value::as_array) {
        required.extend(fields.iter().cloned());
    }
    json!({ "type": "object", "properties": properties, "required": required })
}

fn error_schema() -> Value {
    let codes: Vec<&str> = Code::ALL
        .iter()
        .filter(|code| **code != Code::Ok)
        .map(|code| code.as_str())
        .collect();
    json!({
        "type": "object",
        "description": "A failed call.",
        "properties": {
            "error": { "type": "string", "description": "What went wrong." },
            "code": { "type": "string", "enum": codes, "description": "The status name." }
        },
        "required": ["error", "code"]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greeter() -> Descriptor {
        Descriptor::parse(greeter::GREETER_SPEC.descriptor).expect("parses")
    }

    #[test]
    fn the_document_is_openapi_3_with_one_post_per_method() {
        let document = document(&[std::sync::Arc::new(greeter())], false);
        let parsed: openapiv3::OpenAPI =
            serde_json::from_value(document.clone()).expect("a valid OpenAPI 3 document");
        assert!(parsed.openapi.starts_with("3.0"));
        let paths: Vec<&String> = parsed.paths.paths.keys().collect();
        assert_eq!(paths, ["/greeter/greet", "/greeter/send_postcard"]);
        for path in parsed.paths.paths.values() {
            let item = path.as_item().expect("inline path item");
            assert!(item.post.is_some());
            assert!(item.get.is_none());
        }
        assert!(document.get("security").is_none());
    }

    #[test]
    fn every_reference_resolves_to_a_component() {
        let document = document(&[std::sync::Arc::new(greeter())], true);
        let text = document.to_string();
        for reference in text.split("\"$ref\":\"").skip(1) {
            let target = &reference[..reference.find('"').expect("closing quote")];
            let pointer = target.strip_prefix('#').expect("local reference");
            assert!(
                document.pointer(pointer).is_some(),
                "{target} does not resolve"
            );
        }
        assert!(document["components"]["securitySchemes"]["apiKey"].is_object());
    }

    #[test]
    fn the_success_schema_wraps_the_result_in_the_envelope() {
        let document = document(&[std::sync::Arc::new(greeter())], false);
        let schema = &document["paths"]["/greeter/greet"]["post"]["responses"]["200"]["content"]["application/json"]
            ["schema"];
        let keys: Vec<&String> = schema["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .collect();
        assert_eq!(keys, ["error", "message"]);
        assert_eq!(schema["required"], json!(["error", "message"]));
    }
}
