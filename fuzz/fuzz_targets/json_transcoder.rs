//! The gateway's JSON ⇄ MessagePack transcoder on arbitrary input: the first byte picks a
//! greeter method, the rest is its JSON request body (and, the other way, a service's
//! MessagePack response). Nothing may panic; what is accepted must be well-formed.
//!
//! The checks live in `faults/src/fuzzing/transcoder.rs`, so `cargo test -p faults --test
//! fuzz_replay` runs them too, over the seeds and deterministic mutations.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

#[path = "../../faults/src/fuzzing/transcoder.rs"]
mod transcoder;

static DESCRIPTOR: LazyLock<gateway::descriptors::Descriptor> =
    LazyLock::new(transcoder::descriptor);

fuzz_target!(|data: &[u8]| {
    transcoder::check(&DESCRIPTOR, data);
});
