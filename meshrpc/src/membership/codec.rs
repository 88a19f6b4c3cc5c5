//! The foca codec: membership messages as MessagePack, so the gossip is as readable (and as
//! documented, see `docs/PROTOCOL.md`) as the calls.

use bytes::{Buf, BufMut};
use foca::{Header, Member};

use super::identity::MemberId;

/// Encodes foca headers and members with rmp-serde.
#[derive(Debug, Clone, Default)]
pub(crate) struct MsgPackCodec;

/// A gossip message that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CodecError {
    #[error("cannot encode gossip: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("cannot decode gossip: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

impl foca::Codec<MemberId> for MsgPackCodec {
    type Error = CodecError;

    fn encode_header(
        &mut self,
        header: &Header<MemberId>,
        buf: impl BufMut,
    ) -> Result<(), CodecError> {
        rmp_serde::encode::write_named(&mut buf.writer(), header)?;
        Ok(())
    }

    fn decode_header(&mut self, buf: impl Buf) -> Result<Header<MemberId>, CodecError> {
        Ok(crate::codec::from_read_bounded(
            buf.reader(),
            crate::codec::MAX_HEADER_DEPTH,
        )?)
    }

    fn encode_member(
        &mut self,
        member: &Member<MemberId>,
        buf: impl BufMut,
    ) -> Result<(), CodecError> {
        rmp_serde::encode::write_named(&mut buf.writer(), member)?;
        Ok(())
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<Member<MemberId>, CodecError> {
        Ok(crate::codec::from_read_bounded(
            buf.reader(),
            crate::codec::MAX_HEADER_DEPTH,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use foca::{Codec, Incarnation, Message, State};

    use super::*;

    #[test]
    fn headers_and_members_round_trip_and_consume_exactly_their_bytes() {
        let id = MemberId::seed("127.0.0.1:1".parse().expect("addr"), "test");
        let header = Header {
            src: id.clone(),
            src_incarnation: 3 as Incarnation,
            dst: id.clone(),
            message: Message::Ping(9),
        };
        let member = Member::new(id, 4, State::Alive);
        let mut codec = MsgPackCodec;
        let mut wire = Vec::new();
        codec.encode_header(&header, &mut wire).expect("encodes");
        codec.encode_member(&member, &mut wire).expect("encodes");
        let mut slice = &wire[..];
        assert_eq!(codec.decode_header(&mut slice).expect("decodes"), header);
        assert_eq!(codec.decode_member(&mut slice).expect("decodes"), member);
        assert!(slice.is_empty());
    }

    #[test]
    fn positional_gossip_is_refused() {
        let id = MemberId::seed("127.0.0.1:1".parse().expect("addr"), "test");
        let member = Member::new(id, 4, State::Alive);
        // rmp-serde's default encoding writes structs as arrays of their fields in order.
        let positional = rmp_serde::to_vec(&member).expect("encodes");
        let error = MsgPackCodec
            .decode_member(&mut &positional[..])
            .expect_err("positional");
        assert!(error.to_string().contains("got an array"), "{error}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut codec = MsgPackCodec;
        for garbage in [&b""[..], b"\xc1", b"\x93\x01\x02", b"\xdf\xff\xff\xff\xff"] {
            assert!(codec.decode_header(&mut &garbage[..]).is_err());
        }
    }
}
