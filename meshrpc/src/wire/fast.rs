//! The call header and the `ok` status, written and read without serde: every call sends one
//! header and one status, and serde's generic path (a visitor per key, UTF-8 checks of every
//! key) cost more than the rest of the framing together.
//!
//! The bytes are exactly those of the serde encoding ([`CallHeader`]'s named map, in field
//! order, absent fields left out), so peers cannot tell the difference. Reading takes a fast
//! path only for the shapes this crate writes; anything else (unknown keys, nil values, other
//! integer widths, duplicates, trailing bytes, malformed input) goes to the serde decoder, so
//! what is accepted, and every error message, stay the same.

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};

use super::frame::FrameKind;
use super::header::CallHeader;
use crate::metadata::{MAX_PAIRS, Metadata};

/// The body of the `STATUS` frame of every successful call: `{"code": 0}`.
pub const OK_STATUS_BODY: &[u8] = b"\x81\xa4code\x00";

/// Appends a `CALL` frame for `service.method` to `out`: the header the serde encoding of
/// [`CallHeader`] would give, written directly.
pub fn put_call_frame(
    out: &mut BytesMut,
    service: &str,
    method: &str,
    deadline_ms: Option<u64>,
    metadata: &Metadata,
    sticky_key: Option<&str>,
) {
    let start = out.len();
    out.put_u8(FrameKind::Call as u8);
    out.put_u32(0);
    let fields = 2
        + usize::from(deadline_ms.is_some())
        + usize::from(!metadata.is_empty())
        + usize::from(sticky_key.is_some());
    put_map_len(out, fields);
    put_str(out, "service");
    put_str(out, service);
    put_str(out, "method");
    put_str(out, method);
    if let Some(deadline_ms) = deadline_ms {
        put_str(out, "deadline_ms");
        put_uint(out, deadline_ms);
    }
    if !metadata.is_empty() {
        put_str(out, "metadata");
        put_map_len(out, metadata.len());
        for (key, value) in metadata.iter() {
            put_str(out, key);
            put_str(out, value);
        }
    }
    if let Some(sticky_key) = sticky_key {
        put_str(out, "sticky_key");
        put_str(out, sticky_key);
    }
    let len = u32::try_from(out.len() - start - 5).unwrap_or(u32::MAX);
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// The length of the `CALL` frame [`put_call_frame`] writes, so its buffer can be allocated
/// at its exact size (a buffer frozen with spare room costs one more allocation).
pub fn call_frame_len(
    service: &str,
    method: &str,
    deadline_ms: Option<u64>,
    metadata: &Metadata,
    sticky_key: Option<&str>,
) -> usize {
    let fields = 2
        + usize::from(deadline_ms.is_some())
        + usize::from(!metadata.is_empty())
        + usize::from(sticky_key.is_some());
    let mut len = 5 + map_len_len(fields) + str_len("service") + str_len(service);
    len += str_len("method") + str_len(method);
    if let Some(deadline_ms) = deadline_ms {
        len += str_len("deadline_ms") + uint_len(deadline_ms);
    }
    if !metadata.is_empty() {
        len += str_len("metadata") + map_len_len(metadata.len());
        len += metadata
            .iter()
            .map(|(key, value)| str_len(key) + str_len(value))
            .sum::<usize>();
    }
    if let Some(sticky_key) = sticky_key {
        len += str_len("sticky_key") + str_len(sticky_key);
    }
    len
}

fn map_len_len(len: usize) -> usize {
    match len {
        0..16 => 1,
        16..65_536 => 3,
        _ => 5,
    }
}

fn str_len(text: &str) -> usize {
    let header = match text.len() {
        0..32 => 1,
        32..256 => 2,
        256..65_536 => 3,
        _ => 5,
    };
    header + text.len()
}

fn uint_len(value: u64) -> usize {
    match value {
        0..128 => 1,
        128..256 => 2,
        256..65_536 => 3,
        65_536..4_294_967_296 => 5,
        _ => 9,
    }
}

fn put_map_len(out: &mut BytesMut, len: usize) {
    if len < 16 {
        out.put_u8(0x80 | len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.put_u8(0xde);
        out.put_u16(len);
    } else {
        out.put_u8(0xdf);
        out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    }
}

fn put_str(out: &mut BytesMut, text: &str) {
    let len = text.len();
    if len < 32 {
        out.put_u8(0xa0 | len as u8);
    } else if let Ok(len) = u8::try_from(len) {
        out.put_u8(0xd9);
        out.put_u8(len);
    } else if let Ok(len) = u16::try_from(len) {
        out.put_u8(0xda);
        out.put_u16(len);
    } else {
        out.put_u8(0xdb);
        out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    }
    out.put_slice(text.as_bytes());
}

fn put_uint(out: &mut BytesMut, value: u64) {
    if value < 128 {
        out.put_u8(value as u8);
    } else if let Ok(value) = u8::try_from(value) {
        out.put_u8(0xcc);
        out.put_u8(value);
    } else if let Ok(value) = u16::try_from(value) {
        out.put_u8(0xcd);
        out.put_u16(value);
    } else if let Ok(value) = u32::try_from(value) {
        out.put_u8(0xce);
        out.put_u32(value);
    } else {
        out.put_u8(0xcf);
        out.put_u64(value);
    }
}

/// Reads a call header of the shape [`put_call_frame`] writes; `None` for anything else
/// (which the serde decoder then reads, or refuses with its own message).
pub fn read_call_header(body: &[u8]) -> Option<CallHeader<'_>> {
    let mut reader = Reader { rest: body };
    let fields = reader.map_len()?;
    let mut service = None;
    let mut method = None;
    let mut deadline_ms = None;
    let mut metadata = None;
    let mut sticky_key = None;
    for _ in 0..fields {
        let key = reader.str_bytes()?;
        // A key given twice is an error for serde: leave it to serde.
        match key {
            b"service" if service.is_none() => service = Some(reader.str()?),
            b"method" if method.is_none() => method = Some(reader.str()?),
            b"deadline_ms" if deadline_ms.is_none() => deadline_ms = Some(reader.uint()?),
            b"metadata" if metadata.is_none() => metadata = Some(reader.metadata()?),
            b"sticky_key" if sticky_key.is_none() => sticky_key = Some(reader.str()?.to_owned()),
            _ => return None,
        }
    }
    if !reader.rest.is_empty() {
        return None;
    }
    Some(CallHeader {
        service: Cow::Borrowed(service?),
        method: Cow::Borrowed(method?),
        deadline_ms,
        metadata: metadata.unwrap_or_default(),
        sticky_key,
    })
}

/// A cursor over MessagePack bytes, for the few shapes the fast path reads.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        if self.rest.len() < len {
            return None;
        }
        let (taken, rest) = self.rest.split_at(len);
        self.rest = rest;
        Some(taken)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|bytes| bytes[0])
    }

    fn be(&mut self, len: usize) -> Option<u64> {
        let bytes = self.take(len)?;
        Some(
            bytes
                .iter()
                .fold(0u64, |value, byte| (value << 8) | u64::from(*byte)),
        )
    }

    fn map_len(&mut self) -> Option<usize> {
        match self.byte()? {
            marker @ 0x80..=0x8f => Some(usize::from(marker & 0x0f)),
            0xde => self.be(2).map(|len| len as usize),
            0xdf => self.be(4).map(|len| len as usize),
            _ => None,
        }
    }

    fn str_bytes(&mut self) -> Option<&'a [u8]> {
        let len = match self.byte()? {
            marker @ 0xa0..=0xbf => usize::from(marker & 0x1f),
            0xd9 => self.be(1)? as usize,
            0xda => self.be(2)? as usize,
            0xdb => self.be(4)? as usize,
            _ => return None,
        };
        self.take(len)
    }

    fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.str_bytes()?).ok()
    }

    fn uint(&mut self) -> Option<u64> {
        match self.byte()? {
            value @ 0x00..=0x7f => Some(u64::from(value)),
            0xcc => self.be(1),
            0xcd => self.be(2),
            0xce => self.be(4),
            0xcf => self.be(8),
            _ => None,
        }
    }

    fn metadata(&mut self) -> Option<Metadata> {
        let pairs = self.map_len()?;
        if pairs > MAX_PAIRS {
            return None;
        }
        let mut metadata = Metadata::new();
        for _ in 0..pairs {
            let key = self.str()?;
            let value = self.str()?;
            metadata.insert(key, value);
        }
        Some(metadata)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::wire::StatusBody;

    fn serde_frame(header: &CallHeader<'_>) -> Vec<u8> {
        let body = rmp_serde::to_vec_named(header).expect("encodes");
        let mut frame = vec![FrameKind::Call as u8];
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        frame
    }

    fn fast_frame(header: &CallHeader<'_>) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_call_frame(
            &mut out,
            &header.service,
            &header.method,
            header.deadline_ms,
            &header.metadata,
            header.sticky_key.as_deref(),
        );
        out.to_vec()
    }

    fn serde_decode(body: &[u8]) -> Option<CallHeader<'_>> {
        crate::codec::from_slice_bounded(body, crate::codec::MAX_HEADER_DEPTH).ok()
    }

    #[test]
    fn the_ok_status_body_is_the_serde_encoding_of_ok() {
        let body = rmp_serde::to_vec_named(&StatusBody::ok()).expect("encodes");
        assert_eq!(body, OK_STATUS_BODY);
    }

    #[test]
    fn a_header_of_another_shape_is_left_to_serde() {
        // An unknown key, a nil deadline, a signed deadline, a duplicate, trailing bytes.
        let cases: [&[u8]; 5] = [
            b"\x83\xa7service\xa1s\xa6method\xa1m\xa8priority\x03",
            b"\x83\xa7service\xa1s\xa6method\xa1m\xabdeadline_ms\xc0",
            b"\x83\xa7service\xa1s\xa6method\xa1m\xabdeadline_ms\xd0\x05",
            b"\x83\xa7service\xa1s\xa6method\xa1m\xa7service\xa1t",
            b"\x82\xa7service\xa1s\xa6method\xa1m\x00",
        ];
        for body in cases {
            assert!(read_call_header(body).is_none(), "{body:?}");
        }
        // Serde reads the first three; refuses the duplicate.
        assert_eq!(serde_decode(cases[0]).expect("read").service, "s");
        assert_eq!(serde_decode(cases[1]).expect("read").deadline_ms, None);
        assert_eq!(serde_decode(cases[2]).expect("read").deadline_ms, Some(5));
        assert!(serde_decode(cases[3]).is_none());
    }

    fn header_strategy() -> impl Strategy<Value = CallHeader<'static>> {
        (
            "[a-z_]{1,40}",
            ".{0,300}",
            proptest::option::of(any::<u64>()),
            proptest::collection::vec(("[a-z-]{1,8}", ".{0,40}"), 0..20),
            proptest::option::of(".{0,40}"),
        )
            .prop_map(
                |(service, method, deadline_ms, pairs, sticky_key)| CallHeader {
                    service: service.into(),
                    method: method.into(),
                    deadline_ms,
                    metadata: pairs.into_iter().collect(),
                    sticky_key,
                },
            )
    }

    proptest! {
        #[test]
        fn the_written_header_is_the_serde_encoding(header in header_strategy()) {
            let frame = fast_frame(&header);
            prop_assert_eq!(&frame, &serde_frame(&header));
            let len = call_frame_len(
                &header.service,
                &header.method,
                header.deadline_ms,
                &header.metadata,
                header.sticky_key.as_deref(),
            );
            prop_assert_eq!(frame.len(), len);
        }

        #[test]
        fn the_fast_reader_reads_what_serde_reads(header in header_strategy()) {
            let frame = fast_frame(&header);
            let fast = read_call_header(&frame[5..]);
            prop_assert_eq!(fast.as_ref(), Some(&header));
            prop_assert_eq!(fast, serde_decode(&frame[5..]));
        }

        #[test]
        fn whatever_the_fast_reader_accepts_serde_reads_the_same(
            header in header_strategy(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let frame = fast_frame(&header);
            let mut body = frame[5..].to_vec();
            let at = at.index(body.len());
            body[at] = byte;
            let body = &body[..cut.index(body.len() + 1)];
            if let Some(fast) = read_call_header(body) {
                prop_assert_eq!(Some(fast), serde_decode(body));
            }
        }

        #[test]
        fn garbage_never_panics_the_fast_reader(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            if let Some(fast) = read_call_header(&bytes) {
                prop_assert_eq!(Some(fast), serde_decode(&bytes));
            }
        }
    }
}
