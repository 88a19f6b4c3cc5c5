//! A request schema compiled once, when its descriptor is learned, into the form the
//! transcoder walks: an arena of nodes, each the already-resolved shape of one schema (`$ref`s
//! followed, `allOf`/`anyOf`-with-null wrappers unwrapped, bounds, fields and variants read out
//! of the JSON). Children are [`NodeId`]s into the arena, so a recursive type (a `$ref` cycle)
//! is a cycle of indices. Compiling reads the schema the way the checks always have (see
//! [`read`]); a request then looks at nothing but nodes.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::{Schema, Unchecked, unchecked_fields};

/// A request schema compiled for the transcoder: build one with [`CompiledSchema::compile`]
/// (or [`CompiledSchema::stream_line`]) once per method, then check and transcode any number of
/// requests with [`CompiledSchema::json_to_msgpack`].
#[derive(Debug)]
pub struct CompiledSchema {
    nodes: Box<[Node]>,
    root: NodeId,
    /// The places the schema cannot check (see [`unchecked_fields`]).
    unchecked: Box<[Unchecked]>,
}

/// The index of a node in its [`CompiledSchema`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NodeId(u32);

/// What a schema asks of a value.
#[derive(Debug)]
pub(super) struct Node {
    pub(super) kind: Kind,
    /// Whether `null` is accepted as well.
    pub(super) nullable: bool,
}

/// The kinds of value a schema asks for.
#[derive(Debug)]
pub(super) enum Kind {
    /// Anything: transcoded unchecked.
    Any,
    /// Only `null` (the unit type).
    Null,
    Bool,
    Integer {
        min: Option<i128>,
        max: Option<i128>,
    },
    Number,
    /// A string; one of `variants` when given (a unit-only enum, or a `const`).
    String {
        variants: Option<Box<[Box<str>]>>,
        one_char: bool,
    },
    /// A base64 string in JSON, a binary in MessagePack.
    Bytes,
    Array {
        items: NodeId,
    },
    Tuple {
        elems: Box<[NodeId]>,
    },
    /// A struct: known fields only.
    Object(Object),
    /// A map with any keys.
    Map {
        values: NodeId,
        key: KeyType,
    },
    /// An enum in serde's external tagging: its variants in the schema's order.
    OneOf(Box<[Variant]>),
}

/// The fields of a struct.
#[derive(Debug)]
pub(super) struct Object {
    /// In the schema's order (the order an error lists them in).
    pub(super) fields: Box<[Field]>,
    /// Indices into `fields`, sorted by name.
    by_name: Box<[usize]>,
    /// The required names in the schema's order.
    pub(super) required: Box<[Required]>,
}

/// One field of a struct.
#[derive(Debug)]
pub(super) struct Field {
    pub(super) name: Box<str>,
    pub(super) node: NodeId,
}

/// A required field name, and the index of its field (`None`: the schema requires a field it
/// does not describe, so it is always missing).
#[derive(Debug)]
pub(super) struct Required {
    pub(super) name: Box<str>,
    pub(super) field: Option<usize>,
}

/// One variant of an externally tagged enum, and its payload (`None`: a unit variant).
#[derive(Debug)]
pub(super) struct Variant {
    pub(super) name: Box<str>,
    pub(super) payload: Option<NodeId>,
}

/// The Rust key type of a map, as JSON object keys (strings) are turned into it.
#[derive(Debug)]
pub(super) enum KeyType {
    String,
    /// An unsigned integer type, named.
    Unsigned(Box<str>),
    /// A signed integer type, named.
    Signed(Box<str>),
    Bool,
}

impl Object {
    /// The index of the field called `name`.
    pub(super) fn field(&self, name: &str) -> Option<usize> {
        self.by_name
            .binary_search_by(|&index| (*self.fields[index].name).cmp(name))
            .ok()
            .map(|found| self.by_name[found])
    }
}

