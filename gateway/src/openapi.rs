//! The OpenAPI 3.0 document of everything the gateway serves, built at run time from the
//! descriptors that members advertise.
//!
//! Descriptors already carry JSON Schemas in the OpenAPI 3.0 dialect (with `x-meshrpc-*`
//! extensions), so the document is assembled with `serde_json` directly: typed builders
//! (utoipa's) would have to parse those schemas into their own model and back, and would drop
//! the extensions on the way. Tests check the result with the `openapiv3` crate.
//!
//! Per method there is a `POST /{service}/{method}` operation: the request schema as the body,
//! the response envelope `{"error": "", <result field>: ...}` as the 200 answer (`{"error": ""}`
//! for a method without a result), and the error body `{"error", "code", "details"?}` for every
//! other status. An idempotent method whose parameters are scalars also gets the `GET` form,
//! its parameters in the query. Objects the gateway checks are closed
//! (`additionalProperties: false`): it refuses unknown fields with 400.
//!
//! A streaming method's operation describes its line format: a server stream answers
//! `application/x-ndjson` (`{"item": ...}` lines, then one `{"status": ...}` line) or
//! `text/event-stream`; a client stream takes an `application/x-ndjson` body of `{"item": ...}`
//! lines, its other parameters in the query; a bidirectional method is a `GET` whose
//! description tells how to speak to its WebSocket.
//!
//! Beside the methods, the document lists the routes of the binary's extensions whose service
//! is known (each documents its own: `mesh-api`'s greeter extension adds the greeter's REST
//! routes and its legacy `GET /greeter/check`), and the gateway's own routes: `/healthz`, `/readyz`,
//! `/metrics`, `/openapi.json` and the dashboard's `/dashboard` and `/dashboard/state`.

use meshrpc::{Code, MethodKind};
use serde_json::{Map, Value, json};

use crate::descriptors::{Descriptor, MethodDescriptor};
use crate::extension::Extension;
use crate::routes::generic::has_get_form;

/// The name of the error body's schema under `components/schemas`.
pub const ERROR_SCHEMA: &str = "meshrpc.Error";

/// Builds the document for these descriptors, with the routes of the `extensions` whose
/// service is among them; `secured` adds the bearer API-key scheme.
pub fn document(
    descriptors: &[impl AsRef<Descriptor>],
    secured: bool,
    extensions: &[Extension],
) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    let mut tags = Vec::new();
    schemas.insert(ERROR_SCHEMA.to_owned(), error_schema());
    for descriptor in descriptors {
        let descriptor = descriptor.as_ref();
        tags.push(json!({ "name": descriptor.service, "description": descriptor.doc }));
        for (name, schema) in &descriptor.types {
            let mut schema = schema.clone();
            close_objects(&mut schema);
            schemas.insert(name.clone(), schema);
        }
        for method in &descriptor.methods {
            let mut item = Map::new();
            if method.kind == MethodKind::Bidirectional {
                item.insert("get".to_owned(), websocket_operation(descriptor, method));
            } else {
                item.insert(
                    "post".to_owned(),
                    method_operation(descriptor, method, false),
                );
            }
            if has_get_form(method) {
                item.insert("get".to_owned(), method_operation(descriptor, method, true));
            }
            paths.insert(
                format!("/{}/{}", descriptor.service, method.name),
                Value::Object(item),
            );
        }
        for extension in extensions {
            if extension.spec().name == descriptor.service {
                extension.document(&mut paths, &mut schemas);
            }
        }
    }
    ops_routes(&mut paths, secured);
    dashboard_routes(&mut paths, secured);
    let mut document = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "meshrpc gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every method published in the mesh, as `POST /{service}/{method}` \
                with JSON in and out (and `GET /{service}/{method}?param=...` for idempotent \
                methods with scalar parameters), the routes of the binary's extensions (the \
                greeter's REST routes in mesh-api) and the gateway's own routes. Generated from the services' descriptors. Every error is \
                `{\"error\", \"code\"}` JSON (with `details`, base64, when the service \
                attached some); 503s the gateway sheds carry `Retry-After`."
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
            "apiKey": { "type": "http", "scheme": "bearer", "description": "An API key." },
            "dashboardBasic": { "type": "http", "scheme": "basic",
                "description": "The dashboard only: an API key as the password, any user name \
                    (what a browser sends when it opens the page)." }
        });
        document["security"] = json!([{ "apiKey": [] }]);
    }
    document
}

