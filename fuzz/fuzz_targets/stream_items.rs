//! Arbitrary bytes, delivered in arbitrary chunks, into meshrpc's decoder of streams of items
//! (either half of a streaming call). Nothing may panic, and a stream may be reported complete
//! only when its sender said so (see `item_check`).
//!
//! The checks live in `meshrpc/tests/raw_peer/item_check.rs` so that `cargo test -p meshrpc
//! --test streaming_wire` runs them too, over the seeds and deterministic mutations.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../meshrpc/tests/raw_peer/item_check.rs"]
mod item_check;

fuzz_target!(|data: &[u8]| item_check::check_fuzz_input(data));