impl CompiledSchema {
    /// Compiles `schema` (a method's request schema with its descriptor's types).
    pub fn compile(schema: Schema<'_>) -> CompiledSchema {
        let mut compiler = Compiler {
            types: schema.types,
            nodes: Vec::new(),
            known: HashMap::new(),
            pending: Vec::new(),
        };
        let root = compiler.node_for(schema.root);
        compiler.run();
        CompiledSchema {
            nodes: compiler.nodes.into_boxed_slice(),
            root,
            unchecked: unchecked_fields(schema).into_boxed_slice(),
        }
    }

    /// Compiles the schema of one stream line, `{"item": <value>}`, for items of schema `item`
    /// (see [`super::item_line_schema`]): what [`CompiledSchema::json_item_to_msgpack`] checks
    /// lines against.
    pub fn stream_line(item: &Value, types: &Map<String, Value>) -> CompiledSchema {
        let line = super::item_line_schema(item);
        CompiledSchema::compile(Schema { root: &line, types })
    }

    /// The places of a request that the gateway cannot check (see [`unchecked_fields`]),
    /// found when the schema was compiled.
    pub fn unchecked(&self) -> &[Unchecked] {
        &self.unchecked
    }

    /// The node at the top of a request.
    pub(super) fn root(&self) -> NodeId {
        self.root
    }

    /// The node `id` stands for.
    pub(super) fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0 as usize]
    }
}

/// Builds the arena without recursion: a node is allocated (as `Any`) when first referred to
/// and filled in when taken off `pending`, so cycles and deep chains of types both end.
struct Compiler<'a> {
    types: &'a Map<String, Value>,
    nodes: Vec<Node>,
    /// The node of each resolved schema (by address) and nullability already allocated.
    known: HashMap<(*const Value, bool), NodeId>,
    /// Nodes allocated but not filled in yet, with the schema they stand for.
    pending: Vec<(NodeId, &'a Value)>,
}

/// A schema that accepts anything (used where a schema says nothing).
static ANY: Value = Value::Null;

impl<'a> Compiler<'a> {
    /// The node of `schema`, allocated if it is new.
    fn node_for(&mut self, schema: &'a Value) -> NodeId {
        let (resolved, nullable) = match resolve(schema, self.types) {
            Some(resolved) => resolved,
            // A dangling `$ref`: anything goes.
            None => (&ANY, true),
        };
        let key = (std::ptr::from_ref(resolved), nullable);
        if let Some(&id) = self.known.get(&key) {
            return id;
        }
        let id = NodeId(u32::try_from(self.nodes.len()).unwrap_or(u32::MAX));
        self.nodes.push(Node {
            kind: Kind::Any,
            nullable,
        });
        self.known.insert(key, id);
        self.pending.push((id, resolved));
        id
    }

    fn run(&mut self) {
        while let Some((id, schema)) = self.pending.pop() {
            let kind = self.compile_kind(read(schema));
            self.nodes[id.0 as usize].kind = kind;
        }
    }

