//! Arbitrary bytes where a node expects gossip: decoded as a foca `Header<MemberId>` and as a
//! join exchange's `Vec<Member<MemberId>>` the way nodes decode them, round-tripped, then fed
//! to a real foca state machine with the node's codec. Nothing may panic.
//!
//! The checks live in `faults/src/fuzzing/membership.rs`, so `cargo test -p faults --test
//! fuzz_replay` runs them too, over the seeds and deterministic mutations.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../faults/src/fuzzing/membership.rs"]
mod membership;

fuzz_target!(|data: &[u8]| {
    membership::check(data);
});
