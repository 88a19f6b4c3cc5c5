//! The generated code for a sample manifest, as a reviewed snapshot.

#[test]
fn the_sample_manifest_generates_the_reviewed_code() {
    let manifest = include_str!("fixtures_sample.toml");
    let files = meshrpc_build::generate(
        manifest,
        "services.toml",
        &meshrpc_build::Options::default(),
    )
    .expect("the sample manifest is valid");
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].file_name, "greeter.rs");
    insta::assert_snapshot!(files[0].code);
}

#[test]
fn the_complete_example_of_the_manifest_reference_is_valid() {
    let reference = include_str!("../../docs/MANIFEST.md");
    let section = reference
        .split("## A complete example")
        .nth(1)
        .expect("the reference has a complete example");
    let example = section
        .split("```toml\n")
        .nth(1)
        .and_then(|block| block.split("```").next())
        .expect("the example is a toml block");
    let files =
        meshrpc_build::generate(example, "services.toml", &meshrpc_build::Options::default())
            .unwrap_or_else(|error| panic!("{error}"));
    let code = &files[0].code;
    for item in [
        "pub trait Greeter",
        "pub struct Postcard",
        "pub enum Weather",
        "crate::model::Mood",
    ] {
        assert!(code.contains(item), "{item}");
    }
}

#[test]
fn the_streaming_example_of_the_manifest_reference_is_the_numbers_manifest() {
    let reference = include_str!("../../docs/MANIFEST.md");
    let section = reference
        .split("## Streaming methods")
        .nth(1)
        .expect("the reference has a streaming section");
    let example = section
        .split("```toml\n")
        .nth(1)
        .and_then(|block| block.split("```").next())
        .expect("the example is a toml block");
    assert_eq!(
        example,
        include_str!("../../services/numbers/services.toml"),
        "the example is services/numbers/services.toml"
    );
    let files =
        meshrpc_build::generate(example, "services.toml", &meshrpc_build::Options::default())
            .unwrap_or_else(|error| panic!("{error}"));
    let code = &files[0].code;
    for item in [
        "pub trait Numbers",
        "numbers: ::meshrpc::Streaming<i64>",
        "pub mod numbers_methods",
    ] {
        assert!(code.contains(item), "{item}");
    }
}
