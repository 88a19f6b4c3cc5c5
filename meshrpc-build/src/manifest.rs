//! Reading `services.toml`: TOML with spans (so every mistake has a `LINE:COL`), signatures and
//! type bodies parsed as Rust with `syn`, and every name and type checked before any code is
//! generated.

use std::collections::HashSet;
use std::ops::Range;
use std::str::FromStr;
use std::time::Duration;

use heck::{ToSnakeCase, ToUpperCamelCase};
use proc_macro2::{LineColumn, Span, TokenStream, TokenTree};
use syn::spanned::Spanned as _;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::error::{Error, Source};
use crate::types::{Derive, MapKind, Scope, SpanError, Ty, UseType, closest};

/// A parsed and checked manifest.
#[derive(Debug, Clone)]
pub(crate) struct Manifest {
    pub(crate) services: Vec<Service>,
}

#[derive(Debug, Clone)]
pub(crate) struct Service {
    pub(crate) name: String,
    pub(crate) doc: String,
    pub(crate) methods: Vec<Method>,
    pub(crate) types: Vec<Declared>,
    /// The `use` entries.
    pub(crate) uses: Vec<UseType>,
    /// The service's sections of the manifest, comments included.
    pub(crate) text: String,
    /// Located warnings (`path:LINE:COL: ...`): things that build but are likely
    /// mistakes, such as a declared type no method uses.
    pub(crate) warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Method {
    pub(crate) name: String,
    pub(crate) doc: String,
    pub(crate) idempotent: bool,
    pub(crate) timeout: Option<Duration>,
    /// `attempt_timeout = "50ms"`: how long one attempt of an idempotent unary call may take
    /// before it is abandoned and retried on another replica (adaptive when absent).
    pub(crate) attempt_timeout: Option<Duration>,
    /// `hedge_after = "20ms"`: when a second attempt of an idempotent unary call goes to
    /// another replica (the service's observed p95 when absent).
    pub(crate) hedge_after: Option<Duration>,
    /// The parameters that travel in the first request message (all but a client stream).
    pub(crate) params: Vec<Field>,
    /// The client stream: the last parameter, written `name: Stream<T>`, with `T` as its type.
    pub(crate) stream: Option<Field>,
    /// The result type; the type of one item when the result is a stream.
    pub(crate) result: Ty,
    /// Whether the result is written `Stream<T>` (a server stream of `result` items).
    pub(crate) result_streams: bool,
    /// Where the result type is written (a byte offset), for errors.
    pub(crate) result_at: usize,
    pub(crate) returns: String,
}

/// Whether a method's request, reply or both are streams (the runtime's `MethodKind`).
pub(crate) use meshrpc_descriptor::Kind;

impl Method {
    /// The method's kind, from where its signature writes `Stream<T>`.
    pub(crate) fn kind(&self) -> Kind {
        match (self.stream.is_some(), self.result_streams) {
            (false, false) => Kind::Unary,
            (false, true) => Kind::ServerStreaming,
            (true, false) => Kind::ClientStreaming,
            (true, true) => Kind::Bidirectional,
        }
    }

    /// Every typed place of the signature: the parameters, the client stream's item type and
    /// the result (or server stream item) type, each with where it is written.
    pub(crate) fn types(&self) -> impl Iterator<Item = (&Ty, usize)> {
        self.params
            .iter()
            .chain(&self.stream)
            .map(|field| (&field.ty, field.at))
            .chain([(&self.result, self.result_at)])
    }
}

/// A named, typed field: a parameter, or a field of a declared struct or variant.
#[derive(Debug, Clone)]
pub(crate) struct Field {
    pub(crate) name: String,
    pub(crate) doc: String,
    pub(crate) ty: Ty,
    /// Where the field's type is written in the manifest (a byte offset), for errors.
    pub(crate) at: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct Declared {
    pub(crate) name: String,
    pub(crate) doc: String,
    pub(crate) body: Body,
    /// The derives asked for with `derive = [...]`, beyond the ones every declared type has,
    /// each with where it is written (a byte offset).
    pub(crate) derives: Vec<(Derive, usize)>,
    /// Where the type's table header is (a byte offset), for errors and warnings.
    pub(crate) at: usize,
}

impl Declared {
    /// Whether the type derives `derive`.
    pub(crate) fn derives(&self, derive: Derive) -> bool {
        self.derives.iter().any(|(known, _)| *known == derive)
    }

