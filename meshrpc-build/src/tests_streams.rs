//! Unit tests of streaming methods: kinds from signatures, the schema text and hash, the
//! descriptor's stream keys and the generated code's shape.

use serde_json::json;

use crate::descriptor::{canonical_schema, descriptor, schema_hash};
use crate::error::Source;
use crate::manifest::{self, Kind, Manifest};
use crate::types::Ty;

fn parse(text: &str) -> Manifest {
    manifest::parse(Source {
        path: "services.toml",
        text,
    })
    .unwrap_or_else(|error| panic!("valid manifest: {error}"))
}

const NUMBERS: &str = r#"
[numbers]
doc = "Streams of numbers: the streaming example."

[numbers.methods]
count = { fn = "count(from: u64, to: u64, every_ms: u32) -> Stream<u64>", idempotent = true }
sum = { fn = "sum(numbers: Stream<i64>) -> i64", returns = "sum" }
running_total = { fn = "running_total(numbers: Stream<i64>) -> Stream<i64>" }
"#;

#[test]
fn the_kind_follows_where_the_signature_writes_stream() {
    let manifest = parse(&format!(
        "{NUMBERS}ping = \"ping(x: u8) -> u8\"\nupload = \"upload(items: Stream<String>)\"\n"
    ));
    let kinds: Vec<Kind> = manifest.services[0]
        .methods
        .iter()
        .map(|method| method.kind())
        .collect();
    assert_eq!(
        kinds,
        [
            Kind::ServerStreaming,
            Kind::ClientStreaming,
            Kind::Bidirectional,
            Kind::Unary,
            Kind::ClientStreaming
        ]
    );
    let sum = &manifest.services[0].methods[1];
    assert!(sum.params.is_empty(), "the stream is not a request field");
    let stream = sum.stream.as_ref().expect("a client stream");
    assert_eq!(
        (stream.name.as_str(), &stream.ty),
        ("numbers", &Ty::Int("i64"))
    );
    let count = &manifest.services[0].methods[0];
    assert_eq!(count.result, Ty::Int("u64"), "the result is the item type");
    assert!(count.result_streams);
}

#[test]
fn parameters_before_the_stream_travel_in_the_first_message() {
    let manifest = parse("[s.methods]\nf = \"f(label: String, chunks: Stream<Vec<u8>>) -> u32\"\n");
    let method = &manifest.services[0].methods[0];
    assert_eq!(method.params.len(), 1);
    assert_eq!(method.params[0].name, "label");
    let descriptor = descriptor(&manifest.services[0]);
    let described = &descriptor["methods"][0];
    assert_eq!(
        described["request"]["properties"],
        json!({ "label": { "type": "string" } })
    );
    // Like a `Vec<u8>` field, a `Vec<u8>` item travels as a binary.
    assert_eq!(
        described["request_stream"],
        json!({ "type": "string", "format": "byte" })
    );
}

#[test]
fn the_descriptor_describes_each_stream_and_only_the_maps_that_exist() {
    let service = &parse(NUMBERS).services[0];
    let methods = descriptor(service)["methods"].clone();
    let int64 = json!({ "type": "integer", "format": "int64" });
    let uint64 = json!({ "type": "integer", "format": "int64", "minimum": 0 });

    let count = &methods[0];
    assert_eq!(count["kind"], "server_streaming");
    assert_eq!(
        count["request"]["required"],
        json!(["from", "to", "every_ms"])
    );
    assert_eq!(count["response_stream"], uint64);
    assert!(count.get("response").is_none());
    assert!(count.get("request_stream").is_none());

    let sum = &methods[1];
    assert_eq!(sum["kind"], "client_streaming");
    assert_eq!(
        sum["request"],
        json!({ "type": "object", "properties": {} })
    );
    assert_eq!(sum["request_stream"], int64);
    assert_eq!(
        sum["response"],
        json!({ "type": "object", "properties": { "sum": int64 }, "required": ["sum"] })
    );
    assert!(sum.get("response_stream").is_none());

    let running_total = &methods[2];
    assert_eq!(running_total["kind"], "bidirectional");
    assert_eq!(running_total["request_stream"], int64);
    assert_eq!(running_total["response_stream"], int64);
    assert!(running_total.get("response").is_none());
}

#[test]
fn the_schema_text_writes_streams_and_the_hash_sees_them() {
    let service = &parse(NUMBERS).services[0];
    assert_eq!(
        canonical_schema(service),
        "service numbers\n\
         method count(from: u64, to: u64, every_ms: u32) -> Stream<u64> returns \n\
         method sum(numbers: Stream<i64>) -> i64 returns sum\n\
         method running_total(numbers: Stream<i64>) -> Stream<i64> returns \n"
    );
    let base = schema_hash(service);
    let changed = [
        NUMBERS.replace("-> Stream<u64>", "-> u64"),
        NUMBERS.replace("sum(numbers: Stream<i64>)", "sum(numbers: i64)"),
        NUMBERS.replace("-> Stream<i64>\"", "-> i64\""),
        NUMBERS.replace("Stream<u64>", "Stream<u32>"),
    ];
    for text in changed {
        assert_ne!(schema_hash(&parse(&text).services[0]), base, "{text}");
    }
}

#[test]
fn generated_code_names_the_kind_the_methods_and_the_streams() {
    let manifest = format!("{NUMBERS}upload = \"upload(name: String, chunks: Stream<Bytes>)\"\n");
    let files = crate::generate(&manifest, "services.toml", &crate::Options::default())
        .unwrap_or_else(|error| panic!("{error}"));
    let code = &files[0].code;
    for expected in [
        "kind: ::meshrpc::MethodKind::ServerStreaming",
        "kind: ::meshrpc::MethodKind::ClientStreaming",
        "kind: ::meshrpc::MethodKind::Bidirectional",
        "pub mod numbers_methods",
        "pub const RUNNING_TOTAL: &::meshrpc::MethodSpec = &super::NUMBERS_SPEC.methods[2];",
        "numbers: ::meshrpc::Streaming<i64>,",
        "::meshrpc::Streaming<u64>",
        // A `Bytes` item travels as a binary shared with its frame, in a transparent wrapper.
        "pub struct UploadRequestItem(",
        "::meshrpc::__generated::shared_bytes",
        "numbers_methods::UPLOAD,",
    ] {
        assert!(code.contains(expected), "missing {expected:?} in:\n{code}");
    }
    assert!(
        !code.contains("pub struct CountResponse "),
        "a server stream has no response map"
    );
    assert!(
        !code.contains(".methods[0],"),
        "the client names its methods"
    );
}
