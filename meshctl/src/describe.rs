//! `meshctl describe <service>`: the methods with their Rust signatures as the manifest writes
//! them, docs, flags and timeouts, and the types the manifest declares. Signatures and type
//! declarations come from the manifest text a member sends with its descriptor; a member that
//! sends none still gets its methods described from the descriptor's JSON Schemas.

use serde_json::{Value, json};

use crate::connect::{Described, Mesh};
use crate::failure::{Failure, print_json};

/// One method as described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MethodLine {
    /// The signature, `greet(name: String) -> String`.
    pub(crate) signature: String,
    /// The doc string.
    pub(crate) doc: String,
    /// Whether calls may be retried.
    pub(crate) idempotent: bool,
    /// The manifest's timeout, in milliseconds.
    pub(crate) timeout_ms: Option<u64>,
}

/// A type the manifest declares, as Rust: `struct Postcard { ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TypeDecl {
    /// The type's name.
    pub(crate) name: String,
    /// Its doc string.
    pub(crate) doc: String,
    /// Its declaration.
    pub(crate) rust: String,
}

/// The `[<service>]` table of a manifest, if the text parses and has one.
fn service_table(manifest: &str, service: &str) -> Option<toml::Table> {
    let parsed: toml::Table = manifest.parse().ok()?;
    match parsed.get(service)? {
        toml::Value::Table(table) => Some(table.clone()),
        _ => None,
    }
}

/// The manifest's signature of `method`, normalised to `name(params) -> T`.
pub(crate) fn manifest_signature(table: Option<&toml::Table>, method: &str) -> Option<String> {
    let entry = table?.get("methods")?.as_table()?.get(method)?;
    let written = match entry {
        toml::Value::String(signature) => signature.as_str(),
        toml::Value::Table(entry) => entry.get("fn")?.as_str()?,
        _ => return None,
    };
    let written = written.trim();
    let written = written.strip_prefix("fn ").unwrap_or(written).trim_start();
    Some(if written.starts_with('(') {
        format!("{method}{written}")
    } else {
        written.to_owned()
    })
}

/// The JSON type of a schema, briefly: `string`, `integer`, `greeter.Postcard`, `[string]`.
fn json_type(schema: &Value) -> String {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        return reference.rsplit('/').next().unwrap_or(reference).to_owned();
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("array") => format!("[{}]", schema.get("items").map_or("?".into(), json_type)),
        Some(kind) => kind.to_owned(),
        None => "any".to_owned(),
    }
}

/// A signature made from the descriptor's schemas when the manifest is not at hand.
fn schema_signature(method: &gateway::descriptors::MethodDescriptor) -> String {
    let params: Vec<String> = method
        .request
        .get("properties")
        .and_then(Value::as_object)
        .map(|fields| {
            fields
                .iter()
                .map(|(name, schema)| format!("{name}: {}", json_type(schema)))
                .collect()
        })
        .unwrap_or_default();
    let mut params = params;
    if let Some(item) = &method.request_stream {
        params.push(format!("Stream<{}>", json_type(item)));
    }
    let result = match (&method.response, &method.response_stream) {
        (_, Some(item)) => format!(" -> Stream<{}>", json_type(item)),
        (Some(response), None) => response
            .get("properties")
            .and_then(|fields| fields.get(&method.result_field))
            .map(|schema| format!(" -> {}", json_type(schema)))
            .unwrap_or_default(),
        (None, None) => String::new(),
    };
    format!("{}({}){result}", method.name, params.join(", "))
}

/// The methods of a described service.
pub(crate) fn methods(described: &Described) -> Vec<MethodLine> {
    let service = &described.descriptor.service;
    let table = service_table(&described.manifest, service);
    described
        .descriptor
        .methods
        .iter()
        .map(|method| MethodLine {
            signature: manifest_signature(table.as_ref(), &method.name)
                .unwrap_or_else(|| schema_signature(method)),
            doc: method.doc.clone(),
            idempotent: method.idempotent,
            timeout_ms: method.timeout_ms,
        })
        .collect()
}