/// The `POST` operation of a method, or its `GET` form.
fn method_operation(descriptor: &Descriptor, method: &MethodDescriptor, get: bool) -> Value {
    if method.kind != MethodKind::Unary {
        return stream_operation(descriptor, method, get);
    }
    let mut summary = method.doc.clone();
    if summary.is_empty() {
        summary = format!("Calls `{}.{}`.", descriptor.service, method.name);
    }
    let response = method.response.clone().unwrap_or(Value::Null);
    let has_result = response
        .get("properties")
        .and_then(Value::as_object)
        .is_some_and(|fields| !fields.is_empty());
    let success = if has_result {
        format!(
            "Done: the result is in the `{}` field, after `\"error\": \"\"`.",
            method.result_field
        )
    } else {
        "Done: the method returns nothing, so the body is `{\"error\": \"\"}`.".to_owned()
    };
    let mut operation = json!({
        "operationId": format!(
            "{}.{}{}", descriptor.service, method.name, if get { ".get" } else { "" }
        ),
        "tags": [descriptor.service],
        "summary": summary,
        "description": description(method),
        "responses": {
            "200": {
                "description": success,
                "content": {
                    "application/json": { "schema": envelope(method.response.as_ref().unwrap_or(&Value::Null)) }
                }
            },
            "default": { "$ref": "#/components/responses/Error" }
        }
    });
    let mut request = method.request.clone();
    close_objects(&mut request);
    if get {
        let required: Vec<&str> = request
            .get("required")
            .and_then(Value::as_array)
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let parameters: Vec<Value> = request
            .get("properties")
            .and_then(Value::as_object)
            .map(|fields| {
                fields
                    .iter()
                    .map(|(name, schema)| {
                        json!({
                            "name": name,
                            "in": "query",
                            "required": required.contains(&name.as_str()),
                            "schema": schema,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        operation["parameters"] = Value::Array(parameters);
    } else {
        operation["requestBody"] = json!({
            "required": true,
            "content": { "application/json": { "schema": request } }
        });
    }
    operation
}

/// Adds `additionalProperties: false` to every object schema with declared properties that
/// says nothing of others, as the gateway refuses unknown fields.
fn close_objects(schema: &mut Value) {
    match schema {
        Value::Object(object) => {
            if object.contains_key("properties") && !object.contains_key("additionalProperties") {
                object.insert("additionalProperties".to_owned(), Value::Bool(false));
            }
            for (key, value) in object.iter_mut() {
                match (key.as_str(), value) {
                    // A map of field names to schemas, not a schema: its entries are.
                    ("properties", Value::Object(fields)) => {
                        fields.values_mut().for_each(close_objects);
                    }
                    (_, value) => close_objects(value),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// `/healthz`, `/readyz`, `/metrics`, `/openapi.json`. The probes need no key.
fn ops_routes(paths: &mut Map<String, Value>, secured: bool) {
    let open = |mut operation: Value| {
        if secured {
            operation["security"] = json!([]);
        }
        operation
    };
    paths.insert(
        "/healthz".to_owned(),
        json!({ "get": open(json!({
            "operationId": "gateway.healthz",
            "tags": ["gateway"],
            "summary": "Whether the process serves.",
            "responses": {
                "200": { "description": "`ok`.",
                         "content": { "text/plain": { "schema": { "type": "string", "enum": ["ok"] } } } },
                "default": { "$ref": "#/components/responses/Error" }
            }
        })) }),
    );
    let readiness = json!({
        "type": "object",
        "properties": {
            "ready": { "type": "boolean" },
            "members": { "type": "integer", "minimum": 0 },
            "dependencies": { "type": "array", "items": {
                "type": "object",
                "properties": {
                    "service": { "type": "string" },
                    "required": { "type": "boolean" },
                    "live": { "type": "boolean" },
                    "rpc_members": { "type": "integer", "minimum": 0 },
                    "http_members": { "type": "integer", "minimum": 0 }
                },
                "required": ["service", "required", "live", "rpc_members", "http_members"],
                "additionalProperties": false
            } }
        },
        "required": ["ready", "members", "dependencies"],
        "additionalProperties": false
    });
    paths.insert(
        "/readyz".to_owned(),
        json!({ "get": open(json!({
            "operationId": "gateway.readyz",
            "tags": ["gateway"],
            "summary": "Every known and every required service, with its live members.",
            "responses": {
                "200": { "description": "Every required service has a live member.",
                         "content": { "application/json": { "schema": readiness } } },
                "503": { "description": "A required service has no live member.",
                         "content": { "application/json": { "schema": readiness } } },
                "default": { "$ref": "#/components/responses/Error" }
            }
        })) }),
    );
    paths.insert(
        "/metrics".to_owned(),
        json!({ "get": {
            "operationId": "gateway.metrics",
            "tags": ["gateway"],
            "summary": "The gateway's and its node's metrics, Prometheus text (OpenMetrics).",
            "responses": {
                "200": { "description": "OpenMetrics text.",
                         "content": { "application/openmetrics-text": { "schema": { "type": "string" } } } },
                "default": { "$ref": "#/components/responses/Error" }
            }
        }}),
    );
    paths.insert(
        "/openapi.json".to_owned(),
        json!({ "get": {
            "operationId": "gateway.openapi",
            "tags": ["gateway"],
            "summary": "This document.",
            "responses": {
                "200": { "description": "An OpenAPI 3.0 document.",
                         "content": { "application/json": { "schema": { "type": "object" } } } },
                "default": { "$ref": "#/components/responses/Error" }
            }
        }}),
    );
}

/// `/dashboard` (the page) and `/dashboard/state` (its JSON). Both need a key when the
/// gateway has keys, as a bearer token or as the password of HTTP Basic.
fn dashboard_routes(paths: &mut Map<String, Value>, secured: bool) {
    let guarded = |mut operation: Value| {
        if secured {
            operation["security"] = json!([{ "apiKey": [] }, { "dashboardBasic": [] }]);
        }
        operation
    };
    paths.insert(
        "/dashboard".to_owned(),
        json!({ "get": guarded(json!({
            "operationId": "gateway.dashboard",
            "tags": ["gateway"],
            "summary": "The live dashboard: members, services, calls/s, errors, p50/p99.",
            "description": "One HTML page with its style and script inline (it loads nothing \
                else); it polls `/dashboard/state` every second.",
            "responses": {
                "200": { "description": "The page.",
                         "content": { "text/html": { "schema": { "type": "string" } } } },
                "default": { "$ref": "#/components/responses/Error" }
            }
        })) }),
    );
    let number = json!({ "type": "number", "nullable": true });
    let member = json!({
        "type": "object",
        "properties": {
            "name": { "type": "string" },
            "addr": { "type": "string", "description": "`ip:port`" },
            "state": { "type": "string", "enum": ["alive", "suspect", "draining", "down"],
                       "description": "`down`: it left the view in the last minute." },
            "local": { "type": "boolean", "description": "The gateway itself." },
            "services": { "type": "array", "items": { "type": "string" } },
            "http": { "type": "array", "items": { "type": "string" },
                      "description": "Services whose legacy HTTP handlers it serves." },
            "stats": { "type": "string", "enum": ["ok", "pending", "failed", "gone"],
                       "description": "How asking it for `meshrpc.node/stats` went." },
            "stats_age_s": number,
            "stats_error": { "type": "string", "nullable": true },
            "left_s_ago": number
        },
        "required": ["name", "addr", "state", "local", "services", "http", "stats"]
    });
    let method = json!({
        "type": "object",
        "properties": {
            "method": { "type": "string" },
            "calls_per_s": { "type": "number", "description": "Over the last `recent_s` seconds." },
            "calls_per_s_minute": { "type": "number", "description": "Over the last `window_s` seconds." },
            "calls": { "type": "integer", "minimum": 0, "description": "Finished in the window." },
            "errors": { "type": "integer", "minimum": 0, "description": "Of those, not `ok`." },
            "error_rate": number,
            "p50_ms": number,
            "p99_ms": number,
            "calls_total": { "type": "integer", "minimum": 0,
                             "description": "Since the members started." }
        },
        "required": ["method", "calls_per_s", "calls_per_s_minute", "calls", "errors", "calls_total"]
    });
    let replica = json!({
        "type": "object",
        "properties": {
            "name": { "type": "string" },
            "addr": { "type": "string" },
            "state": { "type": "string", "enum": ["alive", "suspect", "draining"] }
        },
        "required": ["name", "addr", "state"]
    });
    let state = json!({
        "type": "object",
        "properties": {
            "gateway": { "type": "string" },
            "generated_at_ms": { "type": "integer", "minimum": 0 },
            "window_s": { "type": "integer", "minimum": 0 },
            "recent_s": { "type": "integer", "minimum": 0 },
            "members": { "type": "array", "items": member },
            "services": { "type": "array", "items": {
                "type": "object",
                "properties": {
                    "service": { "type": "string" },
                    "replicas": { "type": "array", "items": replica },
                    "methods": { "type": "array", "items": method }
                },
                "required": ["service", "replicas", "methods"]
            } }
        },
        "required": ["gateway", "generated_at_ms", "window_s", "recent_s", "members", "services"]
    });
    paths.insert(
        "/dashboard/state".to_owned(),
        json!({ "get": guarded(json!({
            "operationId": "gateway.dashboardState",
            "tags": ["gateway"],
            "summary": "What the dashboard shows, as JSON.",
            "description": "The members in the gateway's view, and per service its replicas and \
                per method the calls the serving members counted (side `server` of \
                `meshrpc.node/stats`), summed over them: calls/s, error rate, p50 and p99 \
                over the last minute. Asking for it makes the gateway poll every member's \
                stats every second for the next 30 s (every 10 s otherwise).",
            "parameters": [{
                "name": "all", "in": "query", "required": false,
                "description": "`1` includes `meshrpc.node`, the mesh's own calls.",
                "schema": { "type": "string", "enum": ["", "1", "true"] }
            }],
            "responses": {
                "200": { "description": "The state.",
                         "content": { "application/json": { "schema": state } } },
                "default": { "$ref": "#/components/responses/Error" }
            }
        })) }),
    );
}

/// The query parameters of a method's request map (for `GET` forms and the streaming routes,
/// which take their non-stream parameters in the query).
fn query_parameters(method: &MethodDescriptor) -> Value {
    let mut request = method.request.clone();
    close_objects(&mut request);
    let required: Vec<&str> = request
        .get("required")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let parameters: Vec<Value> = request
        .get("properties")
        .and_then(Value::as_object)
        .map(|fields| {
            fields
                .iter()
                .map(|(name, schema)| {
                    json!({
                        "name": name,
                        "in": "query",
                        "required": required.contains(&name.as_str()),
                        "schema": schema,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Value::Array(parameters)
}

/// `{"item": <value>}`, one message of a stream.
fn item_line(item: Option<&Value>) -> Value {
    let mut item = item.cloned().unwrap_or_else(|| json!({}));
    close_objects(&mut item);
    json!({
        "type": "object",
        "properties": { "item": item },
        "required": ["item"],
        "additionalProperties": false
    })
}

/// The final message of a stream: `{"status":"ok"}` or the error that ended it.
fn status_line() -> Value {
    let codes: Vec<&str> = Code::ALL.iter().map(|code| code.as_str()).collect();
    json!({
        "type": "object",
        "description": "The stream's last message: `{\"status\":\"ok\"}` when it ended \
            cleanly, else the status name and message of the error that ended it. A stream \
            without this message was cut off.",
        "properties": {
            "status": { "type": "string", "enum": codes },
            "error": { "type": "string", "description": "What went wrong." },
            "details": { "type": "string", "format": "byte",
                         "description": "The service's details, base64." }
        },
        "required": ["status"],
        "additionalProperties": false
    })
}

/// The items of a server stream then its status, as the body of a 200 answer.
fn stream_body(method: &MethodDescriptor) -> Value {
    let lines = json!({ "oneOf": [item_line(method.response_stream.as_ref()), status_line()] });
    json!({
        "application/x-ndjson": {
            "schema": lines,
            "example": "{\"item\":1}\n{\"item\":2}\n{\"status\":\"ok\"}\n"
        },
        "text/event-stream": {
            "schema": { "type": "string", "description": "Server-Sent Events: `event: item` \
                with `data: {\"item\": ...}` per item, then `event: end` with \
                `data: {\"status\": ...}`." },
            "example": "event: item\ndata: {\"item\":1}\n\nevent: end\ndata: {\"status\":\"ok\"}\n\n"
        }
    })
}

/// The operation of a server- or client-streaming method (or a server stream's `GET` form).
fn stream_operation(descriptor: &Descriptor, method: &MethodDescriptor, get: bool) -> Value {
    let mut summary = method.doc.clone();
    if summary.is_empty() {
        summary = format!("Calls `{}.{}`.", descriptor.service, method.name);
    }
    let mut text = description(method);
    let mut operation = json!({
        "operationId": format!(
            "{}.{}{}", descriptor.service, method.name, if get { ".get" } else { "" }
        ),
        "tags": [descriptor.service],
        "summary": summary,
    });
    if method.kind.server_streams() {
        text.push_str(
            " Streams its answer: NDJSON (`application/x-ndjson`, the default), one \
             `{\"item\": ...}` line per item, then exactly one final line, \
             `{\"status\":\"ok\"}` or `{\"status\":\"<code>\",\"error\":\"<message>\"}`; \
             or Server-Sent Events with `Accept: text/event-stream` (`event: item` per item, \
             `event: end` last). A failure before the first item is an ordinary error answer. \
             The gateway's request timeout bounds the wait for the first item only.",
        );
        operation["responses"] = json!({
            "200": { "description": "The stream's items, then its status.",
                     "content": stream_body(method) },
            "default": { "$ref": "#/components/responses/Error" }
        });
    } else {
        operation["responses"] = json!({
            "200": {
                "description": format!(
                    "Done: the result is in the `{}` field, after `\"error\": \"\"`.",
                    method.result_field
                ),
                "content": { "application/json": { "schema": envelope(method.response.as_ref().unwrap_or(&Value::Null)) } }
            },
            "default": { "$ref": "#/components/responses/Error" }
        });
    }
    if method.kind.client_streams() {
        text.push_str(
            " Takes a stream: the body is NDJSON, one `{\"item\": ...}` line per item; the end \
             of a complete body ends the stream, a body cut off or a bad line aborts the call \
             (a 400 names the line). The other parameters go in the query string.",
        );
        operation["parameters"] = query_parameters(method);
        operation["requestBody"] = json!({
            "required": true,
            "content": { "application/x-ndjson": {
                "schema": item_line(method.request_stream.as_ref()),
                "example": "{\"item\":1}\n{\"item\":2}\n"
            } }
        });
    } else if get {
        operation["parameters"] = query_parameters(method);
    } else {
        let mut request = method.request.clone();
        close_objects(&mut request);
        operation["requestBody"] = json!({
            "required": true,
            "content": { "application/json": { "schema": request } }
        });
    }
    operation["description"] = Value::from(text.trim().to_owned());
    operation
}

/// The `GET` operation of a bidirectional method: a WebSocket.
fn websocket_operation(descriptor: &Descriptor, method: &MethodDescriptor) -> Value {
    let mut summary = method.doc.clone();
    if summary.is_empty() {
        summary = format!("Calls `{}.{}`.", descriptor.service, method.name);
    }
    let request_item =
        serde_json::to_string(&item_line(method.request_stream.as_ref())).unwrap_or_default();
    let response_item =
        serde_json::to_string(&item_line(method.response_stream.as_ref())).unwrap_or_default();
    let text = format!(
        "{} Streams both ways over a WebSocket: open this path with `GET` and \
         `Upgrade: websocket` (the other parameters in the query string). Send one text message \
         `{{\"item\": ...}}` per item (schema: {request_item}) and `{{\"status\":\"ok\"}}` to \
         end your input; closing the socket before that aborts the call. The gateway sends \
         `{{\"item\": ...}}` per item of the answer (schema: {response_item}), then one final \
         `{{\"status\":\"ok\"}}` or `{{\"status\":\"<code>\",\"error\":\"<message>\"}}`, \
         and closes the socket. A message that is not a valid item aborts the call, and the \
         final status names it.",
        description(method)
    );
    json!({
        "operationId": format!("{}.{}", descriptor.service, method.name),
        "tags": [descriptor.service],
        "summary": summary,
        "description": text.trim(),
        "parameters": query_parameters(method),
        "responses": {
            "101": { "description": "Switched to the WebSocket protocol." },
            "default": { "$ref": "#/components/responses/Error" }
        }
    })
}

fn description(method: &MethodDescriptor) -> String {
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
    let mut schema = json!({ "type": "object", "properties": properties, "required": required });
    close_objects(&mut schema);
    schema
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
            "code": { "type": "string", "enum": codes, "description": "The status name." },
            "details": {
                "type": "string",
                "format": "byte",
                "description": "The service's machine-readable details (`Status::with_details`), \
                    base64: the bytes as the service sent them."
            }
        },
        "required": ["error", "code"],
        "additionalProperties": false
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greeter() -> Descriptor {
        Descriptor::parse(greeter::GREETER_SPEC.descriptor).expect("parses")
    }

    #[test]
    fn extension_routes_are_documented_only_with_the_extension() {
        let bare = document(&[std::sync::Arc::new(greeter())], false, &[]);
        assert!(bare["paths"]["/greeter/greet"].is_object());
        assert!(bare["paths"]["/greeter/greet/{name}"].is_null(), "{bare}");
        assert!(bare["paths"]["/greeter/check"].is_null());
        let mounted = document(&[std::sync::Arc::new(greeter())], false, &extensions());
        assert!(mounted["paths"]["/greeter/greet/{name}"]["get"].is_object());
        // Not for a service nobody publishes.
        let other = document(&[] as &[std::sync::Arc<Descriptor>], false, &extensions());
        assert!(other["paths"]["/greeter/greet/{name}"].is_null());
    }

    /// The greeter's extension as `mesh-api` mounts it (its routes are not served here).
    fn extensions() -> Vec<Extension> {
        vec![
            Extension::new(&greeter::GREETER_SPEC, |_| axum::Router::new())
                .with_openapi(greeter::rest::document),
        ]
    }

    #[test]
    fn the_document_is_openapi_3_with_every_route_of_the_gateway() {
        let document = document(&[std::sync::Arc::new(greeter())], false, &extensions());
        let parsed: openapiv3::OpenAPI =
            serde_json::from_value(document.clone()).expect("a valid OpenAPI 3 document");
        assert!(parsed.openapi.starts_with("3.0"));
        let paths: Vec<&String> = parsed.paths.paths.keys().collect();
        assert_eq!(
            paths,
            [
                "/dashboard",
                "/dashboard/state",
                "/greeter/check",
                "/greeter/greet",
                "/greeter/greet/{name}",
                "/greeter/sendPostcard/{recipient}/{address}/{message}",
                "/greeter/send_postcard",
                "/healthz",
                "/metrics",
                "/openapi.json",
                "/readyz",
            ]
        );
        let item = |path: &str| parsed.paths.paths[path].as_item().expect("inline").clone();
        // Every method is a POST; the idempotent greet with its one string has a GET form.
        assert!(item("/greeter/greet").post.is_some());
        let get = item("/greeter/greet").get.expect("GET /greeter/greet");
        assert_eq!(get.parameters.len(), 1);
        assert!(item("/greeter/send_postcard").get.is_none());
        assert!(item("/greeter/greet/{name}").get.is_some());
        assert!(
            item("/greeter/sendPostcard/{recipient}/{address}/{message}")
                .post
                .is_some()
        );
        assert!(document.get("security").is_none());
    }

    #[test]
    fn objects_the_gateway_checks_are_closed() {
        let document = document(&[std::sync::Arc::new(greeter())], false, &extensions());
        let request = &document["paths"]["/greeter/greet"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"];
        assert_eq!(request["additionalProperties"], json!(false));
        let postcard = &document["components"]["schemas"]["greeter.Postcard"];
        assert_eq!(postcard["additionalProperties"], json!(false));
        assert!(postcard["properties"]["recipient"]["pattern"].is_string());
        // A field called `properties` is a field, not a list of fields.
        let mut schema =
            json!({"type": "object", "properties": {"properties": {"type": "string"}}});
        close_objects(&mut schema);
        assert_eq!(
            schema,
            json!({"type": "object", "properties": {"properties": {"type": "string"}},
                   "additionalProperties": false})
        );
    }

    #[test]
    fn a_method_without_a_result_documents_the_bare_envelope() {
        let mut descriptor = greeter();
        descriptor.methods[1].response =
            Some(json!({"type": "object", "properties": {}, "required": []}));
        descriptor.methods[1].result_field = "result".to_owned();
        let document = document(&[std::sync::Arc::new(descriptor)], false, &[]);
        let success = &document["paths"]["/greeter/send_postcard"]["post"]["responses"]["200"];
        assert!(
            success["description"]
                .as_str()
                .expect("text")
                .contains("returns nothing"),
            "{success}"
        );
        let schema = &success["content"]["application/json"]["schema"];
        assert_eq!(schema["required"], json!(["error"]));
        let keys: Vec<&String> = schema["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .collect();
        assert_eq!(keys, ["error"]);
    }

    #[test]
    fn every_reference_resolves_to_a_component() {
        let document = document(&[std::sync::Arc::new(greeter())], true, &extensions());
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
    fn the_dashboard_is_documented_as_needing_a_key_where_the_probes_do_not() {
        let document = document(&[std::sync::Arc::new(greeter())], true, &extensions());
        let parsed: openapiv3::OpenAPI =
            serde_json::from_value(document.clone()).expect("a valid OpenAPI 3 document");
        assert!(parsed.paths.paths.contains_key("/dashboard/state"));
        for path in ["/dashboard", "/dashboard/state"] {
            let security = &document["paths"][path]["get"]["security"];
            assert_eq!(
                security,
                &json!([{ "apiKey": [] }, { "dashboardBasic": [] }]),
                "{path}"
            );
        }
        assert_eq!(document["paths"]["/healthz"]["get"]["security"], json!([]));
        assert!(document["components"]["securitySchemes"]["dashboardBasic"].is_object());
    }

    #[test]
    fn the_success_schema_wraps_the_result_in_the_envelope() {
        let document = document(&[std::sync::Arc::new(greeter())], false, &extensions());
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
