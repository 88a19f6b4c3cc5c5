//! Arbitrary bytes, delivered in arbitrary chunks, into meshrpc's frame decoder; every `CALL`
//! and `STATUS` body it yields is decoded as a `CallHeader` or `StatusBody`. Nothing may panic,
//! and the decoder's guarantees (see `frame_check`) must hold.
//!
//! The checks live in `meshrpc/tests/raw_peer/frame_check.rs` so that `cargo test -p meshrpc
//! --test hostile` runs them too, over the seeds and 20,000 deterministic mutations.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../meshrpc/tests/raw_peer/frame_check.rs"]
mod frame_check;

fuzz_target!(|data: &[u8]| frame_check::check_fuzz_input(data));