/// The types the manifest declares for `service`, in the manifest's order.
pub(crate) fn declared_types(manifest: &str, service: &str) -> Vec<TypeDecl> {
    let Some(types) = service_table(manifest, service)
        .and_then(|table| table.get("types").and_then(|t| t.as_table()).cloned())
    else {
        return Vec::new();
    };
    types
        .iter()
        .filter_map(|(name, declaration)| {
            let declaration = declaration.as_table()?;
            let doc = declaration
                .get("doc")
                .and_then(toml::Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let body = |key: &str| declaration.get(key).and_then(toml::Value::as_str);
            let rust = if let Some(fields) = body("struct") {
                format!("struct {name} {{\n{}}}", indent_body(fields))
            } else if let Some(variants) = body("enum") {
                format!("enum {name} {{\n{}}}", indent_body(variants))
            } else if let Some(inner) = body("newtype") {
                format!("struct {name}({});", inner.trim())
            } else if let Some(items) = body("tuple") {
                format!("struct {name}({});", items.trim())
            } else {
                return None;
            };
            Some(TypeDecl {
                name: name.clone(),
                doc,
                rust,
            })
        })
        .collect()
}

/// A struct or enum body, one item per line, indented: items written on one line are split
/// at their top-level commas; bodies written over several lines (with doc comments) are kept.
fn indent_body(body: &str) -> String {
    let lines: Vec<&str> = body
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    let items: Vec<String> = if lines.len() == 1 {
        split_top_level(lines[0])
            .into_iter()
            .map(|item| format!("{item},"))
            .collect()
    } else {
        lines.iter().map(|line| (*line).to_owned()).collect()
    };
    let mut out = String::new();
    for item in items {
        out.push_str("    ");
        out.push_str(&item);
        out.push('\n');
    }
    out
}

/// `a, B { c: u8, d: u8 }, E(u8, u8)` split at the commas outside brackets.
fn split_top_level(text: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut depth = 0usize;
    let mut current = String::new();
    for c in text.chars() {
        match c {
            '{' | '(' | '<' | '[' => depth += 1,
            '}' | ')' | '>' | ']' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    items.push(current);
    items
        .into_iter()
        .map(|item| item.trim().to_owned())
        .filter(|item| !item.is_empty())
        .collect()
}

/// Prints the description of `service`.
pub(crate) async fn run(mesh: &Mesh, service: &str, json: bool) -> Result<(), Failure> {
    let described = mesh.describe(service, None).await?;
    let methods = methods(&described);
    let types = declared_types(&described.manifest, service);
    let descriptor = &described.descriptor;
    if json {
        let methods: Vec<Value> = descriptor
            .methods
            .iter()
            .zip(&methods)
            .map(|(method, line)| {
                json!({
                    "name": method.name,
                    "signature": line.signature,
                    "doc": method.doc,
                    "idempotent": method.idempotent,
                    "timeout_ms": method.timeout_ms,
                    "result_field": method.result_field,
                    "request": method.request,
                    "response": method.response,
                })
            })
            .collect();
        return print_json(&json!({
            "service": descriptor.service,
            "doc": descriptor.doc,
            "schema_hash": descriptor.schema_hash,
            "replicas": described.replicas,
            "methods": methods,
            "declared_types": types.iter().map(|t| json!({
                "name": t.name,
                "doc": t.doc,
                "rust": t.rust,
            })).collect::<Vec<_>>(),
            "types": descriptor.types,
            "manifest": described.manifest,
        }));
    }
    let mut out = format!(
        "service {} (schema {}, {} replica{})\n",
        descriptor.service,
        descriptor.schema_hash,
        described.replicas,
        if described.replicas == 1 { "" } else { "s" }
    );
    if !descriptor.doc.is_empty() {
        out.push_str(&format!("  {}\n", descriptor.doc));
    }
    out.push_str("\nmethods:\n");
    for line in &methods {
        let mut flags = Vec::new();
        if line.idempotent {
            flags.push("idempotent".to_owned());
        }
        if let Some(ms) = line.timeout_ms {
            flags.push(format!(
                "timeout {}",
                humantime::format_duration(std::time::Duration::from_millis(ms))
            ));
        }
        let flags = if flags.is_empty() {
            String::new()
        } else {
            format!("    [{}]", flags.join(", "))
        };
        out.push_str(&format!("  {}{flags}\n", line.signature));
        if !line.doc.is_empty() {
            out.push_str(&format!("      {}\n", line.doc));
        }
    }
    if !types.is_empty() {
        out.push_str("\ntypes:\n");
        for declared in &types {
            if !declared.doc.is_empty() {
                out.push_str(&format!("  /// {}\n", declared.doc));
            }
            for line in declared.rust.lines() {
                out.push_str(&format!("  {line}\n"));
            }
        }
    } else if !descriptor.types.is_empty() {
        out.push_str("\ntypes (JSON Schema):\n");
        for (name, schema) in &descriptor.types {
            out.push_str(&format!("  {name}: {schema}\n"));
        }
    }
    crate::failure::out!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
[shop]
doc = "Sells things."
[shop.methods]
price = { fn = "fn price(item: ItemId) -> u64", returns = "cents", idempotent = true }
buy = "(item: ItemId, count: u32)"
[shop.types.ItemId]
newtype = "u64"
[shop.types.Weather]
enum = "Sunny, Rain { millimetres: f32 }"
"#;

    #[test]
    fn signatures_are_read_from_the_manifest_and_named_by_their_key() {
        let table = service_table(MANIFEST, "shop");
        assert_eq!(
            manifest_signature(table.as_ref(), "price").as_deref(),
            Some("price(item: ItemId) -> u64")
        );
        assert_eq!(
            manifest_signature(table.as_ref(), "buy").as_deref(),
            Some("buy(item: ItemId, count: u32)")
        );
        assert_eq!(manifest_signature(table.as_ref(), "sell"), None);
    }

    #[test]
    fn declared_types_are_written_as_rust() {
        let types = declared_types(MANIFEST, "shop");
        assert_eq!(types.len(), 2, "{types:?}");
        assert_eq!(types[0].rust, "struct ItemId(u64);");
        assert_eq!(
            types[1].rust,
            "enum Weather {\n    Sunny,\n    Rain { millimetres: f32 },\n}"
        );
    }
}