    fn compile_kind(&mut self, raw: Raw<'a>) -> Kind {
        match raw {
            Raw::Any => Kind::Any,
            Raw::Null => Kind::Null,
            Raw::Bool => Kind::Bool,
            Raw::Integer { min, max } => Kind::Integer { min, max },
            Raw::Number => Kind::Number,
            Raw::String { variants, one_char } => Kind::String {
                variants: variants.map(|variants| {
                    variants
                        .iter()
                        .filter_map(Value::as_str)
                        .map(Box::from)
                        .collect()
                }),
                one_char,
            },
            Raw::Bytes => Kind::Bytes,
            Raw::Array { items } => Kind::Array {
                items: self.node_for(items),
            },
            Raw::Tuple { elems } => Kind::Tuple {
                elems: elems.iter().map(|elem| self.node_for(elem)).collect(),
            },
            Raw::Object {
                properties,
                required,
            } => {
                let fields: Box<[Field]> = properties
                    .iter()
                    .map(|(name, schema)| Field {
                        name: name.as_str().into(),
                        node: self.node_for(schema),
                    })
                    .collect();
                let mut by_name: Vec<usize> = (0..fields.len()).collect();
                by_name.sort_by(|&a, &b| fields[a].name.cmp(&fields[b].name));
                let mut object = Object {
                    fields,
                    by_name: by_name.into_boxed_slice(),
                    required: Box::new([]),
                };
                object.required = required
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|name| Required {
                        name: name.into(),
                        field: object.field(name),
                    })
                    .collect();
                Kind::Object(object)
            }
            Raw::Map { values, key } => Kind::Map {
                values: self.node_for(values),
                key: match key.unwrap_or("String") {
                    name if name.starts_with('u') => KeyType::Unsigned(name.into()),
                    name if name.starts_with('i') => KeyType::Signed(name.into()),
                    "bool" => KeyType::Bool,
                    _ => KeyType::String,
                },
            },
            Raw::OneOf(branches) => {
                let mut variants = Vec::new();
                for branch in branches {
                    let Some((branch, _)) = resolve(branch, self.types) else {
                        continue;
                    };
                    match read(branch) {
                        Raw::String {
                            variants: Some(names),
                            ..
                        } => variants.extend(names.iter().filter_map(Value::as_str).map(|name| {
                            Variant {
                                name: name.into(),
                                payload: None,
                            }
                        })),
                        Raw::Object { properties, .. } => {
                            for (name, payload) in properties {
                                variants.push(Variant {
                                    name: name.as_str().into(),
                                    payload: Some(self.node_for(payload)),
                                });
                            }
                        }
                        _ => {}
                    }
                }
                Kind::OneOf(variants.into_boxed_slice())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading a schema's JSON

/// What a schema asks of a value, as its JSON says it, after `$ref`s and `allOf` wrappers are
/// resolved: children are still schemas.
#[derive(Debug, Clone, Copy)]
enum Raw<'a> {
    Any,
    Null,
    Bool,
    Integer {
        min: Option<i128>,
        max: Option<i128>,
    },
    Number,
    String {
        variants: Option<&'a [Value]>,
        one_char: bool,
    },
    Bytes,
    Array {
        items: &'a Value,
    },
    Tuple {
        elems: &'a [Value],
    },
    Object {
        properties: &'a Map<String, Value>,
        required: &'a [Value],
    },
    Map {
        values: &'a Value,
        key: Option<&'a str>,
    },
    OneOf(&'a [Value]),
}

fn is_true(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool) == Some(true)
}

fn bound(schema: &Value, key: &str) -> Option<i128> {
    let value = schema.get(key)?;
    value
        .as_i64()
        .map(i128::from)
        .or_else(|| value.as_u64().map(i128::from))
}

/// `x` of `{"anyOf": [x, {"type": "null"}]}` (either order): how JSON Schema 2020-12 writes an
/// optional value.
fn or_null(schema: &Value) -> Option<&Value> {
    let [first, second] = schema.get("anyOf").and_then(Value::as_array)?.as_slice() else {
        return None;
    };
    let is_null = |branch: &Value| branch.get("type").and_then(Value::as_str) == Some("null");
    match (is_null(first), is_null(second)) {
        (false, true) => Some(first),
        (true, false) => Some(second),
        _ => None,
    }
}

/// The schema's `type`: a string, or (JSON Schema 2020-12) an array of them where `"null"`
/// means nullable. `None` when absent or when several non-null types are allowed.
fn type_of(schema: &Value) -> (Option<&str>, bool) {
    match schema.get("type") {
        Some(Value::String(name)) => (Some(name.as_str()), false),
        Some(Value::Array(names)) => {
            let names: Vec<&str> = names.iter().filter_map(Value::as_str).collect();
            let nullable = names.contains(&"null");
            let rest: Vec<&str> = names.into_iter().filter(|name| *name != "null").collect();
            match rest.as_slice() {
                [only] => (Some(*only), nullable),
                _ => (None, nullable),
            }
        }
        _ => (None, false),
    }
}

/// The schema `schema` stands for once `$ref`s, `{"allOf": [x], "nullable": true}` and
/// `{"anyOf": [x, {"type": "null"}]}` wrappers are looked through, and whether `null` is
/// accepted; `None` for a `$ref` to a type the descriptor does not have. Bounded against
/// cycles of wrappers (a type that is only a `$ref` to itself ends as anything).
fn resolve<'a>(mut schema: &'a Value, types: &'a Map<String, Value>) -> Option<(&'a Value, bool)> {
    let mut nullable = is_true(schema, "nullable");
    for _ in 0..32 {
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            schema = reference
                .strip_prefix("#/components/schemas/")
                .and_then(|name| types.get(name))?;
            nullable |= is_true(schema, "nullable");
            continue;
        }
        if let Some([inner]) = schema
            .get("allOf")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
        {
            schema = inner;
            nullable |= is_true(schema, "nullable");
            continue;
        }
        if let Some(inner) = or_null(schema) {
            schema = inner;
            nullable = true;
            continue;
        }
        break;
    }
    nullable |= type_of(schema).1;
    Some((schema, nullable))
}

