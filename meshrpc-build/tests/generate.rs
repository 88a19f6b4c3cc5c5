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
