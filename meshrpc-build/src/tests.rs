//! Unit tests of the manifest model, the schema hash and the descriptor.

use std::time::Duration;

use serde_json::json;

use crate::descriptor::{canonical_schema, descriptor, schema_hash};
use crate::error::Source;
use crate::manifest::{self, Body, Manifest, VariantFields};
use crate::types::Ty;

fn parse(text: &str) -> Manifest {
    manifest::parse(Source {
        path: "services.toml",
        text,
    })
    .expect("valid manifest")
}

const GREETER: &str = r#"
[greeter]
doc = "Greets people."

[greeter.methods]
greet = { fn = "greet(name: String) -> String", returns = "message", idempotent = true, timeout = "2s" }
send_postcard = { fn = "send_postcard(card: Postcard) -> Postcard", returns = "card" }

[greeter.types.Postcard]
struct = "recipient: String, message: String"
"#;

#[test]
fn methods_keep_their_manifest_order_and_defaults() {
    let manifest = parse(
        "[s.methods]\nzeta = \"zeta()\"\nalpha = { fn = \"alpha(x: u8) -> u8\" }\nmid = \"mid()\"\n",
    );
    let service = &manifest.services[0];
    let names: Vec<&str> = service
        .methods
        .iter()
        .map(|method| method.name.as_str())
        .collect();
    assert_eq!(names, ["zeta", "alpha", "mid"]);
    let alpha = &service.methods[1];
    assert_eq!(alpha.returns, "result");
    assert!(!alpha.idempotent);
    assert_eq!(alpha.timeout, None);
    assert_eq!(alpha.params[0].ty, Ty::Int("u8"));
}

#[test]
fn timeouts_accept_milliseconds_seconds_and_minutes() {
    let manifest = parse(
        "[s.methods]\na = { fn = \"a()\", timeout = \"250ms\" }\nb = { fn = \"b()\", timeout = \"2s\" }\nc = { fn = \"c()\", timeout = \"1m\" }\n",
    );
    let timeouts: Vec<Option<Duration>> = manifest.services[0]
        .methods
        .iter()
        .map(|method| method.timeout)
        .collect();
    assert_eq!(
        timeouts,
        [
            Some(Duration::from_millis(250)),
            Some(Duration::from_secs(2)),
            Some(Duration::from_secs(60))
        ]
    );
}

#[test]
fn attempt_timeout_and_hedge_after_are_read_on_idempotent_unary_methods() {
    let manifest = parse(
        "[s.methods]\na = { fn = \"a()\", idempotent = true, attempt_timeout = \"50ms\", hedge_after = \"20ms\" }\nb = { fn = \"b()\", idempotent = true }\n",
    );
    let methods = &manifest.services[0].methods;
    assert_eq!(methods[0].attempt_timeout, Some(Duration::from_millis(50)));
    assert_eq!(methods[0].hedge_after, Some(Duration::from_millis(20)));
    assert_eq!(
        (methods[1].attempt_timeout, methods[1].hedge_after),
        (None, None)
    );
}

#[test]
fn hedging_a_method_that_may_not_run_twice_is_refused_where_it_is_written() {
    let refuse = |text: &str| {
        manifest::parse(Source {
            path: "services.toml",
            text,
        })
        .expect_err("refused")
        .to_string()
    };
    let error = refuse("[s.methods]\na = { fn = \"a()\", hedge_after = \"20ms\" }\n");
    assert!(error.starts_with("services.toml:2:"), "{error}");
    assert!(error.contains("`hedge_after` on method `a`"), "{error}");
    assert!(error.contains("idempotent = true"), "{error}");
    let error = refuse(
        "[s.methods]\na = { fn = \"a(n: u32) -> Stream<u32>\", idempotent = true, attempt_timeout = \"5ms\" }\n",
    );
    assert!(error.contains("`attempt_timeout` on method `a`"), "{error}");
    let error =
        refuse("[s.methods]\na = { fn = \"a()\", idempotent = true, attempt_timeout = \"0ms\" }\n");
    assert!(error.contains("an `attempt_timeout` of zero"), "{error}");
    let error = refuse("[s.methods]\na = { fn = \"a()\", idempotent = true, hedge_after = 20 }\n");
    assert!(
        error.contains("`hedge_after` must be a string with a unit"),
        "{error}"
    );
}