    /// Every field of the type, of every variant, in order (tuple fields are named by index).
    pub(crate) fn fields(&self) -> Vec<&Field> {
        match &self.body {
            Body::Struct(fields) | Body::Tuple(fields) => fields.iter().collect(),
            Body::Newtype(field) => vec![field],
            Body::Enum(variants) => variants
                .iter()
                .flat_map(|variant| match &variant.fields {
                    VariantFields::Unit => Vec::new(),
                    VariantFields::Tuple(fields) | VariantFields::Named(fields) => {
                        fields.iter().collect()
                    }
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Body {
    /// `struct = "a: u8, b: String"`: a map with named fields.
    Struct(Vec<Field>),
    /// `newtype = "u64"`: one unnamed field, the same value as that field on the wire.
    Newtype(Field),
    /// `tuple = "u32, String"`: unnamed fields, an array on the wire.
    Tuple(Vec<Field>),
    Enum(Vec<Variant>),
}

#[derive(Debug, Clone)]
pub(crate) struct Variant {
    pub(crate) name: String,
    pub(crate) doc: String,
    pub(crate) fields: VariantFields,
}

#[derive(Debug, Clone)]
pub(crate) enum VariantFields {
    Unit,
    Tuple(Vec<Field>),
    Named(Vec<Field>),
}

const SERVICE_KEYS: &[&str] = &["doc", "use", "methods", "types"];
const USE_KEYS: &[&str] = &["path", "json_schema"];
const METHOD_KEYS: &[&str] = &[
    "fn",
    "returns",
    "idempotent",
    "doc",
    "timeout",
    "attempt_timeout",
    "hedge_after",
];
const TYPE_KEYS: &[&str] = &["doc", "struct", "newtype", "tuple", "enum", "derive"];

const KEYWORDS: &[&str] = &[
    "as", "break", "const", "continue", "crate", "else", "enum", "extern", "false", "fn", "for",
    "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return",
    "self", "Self", "static", "struct", "super", "trait", "true", "type", "unsafe", "use", "where",
    "while", "async", "await", "dyn", "abstract", "become", "box", "do", "final", "macro",
    "override", "priv", "typeof", "unsized", "virtual", "yield", "try", "gen",
];

/// Names that signatures use for built-in types; `use` and declared types may not shadow them.
const BUILTIN_NAMES: &[&str] = &[
    "String", "Vec", "Option", "HashMap", "BTreeMap", "Result", "Box", "Stream", "bool", "char",
    "f32", "f64", "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128",
    "isize",
];

/// Methods every generated client already has (inherent, or from `Clone` and `Debug`); a
/// service method of the same name could not be called with method syntax.
const CLIENT_METHODS: &[&str] = &[
    "new",
    "with_options",
    "options",
    "channel",
    "clone",
    "clone_from",
    "fmt",
];

fn is_keyword(name: &str) -> bool {
    KEYWORDS.contains(&name)
}

/// `candidate` if it is a valid identifier, else `fallback`: a suggestion derived from a bad
/// name (by case conversion) must itself be writable.
fn identifier_or(candidate: String, fallback: &str) -> String {
    if is_identifier(&candidate) {
        candidate
    } else {
        fallback.to_owned()
    }
}

fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_snake_case(name: &str) -> bool {
    is_identifier(name) && name == name.to_snake_case()
}

type Value<'i> = Spanned<DeValue<'i>>;
type Key<'i> = Spanned<std::borrow::Cow<'i, str>>;

/// Parses and checks a manifest.
pub(crate) fn parse(source: Source<'_>) -> Result<Manifest, Error> {
    let root = DeTable::parse(source.text).map_err(|error| toml_error(source, &error))?;
    let root = root.get_ref();
    if root.is_empty() {
        return Err(source.error(
            0,
            "the manifest defines no service",
            "add a service table, e.g. [greeter] with [greeter.methods] greet = { fn = \"greet(name: String) -> String\" }",
        ));
    }
    let mut services = Vec::new();
    for (key, value) in root.iter() {
        services.push(parse_service(source, key, value)?);
    }
    let mut declared_by: Vec<(&str, &str)> = Vec::new();
    for service in &services {
        for declared in &service.types {
            if let Some((_, other)) = declared_by.iter().find(|(name, _)| *name == declared.name) {
                let offset = find_type_header(source.text, &service.name, &declared.name);
                return Err(source.error(
                    offset,
                    format!("type `{}` is declared by both `{other}` and `{}`", declared.name, service.name),
                    "generated code of several services may share a module: rename one, or declare it \
                     once and list its path in the other service's `use`",
                ));
            }
            declared_by.push((&declared.name, &service.name));
        }
    }
    Ok(Manifest { services })
}

fn toml_error(source: Source<'_>, error: &toml::de::Error) -> Error {
    let span = error.span().unwrap_or(0..0);
    let message = error.message().trim_end();
    if message.starts_with("duplicate key") {
        let key = source.text.get(span.clone()).unwrap_or_default().trim();
        return source.error(
            span.start,
            format!("`{key}` is defined twice"),
            "each service, method, type and key is defined once: remove or rename the second definition",
        );
    }
    source.error(
        span.start,
        format!("invalid TOML: {message}"),
        "fix the syntax: `key = value` pairs under [table] headers, strings in double quotes",
    )
}

fn unknown_key(source: Source<'_>, key: &Key<'_>, place: &str, valid: &[&str]) -> Error {
    let name = key.get_ref();
    let fix = match closest(name, valid.iter().copied()) {
        Some(close) => format!(
            "did you mean `{close}`? valid keys are: {}",
            valid.join(", ")
        ),
        None => format!("valid keys are: {}", valid.join(", ")),
    };
    source.error(
        key.span().start,
        format!("unknown key `{name}` in {place}"),
        fix,
    )
}

fn expect_table<'a, 'i>(
    source: Source<'_>,
    value: &'a Value<'i>,
    what: &str,
    example: &str,
) -> Result<&'a DeTable<'i>, Error> {
    value.get_ref().as_table().ok_or_else(|| {
        source.error(
            value.span().start,
            format!("{what} must be a table, not {}", describe(value)),
            format!("write {example}"),
        )
    })
}

fn expect_string<'a>(
    source: Source<'_>,
    value: &'a Value<'_>,
    key: &str,
    example: &str,
) -> Result<&'a str, Error> {
    value.get_ref().as_str().ok_or_else(|| {
        source.error(
            value.span().start,
            format!("`{key}` must be a string, not {}", describe(value)),
            format!("write {key} = {example}"),
        )
    })
}

fn parse_service(source: Source<'_>, key: &Key<'_>, value: &Value<'_>) -> Result<Service, Error> {
    let name = key.get_ref().to_string();
    if !is_snake_case(&name) || is_keyword(&name) {
        let fix = if is_keyword(&name) {
            format!("`{name}` is a Rust keyword: pick another name, e.g. `{name}_service`")
        } else {
            let snake = name.to_snake_case();
            let snake = identifier_or(snake, "my_service");
            format!("write [{snake}]")
        };
        return Err(source.error(
            key.span().start,
            format!("service name `{name}` is not a snake_case identifier"),
            fix,
        ));
    }
    let table = expect_table(
        source,
        value,
        &format!("service `{name}`"),
        &format!("[{name}] with [{name}.methods]"),
    )?;
    let mut doc = String::new();
    let mut uses_value = None;
    let mut methods_value = None;
    let mut types_value = None;
    for (key, value) in table.iter() {
        match key.get_ref().as_ref() {
            "doc" => {
                doc = expect_string(source, value, "doc", "\"What the service does.\"")?.to_owned()
            }
            "use" => uses_value = Some(value),
            "methods" => methods_value = Some((key, value)),
            "types" => types_value = Some(value),
            _ => {
                return Err(unknown_key(
                    source,
                    key,
                    &format!("service `{name}`"),
                    SERVICE_KEYS,
                ));
            }
        }
    }
    let camel = name.to_upper_camel_case();
    let generated = [
        camel.clone(),
        format!("{camel}Server"),
        format!("{camel}Client"),
        format!("Dyn{camel}"),
    ];

    // Type names first: signatures and type bodies may refer to any of them.
    let mut declared_names = Vec::new();
    let mut declared_entries = Vec::new();
    if let Some(types) = types_value {
        let types = expect_table(
            source,
            types,
            "`types`",
            &format!("[{name}.types.MyType] with struct = \"field: String\""),
        )?;
        for (key, value) in types.iter() {
            let type_name = key.get_ref().to_string();
            if !is_identifier(&type_name)
                || type_name != type_name.to_upper_camel_case()
                || is_keyword(&type_name)
            {
                let camel = type_name.to_upper_camel_case();
                let camel = identifier_or(camel, "MyType");
                return Err(source.error(
                    key.span().start,
                    format!("type name `{type_name}` is not an UpperCamelCase identifier"),
                    format!("write [{name}.types.{camel}]"),
                ));
            }
            if BUILTIN_NAMES.contains(&type_name.as_str()) || generated.contains(&type_name) {
                return Err(source.error(
                    key.span().start,
                    format!("type name `{type_name}` is taken by a built-in or generated type"),
                    format!("pick another name, e.g. `{type_name}Data`"),
                ));
            }
            declared_names.push(type_name.clone());
            declared_entries.push((key, value));
        }
    }

    let mut uses = Vec::new();
    if let Some(value) = uses_value {
        let example = "[\"crate::model::Mood\"]";
        let Some(array) = value.get_ref().as_array() else {
            return Err(source.error(
                value.span().start,
                format!("`use` must be an array of paths, not {}", describe(value)),
                format!("write use = {example}"),
            ));
        };
        for entry in array.iter() {
            let used = parse_use_entry(source, entry)?;
            if BUILTIN_NAMES.contains(&used.name.as_str())
                || declared_names.contains(&used.name)
                || generated.contains(&used.name)
                || uses.iter().any(|other: &UseType| other.name == used.name)
            {
                return Err(source.error(
                    entry.span().start,
                    format!("`{}` is already the name of another type of service `{name}`", used.name),
                    "signatures refer to `use` types by their last path segment, which must be unique: \
                     rename the type or the declared type",
                ));
            }
            uses.push(used);
        }
    }

    let scope = Scope {
        service: &name,
        declared: &declared_names,
        uses: &uses,
    };
    let mut types = Vec::new();
    for (key, value) in declared_entries {
        types.push(parse_declared(source, scope, key, value)?);
    }
    check_derives(source, &types)?;
    check_recursion(source, &types)?;

    let Some((methods_key, methods_value)) = methods_value else {
        return Err(source.error(
            key.span().start,
            format!("service `{name}` has no methods"),
            format!("add a [{name}.methods] table, e.g. greet = {{ fn = \"greet(name: String) -> String\" }}"),
        ));
    };
    let methods_table = expect_table(
        source,
        methods_value,
        "`methods`",
        &format!("[{name}.methods]"),
    )?;
    if methods_table.is_empty() {
        return Err(source.error(
            methods_key.span().start,
            format!("service `{name}` has no methods"),
            "add one, e.g. greet = { fn = \"greet(name: String) -> String\" }",
        ));
    }
    let mut methods: Vec<Method> = Vec::new();
    let mut message_names = HashSet::new();
    for (key, value) in methods_table.iter() {
        let method = parse_method(source, scope, key, value)?;
        if !message_names.insert(method.name.to_upper_camel_case()) {
            return Err(source.error(
                key.span().start,
                format!(
                    "method `{}` gives the same type names as another method",
                    method.name
                ),
                "rename it: method names must differ in more than underscores",
            ));
        }
        methods.push(method);
    }

    check_map_keys(source, &name, &methods, &types)?;
    let warnings = unused(source, &name, &methods, &types, &uses);
    Ok(Service {
        text: service_text(source.text, &name),
        name,
        doc,
        methods,
        types,
        uses,
        warnings,
    })
}

/// A `use` entry: a path, or `{ path = "...", json_schema = true }`.
fn parse_use_entry(source: Source<'_>, entry: &Value<'_>) -> Result<UseType, Error> {
    let example =
        "[\"crate::model::Mood\"] or [{ path = \"crate::model::Mood\", json_schema = true }]";
    let Some(table) = entry.get_ref().as_table() else {
        let text = expect_string(source, entry, "use", example)?;
        return parse_use(source, entry, text);
    };
    let mut path = None;
    let mut json_schema = false;
    for (key, value) in table.iter() {
        match key.get_ref().as_ref() {
            "path" => {
                path = Some((
                    value,
                    expect_string(source, value, "path", "\"crate::model::Mood\"")?,
                ))
            }
            "json_schema" => {
                json_schema = value.get_ref().as_bool().ok_or_else(|| {
                    source.error(
                        value.span().start,
                        format!("`json_schema` must be a boolean, not {}", describe(value)),
                        "write json_schema = true (no quotes)",
                    )
                })?;
            }
            _ => return Err(unknown_key(source, key, "a `use` entry", USE_KEYS)),
        }
    }
    let Some((value, text)) = path else {
        return Err(source.error(
            entry.span().start,
            "a `use` entry written as a table needs a `path`",
            "write { path = \"crate::model::Mood\", json_schema = true }",
        ));
    };
    let mut used = parse_use(source, value, text)?;
    used.json_schema = json_schema;
    Ok(used)
}

fn parse_use(source: Source<'_>, entry: &Value<'_>, text: &str) -> Result<UseType, Error> {
    let map = StringMap::new(source, entry);
    let path: syn::Path = syn::parse_str(text).map_err(|error| {
        map.error(
            error.span(),
            text,
            0,
            format!("`{text}` is not a Rust path: {error}"),
            "write the type's full path, e.g. \"crate::model::Mood\"",
        )
    })?;
    if let Some(segment) = path
        .segments
        .iter()
        .find(|segment| !segment.arguments.is_none())
    {
        return Err(map.error(
            segment.arguments.span(),
            text,
            0,
            "a `use` path names a type without generic arguments",
            "write the plain path, e.g. \"crate::model::Mood\"",
        ));
    }
    if path.segments.len() < 2 {
        return Err(source.error(
            entry.span().start,
            format!("`{text}` is not a full path"),
            format!(
                "write the path from the crate root, e.g. \"crate::model::{text}\", so generated code \
                 needs no `use` statements"
            ),
        ));
    }
    let segments: Vec<String> = path
        .segments
        .iter()
        .map(|segment| segment.ident.to_string())
        .collect();
    let prefix = if path.leading_colon.is_some() {
        "::"
    } else {
        ""
    };
    Ok(UseType {
        name: segments.last().cloned().unwrap_or_default(),
        path: format!("{prefix}{}", segments.join("::")),
        at: entry.span().start,
        json_schema: false,
    })
}

fn parse_method(
    source: Source<'_>,
    scope: Scope<'_>,
    key: &Key<'_>,
    value: &Value<'_>,
) -> Result<Method, Error> {
    let name = key.get_ref().to_string();
    if is_keyword(&name) {
        return Err(source.error(
            key.span().start,
            format!("method `{name}` is named like a Rust keyword"),
            format!("rename it, e.g. `{name}_item`"),
        ));
    }
    if CLIENT_METHODS.contains(&name.as_str()) {
        return Err(source.error(
            key.span().start,
            format!("method `{name}` would be shadowed by the generated client's own `{name}`"),
            format!("rename it, e.g. `{name}_of` or `get_{name}`"),
        ));
    }
    if !is_snake_case(&name) {
        let snake = name.to_snake_case();
        let snake = identifier_or(snake, "my_method");
        return Err(source.error(
            key.span().start,
            format!("method name `{name}` is not a snake_case identifier"),
            format!("write {snake} = {{ fn = \"...\" }}"),
        ));
    }
    let example = format!("{name} = {{ fn = \"{name}(name: String) -> String\" }}");
    let mut signature = None;
    let mut returns = None;
    let mut idempotent = false;
    let mut idempotent_at = 0;
    let mut doc = String::new();
    let mut timeout = None;
    let mut attempt_timeout = None;
    let mut hedge_after = None;
    // Where the first of `attempt_timeout` / `hedge_after` is written, for errors.
    let mut tail_key_at = None;
    match value.get_ref() {
        // Shorthand: `greet = "greet(name: String) -> String"`.
        DeValue::String(_) => signature = Some(value),
        DeValue::Table(table) => {
            for (key, value) in table.iter() {
                match key.get_ref().as_ref() {
                    "fn" => signature = Some(value),
                    "returns" => {
                        returns = Some((
                            value,
                            expect_string(source, value, "returns", "\"message\"")?,
                        ))
                    }
                    "idempotent" => {
                        idempotent_at = value.span().start;
                        idempotent = value.get_ref().as_bool().ok_or_else(|| {
                            source.error(
                                value.span().start,
                                format!("`idempotent` must be a boolean, not {}", describe(value)),
                                "write idempotent = true or idempotent = false (no quotes)",
                            )
                        })?;
                    }
                    "doc" => {
                        doc = expect_string(source, value, "doc", "\"What the method does.\"")?
                            .to_owned()
                    }
                    "timeout" => timeout = Some(parse_timeout(source, value, "timeout")?),
                    "attempt_timeout" => {
                        tail_key_at.get_or_insert((key.span().start, "attempt_timeout"));
                        attempt_timeout = Some(parse_timeout(source, value, "attempt_timeout")?)
                    }
                    "hedge_after" => {
                        tail_key_at.get_or_insert((key.span().start, "hedge_after"));
                        hedge_after = Some(parse_timeout(source, value, "hedge_after")?)
                    }
                    _ => {
                        return Err(unknown_key(
                            source,
                            key,
                            &format!("method `{name}`"),
                            METHOD_KEYS,
                        ));
                    }
                }
            }
        }
        _ => {
            return Err(source.error(
                value.span().start,
                format!("method `{name}` must be a table, not {}", describe(value)),
                format!("write {example}"),
            ));
        }
    }
    let Some(signature) = signature else {
        return Err(source.error(
            value.span().start,
            format!("method `{name}` has no signature"),
            format!("add `fn`: {example}"),
        ));
    };
    let text = expect_string(
        source,
        signature,
        "fn",
        &format!("\"{name}(name: String) -> String\""),
    )?;
    let Signature {
        params,
        stream,
        result,
        result_streams,
        result_at,
    } = parse_signature(source, scope, &name, signature, text)?;
    if let Some(stream) = stream.as_ref().filter(|_| idempotent) {
        return Err(source.error(
            idempotent_at,
            format!(
                "method `{name}` takes a client stream (`{}`), which cannot be replayed, so it \
                 cannot be idempotent",
                stream.name
            ),
            format!(
                "remove `idempotent = true`, or take the items in one message as a `Vec<{}>`",
                stream.ty.canonical_written()
            ),
        ));
    }
    if let Some((at, key)) = tail_key_at {
        if !idempotent || stream.is_some() || result_streams {
            return Err(source.error(
                at,
                format!(
                    "`{key}` on method `{name}`: only idempotent unary methods are retried \
                     after a slow attempt or hedged"
                ),
                format!(
                    "remove `{key}`, or mark the method idempotent = true if running it twice \
                     is safe (a streaming method is never hedged)"
                ),
            ));
        }
    }
    let returns = match returns {
        None => "result".to_owned(),
        Some((value, _)) if result_streams => {
            return Err(source.error(
                value.span().start,
                format!(
                    "method `{name}` answers with a stream, whose items are sent as they are, \
                     with no field to name"
                ),
                "remove `returns`: it names the response field of methods that answer one message",
            ));
        }
        Some((value, _)) if result == Ty::Unit => {
            return Err(source.error(
                value.span().start,
                format!("method `{name}` returns nothing, so its response has no field to name"),
                "remove `returns`, or give the signature a return type",
            ));
        }
        Some((value, returns)) => {
            if !is_snake_case(returns) || is_keyword(returns) {
                return Err(source.error(
                    value.span().start,
                    format!("`returns = \"{returns}\"` is not a snake_case field name"),
                    "write a field name such as returns = \"message\"",
                ));
            }
            returns.to_owned()
        }
    };
    Ok(Method {
        name,
        doc,
        idempotent,
        timeout,
        attempt_timeout,
        hedge_after,
        params,
        stream,
        result,
        result_streams,
        result_at,
        returns,
    })
}

fn describe(value: &Value<'_>) -> String {
    match value.get_ref() {
        DeValue::String(text) => format!("the string \"{text}\""),
        other => with_article(other.type_str()),
    }
}

fn with_article(noun: &str) -> String {
    if noun.starts_with(['a', 'e', 'i', 'o', 'u']) {
        format!("an {noun}")
    } else {
        format!("a {noun}")
    }
}

/// Parses a duration key (`timeout`, `attempt_timeout`, `hedge_after`): a whole number and a
/// unit, `ms`, `s` or `m`, never zero.
fn parse_timeout(source: Source<'_>, value: &Value<'_>, key: &str) -> Result<Duration, Error> {
    let fix = format!(
        "write a whole number followed by ms, s or m, e.g. {key} = \"250ms\", \"2s\" or \"1m\""
    );
    let Some(text) = value.get_ref().as_str() else {
        return Err(source.error(
            value.span().start,
            format!(
                "`{key}` must be a string with a unit, not {}",
                describe(value)
            ),
            &fix,
        ));
    };
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    let duration = digits.parse::<u64>().ok().and_then(|number| match unit {
        "ms" => Some(Duration::from_millis(number)),
        "s" => Some(Duration::from_secs(number)),
        "m" => number.checked_mul(60).map(Duration::from_secs),
        _ => None,
    });
    match duration {
        Some(duration) if !duration.is_zero() => Ok(duration),
        Some(_) if key == "timeout" => Err(source.error(
            value.span().start,
            "a timeout of zero would fail every call",
            &fix,
        )),
        Some(_) => Err(source.error(
            value.span().start,
            format!("an `{key}` of zero would send every call twice"),
            &fix,
        )),
        None => Err(source.error(
            value.span().start,
            format!("`{text}` is not a duration"),
            &fix,
        )),
    }
}

/// Maps offsets in a TOML string's content back to the manifest, when the string has no escapes
/// (otherwise every position maps to the start of the value).
#[derive(Debug, Clone, Copy)]
struct StringMap<'a> {
    source: Source<'a>,
    value_start: usize,
    content_start: Option<usize>,
}

impl<'a> StringMap<'a> {
    fn new(source: Source<'a>, value: &Value<'_>) -> StringMap<'a> {
        let span: Range<usize> = value.span();
        let raw = source.text.get(span.clone()).unwrap_or_default();
        let content_start = if raw.starts_with("'''") || raw.starts_with("\"\"\"") {
            let after = &raw[3..];
            let skipped = if after.starts_with("\r\n") {
                2
            } else {
                usize::from(after.starts_with('\n'))
            };
            let exact = raw.starts_with("'''") || !raw.contains('\\');
            exact.then_some(span.start + 3 + skipped)
        } else if raw.starts_with('\'') || (raw.starts_with('"') && !raw.contains('\\')) {
            Some(span.start + 1)
        } else {
            None
        };
        StringMap {
            source,
            value_start: span.start,
            content_start,
        }
    }

    /// An error at a span of `parsed`, a string whose content starts `prefix` bytes after a
    /// prefix the generator added.
    fn error(
        &self,
        span: Span,
        parsed: &str,
        prefix: usize,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Error {
        let offset = self.offset(span, parsed, prefix);
        self.source.error(offset, problem.into(), fix.into())
    }

    /// The manifest offset of a span of `parsed` (see [`StringMap::error`]).
    fn offset(&self, span: Span, parsed: &str, prefix: usize) -> usize {
        let offset = byte_offset(parsed, span.start());
        match self.content_start {
            Some(start) => start + offset.saturating_sub(prefix),
            None => self.value_start,
        }
    }

    fn span_error(&self, error: SpanError, parsed: &str, prefix: usize) -> Error {
        self.error(error.span, parsed, prefix, error.problem, error.fix)
    }
}

/// The byte offset of a `proc_macro2` line/column (1-based line, 0-based character column).
fn byte_offset(text: &str, position: LineColumn) -> usize {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(position.line.saturating_sub(1))
        .map(str::len)
        .sum();
    let line = &text[line_start.min(text.len())..];
    line_start
        + line
            .char_indices()
            .nth(position.column)
            .map_or(line.len(), |(index, _)| index)
}

/// Finds names written where an identifier is expected (`name: Type`) that are Rust keywords,
/// before `syn` reports them as a puzzling syntax error.
fn find_keyword_name(tokens: TokenStream) -> Option<(Span, String)> {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    for (index, token) in tokens.iter().enumerate() {
        match token {
            TokenTree::Ident(ident) => {
                let name = ident.to_string();
                let colon_follows = matches!(
                    tokens.get(index + 1),
                    Some(TokenTree::Punct(punct)) if punct.as_char() == ':' && punct.spacing() == proc_macro2::Spacing::Alone
                );
                let colon_precedes = matches!(
                    index.checked_sub(1).and_then(|previous| tokens.get(previous)),
                    Some(TokenTree::Punct(punct)) if punct.as_char() == ':'
                );
                if colon_follows && !colon_precedes && is_keyword(&name) && name != "self" {
                    return Some((ident.span(), name));
                }
            }
            TokenTree::Group(group) => {
                if let Some(found) = find_keyword_name(group.stream()) {
                    return Some(found);
                }
            }
            TokenTree::Punct(_) | TokenTree::Literal(_) => {}
        }
    }
    None
}

/// A checked signature.
struct Signature {
    params: Vec<Field>,
    stream: Option<Field>,
    result: Ty,
    result_streams: bool,
    result_at: usize,
}

fn parse_signature(
    source: Source<'_>,
    scope: Scope<'_>,
    name: &str,
    value: &Value<'_>,
    text: &str,
) -> Result<Signature, Error> {
    let map = StringMap::new(source, value);
    let trimmed = text.trim_start();
    let qualifiers = ["fn", "async", "const", "unsafe", "extern", "pub"];
    let first_word: String = trimmed
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    let prefix = if trimmed.starts_with('(') {
        format!("fn {name}")
    } else if qualifiers.contains(&first_word.as_str()) {
        String::new()
    } else {
        "fn ".to_owned()
    };
    let full = format!("{prefix}{text}");
    let example = format!("write it like fn = \"{name}(name: String) -> String\"");
    let tokens = TokenStream::from_str(&full).map_err(|error| {
        map.error(
            error.span(),
            &full,
            prefix.len(),
            format!("the signature of `{name}` is not valid Rust: {error}"),
            &example,
        )
    })?;
    if let Some((span, keyword)) = find_keyword_name(tokens) {
        return Err(map.error(
            span,
            &full,
            prefix.len(),
            format!("parameter `{keyword}` is named like a Rust keyword"),
            format!("rename it, e.g. `{keyword}_value`"),
        ));
    }
    let signature: syn::Signature = syn::parse_str(&full).map_err(|error| {
        map.error(
            error.span(),
            &full,
            prefix.len(),
            format!("the signature of `{name}` is not valid Rust: {error}"),
            &example,
        )
    })?;
    let at =
        |span: Span, problem: &str, fix: &str| map.error(span, &full, prefix.len(), problem, fix);
    if let Some(token) = &signature.asyncness {
        return Err(at(
            token.span,
            "`async` is implied: every method is async",
            "remove `async`",
        ));
    }
    if let Some(token) = &signature.constness {
        return Err(at(
            token.span,
            "a method cannot be `const`",
            "remove `const`",
        ));
    }
    if let Some(token) = &signature.unsafety {
        return Err(at(
            token.span,
            "a method cannot be `unsafe`",
            "remove `unsafe`",
        ));
    }
    if let Some(abi) = &signature.abi {
        return Err(at(
            abi.span(),
            "a method cannot have an ABI",
            "remove `extern`",
        ));
    }
    if !signature.generics.params.is_empty() || signature.generics.where_clause.is_some() {
        return Err(at(
            signature.generics.span(),
            "generic methods are not supported: the wire needs concrete types",
            "write concrete types instead of type parameters",
        ));
    }
    if let Some(variadic) = &signature.variadic {
        return Err(at(
            variadic.dots.spans[0],
            "variadic parameters are not supported",
            "list each parameter, or take a Vec<T>",
        ));
    }
    if signature.ident != name {
        return Err(at(
            signature.ident.span(),
            &format!(
                "the signature is named `{}` but the method's key is `{name}`",
                signature.ident
            ),
            &format!(
                "write fn = \"{name}(...)\" (or leave the name out: fn = \"(...) -> T\"), or rename the key"
            ),
        ));
    }
    let mut params: Vec<Field> = Vec::new();
    let mut stream: Option<(Field, Span)> = None;
    for input in &signature.inputs {
        let typed = match input {
            syn::FnArg::Receiver(receiver) => {
                return Err(at(
                    receiver.span(),
                    "`self` is implied: methods always take `&self`",
                    "list only the parameters, e.g. greet(name: String)",
                ));
            }
            syn::FnArg::Typed(typed) => typed,
        };
        let ident = match &*typed.pat {
            syn::Pat::Ident(pat)
                if pat.by_ref.is_none() && pat.mutability.is_none() && pat.subpat.is_none() =>
            {
                &pat.ident
            }
            pattern => {
                return Err(at(
                    pattern.span(),
                    "parameters must be plain identifiers, not patterns",
                    "write `name: Type`",
                ));
            }
        };
        let param = ident.to_string();
        if param.starts_with("r#") || is_keyword(&param) {
            return Err(at(
                ident.span(),
                &format!("parameter `{param}` is named like a Rust keyword"),
                "rename it",
            ));
        }
        if !is_snake_case(&param) {
            return Err(at(
                ident.span(),
                &format!("parameter `{param}` is not snake_case"),
                &format!("write `{}`", param.to_snake_case()),
            ));
        }
        if params
            .iter()
            .chain(stream.as_ref().map(|(field, _)| field))
            .any(|other| other.name == param)
        {
            return Err(at(
                ident.span(),
                &format!("parameter `{param}` appears twice"),
                "give each parameter its own name",
            ));
        }
        let at_type = map.offset(typed.ty.span(), &full, prefix.len());
        let resolve_error = |error| map.span_error(error, &full, prefix.len());
        if let Some(item) = scope.resolve_stream(&typed.ty).map_err(resolve_error)? {
            if let Some((first, _)) = &stream {
                return Err(at(
                    typed.ty.span(),
                    &format!(
                        "method `{name}` takes two streams, `{}` and `{param}`: a call carries at \
                         most one client stream",
                        first.name
                    ),
                    "keep one `Stream<T>` parameter, the last; send the other values in the first \
                     message (as a `Vec<T>`) or merge both streams into one of an enum",
                ));
            }
            let field = Field {
                name: param,
                doc: String::new(),
                ty: item,
                at: at_type,
            };
            stream = Some((field, typed.ty.span()));
            continue;
        }
        let ty = scope.resolve(&typed.ty).map_err(resolve_error)?;
        if let Some((field, span)) = &stream {
            return Err(at(
                *span,
                &format!(
                    "the stream parameter `{}` must be the last parameter",
                    field.name
                ),
                &format!(
                    "move `{}: Stream<{}>` after `{param}`: the other parameters travel in the \
                     first message, before the stream's items",
                    field.name,
                    field.ty.canonical_written()
                ),
            ));
        }
        params.push(Field {
            name: param,
            doc: String::new(),
            ty,
            at: at_type,
        });
    }
    let resolve_error = |error| map.span_error(error, &full, prefix.len());
    let (result, result_streams, result_at) = match &signature.output {
        syn::ReturnType::Default => (
            Ty::Unit,
            false,
            map.offset(signature.span(), &full, prefix.len()),
        ),
        syn::ReturnType::Type(_, ty) => {
            let at_type = map.offset(ty.span(), &full, prefix.len());
            match scope.resolve_stream(ty).map_err(resolve_error)? {
                Some(item) => (item, true, at_type),
                None => (scope.resolve(ty).map_err(resolve_error)?, false, at_type),
            }
        }
    };
    Ok(Signature {
        params,
        stream: stream.map(|(field, _)| field),
        result,
        result_streams,
        result_at,
    })
}

fn parse_declared(
    source: Source<'_>,
    scope: Scope<'_>,
    key: &Key<'_>,
    value: &Value<'_>,
) -> Result<Declared, Error> {
    let name = key.get_ref().to_string();
    let service = scope.service;
    let example = format!(
        "[{service}.types.{name}] with struct = \"field: String\", newtype = \"u64\", tuple = \"u32, String\" or enum = \"A, B\""
    );
    let table = expect_table(source, value, &format!("type `{name}`"), &example)?;
    let mut doc = String::new();
    let mut body = None;
    let mut derives = Vec::new();
    for (entry_key, entry) in table.iter() {
        match entry_key.get_ref().as_ref() {
            "doc" => doc = expect_string(source, entry, "doc", "\"What the type is.\"")?.to_owned(),
            "derive" => derives = parse_derives(source, entry)?,
            kind @ ("struct" | "newtype" | "tuple" | "enum") => {
                if let Some((other, _, _)) = body {
                    return Err(source.error(
                        entry_key.span().start,
                        format!("type `{name}` has both `{other}` and `{kind}`"),
                        "keep one of them",
                    ));
                }
                let example = match kind {
                    "struct" => "\"field: String, other: u32\"",
                    "newtype" => "\"u64\"",
                    "tuple" => "\"u32, String\"",
                    _ => "\"Happy, Sad\"",
                };
                body = Some((kind, entry, expect_string(source, entry, kind, example)?));
            }
            _ => {
                return Err(unknown_key(
                    source,
                    entry_key,
                    &format!("type `{name}`"),
                    TYPE_KEYS,
                ));
            }
        }
    }
    let Some((kind, entry, text)) = body else {
        return Err(source.error(
            key.span().start,
            format!("type `{name}` has none of `struct`, `newtype`, `tuple` and `enum`"),
            format!(
                "add struct = \"field: String\", newtype = \"u64\", tuple = \"u32, String\" or \
                 enum = \"A, B\" under [{service}.types.{name}]"
            ),
        ));
    };
    let map = StringMap::new(source, entry);
    let (prefix, full) = match kind {
        "newtype" | "tuple" => {
            let prefix = format!("struct {name}(");
            let full = format!("{prefix}{text}\n);");
            (prefix, full)
        }
        _ => {
            let prefix = format!("{kind} {name} {{");
            let full = format!("{prefix}{text}\n}}");
            (prefix, full)
        }
    };
    let fix = match kind {
        "struct" => "write the fields like struct = \"name: String, age: u32\"",
        "newtype" => "write the one wrapped type like newtype = \"u64\"",
        "tuple" => "write the field types like tuple = \"u32, String\"",
        _ => "write the variants like enum = \"Happy, Sad, Custom(String)\"",
    };
    let invalid = |error: syn::Error| {
        map.error(
            error.span(),
            &full,
            prefix.len(),
            format!("the {kind} body of `{name}` is not valid Rust: {error}"),
            fix,
        )
    };
    let tokens = TokenStream::from_str(&full).map_err(|error| {
        map.error(
            error.span(),
            &full,
            prefix.len(),
            format!("the {kind} body of `{name}` is not valid Rust: {error}"),
            "check the brackets and quotes",
        )
    })?;
    if let Some((span, keyword)) = find_keyword_name(tokens) {
        return Err(map.error(
            span,
            &full,
            prefix.len(),
            format!("field `{keyword}` is named like a Rust keyword"),
            format!("rename it, e.g. `{keyword}_value`"),
        ));
    }
    let fields_of = |fields: &syn::FieldsNamed| -> Result<Vec<Field>, Error> {
        let mut result: Vec<Field> = Vec::new();
        for field in &fields.named {
            let doc =
                doc_of(&field.attrs).map_err(|error| map.span_error(error, &full, prefix.len()))?;
            let Some(ident) = &field.ident else { continue };
            let field_name = ident.to_string();
            if !is_snake_case(&field_name) || field_name.starts_with("r#") {
                return Err(map.error(
                    ident.span(),
                    &full,
                    prefix.len(),
                    format!("field `{field_name}` is not a snake_case identifier"),
                    format!(
                        "write `{}`",
                        field_name.trim_start_matches("r#").to_snake_case()
                    ),
                ));
            }
            if result.iter().any(|other| other.name == field_name) {
                return Err(map.error(
                    ident.span(),
                    &full,
                    prefix.len(),
                    format!("field `{field_name}` appears twice"),
                    "give each field its own name",
                ));
            }
            let ty = scope
                .resolve(&field.ty)
                .map_err(|error| map.span_error(error, &full, prefix.len()))?;
            result.push(Field {
                name: field_name,
                doc,
                ty,
                at: map.offset(field.ty.span(), &full, prefix.len()),
            });
        }
        Ok(result)
    };
    let unnamed_of = |fields: &syn::FieldsUnnamed| -> Result<Vec<Field>, Error> {
        let mut result = Vec::new();
        for (index, field) in fields.unnamed.iter().enumerate() {
            let doc =
                doc_of(&field.attrs).map_err(|error| map.span_error(error, &full, prefix.len()))?;
            let ty = scope
                .resolve(&field.ty)
                .map_err(|error| map.span_error(error, &full, prefix.len()))?;
            result.push(Field {
                name: index.to_string(),
                doc,
                ty,
                at: map.offset(field.ty.span(), &full, prefix.len()),
            });
        }
        Ok(result)
    };
    let body = match kind {
        "struct" => {
            let item: syn::ItemStruct = syn::parse_str(&full).map_err(|error| {
                // `struct = "u64"` or `struct = "u32, String"`: the body of a newtype or a
                // tuple struct, which have keys of their own.
                let unnamed = format!("struct {name}({text}\n);");
                match syn::parse_str::<syn::ItemStruct>(&unnamed) {
                    Ok(item) if !item.fields.is_empty() => source.error(
                        entry.span().start,
                        format!("the struct body of `{name}` has no field names"),
                        if item.fields.len() == 1 {
                            format!(
                                "`struct` holds named fields: for a newtype (the wrapped value \
                                 itself on the wire, `2` rather than {{\"value\": 2}} in JSON) \
                                 write newtype = \"{}\"",
                                text.trim()
                            )
                        } else {
                            format!(
                                "`struct` holds named fields: for a tuple struct (an array on the \
                                 wire) write tuple = \"{}\", or name the fields",
                                text.trim()
                            )
                        },
                    ),
                    _ => invalid(error),
                }
            })?;
            let syn::Fields::Named(fields) = &item.fields else {
                return Err(source.error(
                    entry.span().start,
                    "a declared struct has named fields",
                    "write struct = \"name: String, age: u32\"",
                ));
            };
            Body::Struct(fields_of(fields)?)
        }
        "newtype" | "tuple" => {
            let item: syn::ItemStruct = syn::parse_str(&full).map_err(invalid)?;
            let syn::Fields::Unnamed(fields) = &item.fields else {
                return Err(source.error(entry.span().start, format!("a {kind} lists types"), fix));
            };
            let mut fields = unnamed_of(fields)?;
            match (kind, fields.len()) {
                (_, 0) => {
                    return Err(source.error(
                        entry.span().start,
                        format!("{kind} `{name}` has no fields"),
                        fix,
                    ));
                }
                ("newtype", 1) => Body::Newtype(fields.remove(0)),
                ("newtype", _) => {
                    return Err(source.error(
                        entry.span().start,
                        format!("a newtype wraps one type, `{name}` lists {}", fields.len()),
                        format!(
                            "write tuple = \"{}\" for a tuple struct (an array on the wire)",
                            text.trim()
                        ),
                    ));
                }
                _ => Body::Tuple(fields),
            }
        }
        _ => {
            let item: syn::ItemEnum = syn::parse_str(&full).map_err(invalid)?;
            if item.variants.is_empty() {
                return Err(source.error(
                    entry.span().start,
                    format!("enum `{name}` has no variants"),
                    "write enum = \"Happy, Sad\"",
                ));
            }
            let mut variants: Vec<Variant> = Vec::new();
            for variant in &item.variants {
                let doc = doc_of(&variant.attrs)
                    .map_err(|error| map.span_error(error, &full, prefix.len()))?;
                let variant_name = variant.ident.to_string();
                if variant_name != variant_name.to_upper_camel_case()
                    || variant_name.starts_with("r#")
                {
                    return Err(map.error(
                        variant.ident.span(),
                        &full,
                        prefix.len(),
                        format!("variant `{variant_name}` is not UpperCamelCase"),
                        format!("write `{}`", variant_name.to_upper_camel_case()),
                    ));
                }
                if variants.iter().any(|other| other.name == variant_name) {
                    return Err(map.error(
                        variant.ident.span(),
                        &full,
                        prefix.len(),
                        format!("variant `{variant_name}` appears twice"),
                        "give each variant its own name",
                    ));
                }
                if let Some((eq, _)) = &variant.discriminant {
                    return Err(map.error(
                        eq.span,
                        &full,
                        prefix.len(),
                        "explicit discriminants are not sent over the wire",
                        "remove `= ...`: variants travel by name",
                    ));
                }
                let fields = match &variant.fields {
                    syn::Fields::Unit => VariantFields::Unit,
                    syn::Fields::Named(fields) => VariantFields::Named(fields_of(fields)?),
                    syn::Fields::Unnamed(fields) => VariantFields::Tuple(unnamed_of(fields)?),
                };
                variants.push(Variant {
                    name: variant_name,
                    doc,
                    fields,
                });
            }
            Body::Enum(variants)
        }
    };
    Ok(Declared {
        name,
        doc,
        body,
        derives,
        at: key.span().start,
    })
}

/// The `derive = [...]` list of a declared type: which of the derives beyond the standard ones.
fn parse_derives(source: Source<'_>, value: &Value<'_>) -> Result<Vec<(Derive, usize)>, Error> {
    let names: Vec<&str> = Derive::ALL.iter().map(|derive| derive.name()).collect();
    let example = "derive = [\"Copy\", \"Eq\", \"Hash\"]";
    let Some(array) = value.get_ref().as_array() else {
        return Err(source.error(
            value.span().start,
            format!(
                "`derive` must be an array of trait names, not {}",
                describe(value)
            ),
            format!("write {example}"),
        ));
    };
    let mut derives: Vec<(Derive, usize)> = Vec::new();
    for entry in array.iter() {
        let text = expect_string(source, entry, "derive", "[\"Eq\", \"Hash\"]")?;
        let written = text.trim().rsplit("::").next().unwrap_or_default();
        let Some(derive) = Derive::ALL
            .iter()
            .copied()
            .find(|derive| derive.name() == written)
        else {
            let fix = if [
                "Debug",
                "Clone",
                "PartialEq",
                "Serialize",
                "Deserialize",
                "Default",
            ]
            .contains(&written)
            {
                format!(
                    "every declared type derives Debug, Clone, PartialEq, Serialize and \
                     Deserialize (and structs Default when every field has one): remove \"{written}\""
                )
            } else {
                let close = closest(written, names.iter().copied())
                    .map(|close| format!("did you mean \"{close}\"? "))
                    .unwrap_or_default();
                format!(
                    "{close}a declared type may derive {}; for anything else declare the type in \
                     Rust and list it in `use`",
                    names.join(", ")
                )
            };
            return Err(source.error(
                entry.span().start,
                format!("`{text}` cannot be derived by a declared type"),
                fix,
            ));
        };
        if derives.iter().any(|(other, _)| *other == derive) {
            return Err(source.error(
                entry.span().start,
                format!("`{written}` is listed twice"),
                "list each derive once",
            ));
        }
        derives.push((derive, entry.span().start));
    }
    Ok(derives)
}

/// Checks that every derive a declared type asks for compiles: each field's type must
/// implement it, and `Ord` needs `Eq` and `PartialOrd` beside it.
fn check_derives(source: Source<'_>, types: &[Declared]) -> Result<(), Error> {
    let derives = |name: &str, derive: Derive| {
        types
            .iter()
            .any(|declared| declared.name == name && declared.derives(derive))
    };
    for declared in types {
        let name = &declared.name;
        for &(derive, at) in &declared.derives {
            if derive == Derive::Ord
                && !(declared.derives(Derive::Eq) && declared.derives(Derive::PartialOrd))
            {
                return Err(source.error(
                    at,
                    format!("`{name}` cannot derive `Ord` without `Eq` and `PartialOrd`"),
                    "write derive = [\"Eq\", \"PartialOrd\", \"Ord\"]",
                ));
            }
            for field in declared.fields() {
                if let Some(reason) = field.ty.refuses(derive, &derives) {
                    let field_name = if field.name.parse::<usize>().is_ok() {
                        format!("field {}", field.name)
                    } else {
                        format!("field `{}`", field.name)
                    };
                    return Err(source.error(
                        at,
                        format!(
                            "`{name}` cannot derive `{}`: its {field_name} is `{}`, and {reason}",
                            derive.name(),
                            field.ty.canonical(),
                        ),
                        format!(
                            "remove \"{}\" from the `derive` of `{name}`, or change the field's type",
                            derive.name()
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Checks the declared types used as map keys: each must be a newtype of a string or primitive
/// (a JSON object key is a string, and the gateway turns it back into that primitive) that
/// derives what the map needs (`Eq` and `Hash` for a `HashMap`, `Ord` for a `BTreeMap`).
fn check_map_keys(
    source: Source<'_>,
    service: &str,
    methods: &[Method],
    types: &[Declared],
) -> Result<(), Error> {
    let mut places: Vec<(&Ty, usize)> = Vec::new();
    for method in methods {
        places.extend(method.types());
    }
    for declared in types {
        places.extend(
            declared
                .fields()
                .into_iter()
                .map(|field| (&field.ty, field.at)),
        );
    }
    for (ty, at) in places {
        let mut keys = Vec::new();
        ty.declared_keys(&mut keys);
        for (kind, name) in keys {
            let Some(declared) = types.iter().find(|declared| declared.name == name) else {
                continue;
            };
            let map = match kind {
                MapKind::Hash => "HashMap",
                MapKind::BTree => "BTreeMap",
            };
            let primitive = matches!(
                &declared.body,
                Body::Newtype(field) if matches!(field.ty, Ty::String | Ty::Int(_) | Ty::Char | Ty::Bool)
            );
            if !primitive {
                return Err(source.error(
                    at,
                    format!("`{name}` cannot key a {map}: map keys are JSON object keys, strings"),
                    format!(
                        "key by a declared newtype of a string or primitive, e.g. \
                         [{service}.types.{name}] newtype = \"u64\" with derive = [\"Eq\", \"Hash\"]"
                    ),
                ));
            }
            let needed: &[Derive] = match kind {
                MapKind::Hash => &[Derive::Eq, Derive::Hash],
                MapKind::BTree => &[Derive::Eq, Derive::PartialOrd, Derive::Ord],
            };
            if needed.iter().any(|derive| !declared.derives(*derive)) {
                let list: Vec<String> = needed
                    .iter()
                    .map(|derive| format!("\"{}\"", derive.name()))
                    .collect();
                return Err(source.error(
                    at,
                    format!("`{name}` keys a {map} but does not derive what a {map} key needs"),
                    format!(
                        "add derive = [{}] to the table of `{name}`",
                        list.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Refuses declared types that hold themselves (directly or through other declared types)
/// without a `Box`, `Vec` or map on the way: rustc would reject them as infinitely large, in
/// generated code the user cannot edit.
fn check_recursion(source: Source<'_>, types: &[Declared]) -> Result<(), Error> {
    // Depth-first from each type, along fields that hold a declared type in place.
    for start in types {
        let mut stack: Vec<(&Declared, Vec<(&str, &Field)>)> = vec![(start, Vec::new())];
        let mut visited: Vec<&str> = Vec::new();
        while let Some((declared, trail)) = stack.pop() {
            for field in declared.fields() {
                let mut held = Vec::new();
                field.ty.inline_declared(&mut held);
                for name in held {
                    let mut trail = trail.clone();
                    trail.push((&declared.name, field));
                    if name == start.name {
                        return Err(recursion_error(source, start, &trail));
                    }
                    if visited.contains(&name.as_str()) {
                        continue;
                    }
                    if let Some(next) = types.iter().find(|declared| declared.name == name) {
                        visited.push(&next.name);
                        stack.push((next, trail));
                    }
                }
            }
        }
    }
    Ok(())
}

fn recursion_error(source: Source<'_>, start: &Declared, trail: &[(&str, &Field)]) -> Error {
    let name = &start.name;
    let Some((_, first)) = trail.first() else {
        return source.error(
            start.at,
            format!("`{name}` contains itself"),
            "box the field",
        );
    };
    let describe = |field: &Field| {
        if field.name.parse::<usize>().is_ok() {
            format!("`{}`", field.ty.canonical())
        } else {
            format!("`{}: {}`", field.name, field.ty.canonical())
        }
    };
    let boxed = boxed_text(&first.ty);
    if trail.len() == 1 {
        source.error(
            first.at,
            format!(
                "`{name}` contains itself through {} without indirection, so it would have an \
                 infinite size",
                describe(first)
            ),
            format!("write `{boxed}` (a `Vec<{name}>` or a map of `{name}` needs no `Box`)"),
        )
    } else {
        let path: Vec<String> = trail
            .iter()
            .enumerate()
            .map(|(index, (owner, field))| {
                if index == 0 {
                    describe(field)
                } else {
                    format!("{} in `{owner}`", describe(field))
                }
            })
            .collect();
        source.error(
            first.at,
            format!(
                "`{name}` contains itself through {} without indirection, so it would have an \
                 infinite size",
                path.join(", then ")
            ),
            format!(
                "box one of these fields, e.g. `{boxed}` here (a `Vec` or a map needs no `Box`)"
            ),
        )
    }
}

/// `Option<Box<Node>>` for `Option<Node>`: the type with its declared types boxed.
fn boxed_text(ty: &Ty) -> String {
    match ty {
        Ty::Option(inner) => format!("Option<{}>", boxed_text(inner)),
        Ty::Tuple(elems) => {
            let elems: Vec<String> = elems.iter().map(boxed_text).collect();
            format!("({})", elems.join(", "))
        }
        Ty::Declared(name) => format!("Box<{name}>"),
        other => other.canonical(),
    }
}

/// Located warnings for declared types and `use` entries that no method reaches: they build,
/// but are not part of the service, which is usually a leftover or a typo.
fn unused(
    source: Source<'_>,
    service: &str,
    methods: &[Method],
    types: &[Declared],
    uses: &[UseType],
) -> Vec<String> {
    let mut reached: Vec<String> = Vec::new();
    let mut pending: Vec<String> = Vec::new();
    for method in methods {
        for (ty, _) in method.types() {
            ty.named(&mut pending);
        }
    }
    while let Some(name) = pending.pop() {
        if reached.contains(&name) {
            continue;
        }
        if let Some(declared) = types.iter().find(|declared| declared.name == name) {
            for field in declared.fields() {
                field.ty.named(&mut pending);
            }
        }
        reached.push(name);
    }
    let mut warnings = Vec::new();
    for declared in types {
        if !reached.contains(&declared.name) {
            warnings.push(source.warning(
                declared.at,
                format!(
                    "type `{}` of service `{service}` is declared but no method uses it",
                    declared.name
                ),
                "use it in a signature (or in a type a signature uses), or remove its table",
            ));
        }
    }
    for used in uses {
        if !reached.contains(&used.path) {
            warnings.push(source.warning(
                used.at,
                format!(
                    "`use` entry `{}` of service `{service}` is not used by any method",
                    used.path
                ),
                format!(
                    "write `{}` in a signature or a declared type, or remove the entry",
                    used.name
                ),
            ));
        }
    }
    warnings
}

/// The doc comment of a field or variant; any other attribute is an error, because the
/// descriptor could not reflect it (a `#[serde(rename)]` would change the wire).
fn doc_of(attrs: &[syn::Attribute]) -> Result<String, SpanError> {
    let mut lines = Vec::new();
    for attr in attrs {
        if let syn::Meta::NameValue(meta) = &attr.meta {
            if meta.path.is_ident("doc") {
                if let syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(text),
                    ..
                }) = &meta.value
                {
                    lines.push(text.value().trim().to_owned());
                    continue;
                }
            }
        }
        return Err(SpanError::new(
            attr.span(),
            "attributes are not allowed in declared types",
            "remove it; only `///` doc comments are kept (declare the type in Rust and `use` it if it needs attributes)",
        ));
    }
    Ok(lines.join("\n"))
}

/// The offset of a type's table header, for errors about the type as a whole.
fn find_type_header(text: &str, service: &str, name: &str) -> usize {
    text.find(&format!("[{service}.types.{name}]")).unwrap_or(0)
}

/// The lines of the manifest that belong to one service: every `[service...]` section, and
/// top-level `service.key = ...` lines, with the comments just above them.
fn service_text(text: &str, service: &str) -> String {
    let mut owner: Option<String> = None;
    let mut seen_header = false;
    let mut pending = String::new();
    let mut collected = String::new();
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            pending.push_str(line);
            continue;
        }
        if let Some(header) = trimmed.strip_prefix('[') {
            seen_header = true;
            owner = Some(first_key(header.trim_start_matches('[')));
        } else if !seen_header && !line.starts_with([' ', '\t']) {
            // A key-value pair before any header belongs to its first key.
            let key = first_key(trimmed);
            if !key.is_empty() {
                owner = Some(key);
            }
        }
        if owner.as_deref() == Some(service) {
            collected.push_str(&pending);
            collected.push_str(line);
        }
        pending.clear();
    }
    let collected = collected.trim_matches('\n');
    format!("{collected}\n")
}

fn first_key(text: &str) -> String {
    let text = text.trim_start();
    if let Some(quoted) = text.strip_prefix('"') {
        return quoted.split('"').next().unwrap_or_default().to_owned();
    }
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '-')
        .collect()
}
