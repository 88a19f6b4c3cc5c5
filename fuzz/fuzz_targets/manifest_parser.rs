//! Arbitrary text as a `services.toml` for `meshrpc_build::generate`: it must never panic, and
//! a refusal must be located inside the text.
//!
//! The checks live in `faults/src/fuzzing/manifest.rs`, so `cargo test -p faults --test
//! fuzz_replay` runs them too, over the repository's manifests and deterministic mutations.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../faults/src/fuzzing/manifest.rs"]
mod manifest;

fuzz_target!(|data: &[u8]| {
    manifest::check(data);
});
