//! Schemas of `use` types for the service descriptor.
//!
//! A `use` entry marked `json_schema = true` in `services.toml` names a Rust type of the user's
//! crate that derives `schemars::JsonSchema` (with meshrpc's `schemars` feature). The generated
//! spec lists it in [`ServiceSpec::use_schemas`](crate::ServiceSpec::use_schemas), with a
//! function that asks schemars for its schema in the OpenAPI 3.0 dialect ([`openapi3`]);
//! [`ServiceSpec::full_descriptor`](crate::ServiceSpec::full_descriptor) then files that schema,
//! and the schemas it refers to, under the descriptor's `types` with [`insert`], so the gateway
//! checks and documents such a type as it does a declared one.

use serde_json::{Map, Value};

#[cfg(feature = "schemars")]
pub use schemars::JsonSchema;

/// Stands in for `schemars::JsonSchema` while meshrpc's `schemars` feature is off, so a
/// manifest that asks for a schema fails to build with a message that says what to enable.
#[cfg(not(feature = "schemars"))]
#[diagnostic::on_unimplemented(
    message = "`json_schema = true` in services.toml needs meshrpc's `schemars` feature",
    label = "this `use` type is marked `json_schema = true`",
    note = "enable it: meshrpc = {{ version = \"0.1\", features = [\"schemars\"] }}, and derive \
            `schemars::JsonSchema` for `{Self}`"
)]
pub trait JsonSchema {}

/// The schema of `T` in the OpenAPI 3.0 dialect the descriptor uses: `nullable` instead of
/// `null` types, the schemas `T` refers to under `components/schemas`.
#[cfg(feature = "schemars")]
pub fn openapi3<T: JsonSchema + ?Sized>() -> Value {
    use schemars::generate::SchemaSettings;
    let mut root = SchemaSettings::openapi3()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value();
    // schemars runs its OpenAPI transforms (`const` to `enum`, `nullable`, tuple `items`) over
    // the root and the subschemas it knows, which do not include definitions filed under
    // `components/schemas`: run them over those too.
    let mut transforms = SchemaSettings::openapi3().transforms;
    if let Some(definitions) = root
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        for definition in definitions.values_mut() {
            if let Ok(schema) = <&mut schemars::Schema>::try_from(definition) {
                for transform in &mut transforms {
                    transform.transform(schema);
                }
            }
        }
    }
    root
}

/// Without the `schemars` feature there are no schemas to compute (see [`JsonSchema`]).
#[cfg(not(feature = "schemars"))]
pub fn openapi3<T: JsonSchema + ?Sized>() -> Value {
    Value::Null
}

/// Files the schema schemars gave for a type under `name` in a descriptor's `types`, and each
/// schema it refers to under `name.<Def>`, with every `$ref` rewritten to those names: `#` (the
/// type itself, in a recursive type) and `#/components/schemas/<Def>` (also `#/$defs/<Def>` and
/// `#/definitions/<Def>`, as other dialects write them). A schema that is not an object is
/// filed as it is.
pub fn insert(types: &mut Map<String, Value>, name: &str, mut schema: Value) {
    let mut defs = Map::new();
    if let Some(object) = schema.as_object_mut() {
        object.remove("$schema");
        if let Some(Value::Object(mut components)) = object.remove("components") {
            if let Some(Value::Object(schemas)) = components.remove("schemas") {
                defs.extend(schemas);
            }
        }
        for key in ["$defs", "definitions"] {
            if let Some(Value::Object(more)) = object.remove(key) {
                defs.extend(more);
            }
        }
    }
    rename_refs(&mut schema, name);
    types.insert(name.to_owned(), schema);
    for (def, mut def_schema) in defs {
        rename_refs(&mut def_schema, name);
        types.insert(format!("{name}.{def}"), def_schema);
    }
}

fn rename_refs(schema: &mut Value, name: &str) {
    match schema {
        Value::Object(object) => {
            for (key, value) in object.iter_mut() {
                if key == "$ref" {
                    if let Value::String(reference) = value {
                        if let Some(renamed) = renamed(reference, name) {
                            *reference = renamed;
                        }
                    }
                } else {
                    rename_refs(value, name);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| rename_refs(item, name)),
        _ => {}
    }
}

fn renamed(reference: &str, name: &str) -> Option<String> {
    if reference == "#" {
        return Some(format!("#/components/schemas/{name}"));
    }
    ["#/components/schemas/", "#/$defs/", "#/definitions/"]
        .iter()
        .find_map(|prefix| reference.strip_prefix(prefix))
        .map(|def| format!("#/components/schemas/{name}.{def}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_schema_and_its_definitions_are_filed_under_the_type_name_with_their_refs() {
        let mut types = Map::new();
        let schema = json!({
            "$schema": "https://spec.openapis.org/oas/3.0/schema/2021-09-28#/definitions/Schema",
            "title": "Tree",
            "type": "object",
            "properties": {
                "label": { "$ref": "#/components/schemas/Label" },
                "children": { "type": "array", "items": { "$ref": "#" } },
            },
            "components": { "schemas": { "Label": { "type": "string", "enum": ["a", "b"] } } },
        });
        insert(&mut types, "shop.Tree", schema);
        assert_eq!(
            Value::Object(types),
            json!({
                "shop.Tree": {
                    "title": "Tree",
                    "type": "object",
                    "properties": {
                        "label": { "$ref": "#/components/schemas/shop.Tree.Label" },
                        "children": { "type": "array", "items": { "$ref": "#/components/schemas/shop.Tree" } },
                    },
                },
                "shop.Tree.Label": { "type": "string", "enum": ["a", "b"] },
            })
        );
    }

    #[test]
    fn draft_2020_definitions_are_renamed_too() {
        let mut types = Map::new();
        insert(
            &mut types,
            "s.A",
            json!({ "$ref": "#/$defs/B", "$defs": { "B": { "type": "integer" } } }),
        );
        assert_eq!(
            types["s.A"],
            json!({ "$ref": "#/components/schemas/s.A.B" })
        );
        assert_eq!(types["s.A.B"], json!({ "type": "integer" }));
    }
}