#[test]
fn the_signature_may_leave_out_the_name_or_spell_out_fn() {
    let manifest =
        parse("[s.methods]\na = \"(x: String) -> bool\"\nb = \"fn b(x: String) -> bool\"\n");
    let methods = &manifest.services[0].methods;
    assert_eq!(methods[0].params[0].name, "x");
    assert_eq!(methods[1].result, Ty::Bool);
}

#[test]
fn methods_may_be_written_as_tables() {
    let manifest = parse("[s.methods.greet]\nfn = \"greet() -> String\"\nreturns = \"message\"\n");
    assert_eq!(manifest.services[0].methods[0].returns, "message");
}

#[test]
fn declared_enums_keep_each_variant_kind_and_doc() {
    let manifest = parse(
        "[s.methods]\nf = \"f(w: Weather)\"\n[s.types.Weather]\nenum = \"\"\"\n/// Clear sky.\nSunny,\nRain { mm: f32 },\nWind(u8, String),\n\"\"\"\n",
    );
    let Body::Enum(variants) = &manifest.services[0].types[0].body else {
        panic!("an enum");
    };
    assert_eq!(variants[0].doc, "Clear sky.");
    assert!(matches!(variants[0].fields, VariantFields::Unit));
    assert!(
        matches!(&variants[1].fields, VariantFields::Named(fields) if fields[0].ty == Ty::Float("f32"))
    );
    assert!(matches!(&variants[2].fields, VariantFields::Tuple(types) if types.len() == 2));
}

#[test]
fn each_service_keeps_only_its_own_manifest_sections() {
    let manifest = parse(
        "# about a\n[a]\ndoc = \"A.\"\n\n# about b\n[b.methods]\ng = \"g()\"\n\n[a.methods]\nf = \"f()\"\n",
    );
    assert_eq!(
        manifest.services[0].text,
        "# about a\n[a]\ndoc = \"A.\"\n\n[a.methods]\nf = \"f()\"\n"
    );
    assert_eq!(
        manifest.services[1].text,
        "# about b\n[b.methods]\ng = \"g()\"\n"
    );
}

#[test]
fn the_schema_hash_is_pinned_across_runs_and_platforms() {
    let service = &parse(GREETER).services[0];
    assert_eq!(
        canonical_schema(service),
        "service greeter\n\
         method greet(name: String) -> String returns message\n\
         method send_postcard(card: Postcard) -> Postcard returns card\n\
         struct Postcard { recipient: String, message: String }\n"
    );
    // FNV-1a of the text above (checked with an independent implementation); changing it breaks compatibility between released nodes.
    assert_eq!(schema_hash(service), 0x50b1_9c0c_936a_25c5);
}

#[test]
fn the_schema_hash_changes_with_a_signature_a_type_or_a_result_field() {
    let base = schema_hash(&parse(GREETER).services[0]);
    let changed = [
        GREETER.replace("greet(name: String)", "greet(name: Option<String>)"),
        GREETER.replace(
            "recipient: String, message",
            "recipient: String, stamp: u32, message",
        ),
        GREETER.replace("returns = \"message\"", "returns = \"text\""),
        GREETER.replace("[greeter", "[welcomer"),
    ];
    for text in changed {
        assert_ne!(schema_hash(&parse(&text).services[0]), base, "{text}");
    }
}

#[test]
fn the_schema_hash_ignores_docs_flags_timeouts_and_spelling_of_std_paths() {
    let base = schema_hash(&parse(GREETER).services[0]);
    let same = [
        GREETER.replace("Greets people.", "Says hello."),
        GREETER.replace("idempotent = true, timeout = \"2s\"", "idempotent = false"),
        GREETER.replace("greet(name: String)", "greet(name: std::string::String)"),
    ];
    for text in same {
        assert_eq!(schema_hash(&parse(&text).services[0]), base, "{text}");
    }
}