/// What the resolved `schema` asks for.
fn read(schema: &Value) -> Raw<'_> {
    let (type_name, _) = type_of(schema);
    if let Some(elems) = schema.get("x-meshrpc-tuple").and_then(Value::as_array) {
        return Raw::Tuple { elems };
    }
    if let Some(branches) = schema.get("oneOf").and_then(Value::as_array) {
        return Raw::OneOf(branches);
    }
    if let Some(value @ Value::String(_)) = schema.get("const") {
        // One allowed string, as schemars writes a unit variant.
        return Raw::String {
            variants: Some(std::slice::from_ref(value)),
            one_char: false,
        };
    }
    match type_name {
        Some("boolean") => Raw::Bool,
        Some("integer") => Raw::Integer {
            min: bound(schema, "minimum"),
            max: bound(schema, "maximum"),
        },
        Some("number") => Raw::Number,
        Some("string") if schema.get("format").and_then(Value::as_str) == Some("byte") => {
            Raw::Bytes
        }
        Some("string") => Raw::String {
            variants: schema
                .get("enum")
                .and_then(Value::as_array)
                .map(Vec::as_slice),
            one_char: schema.get("maxLength").and_then(Value::as_u64) == Some(1),
        },
        // `items` as an array (or `prefixItems`): a tuple, as JSON Schema dialects write one.
        Some("array") => match schema
            .get("prefixItems")
            .or_else(|| schema.get("items"))
            .and_then(Value::as_array)
        {
            Some(elems) => Raw::Tuple { elems },
            None => Raw::Array {
                items: schema.get("items").unwrap_or(&ANY),
            },
        },
        Some("object") => match schema.get("properties").and_then(Value::as_object) {
            Some(properties)
                if !schema
                    .get("additionalProperties")
                    .is_some_and(|extra| extra.is_object() || extra.as_bool() == Some(true)) =>
            {
                Raw::Object {
                    properties,
                    required: schema
                        .get("required")
                        .and_then(Value::as_array)
                        .map_or(&[], Vec::as_slice),
                }
            }
            _ => Raw::Map {
                values: schema
                    .get("additionalProperties")
                    .filter(|extra| extra.is_object())
                    .unwrap_or(&ANY),
                key: schema.get("x-meshrpc-key").and_then(Value::as_str),
            },
        },
        None if schema.get("enum").and_then(Value::as_array) == Some(&vec![Value::Null]) => {
            Raw::Null
        }
        _ => Raw::Any,
    }
}
