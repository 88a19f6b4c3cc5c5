//! Checks for the `membership_decoder` fuzz target: hostile bytes where meshrpc expects gossip.
//!
//! A node reads gossip in two places: datagrams (a foca `Header<MemberId>`, then a `u16` count
//! of member updates, each a `Member<MemberId>`, all MessagePack) and the join exchange (a
//! `Vec<Member<MemberId>>`). Both are decoded here the way the node decodes them — bounded
//! nesting, named fields — and what decodes must encode back to the same value. Then the bytes
//! go to a real foca state machine with the node's codec, as the membership agent feeds it:
//! nothing may panic, and everything foca sends in reply must decode.
//!
//! Shared by `fuzz/fuzz_targets/membership_decoder.rs` (through `#[path]`) and the replay test
//! in `faults/tests/fuzz_replay.rs`, so it depends only on meshrpc, foca, rand and rmp-serde.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::num::NonZeroU32;

use bytes::{Buf, BufMut};
use foca::{AccumulatingRuntime, Config, Foca, Header, Member, NoCustomBroadcast};
use meshrpc::codec::{MAX_HEADER_DEPTH, from_read_bounded, from_slice_bounded};
use meshrpc::membership::{MemberId, Published};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// The cluster of the fuzzed node and of its seeds.
pub const CLUSTER: &str = "fuzz";

/// The identity of the node that receives the fuzzed datagrams; seeds are addressed to it.
pub fn local() -> MemberId {
    member("10.77.0.1:11999", "mesh-api", 1_700_000_000_000_000, &[])
}

/// A member identity as nodes gossip it.
pub fn member(addr: &str, name: &str, generation: u64, services: &[(&str, u64)]) -> MemberId {
    MemberId {
        addr: addr.parse::<SocketAddr>().expect("an address"),
        name: name.to_owned(),
        cluster: CLUSTER.to_owned(),
        generation,
        draining: false,
        services: services
            .iter()
            .map(|(name, hash)| Published {
                name: (*name).to_owned(),
                schema_hash: *hash,
            })
            .collect(),
        http: Vec::new(),
        tags: Vec::new(),
    }
}

/// The node's gossip codec (`meshrpc::membership::codec::MsgPackCodec`, which is internal):
/// named-field MessagePack out, bounded nesting in.
#[derive(Debug, Clone, Copy, Default)]
pub struct Codec;

impl foca::Codec<MemberId> for Codec {
    type Error = rmp_serde::decode::Error;

    fn encode_header(
        &mut self,
        header: &Header<MemberId>,
        buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        rmp_serde::encode::write_named(&mut buf.writer(), header)
            .map_err(|error| rmp_serde::decode::Error::Uncategorized(error.to_string()))
    }

    fn decode_header(&mut self, buf: impl Buf) -> Result<Header<MemberId>, Self::Error> {
        from_read_bounded(buf.reader(), MAX_HEADER_DEPTH)
    }

    fn encode_member(
        &mut self,
        member: &Member<MemberId>,
        buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        rmp_serde::encode::write_named(&mut buf.writer(), member)
            .map_err(|error| rmp_serde::decode::Error::Uncategorized(error.to_string()))
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<Member<MemberId>, Self::Error> {
        from_read_bounded(buf.reader(), MAX_HEADER_DEPTH)
    }
}

/// A foca instance configured like a node's (LAN timings, 1100-byte packets).
pub fn swim(identity: MemberId, seed: u64) -> Foca<MemberId, Codec, StdRng, NoCustomBroadcast> {
    let mut config = Config::new_lan(NonZeroU32::new(16).expect("non-zero"));
    config.max_packet_size = std::num::NonZeroUsize::new(1100).expect("non-zero");
    Foca::new(identity, config, StdRng::seed_from_u64(seed), Codec)
}

/// What the bytes turned out to be.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// They began with a header.
    pub header: bool,
    /// They were a whole member list.
    pub member_list: bool,
    /// foca took them without an error.
    pub accepted: bool,
}

/// Runs every check on `data`; panics if one fails.
pub fn check(data: &[u8]) -> Outcome {
    let mut outcome = Outcome::default();

    // The datagram path: the agent peeks at the header to drop other clusters' gossip.
    let mut peek = data;
    if let Ok(header) = foca::Codec::decode_header(&mut Codec, &mut peek) {
        outcome.header = true;
        let encoded = rmp_serde::to_vec_named(&header).expect("a decoded header encodes");
        let again: Header<MemberId> =
            from_slice_bounded(&encoded, MAX_HEADER_DEPTH).expect("an encoded header decodes");
        assert_eq!(again, header, "a header survives a round trip");
    }

    // The join path: a whole member list.
    if let Ok(members) = from_slice_bounded::<Vec<Member<MemberId>>>(data, MAX_HEADER_DEPTH) {
        outcome.member_list = true;
        let encoded = rmp_serde::to_vec_named(&members).expect("decoded members encode");
        let again: Vec<Member<MemberId>> =
            from_slice_bounded(&encoded, MAX_HEADER_DEPTH).expect("encoded members decode");
        assert_eq!(again, members, "a member list survives a round trip");
        let mut foca = swim(local(), 1);
        let mut runtime = AccumulatingRuntime::new();
        let _ = foca.apply_many(members.into_iter(), true, &mut runtime);
        check_replies(&mut runtime);
    }

    // foca itself, as the agent feeds it.
    let mut foca = swim(local(), 2);
    let mut runtime = AccumulatingRuntime::new();
    outcome.accepted = foca.handle_data(data, &mut runtime).is_ok();
    check_replies(&mut runtime);
    // A second datagram after the first: state built from hostile input must not break later.
    let _ = foca.handle_data(data, &mut runtime);
    check_replies(&mut runtime);
    outcome
}

/// Everything foca wants to send must be a decodable header.
fn check_replies(runtime: &mut AccumulatingRuntime<MemberId>) {
    while let Some((_to, bytes)) = runtime.to_send() {
        let mut slice = &bytes[..];
        foca::Codec::decode_header(&mut Codec, &mut slice).expect("foca's own message decodes");
    }
    while runtime.to_schedule().is_some() {}
    while runtime.to_notify().is_some() {}
}