#[test]
fn the_descriptor_has_the_documented_shape() {
    let service = &parse(GREETER).services[0];
    let postcard = json!({ "$ref": "#/components/schemas/greeter.Postcard" });
    assert_eq!(
        descriptor(service),
        json!({
            "service": "greeter",
            "doc": "Greets people.",
            "schema_hash": format!("{:016x}", schema_hash(service)),
            "methods": [
                {
                    "name": "greet",
                    "doc": "",
                    "kind": "unary",
                    "idempotent": true,
                    "timeout_ms": 2000,
                    "result_field": "message",
                    "request": {
                        "type": "object",
                        "properties": { "name": { "type": "string" } },
                        "required": ["name"],
                    },
                    "response": {
                        "type": "object",
                        "properties": { "message": { "type": "string" } },
                        "required": ["message"],
                    },
                },
                {
                    "name": "send_postcard",
                    "doc": "",
                    "kind": "unary",
                    "idempotent": false,
                    "timeout_ms": null,
                    "result_field": "card",
                    "request": { "type": "object", "properties": { "card": postcard }, "required": ["card"] },
                    "response": { "type": "object", "properties": { "card": postcard }, "required": ["card"] },
                },
            ],
            "types": {
                "greeter.Postcard": {
                    "type": "object",
                    "properties": { "recipient": { "type": "string" }, "message": { "type": "string" } },
                    "required": ["recipient", "message"],
                },
            },
        })
    );
}

#[test]
fn optional_parameters_are_not_required() {
    let service =
        &parse("[s.methods]\nf = \"f(a: Option<u8>, b: u8) -> Option<String>\"\n").services[0];
    let method = &descriptor(service)["methods"][0];
    assert_eq!(method["request"]["required"], json!(["b"]));
    assert_eq!(method["request"]["properties"]["a"]["nullable"], true);
    assert!(method["response"].get("required").is_none());
}

#[test]
fn unit_only_enums_are_string_enums() {
    let service =
        &parse("[s.methods]\nf = \"f(m: Mood)\"\n[s.types.Mood]\nenum = \"Happy, Sad\"\n").services
            [0];
    assert_eq!(
        descriptor(service)["types"]["s.Mood"],
        json!({ "type": "string", "enum": ["Happy", "Sad"] })
    );
}

#[test]
fn compile_writes_one_file_per_service_into_out_dir() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = dir.path().join("services.toml");
    std::fs::write(
        &manifest,
        "[a.methods]\nf = \"f()\"\n[b.methods]\ng = \"g()\"\n",
    )
    .expect("writes");
    crate::configure()
        .out_dir(dir.path())
        .emit_rerun_if_changed(false)
        .build_client(false)
        .service("b")
        .compile(&manifest)
        .expect("compiles");
    assert!(!dir.path().join("a.rs").exists(), "filtered out");
    let code = std::fs::read_to_string(dir.path().join("b.rs")).expect("b.rs written");
    assert!(code.contains("pub struct BServer<T>"));
    assert!(!code.contains("pub struct BClient"));
}

#[test]
fn compile_reports_a_missing_manifest_with_its_path() {
    let error = crate::configure()
        .out_dir(std::env::temp_dir())
        .emit_rerun_if_changed(false)
        .compile("/nonexistent/services.toml")
        .expect_err("missing");
    assert!(
        error
            .to_string()
            .starts_with("/nonexistent/services.toml: could not read the manifest"),
        "{error}"
    );
}

