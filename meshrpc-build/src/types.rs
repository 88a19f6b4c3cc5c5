//! The types a signature may use, resolved from the `syn` AST of what the user wrote.
//!
//! Resolution checks every type once (so mistakes are reported at the manifest, never as a
//! rustc error in generated code) and yields a [`Ty`], from which the generator derives the
//! Rust tokens, the canonical text hashed into the schema hash and the JSON Schema of the
//! descriptor.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};
use serde_json::{Value, json};
use syn::spanned::Spanned;

/// A type that can cross the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ty {
    Unit,
    Bool,
    Char,
    /// An integer primitive, by name (`u8`, `i64`, `usize`, ...).
    Int(&'static str),
    /// `f32` or `f64`.
    Float(&'static str),
    String,
    /// `Bytes` (`bytes::Bytes`): a binary that the receiver shares with the frame it arrived
    /// in instead of copying it. Allowed as a parameter, result or field, or in an `Option`.
    Bytes,
    Vec(Box<Ty>),
    Option(Box<Ty>),
    Map(MapKind, Box<Ty>, Box<Ty>),
    Tuple(Vec<Ty>),
    /// `Box<T>`: the same value on the wire as `T`; what lets a declared type contain itself.
    Boxed(Box<Ty>),
    /// A type declared in the manifest's `[service.types]`, by name.
    Declared(String),
    /// A type of the user's crate listed in `use`, by full path; with its name (the last
    /// segment) when its entry asks for a schema (`json_schema = true`).
    Used(String, Option<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MapKind {
    Hash,
    BTree,
}

const INTS: &[&str] = &[
    "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128", "isize",
];

/// A mistake in a type or signature, at a span of the string `syn` parsed.
#[derive(Debug)]
pub(crate) struct SpanError {
    pub(crate) span: Span,
    pub(crate) problem: String,
    pub(crate) fix: String,
}

impl SpanError {
    pub(crate) fn new(span: Span, problem: impl Into<String>, fix: impl Into<String>) -> SpanError {
        SpanError {
            span,
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// A `use` entry of a service: a type of the user's crate.
#[derive(Debug, Clone)]
pub(crate) struct UseType {
    /// The last path segment, the name signatures refer to.
    pub(crate) name: String,
    /// The full path as written, normalized (`crate::model::Mood`).
    pub(crate) path: String,
    /// Where the entry is written in the manifest (a byte offset), for warnings.
    pub(crate) at: usize,
    /// Whether the type derives `schemars::JsonSchema` and its schema goes into the descriptor
    /// (`{ path = "...", json_schema = true }`).
    pub(crate) json_schema: bool,
}

/// The names a signature may refer to beyond the built-in types.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scope<'a> {
    pub(crate) service: &'a str,
    pub(crate) declared: &'a [String],
    pub(crate) uses: &'a [UseType],
}

const BUILTIN_HINT: &str = "the built-in types are String, bool, char, the integer and float \
                            primitives, Bytes, Vec<T>, Option<T>, Box<T>, HashMap<K, V>, BTreeMap<K, V>, tuples and ()";

impl Scope<'_> {
    /// Resolves a written type, or says what is wrong with it.
    pub(crate) fn resolve(&self, ty: &syn::Type) -> Result<Ty, SpanError> {
        match ty {
            syn::Type::Tuple(tuple) => {
                if tuple.elems.is_empty() {
                    return Ok(Ty::Unit);
                }
                let elems = tuple
                    .elems
                    .iter()
                    .map(|elem| self.resolve(elem))
                    .collect::<Result<Vec<_>, _>>()?;
                not_inside(&elems, "a tuple", tuple.span())?;
                Ok(Ty::Tuple(elems))
            }
            syn::Type::Paren(paren) => self.resolve(&paren.elem),
            syn::Type::Group(group) => self.resolve(&group.elem),
            syn::Type::Reference(reference) => Err(SpanError::new(
                reference.span(),
                "references cannot cross the wire",
                "write an owned type: `String` for `&str`, `Vec<T>` for `&[T]`, `T` for `&T`",
            )),
            syn::Type::Slice(_) | syn::Type::Array(_) => Err(SpanError::new(
                ty.span(),
                "arrays and slices are not supported",
                "write `Vec<T>`",
            )),
            syn::Type::ImplTrait(_) => Err(SpanError::new(
                ty.span(),
                "`impl Trait` is not allowed in a signature",
                "write a concrete type: the wire needs to know its shape",
            )),
            syn::Type::Path(path) => self.resolve_path(path),
            _ => Err(SpanError::new(
                ty.span(),
                "this type cannot cross the wire",
                format!("use a declared or `use` type; {BUILTIN_HINT}"),
            )),
        }
    }

    /// The item type if `ty` is written `Stream<T>` (a whole parameter or result that is a
    /// stream), `None` for any other type. Streams of streams and of `()` are refused here;
    /// a `Stream` anywhere else is refused by [`Scope::resolve`].
    pub(crate) fn resolve_stream(&self, ty: &syn::Type) -> Result<Option<Ty>, SpanError> {
        let Some(arguments) = stream_arguments(ty) else {
            return Ok(None);
        };
        let items = match arguments {
            syn::PathArguments::AngleBracketed(args) if args.args.len() == 1 => &args.args[0],
            _ => {
                return Err(SpanError::new(
                    ty.span(),
                    "`Stream` takes 1 type argument",
                    "write `Stream<T>`, e.g. `Stream<u64>`",
                ));
            }
        };
        let syn::GenericArgument::Type(item) = items else {
            return Err(SpanError::new(
                items.span(),
                "only a type argument is allowed here",
                "write `Stream<T>`, e.g. `Stream<u64>`",
            ));
        };
        if stream_arguments(item).is_some() {
            return Err(SpanError::new(
                item.span(),
                "a stream of streams is not supported",
                "stream the items themselves (`Stream<T>`), or send each group as one item \
                 (`Stream<Vec<T>>`)",
            ));
        }
        let item_ty = self.resolve(item)?;
        if item_ty == Ty::Unit {
            return Err(SpanError::new(
                ty.span(),
                "a `Stream<()>` carries no values",
                "stream values, e.g. `Stream<u64>`, or remove the stream",
            ));
        }
        Ok(Some(item_ty))
    }

    fn resolve_path(&self, type_path: &syn::TypePath) -> Result<Ty, SpanError> {
        if let Some(qself) = &type_path.qself {
            return Err(SpanError::new(
                qself.lt_token.span,
                "qualified paths (`<T as Trait>::X`) are not allowed",
                "write the concrete type",
            ));
        }
        let path = &type_path.path;
        let Some(last) = path.segments.last() else {
            return Err(SpanError::new(path.span(), "empty type", BUILTIN_HINT));
        };
        // The path without the last segment's generic arguments, e.g. `std::collections::HashMap`.
        let mut written = String::new();
        if path.leading_colon.is_some() {
            written.push_str("::");
        }
        for (index, segment) in path.segments.iter().enumerate() {
            if index > 0 {
                written.push_str("::");
            }
            written.push_str(&segment.ident.to_string());
            if index + 1 < path.segments.len() && !segment.arguments.is_none() {
                return Err(SpanError::new(
                    segment.arguments.span(),
                    "generic arguments are only allowed on the last path segment",
                    "write the type's plain path",
                ));
            }
        }
        let span = path.span();
        if written == "Result" || written.ends_with("result::Result") {
            return Err(SpanError::new(
                span,
                "a signature returns the success type only",
                "write `-> T` instead of `-> Result<T, E>`: every method can fail with a `meshrpc::Status`",
            ));
        }
        if written == "Self" {
            return Err(SpanError::new(
                span,
                "`Self` is not allowed in a signature",
                "write the type's name",
            ));
        }
        if written == "Stream" {
            return Err(SpanError::new(
                span,
                "a `Stream` can only be a method's last parameter or its result",
                "write `name: Stream<T>` as the last parameter (a client stream) or `-> Stream<T>` \
                 (a server stream); for several values in one message write `Vec<T>`",
            ));
        }
        let args = self.generic_args(&last.arguments)?;
        let generic = |kind: &str, arity: usize| -> Result<(), SpanError> {
            if args.len() == arity {
                Ok(())
            } else {
                let params = ["T", "K, V"][arity - 1];
                Err(SpanError::new(
                    span,
                    format!(
                        "`{kind}` takes {arity} type argument{}",
                        if arity == 1 { "" } else { "s" }
                    ),
                    format!("write `{kind}<{params}>`"),
                ))
            }
        };
        let plain = |name: &str| -> Result<(), SpanError> {
            if args.is_empty() {
                Ok(())
            } else {
                Err(SpanError::new(
                    last.arguments.span(),
                    format!("`{name}` takes no type arguments"),
                    format!("write `{name}`"),
                ))
            }
        };
        let std_name = written
            .trim_start_matches("::")
            .trim_start_matches("std::")
            .trim_start_matches("core::")
            .trim_start_matches("alloc::");
        match (written.as_str(), std_name) {
            (_, "string::String") | ("String", _) => plain("String").map(|()| Ty::String),
            (
                "Bytes"
                | "bytes::Bytes"
                | "::bytes::Bytes"
                | "meshrpc::bytes::Bytes"
                | "::meshrpc::bytes::Bytes",
                _,
            ) => plain("Bytes").map(|()| Ty::Bytes),
            (_, "vec::Vec") | ("Vec", _) => {
                generic("Vec", 1)?;
                not_inside(&args, "Vec", span)?;
                Ok(Ty::Vec(Box::new(
                    args.into_iter().next().unwrap_or(Ty::Unit),
                )))
            }
            (_, "option::Option") | ("Option", _) => {
                generic("Option", 1)?;
                if args.first() != Some(&Ty::Bytes) {
                    not_inside(&args, "Option", span)?;
                }
                Ok(Ty::Option(Box::new(
                    args.into_iter().next().unwrap_or(Ty::Unit),
                )))
            }
            (_, "boxed::Box") | ("Box", _) => {
                generic("Box", 1)?;
                not_inside(&args, "Box", span)?;
                Ok(Ty::Boxed(Box::new(
                    args.into_iter().next().unwrap_or(Ty::Unit),
                )))
            }
            (_, "collections::HashMap") | ("HashMap", _) => {
                not_inside(&args, "HashMap", span)?;
                self.map(MapKind::Hash, args, span)
            }
            (_, "collections::BTreeMap") | ("BTreeMap", _) => {
                not_inside(&args, "BTreeMap", span)?;
                self.map(MapKind::BTree, args, span)
            }
            ("bool", _) => plain("bool").map(|()| Ty::Bool),
            ("char", _) => plain("char").map(|()| Ty::Char),
            ("f32", _) => plain("f32").map(|()| Ty::Float("f32")),
            ("f64", _) => plain("f64").map(|()| Ty::Float("f64")),
            (name, _) if INTS.contains(&name) => {
                plain(name)?;
                Ok(Ty::Int(
                    INTS.iter()
                        .copied()
                        .find(|int| *int == name)
                        .unwrap_or("u64"),
                ))
            }
            (name, _) => {
                if let Some(declared) = self.declared.iter().find(|declared| *declared == name) {
                    plain(name)?;
                    return Ok(Ty::Declared(declared.clone()));
                }
                if let Some(used) = self
                    .uses
                    .iter()
                    .find(|used| used.name == name || used.path == name)
                {
                    plain(name)?;
                    return Ok(Ty::Used(
                        used.path.clone(),
                        used.json_schema.then(|| used.name.clone()),
                    ));
                }
                if !args.is_empty() || !last.arguments.is_none() {
                    return Err(SpanError::new(
                        span,
                        format!("unknown generic type `{name}`"),
                        format!(
                            "generic types other than the built-in ones are not supported; {BUILTIN_HINT}"
                        ),
                    ));
                }
                let candidates = self
                    .declared
                    .iter()
                    .map(String::as_str)
                    .chain(self.uses.iter().map(|used| used.name.as_str()))
                    .chain([
                        "String", "Bytes", "Vec", "Option", "Box", "HashMap", "BTreeMap", "bool",
                        "char", "f32", "f64",
                    ])
                    .chain(INTS.iter().copied());
                let close = closest(name, candidates);
                Err(unknown_type(self.service, name, close, span))
            }
        }
    }

    fn generic_args(&self, arguments: &syn::PathArguments) -> Result<Vec<Ty>, SpanError> {
        match arguments {
            syn::PathArguments::None => Ok(Vec::new()),
            syn::PathArguments::Parenthesized(args) => Err(SpanError::new(
                args.span(),
                "function types cannot cross the wire",
                "write a data type",
            )),
            syn::PathArguments::AngleBracketed(args) => args
                .args
                .iter()
                .map(|arg| match arg {
                    syn::GenericArgument::Type(ty) => self.resolve(ty),
                    syn::GenericArgument::Lifetime(lifetime) => Err(SpanError::new(
                        lifetime.span(),
                        "lifetimes are not allowed in a signature",
                        "write owned types without lifetimes",
                    )),
                    other => Err(SpanError::new(
                        other.span(),
                        "only type arguments are allowed here",
                        "write a type, e.g. `Vec<String>`",
                    )),
                })
                .collect(),
        }
    }

    fn map(&self, kind: MapKind, args: Vec<Ty>, span: Span) -> Result<Ty, SpanError> {
        let name = match kind {
            MapKind::Hash => "HashMap",
            MapKind::BTree => "BTreeMap",
        };
        let mut args = args.into_iter();
        let (Some(key), Some(value), None) = (args.next(), args.next(), args.next()) else {
            return Err(SpanError::new(
                span,
                format!("`{name}` takes 2 type arguments"),
                format!("write `{name}<K, V>`"),
            ));
        };
        // A declared key (an id newtype) is checked once every type is known.
        if !matches!(
            key,
            Ty::String | Ty::Int(_) | Ty::Char | Ty::Bool | Ty::Declared(_)
        ) {
            return Err(SpanError::new(
                span,
                "map keys must be strings, primitives or declared newtypes of them (JSON object \
                 keys are strings)",
                format!(
                    "write `{name}<String, V>`, key by an integer, char or bool, or by a declared \
                     newtype of one"
                ),
            ));
        }
        Ok(Ty::Map(kind, Box::new(key), Box::new(value)))
    }
}

/// Types of the standard library that serde can send, offered as `use` entries when a signature
/// names one without listing it.
const STD_TYPES: &[&str] = &[
    "std::time::Duration",
    "std::time::SystemTime",
    "std::net::IpAddr",
    "std::net::Ipv4Addr",
    "std::net::Ipv6Addr",
    "std::net::SocketAddr",
    "std::path::PathBuf",
];

/// The error for a type that is neither built in, declared nor listed in `use`: a path is
/// offered as a `use` entry as written, and a table name is offered only when it is a valid one.
fn unknown_type(service: &str, name: &str, close: Option<&str>, span: Span) -> SpanError {
    let problem = format!("unknown type `{name}`");
    let hint = close.map(|close| format!("did you mean `{close}`? "));
    if name.contains("::") {
        let path = name.trim_start_matches("::");
        let last = path.rsplit("::").next().unwrap_or(path);
        let fix = if path.split("::").count() >= 2 {
            format!(
                "list the path in the service's `use`: use = [\"{name}\"], then write `{last}` in \
                 signatures"
            )
        } else {
            format!(
                "list its full path in the service's `use`, e.g. use = [\"crate::model::{last}\"]"
            )
        };
        return SpanError::new(span, problem, format!("{}{fix}", hint.unwrap_or_default()));
    }
    if let Some(path) = STD_TYPES
        .iter()
        .find(|path| path.rsplit("::").next() == Some(name))
    {
        return SpanError::new(
            span,
            problem,
            format!(
                "for the standard library's `{name}`, list it in the service's `use`: use = [\"{path}\"]"
            ),
        );
    }
    let camel = heck::ToUpperCamelCase::to_upper_camel_case(name);
    if camel != name {
        // `string`, `my_type`: not a name a type can be declared under.
        let fix = match hint {
            Some(hint) => hint.trim_end().to_owned(),
            None => format!(
                "type names are UpperCamelCase: declare it in a [{service}.types.{camel}] table, or \
                 list its full path in the service's `use` (e.g. use = [\"crate::model::{camel}\"])"
            ),
        };
        return SpanError::new(span, problem, fix);
    }
    SpanError::new(
        span,
        problem,
        format!(
            "{}declare it in a [{service}.types.{name}] table, or list its full path in the \
             service's `use` (e.g. use = [\"crate::model::{name}\"])",
            hint.unwrap_or_default()
        ),
    )
}

/// The generic arguments of `ty` if it is written `Stream<..>` (or a bare `Stream`).
fn stream_arguments(ty: &syn::Type) -> Option<&syn::PathArguments> {
    match ty {
        syn::Type::Paren(paren) => stream_arguments(&paren.elem),
        syn::Type::Group(group) => stream_arguments(&group.elem),
        syn::Type::Path(path)
            if path.qself.is_none()
                && path.path.leading_colon.is_none()
                && path.path.segments.len() == 1
                && path.path.segments[0].ident == "Stream" =>
        {
            Some(&path.path.segments[0].arguments)
        }
        _ => None,
    }
}

/// `Bytes` is shared with the frame only where a serde field attribute can reach it (a field,
/// or the `Some` of an optional field): anywhere else it is refused, so it never silently
/// means a copy.
fn not_inside(args: &[Ty], container: &str, span: Span) -> Result<(), SpanError> {
    if args.iter().any(Ty::contains_bytes) {
        return Err(SpanError::new(
            span,
            format!("`Bytes` cannot be inside {container}"),
            "use `Bytes` as a parameter, a result, a stream item or a field (or `Option<Bytes>`), \
             or write `Vec<u8>` here",
        ));
    }
    Ok(())
}

/// The closest candidate by edit distance, if it is close enough to be a likely typo.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1) + usize::from(word.len() > 6);
    candidates
        .into_iter()
        .map(|candidate| {
            (
                edit_distance(&word.to_lowercase(), &candidate.to_lowercase()),
                candidate,
            )
        })
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// A derive a declared type may ask for beyond the ones every declared type has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Derive {
    Copy,
    Eq,
    Hash,
    PartialOrd,
    Ord,
}

impl Derive {
    /// Every derive a manifest may ask for, in the order they are emitted.
    pub(crate) const ALL: [Derive; 5] = [
        Derive::Copy,
        Derive::Eq,
        Derive::Hash,
        Derive::PartialOrd,
        Derive::Ord,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Derive::Copy => "Copy",
            Derive::Eq => "Eq",
            Derive::Hash => "Hash",
            Derive::PartialOrd => "PartialOrd",
            Derive::Ord => "Ord",
        }
    }

    /// The derive's path in generated code.
    pub(crate) fn tokens(self) -> TokenStream {
        match self {
            Derive::Copy => quote!(::core::marker::Copy),
            Derive::Eq => quote!(::core::cmp::Eq),
            Derive::Hash => quote!(::core::hash::Hash),
            Derive::PartialOrd => quote!(::core::cmp::PartialOrd),
            Derive::Ord => quote!(::core::cmp::Ord),
        }
    }
}

/// Where generated code refers to a type from: the file's top level or its messages module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    TopLevel,
    Messages,
}

impl Ty {
    /// The Rust type, by absolute paths (declared types relative to the generated file).
    pub(crate) fn tokens(&self, place: Place) -> TokenStream {
        match self {
            Ty::Unit => quote!(()),
            Ty::Bool => quote!(bool),
            Ty::Char => quote!(char),
            Ty::Int(name) | Ty::Float(name) => {
                let ident = format_ident!("{}", name);
                quote!(#ident)
            }
            Ty::String => quote!(::std::string::String),
            Ty::Bytes => quote!(::meshrpc::bytes::Bytes),
            Ty::Vec(inner) => {
                let inner = inner.tokens(place);
                quote!(::std::vec::Vec<#inner>)
            }
            Ty::Option(inner) => {
                let inner = inner.tokens(place);
                quote!(::core::option::Option<#inner>)
            }
            Ty::Map(kind, key, value) => {
                let key = key.tokens(place);
                let value = value.tokens(place);
                match kind {
                    MapKind::Hash => quote!(::std::collections::HashMap<#key, #value>),
                    MapKind::BTree => quote!(::std::collections::BTreeMap<#key, #value>),
                }
            }
            Ty::Tuple(elems) => {
                let elems = elems.iter().map(|elem| elem.tokens(place));
                quote!((#(#elems,)*))
            }
            Ty::Boxed(inner) => {
                let inner = inner.tokens(place);
                quote!(::std::boxed::Box<#inner>)
            }
            Ty::Declared(name) => {
                let ident = format_ident!("{}", name);
                match place {
                    Place::TopLevel => quote!(#ident),
                    Place::Messages => quote!(super::#ident),
                }
            }
            Ty::Used(path, _) => syn::parse_str::<syn::Path>(path)
                .map(|path| quote!(#path))
                .unwrap_or_else(|error| error.to_compile_error()),
        }
    }

    /// The canonical text of the type: what the schema hash covers and what specs show.
    pub(crate) fn canonical(&self) -> String {
        match self {
            Ty::Unit => "()".to_owned(),
            Ty::Bool => "bool".to_owned(),
            Ty::Char => "char".to_owned(),
            Ty::Int(name) | Ty::Float(name) => (*name).to_owned(),
            Ty::String => "String".to_owned(),
            // The same binary on the wire as `Vec<u8>`: switching between the two keeps the
            // schema hash, so old and new replicas keep calling each other.
            Ty::Bytes => "Vec<u8>".to_owned(),
            Ty::Vec(inner) => format!("Vec<{}>", inner.canonical()),
            Ty::Option(inner) => format!("Option<{}>", inner.canonical()),
            Ty::Map(MapKind::Hash, key, value) => {
                format!("HashMap<{}, {}>", key.canonical(), value.canonical())
            }
            Ty::Map(MapKind::BTree, key, value) => {
                format!("BTreeMap<{}, {}>", key.canonical(), value.canonical())
            }
            Ty::Tuple(elems) if elems.len() == 1 => format!("({},)", elems[0].canonical()),
            Ty::Tuple(elems) => {
                let elems: Vec<String> = elems.iter().map(Ty::canonical).collect();
                format!("({})", elems.join(", "))
            }
            // A box changes nothing on the wire, so it changes nothing in the schema hash.
            Ty::Boxed(inner) => inner.canonical(),
            Ty::Declared(name) | Ty::Used(name, _) => name.clone(),
        }
    }

    /// `Vec<u8>`, sent as a MessagePack binary (and base64 in JSON).
    pub(crate) fn is_bytes(&self) -> bool {
        matches!(self, Ty::Vec(inner) if **inner == Ty::Int("u8"))
    }

    /// Whether `Bytes` appears anywhere in this type.
    pub(crate) fn contains_bytes(&self) -> bool {
        match self {
            Ty::Bytes => true,
            Ty::Vec(inner) | Ty::Option(inner) | Ty::Boxed(inner) => inner.contains_bytes(),
            Ty::Map(_, key, value) => key.contains_bytes() || value.contains_bytes(),
            Ty::Tuple(elems) => elems.iter().any(Ty::contains_bytes),
            _ => false,
        }
    }

    /// The serde attribute a field of this type needs, if any: `Vec<u8>` and `Option<Vec<u8>>`
    /// travel as binaries, and `Bytes` and `Option<Bytes>` as binaries shared with the frame.
    pub(crate) fn serde_attribute(&self) -> Option<TokenStream> {
        if self.is_bytes() {
            return Some(quote!(#[serde(with = "::meshrpc::serde_bytes")]));
        }
        match self {
            Ty::Bytes => Some(quote!(#[serde(with = "::meshrpc::__generated::shared_bytes")])),
            Ty::Option(inner) if **inner == Ty::Bytes => Some(
                quote!(#[serde(default, with = "::meshrpc::__generated::shared_bytes::option")]),
            ),
            Ty::Option(inner) if inner.is_bytes() => {
                Some(quote!(#[serde(default, with = "::meshrpc::serde_bytes")]))
            }
            _ => None,
        }
    }

    /// The serde attribute the field of a transparent wrapper needs when a stream item of
    /// this type travels in one (see [`Ty::serde_attribute`]; no `default`, as the value is
    /// the whole item).
    pub(crate) fn item_serde_attribute(&self) -> Option<TokenStream> {
        if self.is_bytes() {
            return Some(quote!(#[serde(with = "::meshrpc::serde_bytes")]));
        }
        match self {
            Ty::Bytes => Some(quote!(#[serde(with = "::meshrpc::__generated::shared_bytes")])),
            Ty::Option(inner) if **inner == Ty::Bytes => {
                Some(quote!(#[serde(with = "::meshrpc::__generated::shared_bytes::option")]))
            }
            Ty::Option(inner) if inner.is_bytes() => {
                Some(quote!(#[serde(with = "::meshrpc::serde_bytes")]))
            }
            _ => None,
        }
    }

    /// The declared and `use` types this type mentions, through any container.
    pub(crate) fn named(&self, out: &mut Vec<String>) {
        match self {
            Ty::Vec(inner) | Ty::Option(inner) | Ty::Boxed(inner) => inner.named(out),
            Ty::Map(_, key, value) => {
                key.named(out);
                value.named(out);
            }
            Ty::Tuple(elems) => elems.iter().for_each(|elem| elem.named(out)),
            Ty::Declared(name) | Ty::Used(name, _) => out.push(name.clone()),
            _ => {}
        }
    }

    /// The declared types this type uses as map keys, with the kind of map.
    pub(crate) fn declared_keys(&self, out: &mut Vec<(MapKind, String)>) {
        match self {
            Ty::Vec(inner) | Ty::Option(inner) | Ty::Boxed(inner) => inner.declared_keys(out),
            Ty::Map(kind, key, value) => {
                if let Ty::Declared(name) = &**key {
                    out.push((*kind, name.clone()));
                }
                value.declared_keys(out);
            }
            Ty::Tuple(elems) => elems.iter().for_each(|elem| elem.declared_keys(out)),
            _ => {}
        }
    }

    /// The declared types a value of this type holds in place, without a heap indirection
    /// (`Box`, `Vec` or a map) between them: a declared type that holds itself this way would
    /// have an infinite size.
    pub(crate) fn inline_declared(&self, out: &mut Vec<String>) {
        match self {
            Ty::Option(inner) => inner.inline_declared(out),
            Ty::Tuple(elems) => elems.iter().for_each(|elem| elem.inline_declared(out)),
            Ty::Declared(name) => out.push(name.clone()),
            _ => {}
        }
    }

    /// Why a type with a field of this type cannot derive `derive`, or `None` if it can.
    /// `derives` says which derives a declared type has; `use` types are taken on trust.
    pub(crate) fn refuses(
        &self,
        derive: Derive,
        derives: &dyn Fn(&str, Derive) -> bool,
    ) -> Option<String> {
        let no = |what: &str| Some(format!("{what} does not implement `{}`", derive.name()));
        match self {
            Ty::Unit | Ty::Bool | Ty::Char | Ty::Int(_) | Ty::Used(..) => None,
            Ty::Float(name) => match derive {
                Derive::Copy | Derive::PartialOrd => None,
                _ => no(&format!("`{name}`")),
            },
            Ty::String | Ty::Bytes => match derive {
                Derive::Copy => no(&format!("`{}`", self.canonical_written())),
                _ => None,
            },
            Ty::Vec(inner) | Ty::Boxed(inner) => match derive {
                Derive::Copy => no(&format!("`{}`", self.canonical_written())),
                _ => inner.refuses(derive, derives),
            },
            Ty::Option(inner) => inner.refuses(derive, derives),
            Ty::Map(kind, key, value) => match (derive, kind) {
                (Derive::Copy, _) => no(&format!("`{}`", self.canonical_written())),
                (Derive::Hash | Derive::PartialOrd | Derive::Ord, MapKind::Hash) => no("`HashMap`"),
                _ => key
                    .refuses(derive, derives)
                    .or_else(|| value.refuses(derive, derives)),
            },
            Ty::Tuple(elems) if elems.len() > 12 => no("a tuple of more than 12 elements"),
            Ty::Tuple(elems) => elems.iter().find_map(|elem| elem.refuses(derive, derives)),
            Ty::Declared(name) => (!derives(name, derive)).then(|| {
                format!(
                    "`{name}` does not derive `{}` (add it to the `derive` of `{name}`)",
                    derive.name()
                )
            }),
        }
    }

    /// The type as a user would write it, for messages (`Vec<u8>` for `Bytes` would mislead).
    pub(crate) fn canonical_written(&self) -> String {
        match self {
            Ty::Bytes => "Bytes".to_owned(),
            Ty::Boxed(inner) => format!("Box<{}>", inner.canonical()),
            other => other.canonical(),
        }
    }

    /// Whether a field of this type may be absent from a map (`Option` fields default to `None`).
    pub(crate) fn is_optional(&self) -> bool {
        matches!(self, Ty::Option(_))
    }

    /// Whether `#[derive(Default)]` works for a struct with a field of this type;
    /// `defaultable` says it for declared types.
    pub(crate) fn has_default(&self, defaultable: &dyn Fn(&str) -> bool) -> bool {
        match self {
            Ty::Vec(_) | Ty::Option(_) | Ty::Map(..) => true,
            Ty::Tuple(elems) => {
                elems.len() <= 12 && elems.iter().all(|elem| elem.has_default(defaultable))
            }
            Ty::Boxed(inner) => inner.has_default(defaultable),
            Ty::Declared(name) => defaultable(name),
            Ty::Used(..) => false,
            _ => true,
        }
    }

    /// The JSON Schema (OpenAPI 3.0 dialect) of the type as a field value; `service` prefixes
    /// the names of declared types.
    pub(crate) fn schema(&self, service: &str, as_field: bool) -> Value {
        match self {
            Ty::Unit => json!({ "nullable": true, "enum": [null] }),
            Ty::Bool => json!({ "type": "boolean" }),
            Ty::Char => json!({ "type": "string", "minLength": 1, "maxLength": 1 }),
            Ty::Int(name) => int_schema(name),
            Ty::Float(name) => {
                json!({ "type": "number", "format": if *name == "f32" { "float" } else { "double" } })
            }
            Ty::String => json!({ "type": "string" }),
            Ty::Bytes => json!({ "type": "string", "format": "byte" }),
            Ty::Vec(_) if as_field && self.is_bytes() => {
                json!({ "type": "string", "format": "byte" })
            }
            Ty::Vec(inner) => json!({ "type": "array", "items": inner.schema(service, false) }),
            Ty::Option(inner) => {
                let inner = inner.schema(service, as_field);
                if inner.get("$ref").is_some() {
                    json!({ "allOf": [inner], "nullable": true })
                } else {
                    let mut inner = inner;
                    if let Some(object) = inner.as_object_mut() {
                        object.insert("nullable".to_owned(), Value::Bool(true));
                    }
                    inner
                }
            }
            Ty::Map(_, key, value) => {
                let mut schema = json!({ "type": "object", "additionalProperties": value.schema(service, false) });
                if **key != Ty::String {
                    schema["x-meshrpc-key"] = Value::String(key.canonical());
                }
                schema
            }
            Ty::Tuple(elems) => json!({
                "type": "array",
                "minItems": elems.len(),
                "maxItems": elems.len(),
                "items": {},
                "x-meshrpc-tuple": elems.iter().map(|elem| elem.schema(service, false)).collect::<Vec<_>>(),
            }),
            // No serde attribute reaches inside a box: a boxed `Vec<u8>` is an array.
            Ty::Boxed(inner) => inner.schema(service, false),
            Ty::Declared(name) => {
                json!({ "$ref": format!("#/components/schemas/{service}.{name}") })
            }
            // Filed under this name at run time (`ServiceSpec::full_descriptor`).
            Ty::Used(_, Some(name)) => {
                json!({ "$ref": format!("#/components/schemas/{service}.{name}") })
            }
            Ty::Used(path, None) => json!({ "description": format!("Rust type {path}") }),
        }
    }
}

fn int_schema(name: &str) -> Value {
    match name {
        "u8" => json!({ "type": "integer", "format": "int32", "minimum": 0, "maximum": u8::MAX }),
        "u16" => json!({ "type": "integer", "format": "int32", "minimum": 0, "maximum": u16::MAX }),
        "u32" => json!({ "type": "integer", "format": "int64", "minimum": 0, "maximum": u32::MAX }),
        "i8" => {
            json!({ "type": "integer", "format": "int32", "minimum": i8::MIN, "maximum": i8::MAX })
        }
        "i16" => {
            json!({ "type": "integer", "format": "int32", "minimum": i16::MIN, "maximum": i16::MAX })
        }
        "i32" => json!({ "type": "integer", "format": "int32" }),
        "i64" | "isize" => json!({ "type": "integer", "format": "int64" }),
        "u64" | "usize" => json!({ "type": "integer", "format": "int64", "minimum": 0 }),
        "u128" => json!({ "type": "integer", "format": "uint128", "minimum": 0 }),
        _ => json!({ "type": "integer", "format": "int128" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str) -> Result<Ty, SpanError> {
        let declared = vec!["Postcard".to_owned()];
        let uses = vec![UseType {
            name: "Mood".to_owned(),
            path: "crate::model::Mood".to_owned(),
            at: 0,
            json_schema: false,
        }];
        let scope = Scope {
            service: "greeter",
            declared: &declared,
            uses: &uses,
        };
        let ty: syn::Type = syn::parse_str(text).expect("valid Rust type");
        scope.resolve(&ty)
    }

    #[test]
    fn std_paths_and_short_names_resolve_to_the_same_type() {
        let short = resolve("HashMap<String, Vec<Option<u8>>>").expect("resolves");
        let long =
            resolve("std::collections::HashMap<std::string::String, ::std::vec::Vec<Option<u8>>>")
                .expect("resolves");
        assert_eq!(short, long);
        assert_eq!(short.canonical(), "HashMap<String, Vec<Option<u8>>>");
    }

    #[test]
    fn use_types_resolve_to_their_full_path() {
        let ty = resolve("Vec<Mood>").expect("resolves");
        assert_eq!(ty.canonical(), "Vec<crate::model::Mood>");
        assert_eq!(
            ty.tokens(Place::TopLevel).to_string(),
            ":: std :: vec :: Vec < crate :: model :: Mood >"
        );
    }

    #[test]
    fn declared_types_are_reached_from_the_messages_module_through_super() {
        let ty = resolve("Postcard").expect("resolves");
        assert_eq!(ty.tokens(Place::Messages).to_string(), "super :: Postcard");
    }

    #[test]
    fn unknown_types_suggest_a_close_name() {
        let error = resolve("Postcrad").expect_err("unknown");
        assert_eq!(error.problem, "unknown type `Postcrad`");
        assert!(
            error.fix.starts_with("did you mean `Postcard`?"),
            "{}",
            error.fix
        );
    }

    #[test]
    fn maps_keyed_by_floats_are_rejected() {
        let error = resolve("BTreeMap<f64, String>").expect_err("float keys");
        assert!(error.problem.starts_with("map keys"), "{}", error.problem);
    }

    #[test]
    fn byte_vectors_are_strings_of_format_byte_only_as_fields() {
        let ty = resolve("Vec<u8>").expect("resolves");
        assert_eq!(
            ty.schema("s", true),
            json!({ "type": "string", "format": "byte" })
        );
        assert_eq!(ty.schema("s", false)["type"], "array");
    }

    #[test]
    fn bytes_is_a_shared_binary_with_the_hash_of_a_byte_vector() {
        for written in ["Bytes", "bytes::Bytes", "meshrpc::bytes::Bytes"] {
            let ty = resolve(written).expect("resolves");
            assert_eq!(ty, Ty::Bytes);
            assert_eq!(
                ty.canonical(),
                resolve("Vec<u8>").expect("resolves").canonical()
            );
            assert_eq!(
                ty.tokens(Place::Messages).to_string(),
                ":: meshrpc :: bytes :: Bytes"
            );
            assert_eq!(
                ty.schema("s", true),
                json!({ "type": "string", "format": "byte" })
            );
        }
        let optional = resolve("Option<Bytes>").expect("an optional field may be Bytes");
        assert!(
            optional
                .serde_attribute()
                .expect("has one")
                .to_string()
                .contains("shared_bytes::option")
        );
    }

    #[test]
    fn bytes_inside_containers_is_refused_with_the_alternative() {
        for written in [
            "Vec<Bytes>",
            "HashMap<String, Bytes>",
            "(Bytes, u8)",
            "Option<Vec<Bytes>>",
            "Option<Option<Bytes>>",
        ] {
            let error = resolve(written).expect_err(written);
            assert!(
                error.problem.starts_with("`Bytes` cannot be inside"),
                "{written}: {}",
                error.problem
            );
            assert!(error.fix.contains("write `Vec<u8>` here"), "{}", error.fix);
        }
    }

    #[test]
    fn optional_references_are_wrapped_in_all_of() {
        let ty = resolve("Option<Postcard>").expect("resolves");
        assert_eq!(
            ty.schema("greeter", true),
            json!({ "allOf": [{ "$ref": "#/components/schemas/greeter.Postcard" }], "nullable": true })
        );
    }
}
