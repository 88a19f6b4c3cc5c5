//! Checks for the `manifest_parser` fuzz target: any text given to `meshrpc_build::generate`
//! as a `services.toml`.
//!
//! It must never panic; a refusal must be a manifest error located inside the text
//! (`services.toml:LINE:COL`, as `build.rs` users see it); generated code must be non-empty and
//! the same on a second run.
//!
//! Shared by `fuzz/fuzz_targets/manifest_parser.rs` (through `#[path]`) and the replay test.
#![allow(dead_code, unreachable_pub)]

/// What became of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not UTF-8: a manifest is text, nothing to check.
    NotText,
    /// Code was generated for this many services.
    Generated(usize),
    /// Refused with a located error.
    Refused,
}

/// Runs the checks on `data`; panics if one fails.
pub fn check(data: &[u8]) -> Outcome {
    let Ok(text) = std::str::from_utf8(data) else {
        return Outcome::NotText;
    };
    let options = meshrpc_build::Options::default();
    match meshrpc_build::generate(text, "services.toml", &options) {
        Ok(files) => {
            for file in &files {
                assert!(!file.code.trim().is_empty(), "{} is empty", file.file_name);
                assert_eq!(file.file_name, format!("{}.rs", file.service));
            }
            let again = meshrpc_build::generate(text, "services.toml", &options)
                .expect("the same manifest generates again");
            assert_eq!(again, files, "generation is deterministic");
            Outcome::Generated(files.len())
        }
        Err(error) => {
            let message = error.to_string();
            let (line, column) = error
                .location()
                .unwrap_or_else(|| panic!("a manifest error without a location: {message}"));
            let lines = text.split('\n').count();
            assert!(
                (1..=lines).contains(&line) && column >= 1,
                "{message}: line {line} of a {lines}-line manifest"
            );
            let line_text = text.split('\n').nth(line - 1).unwrap_or_default();
            assert!(
                column <= line_text.chars().count() + 1,
                "{message}: column {column} past the end of {line_text:?}"
            );
            assert!(
                message.starts_with(&format!("services.toml:{line}:{column}: ")),
                "{message}"
            );
            Outcome::Refused
        }
    }
}