#[test]
fn the_schema_hash_ignores_boxes_derives_and_schema_opt_ins() {
    let base = schema_hash(&parse(GREETER).services[0]);
    let same = [
        GREETER.replace("-> Postcard\"", "-> Box<Postcard>\""),
        GREETER.replace(
            "struct = \"recipient: String, message: String\"",
            "struct = \"recipient: String, message: String\"\nderive = [\"Eq\", \"Hash\"]",
        ),
    ];
    for text in same {
        assert_eq!(schema_hash(&parse(&text).services[0]), base, "{text}");
    }
    let used = "[s]\nuse = [\"crate::m::T\"]\n[s.methods]\nf = \"f(t: T)\"\n";
    let opted = "[s]\nuse = [{ path = \"crate::m::T\", json_schema = true }]\n[s.methods]\nf = \"f(t: T)\"\n";
    assert_eq!(
        schema_hash(&parse(used).services[0]),
        schema_hash(&parse(opted).services[0])
    );
}

#[test]
fn newtypes_and_tuple_structs_have_lines_of_their_own_in_the_schema_text() {
    let manifest = parse(
        "[s.methods]\nf = \"f(id: Id, at: At)\"\n[s.types.Id]\nnewtype = \"u64\"\n[s.types.At]\ntuple = \"String, u32\"\n",
    );
    let service = &manifest.services[0];
    assert_eq!(
        canonical_schema(service),
        "service s\nmethod f(id: Id, at: At) -> () returns \nnewtype Id(u64)\ntuple At(String, u32)\n"
    );
    assert!(matches!(service.types[0].body, Body::Newtype(_)));
    let types = &descriptor(service)["types"];
    assert_eq!(
        types["s.Id"],
        json!({ "type": "integer", "format": "int64", "minimum": 0 })
    );
    assert_eq!(
        types["s.At"]["x-meshrpc-tuple"][0],
        json!({ "type": "string" })
    );
}

#[test]
fn a_recursive_type_refers_to_itself_so_its_schema_is_finite() {
    let manifest = parse(
        "[s.methods]\nf = \"f() -> Node\"\n[s.types.Node]\nstruct = \"next: Option<Box<Node>>, children: Vec<Node>\"\n",
    );
    let node = &descriptor(&manifest.services[0])["types"]["s.Node"];
    let reference = json!({ "$ref": "#/components/schemas/s.Node" });
    assert_eq!(
        node["properties"]["next"],
        json!({ "allOf": [reference], "nullable": true })
    );
    assert_eq!(node["properties"]["children"]["items"], reference);
}

#[test]
fn a_use_type_with_a_schema_is_a_reference_to_where_the_runtime_files_it() {
    let manifest = parse(
        "[s]\nuse = [{ path = \"crate::m::Stamp\", json_schema = true }, \"crate::m::Mood\"]\n\
         [s.methods]\nf = \"f(stamp: Stamp, mood: Mood)\"\n",
    );
    let request = &descriptor(&manifest.services[0])["methods"][0]["request"]["properties"];
    assert_eq!(
        request["stamp"],
        json!({ "$ref": "#/components/schemas/s.Stamp" })
    );
    assert_eq!(
        request["mood"],
        json!({ "description": "Rust type crate::m::Mood" })
    );
}

#[test]
fn a_map_keyed_by_a_declared_id_is_keyed_by_its_primitive_in_the_descriptor() {
    let manifest = parse(
        "[s.methods]\nf = \"f(by_id: HashMap<Id, u8>, by_name: BTreeMap<Name, u8>)\"\n\
         [s.types.Id]\nnewtype = \"u64\"\nderive = [\"Eq\", \"Hash\"]\n\
         [s.types.Name]\nnewtype = \"String\"\nderive = [\"Eq\", \"PartialOrd\", \"Ord\"]\n",
    );
    let request = &descriptor(&manifest.services[0])["methods"][0]["request"]["properties"];
    assert_eq!(request["by_id"]["x-meshrpc-key"], "u64");
    assert!(request["by_name"].get("x-meshrpc-key").is_none());
    assert_eq!(
        canonical_schema(&manifest.services[0]).lines().nth(1),
        Some("method f(by_id: HashMap<Id, u8>, by_name: BTreeMap<Name, u8>) -> () returns ")
    );
}
