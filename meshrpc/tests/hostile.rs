//! Hostile peers: raw bytes on real QUIC streams against a real node on loopback.
//!
//! Each test sends one kind of bad input and checks the exact status the node answers with,
//! then that the node still serves: a well-formed call on the same connection and one from a
//! proper client node both succeed. The TLS tests check who cannot get a call in at all. The
//! last tests check `docs/PROTOCOL.md`'s worked examples byte for byte and run the fuzz
//! target's checks over mutated frames.

mod common;
mod raw_peer;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use meshrpc::bytes::BytesMut;
use meshrpc::tls::dev_ca_params;
use meshrpc::transport::error_code;
use meshrpc::wire::{CallHeader, FrameDecoder, FrameKind, StatusBody, encode_frame};
use meshrpc::{CallOptions, Code, Limits, Metadata, Node, Status, TlsMaterial};
use raw_peer::frame_check::{self, Outcome, XorShift};
use raw_peer::*;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tempfile::TempDir;
use tokio::time::Instant;

/// A probe node, the raw peer connected to it and the state directory of their CA.
struct Setup {
    state: TempDir,
    probe: Probe,
    node: Node,
    peer: RawPeer,
}

impl Setup {
    async fn new() -> Setup {
        Setup::with_limits(Limits::default()).await
    }

    async fn with_limits(limits: Limits) -> Setup {
        let state = tempfile::tempdir().expect("tempdir");
        let probe = Probe::new();
        let node = Node::builder("probe")
            .cluster(CLUSTER)
            .state_dir(state.path())
            .listen("127.0.0.1:0".parse().expect("address"))
            .limits(limits)
            .publish(probe.clone())
            .start()
            .await
            .expect("the node starts");
        let _ = probe.node.set(node.clone());
        let peer = RawPeer::connect(state.path(), node.local_addr()).await;
        Setup {
            state,
            probe,
            node,
            peer,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.node.local_addr()
    }

    fn started(&self) -> usize {
        self.probe.counters.started.load(Ordering::SeqCst)
    }

    /// The node still serves: on the raw peer's connection and for a proper client.
    async fn assert_still_serving(&self) {
        self.peer.assert_serves().await;
        assert_node_serves(self.state.path(), self.addr()).await;
    }
}

/// A proper client node calls `probe.add` on `server` and gets the right answer.
async fn assert_node_serves(state: &Path, server: SocketAddr) {
    let client = start_client_node(state).await;
    let reply: Reply = client
        .channel_to(server)
        .unary(
            method("add"),
            &AddRequest { a: 1, b: 2 },
            &CallOptions::new().timeout(WAIT),
        )
        .await
        .expect("a proper client's call succeeds");
    assert_eq!(reply.result, 3);
}

/// A MessagePack string of fewer than 32 bytes, written by hand.
fn fixstr(text: &str) -> Vec<u8> {
    assert!(text.len() < 32);
    [vec![0xa0 | text.len() as u8], text.as_bytes().to_vec()].concat()
}

/// A MessagePack map of fewer than 16 entries with string keys and ready-made values, written
/// by hand so a test can leave out, misspell or mistype the fields meshrpc requires.
fn fixmap(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    assert!(entries.len() < 16);
    let mut out = vec![0x80 | entries.len() as u8];
    for (key, value) in entries {
        out.extend(fixstr(key));
        out.extend(value);
    }
    out
}

/// A map of strings to strings.
fn map_of(pairs: &[(&str, &str)]) -> Vec<u8> {
    let entries: Vec<(&str, Vec<u8>)> = pairs.iter().map(|(k, v)| (*k, fixstr(v))).collect();
    fixmap(&entries)
}

/// `depth` nested one-element arrays around a nil: `[[[...[nil]...]]]`.
fn nested_arrays(depth: usize) -> Vec<u8> {
    let mut out = vec![0x91; depth];
    out.push(0xc0);
    out
}

// ---------------------------------------------------------------------------------------------
// Malformed frames and headers

#[tokio::test]
async fn a_truncated_frame_is_answered_with_invalid_argument() {
    let setup = Setup::new().await;
    let bytes = [prefix(0x01, 100), vec![0x80; 10]].concat();
    let answer = setup.peer.exchange(&bytes).await;
    answer.assert_status(
        Code::InvalidArgument,
        "stream ended inside a frame (15 of 105 bytes)",
    );
    setup.assert_still_serving().await;
}

#[tokio::test]
async fn a_frame_of_an_unknown_kind_is_answered_with_invalid_argument() {
    let setup = Setup::new().await;
    let answer = setup.peer.exchange(b"\x7fGET / HTTP/1.1\r\n\r\n").await;
    answer.assert_status(Code::InvalidArgument, "unknown frame kind 0x7f");
    let answer = setup.peer.exchange(&[0x00; 64]).await;
    answer.assert_status(Code::InvalidArgument, "unknown frame kind 0x00");
    setup.assert_still_serving().await;
}

#[tokio::test]
async fn a_lone_unknown_kind_byte_is_answered_at_once() {
    // A read timeout far beyond the test's wait: only an answer on the kind byte alone passes.
    let setup =
        Setup::with_limits(Limits::default().request_read_timeout(Duration::from_secs(600))).await;
    let (mut send, recv) = setup.peer.connection.open_bi().await.expect("stream");
    send.write_all(b"\x7f").await.expect("sent");
    // No FIN and no length: the node judges the kind byte alone.
    let answer = read_answer(recv).await;
    answer.assert_status(Code::InvalidArgument, "unknown frame kind 0x7f");
    setup.assert_still_serving().await;
}

#[tokio::test]
async fn a_first_data_frame_with_a_huge_length_is_answered_as_too_large() {
    // The prefix is judged (kind, then length) before whether its kind may open a stream.
    let setup = Setup::new().await;
    let answer = setup.peer.exchange(&prefix(0x02, u32::MAX)).await;
    answer.assert_status(
        Code::ResourceExhausted,
        "Data frame of 4294967295 bytes exceeds the limit of 4194304 bytes",
    );
    setup.assert_still_serving().await;
}

#[tokio::test]
async fn a_stream_that_does_not_open_with_call_is_answered_with_invalid_argument() {
    let setup = Setup::new().await;
    let data = data_frame(&AddRequest { a: 1, b: 2 });
    let answer = setup.peer.exchange(&data).await;
    answer.assert_status(Code::InvalidArgument, "must open with a CALL frame; Data");
    // STATUS from a caller is refused alike.
    let answer = setup
        .peer
        .exchange(&frame(FrameKind::Status, b"\x80"))
        .await;
    answer.assert_status(Code::InvalidArgument, "must open with a CALL frame; Status");
    assert_eq!(setup.started(), 0);
    setup.assert_still_serving().await;
}

#[tokio::test]
async fn a_call_header_that_is_not_messagepack_is_answered_with_invalid_argument() {
    let setup = Setup::new().await;
    let request = [
        frame(
            FrameKind::Call,
            b"{\"service\":\"probe\",\"method\":\"add\"}",
        ),
        data_frame(&AddRequest { a: 1, b: 2 }),
    ]
    .concat();
    let answer = setup.peer.exchange(&request).await;
    answer.assert_status(Code::InvalidArgument, "malformed call header");
    // 0xc1 is the one byte MessagePack never uses.
    let request = [frame(FrameKind::Call, b"\xc1"), data_frame(&())].concat();
    let answer = setup.peer.exchange(&request).await;
    answer.assert_status(Code::InvalidArgument, "malformed call header");
    assert_eq!(setup.started(), 0);
    setup.assert_still_serving().await;
}

#[tokio::test]
async fn a_call_header_without_a_method_is_answered_with_invalid_argument() {
    let setup = Setup::new().await;
    let header = map_of(&[("service", "probe"), ("methd", "add")]);
    let request = [
        frame(FrameKind::Call, &header),
        data_frame(&AddRequest { a: 1, b: 2 }),
    ]
    .concat();
    let answer = setup.peer.exchange(&request).await;
    answer.assert_status(Code::InvalidArgument, "method");
    assert_eq!(setup.started(), 0);
    setup.assert_still_serving().await;
}

#[tokio::test]
async fn call_header_fields_of_the_wrong_type_are_answered_with_invalid_argument() {
    let setup = Setup::new().await;
    // deadline_ms: -5 (a negative fixint).
    let header = fixmap(&[
        ("service", fixstr("probe")),
        ("method", fixstr("add")),
        ("deadline_ms", vec![0xfb]),
    ]);
    let request = [
        frame(FrameKind::Call, &header),
        data_frame(&AddRequest { a: 1, b: 2 }),
    ]
    .concat();
    let answer = setup.peer.exchange(&request).await;
    answer.assert_status(Code::InvalidArgument, "malformed call header");
    assert_eq!(setup.started(), 0);
    setup.assert_still_serving().await;
}

#[tokio::test]
async fn unknown_keys_in_a_call_header_are_ignored() {
    let setup = Setup::new().await;
    let header = map_of(&[
        ("priority", "high"),
        ("service", "probe"),
        ("method", "add"),
        ("x-future-field", ""),
    ]);
    let request = [
        frame(FrameKind::Call, &header),
        data_frame(&AddRequest { a: 2, b: 2 }),
    ]
    .concat();
    let answer = setup.peer.exchange(&request).await;
    answer.assert_ok();
    let reply: Reply = rmp_serde::from_slice(answer.payload().expect("payload")).expect("decodes");
    assert_eq!(reply.result, 4);
}

#[tokio::test]
async fn a_call_header_that_is_an_array_is_answered_with_invalid_argument() {
    let setup = Setup::new().await;
    // ["probe", "add", 5000]: the fields in order, without their names.
    let header = [
        vec![0x93],
        fixstr("probe"),
        fixstr("add"),
        vec![0xcd, 0x13, 0x88],
    ]
    .concat();
    let request = [
        frame(FrameKind::Call, &header),
        data_frame(&AddRequest { a: 1, b: 2 }),
    ]
    .concat();
    let answer = setup.peer.exchange(&request).await;
    answer.assert_status(
        Code::InvalidArgument,
        "malformed call header: expected a map of field names to values, got an array",
    );
    assert_eq!(setup.started(), 0);
    setup.assert_still_serving().await;
}

#[tokio::test]
async fn call_header_keys_that_are_binaries_are_answered_with_invalid_argument() {
    let setup = Setup::new().await;
    // {bin "service": "probe", "method": "add"}
    let header = [
        vec![0x82, 0xc4, 7],
        b"service".to_vec(),
        fixstr("probe"),
        fixstr("method"),
        fixstr("add"),
    ]
    .concat();
    let request = [
        frame(FrameKind::Call, &header),
        data_frame(&AddRequest { a: 1, b: 2 }),
    ]
    .concat();
    let answer = setup.peer.exchange(&request).await;
    answer.assert_status(Code::InvalidArgument, "a field name is a binary");
    assert_eq!(setup.started(), 0);
    setup.assert_still_serving().await;
}

#[tokio::test]
async fn a_positional_payload_is_answered_with_invalid_argument() {
    let setup = Setup::new().await;
    // [1, 2] where {"a": 1, "b": 2} is expected.
    let request = [
        call_frame("probe", "add", None),
        frame(FrameKind::Data, b"\x92\x01\x02"),
    ]
    .concat();
    let answer = setup.peer.exchange(&request).await;
    answer.assert_status(
        Code::InvalidArgument,
        "the request for `add` does not match its signature: expected a map of field names to values, got an array",
    );
    setup.assert_still_serving().await;
}

#[tokio::test]
async fn an_unknown_service_is_refused_with_unimplemented_listing_the_published_services() {
    let setup = Setup::new().await;
    let request = [call_frame("billing", "charge", None), data_frame(&())].concat();
    let answer = setup.peer.exchange(&request).await;
    let status = answer.status();
    assert_eq!(
        Code::from_u32(status.code),
        Code::Unimplemented,
        "{answer:?}"
    );
    assert_eq!(
        status.message,
        "no service `billing` on this node; it publishes: meshrpc.node, probe"
    );
    // The handler never ran: the caller may try a node that publishes the service.
    assert!(status.refused, "{answer:?}");
    assert_eq!(answer.frames.len(), 1, "{answer:?}");
    setup.assert_still_serving().await;
}

#[tokio::test]
async fn an_unknown_method_is_answered_with_unimplemented_listing_the_methods() {
    let setup = Setup::new().await;
    let request = [call_frame("probe", "subtract", None), data_frame(&())].concat();
    let answer = setup.peer.exchange(&request).await;
    answer.assert_status(
        Code::Unimplemented,
        "service `probe` has no method `subtract`; its methods are: add, sleep, remaining, nested, panic, echo",
    );
    assert_eq!(setup.started(), 0);
    setup.assert_still_serving().await;
}

#[tokio::test]
async fn a_payload_of_the_wrong_shape_is_answered_with_invalid_argument() {
    let setup = Setup::new().await;
    let request = [
        call_frame("probe", "add", None),
        data_frame(&SleepRequest { ms: 1 }),
    ]
    .concat();
    let answer = setup.peer.exchange(&request).await;
    answer.assert_status(
        Code::InvalidArgument,
        "the request for `add` does not match its signature",
    );
    // A payload that is not MessagePack at all.
    let request = [
        call_frame("probe", "add", None),
        frame(FrameKind::Data, b"\xc1\xc1"),
    ]
    .concat();
    let answer = setup.peer.exchange(&request).await;
    answer.assert_status(Code::InvalidArgument, "`add`");
    setup.assert_still_serving().await;
}

#[tokio::test]
async fn zero_length_call_and_data_frames_are_answered_with_invalid_argument() {
    let setup = Setup::new().await;
    let request = [prefix(0x01, 0), data_frame(&AddRequest { a: 1, b: 2 })].concat();
    let answer = setup.peer.exchange(&request).await;
    answer.assert_status(Code::InvalidArgument, "malformed call header");
    let request = [call_frame("probe", "add", None), prefix(0x02, 0)].concat();
    let answer = setup.peer.exchange(&request).await;
    answer.assert_status(
        Code::InvalidArgument,
        "the request for `add` does not match",
    );
    // A CALL with no DATA at all.
    let answer = setup.peer.exchange(&call_frame("probe", "add", None)).await;
    answer.assert_status(
        Code::InvalidArgument,
        "ended before the request's DATA frame",
    );
    setup.assert_still_serving().await;
}

#[tokio::test]
async fn two_data_frames_in_a_unary_call_are_answered_with_invalid_argument() {
    let setup = Setup::new().await;
    let request = [
        call_frame("probe", "add", None),
        data_frame(&AddRequest { a: 1, b: 2 }),
        data_frame(&AddRequest { a: 3, b: 4 }),
    ]
    .concat();
    let answer = setup.peer.exchange(&request).await;
    answer.assert_status(Code::InvalidArgument, "a unary call carries one DATA frame");
    // A second CALL instead of the DATA frame.
    let request = [
        call_frame("probe", "add", None),
        call_frame("probe", "add", None),
    ]
    .concat();
    let answer = setup.peer.exchange(&request).await;
    answer.assert_status(
        Code::InvalidArgument,
        "expected the request's DATA frame, got Call",
    );
    assert_eq!(setup.started(), 0, "the handler never ran");
    setup.assert_still_serving().await;
}

#[tokio::test]
async fn a_call_header_that_repeats_a_key_is_answered_with_invalid_argument() {
    let setup = Setup::new().await;
    let header = map_of(&[
        ("service", "probe"),
        ("method", "add"),
        ("service", "probe"),
    ]);
    let request = [
        frame(FrameKind::Call, &header),
        data_frame(&AddRequest { a: 1, b: 2 }),
    ]
    .concat();
    let answer = setup.peer.exchange(&request).await;
    answer.assert_status(Code::InvalidArgument, "duplicate field `service`");
    setup.assert_still_serving().await;
}

#[tokio::test]
async fn http_and_gossip_streams_with_garbage_headers_do_not_disturb_the_node() {
    // Real nodes route these kinds to the HTTP tunnel and the membership layer; whatever they
    // answer to garbage, the stream must end and the node must keep serving.
    let setup = Setup::new().await;
    for kind in [FrameKind::Http, FrameKind::Gossip] {
        for body in [
            &b""[..],
            b"\x80",
            b"\xc1\xc1",
            b"\x81\xa7service\xa5probe",
            &[0x91; 4096],
        ] {
            let bytes = [frame(kind, body), b"GET / HTTP/1.1\r\n\r\n".to_vec()].concat();
            let answer = setup.peer.exchange(&bytes).await;
            if let Some(error) = &answer.error {
                assert!(!error.contains("connection lost"), "{kind:?}: {error}");
            }
        }
    }
    setup.assert_still_serving().await;
}

#[tokio::test]
async fn a_caller_that_resets_before_its_request_is_complete_gets_no_call() {
    let setup = Setup::new().await;
    // Reset inside the CALL frame: the node drops the stream without an answer.
    let (mut send, recv) = setup.peer.connection.open_bi().await.expect("stream");
    let call = call_frame("probe", "add", None);
    send.write_all(&call[..call.len() - 3]).await.expect("sent");
    tokio::time::sleep(Duration::from_millis(20)).await;
    send.reset(error_code::CANCELLED).expect("reset");
    let answer = read_answer(recv).await;
    assert!(answer.frames.is_empty(), "{answer:?}");
    // Reset after the CALL frame, before the DATA frame is complete: the node answers
    // `unavailable` naming the reset.
    let (mut send, recv) = setup.peer.connection.open_bi().await.expect("stream");
    let data = data_frame(&AddRequest { a: 1, b: 2 });
    send.write_all(&[call.clone(), data[..3].to_vec()].concat())
        .await
        .expect("sent");
    tokio::time::sleep(Duration::from_millis(20)).await;
    send.reset(error_code::CANCELLED).expect("reset");
    let answer = read_answer(recv).await;
    answer.assert_status(Code::Unavailable, "the peer reset the stream (code 1)");
    // Reset right behind the CALL frame, in the same packet as likely as not: what counts is
    // whether the node read the CALL frame before it learnt of the reset. Either way no
    // handler runs and the answer is one of the two documented ones.
    for _ in 0..20 {
        let (mut send, recv) = setup.peer.connection.open_bi().await.expect("stream");
        send.write_all(&[call.clone(), data[..3].to_vec()].concat())
            .await
            .expect("sent");
        send.reset(error_code::CANCELLED).expect("reset");
        let answer = read_answer(recv).await;
        assert!(answer.error.is_none(), "{answer:?}");
        if !answer.frames.is_empty() {
            answer.assert_status(Code::Unavailable, "the peer reset the stream (code 1)");
        }
    }
    assert_eq!(setup.started(), 0);
    setup.assert_still_serving().await;
}

#[tokio::test]
async fn a_zero_deadline_is_answered_with_deadline_exceeded_without_running_the_handler() {
    let setup = Setup::new().await;
    // `add` would finish on its first poll: with no time left it must not run at all.
    for (method, request) in [
        ("add", data_frame(&AddRequest { a: 1, b: 2 })),
        ("sleep", data_frame(&SleepRequest { ms: 1_000 })),
    ] {
        let request = [call_frame("probe", method, Some(0)), request].concat();
        let answer = setup.peer.exchange(&request).await;
        answer.assert_status(
            Code::DeadlineExceeded,
            "the call arrived with no time left (deadline_ms 0)",
        );
    }
    assert_eq!(setup.started(), 0);
    setup.assert_still_serving().await;
}

#[tokio::test]
async fn a_node_that_accepted_a_connection_can_call_back_over_it() {
    // The callee pools the connection the caller opened; its calls back must be served.
    let state = tempfile::tempdir().expect("tempdir");
    let front = start_probe_node(state.path(), Probe::new()).await;
    let back = start_probe_node(state.path(), Probe::new()).await;
    let forward: Reply = front
        .channel_to(back.local_addr())
        .unary(
            method("add"),
            &AddRequest { a: 1, b: 1 },
            &CallOptions::new().timeout(WAIT),
        )
        .await
        .expect("front calls back");
    assert_eq!(forward.result, 2);
    let reverse: Reply = back
        .channel_to(front.local_addr())
        .unary(
            method("add"),
            &AddRequest { a: 2, b: 2 },
            &CallOptions::new().timeout(Duration::from_secs(2)),
        )
        .await
        .expect("back calls front");
    assert_eq!(reverse.result, 4);
}

#[tokio::test]
async fn an_empty_stream_is_ended_without_an_answer() {
    let setup = Setup::new().await;
    let answer = setup.peer.exchange(b"").await;
    assert!(
        answer.bytes.is_empty() && answer.error.is_none(),
        "{answer:?}"
    );
    setup.assert_still_serving().await;
}

// ---------------------------------------------------------------------------------------------
// Sizes and memory

/// A field of `/proc/self/status` in KiB (`VmRSS`, `VmSize`).
fn memory_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

/// Sends `request` on `streams` streams at once and checks each is refused as too large, and
/// that neither the resident nor the virtual size of the process grows as if a 4 GiB body had
/// been reserved (loosely: other tests run in this process too).
async fn assert_refused_without_allocating(setup: &Setup, request: &[u8], needle: &str) {
    const STREAMS: usize = 8;
    let rss = memory_kib("VmRSS");
    let size = memory_kib("VmSize");
    let answers =
        futures_util::future::join_all((0..STREAMS).map(|_| setup.peer.exchange(request))).await;
    for answer in &answers {
        let status = answer.status();
        assert_eq!(
            Code::from_u32(status.code),
            Code::ResourceExhausted,
            "{status:?}"
        );
        assert!(status.message.contains(needle), "{status:?}");
    }
    let rss_growth = memory_kib("VmRSS").saturating_sub(rss);
    let size_growth = memory_kib("VmSize").saturating_sub(size);
    assert!(rss_growth < 256 * 1024, "RSS grew by {rss_growth} KiB");
    // Eight 4 GiB reservations would add 32 GiB of address space.
    assert!(
        size_growth < 3 * 1024 * 1024,
        "virtual size grew by {size_growth} KiB"
    );
}

#[tokio::test]
async fn a_huge_length_prefix_on_data_is_refused_without_allocating() {
    let setup = Setup::new().await;
    let request = [call_frame("probe", "add", None), prefix(0x02, u32::MAX)].concat();
    assert_refused_without_allocating(
        &setup,
        &request,
        "Data frame of 4294967295 bytes exceeds the limit of 4194304 bytes",
    )
    .await;
    assert_eq!(setup.started(), 0);
    setup.assert_still_serving().await;
}

#[tokio::test]
async fn a_huge_length_prefix_on_call_is_refused_without_allocating() {
    let setup = Setup::new().await;
    assert_refused_without_allocating(
        &setup,
        &prefix(0x01, u32::MAX),
        "Call frame of 4294967295 bytes exceeds the limit of 65536 bytes",
    )
    .await;
    // Just over the header limit is refused the same way.
    let answer = setup.peer.exchange(&prefix(0x01, 65_537)).await;
    assert_eq!(
        Code::from_u32(answer.status().code),
        Code::ResourceExhausted
    );
    setup.assert_still_serving().await;
}

#[tokio::test]
async fn a_refused_request_stops_the_callers_sending_half() {
    let setup = Setup::new().await;
    let (mut send, recv) = setup.peer.connection.open_bi().await.expect("stream");
    send.write_all(&prefix(0x02, u32::MAX))
        .await
        .expect("the prefix is sent");
    let answer = read_answer(recv).await;
    assert_eq!(
        Code::from_u32(answer.status().code),
        Code::ResourceExhausted
    );
    // The node stopped reading with TOO_LARGE, so the rest of the body is never sent.
    let stopped = tokio::time::timeout(WAIT, send.stopped())
        .await
        .expect("stopped within the wait")
        .expect("the stream was stopped, not lost");
    assert_eq!(stopped, Some(error_code::TOO_LARGE));
    let (mut send, recv) = setup.peer.connection.open_bi().await.expect("stream");
    // The node judges a prefix once it has all five bytes.
    send.write_all(&prefix(0x7f, 0)).await.expect("sent");
    let answer = read_answer(recv).await;
    assert_eq!(Code::from_u32(answer.status().code), Code::InvalidArgument);
    let stopped = tokio::time::timeout(WAIT, send.stopped())
        .await
        .expect("stopped within the wait")
        .expect("the stream was stopped, not lost");
    assert_eq!(stopped, Some(error_code::PROTOCOL));
    setup.assert_still_serving().await;
}

// ---------------------------------------------------------------------------------------------
// Slow and silent peers

const SHORT_READ_TIMEOUT: Duration = Duration::from_millis(300);

#[tokio::test]
async fn a_stream_never_written_to_is_answered_with_deadline_exceeded_after_the_read_timeout() {
    let setup =
        Setup::with_limits(Limits::default().request_read_timeout(SHORT_READ_TIMEOUT)).await;
    let started = Instant::now();
    // QUIC announces a stream only with its first frame; opening a later stream announces
    // every earlier one, so the node sees this stream although nothing is ever written to it.
    let (_silent_send, silent_recv) = setup.peer.connection.open_bi().await.expect("stream");
    setup.peer.assert_serves().await;
    let answer = read_answer(silent_recv).await;
    let elapsed = started.elapsed();
    answer.assert_status(Code::DeadlineExceeded, "no call header arrived in time");
    assert!(elapsed >= SHORT_READ_TIMEOUT, "answered after {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(3),
        "answered after {elapsed:?}"
    );
    setup.assert_still_serving().await;
}

#[tokio::test]
async fn a_header_that_trickles_in_then_gives_the_request_its_own_deadline() {
    // The header arrives in two parts, so the server waits for it (and starts its read timer);
    // once the header is whole, the request is due by the call's deadline, which is much
    // earlier than the read timeout the timer was started with.
    let read_timeout = Duration::from_secs(4);
    let setup = Setup::with_limits(Limits::default().request_read_timeout(read_timeout)).await;
    let (mut send, recv) = setup.peer.connection.open_bi().await.expect("stream");
    let header = call_frame("probe", "add", Some(100));
    let started = Instant::now();
    send.write_all(&header[..3]).await.expect("sent");
    tokio::time::sleep(Duration::from_millis(200)).await;
    send.write_all(&header[3..]).await.expect("sent");
    let answer = read_answer(recv).await;
    let elapsed = started.elapsed();
    answer.assert_status(
        Code::DeadlineExceeded,
        "the request did not arrive before the deadline",
    );
    assert!(
        elapsed < read_timeout / 2,
        "answered after {elapsed:?}: the request waited for the read timeout, not the deadline"
    );
    assert_eq!(setup.started(), 0);
    drop(send);
    setup.assert_still_serving().await;
}

#[tokio::test]
async fn a_call_whose_request_never_arrives_is_answered_with_deadline_exceeded() {
    let setup =
        Setup::with_limits(Limits::default().request_read_timeout(SHORT_READ_TIMEOUT)).await;
    // The header arrives, the DATA frame never does: the read timeout applies...
    let (mut send, recv) = setup.peer.connection.open_bi().await.expect("stream");
    let started = Instant::now();
    send.write_all(&call_frame("probe", "add", None))
        .await
        .expect("sent");
    let answer = read_answer(recv).await;
    let elapsed = started.elapsed();
    answer.assert_status(
        Code::DeadlineExceeded,
        "the request did not arrive before the deadline",
    );
    assert!(elapsed >= SHORT_READ_TIMEOUT, "answered after {elapsed:?}");
    // ...or the call's own deadline, when that is earlier.
    let (mut send_early, recv) = setup.peer.connection.open_bi().await.expect("stream");
    let started = Instant::now();
    send_early
        .write_all(&call_frame("probe", "add", Some(50)))
        .await
        .expect("sent");
    let answer = read_answer(recv).await;
    let elapsed = started.elapsed();
    answer.assert_status(
        Code::DeadlineExceeded,
        "the request did not arrive before the deadline",
    );
    assert!(elapsed < SHORT_READ_TIMEOUT, "answered after {elapsed:?}");
    // Half a prefix is as good as nothing.
    let (mut send_half, recv) = setup.peer.connection.open_bi().await.expect("stream");
    send_half.write_all(&[0x01, 0x00]).await.expect("sent");
    let answer = read_answer(recv).await;
    answer.assert_status(Code::DeadlineExceeded, "no call header arrived in time");
    assert_eq!(setup.started(), 0);
    drop((send, send_early, send_half));
    setup.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_garbage_streams_do_not_disturb_a_good_caller() {
    const GARBAGE_STREAMS: usize = 500;
    let setup = Setup::new().await;
    let client = start_client_node(setup.state.path()).await;
    let channel = client.channel_to(setup.addr());

    let connection = setup.peer.connection.clone();
    let mut garbage = tokio::task::JoinSet::new();
    for i in 0..GARBAGE_STREAMS {
        let connection = connection.clone();
        let mut rng = XorShift::new(i as u64);
        let mut bytes: Vec<u8> = (0..rng.below(200) + 1).map(|_| rng.byte()).collect();
        // Vary the opening: an unknown kind, a truncated CALL, an oversize DATA after a good
        // CALL, a CALL that is not a header.
        let opening = match i % 4 {
            0 => {
                bytes[0] |= 0x80;
                Vec::new()
            }
            1 => prefix(0x01, 1_000),
            2 => [call_frame("probe", "add", None), prefix(0x02, u32::MAX)].concat(),
            _ => prefix(0x01, bytes.len() as u32),
        };
        bytes.splice(0..0, opening);
        garbage.spawn(async move {
            let (mut send, recv) = connection.open_bi().await.expect("stream");
            let _ = send.write_all(&bytes).await;
            let _ = send.finish();
            read_answer(recv).await
        });
    }

    let deadline = Instant::now() + Duration::from_secs(8);
    let mut good_calls = 0;
    while !garbage.is_empty() && good_calls < 1_000 && Instant::now() < deadline {
        let reply: Reply = channel
            .unary(
                method("add"),
                &AddRequest {
                    a: good_calls,
                    b: 1,
                },
                &CallOptions::new().timeout(WAIT),
            )
            .await
            .expect("the good caller's calls all succeed");
        assert_eq!(reply.result, good_calls + 1);
        good_calls += 1;
        // Collect garbage answers as they come, without waiting for them.
        while let Some(joined) = garbage.try_join_next() {
            let answer = joined.expect("garbage task");
            let status = answer.status();
            assert!(!status.is_ok(), "garbage was answered with ok: {answer:?}");
        }
    }
    assert!(good_calls > 0);
    while let Some(joined) = tokio::time::timeout(WAIT, garbage.join_next())
        .await
        .expect("every garbage stream is answered within the wait")
    {
        let answer = joined.expect("garbage task");
        assert!(
            !answer.status().is_ok(),
            "garbage was answered with ok: {answer:?}"
        );
    }
    assert_eq!(
        setup.started(),
        good_calls as usize,
        "no garbage reached the handler"
    );
    setup.assert_still_serving().await;
}

// ---------------------------------------------------------------------------------------------
// Cancellation and deadlines

#[tokio::test]
async fn stopping_the_reply_stream_cancels_the_handler() {
    let setup = Setup::new().await;
    let request = [
        call_frame("probe", "sleep", None),
        data_frame(&SleepRequest { ms: 10_000 }),
    ]
    .concat();
    let (mut send, mut recv) = setup.peer.connection.open_bi().await.expect("stream");
    send.write_all(&request).await.expect("sent");
    send.finish().expect("finished");
    let counters = setup.probe.counters.clone();
    assert!(eventually(WAIT, || counters.started.load(Ordering::SeqCst) == 1).await);
    recv.stop(error_code::CANCELLED).expect("stopped");
    assert!(
        eventually(WAIT, || counters.dropped.load(Ordering::SeqCst) == 1).await,
        "the handler is dropped once the caller stops reading"
    );
    assert!(eventually(WAIT, || setup.node.calls_in_flight() == 0).await);
    setup.assert_still_serving().await;
}

#[tokio::test]
async fn closing_the_connection_cancels_its_calls() {
    let setup = Setup::new().await;
    let other = RawPeer::connect(setup.state.path(), setup.addr()).await;
    let request = [
        call_frame("probe", "sleep", None),
        data_frame(&SleepRequest { ms: 10_000 }),
    ]
    .concat();
    let (mut send, _recv) = other.connection.open_bi().await.expect("stream");
    send.write_all(&request).await.expect("sent");
    send.finish().expect("finished");
    let counters = setup.probe.counters.clone();
    assert!(eventually(WAIT, || counters.started.load(Ordering::SeqCst) == 1).await);
    other.connection.close(error_code::SHUTDOWN, b"bye");
    assert!(
        eventually(WAIT, || counters.dropped.load(Ordering::SeqCst) == 1).await,
        "the handler is dropped once the connection is gone"
    );
    setup.assert_still_serving().await;
}

#[tokio::test]
async fn the_deadline_in_the_call_header_reaches_the_handler() {
    let setup = Setup::new().await;
    let request = [call_frame("probe", "remaining", Some(250)), data_frame(&())].concat();
    let answer = setup.peer.exchange(&request).await;
    answer.assert_ok();
    let reply: Reply = rmp_serde::from_slice(answer.payload().expect("payload")).expect("decodes");
    assert!(
        reply.result > 150 && reply.result <= 250,
        "{} ms left",
        reply.result
    );
    // No deadline: the handler sees none.
    let request = [call_frame("probe", "remaining", None), data_frame(&())].concat();
    let answer = setup.peer.exchange(&request).await;
    let reply: Reply = rmp_serde::from_slice(answer.payload().expect("payload")).expect("decodes");
    assert_eq!(reply.result, -1);
    // An absurd deadline is clamped, not an overflow.
    let request = [
        call_frame("probe", "remaining", Some(u64::MAX)),
        data_frame(&()),
    ]
    .concat();
    let answer = setup.peer.exchange(&request).await;
    let reply: Reply = rmp_serde::from_slice(answer.payload().expect("payload")).expect("decodes");
    assert!(
        reply.result > 0 && reply.result <= 24 * 3_600_000,
        "{} ms left",
        reply.result
    );
}

#[tokio::test]
async fn a_deadline_that_passes_in_the_handler_is_answered_with_deadline_exceeded() {
    let setup = Setup::new().await;
    let request = [
        call_frame("probe", "sleep", Some(100)),
        data_frame(&SleepRequest { ms: 5_000 }),
    ]
    .concat();
    let started = Instant::now();
    let answer = setup.peer.exchange(&request).await;
    answer.assert_status(
        Code::DeadlineExceeded,
        "the deadline passed before `probe.sleep` answered",
    );
    assert_eq!(
        answer.status().message,
        "the deadline passed before `probe.sleep` answered"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    let counters = setup.probe.counters.clone();
    assert!(eventually(WAIT, || counters.dropped.load(Ordering::SeqCst) == 1).await);
    setup.assert_still_serving().await;
}

// ---------------------------------------------------------------------------------------------
// Expensive headers

#[tokio::test]
async fn a_deeply_nested_call_header_is_refused_without_harm() {
    let setup = Setup::new().await;
    // {"service": "probe", "method": "add", "x": [[[[...]]]]}, as deep as a CALL frame allows.
    let depth = 60_000;
    let header = fixmap(&[
        ("service", fixstr("probe")),
        ("method", fixstr("add")),
        ("x", nested_arrays(depth)),
    ]);
    let request = [
        frame(FrameKind::Call, &header),
        data_frame(&AddRequest { a: 1, b: 2 }),
    ]
    .concat();
    let answer = setup.peer.exchange(&request).await;
    answer.assert_status(Code::InvalidArgument, "malformed call header");
    // The same nesting inside a payload reaches the handler's decoder.
    let payload = fixmap(&[("a", vec![1]), ("b", vec![2]), ("x", nested_arrays(depth))]);
    let request = [
        call_frame("probe", "add", None),
        frame(FrameKind::Data, &payload),
    ]
    .concat();
    let answer = setup.peer.exchange(&request).await;
    answer.assert_status(Code::InvalidArgument, "`add`");
    setup.assert_still_serving().await;
}

/// A CALL header body whose metadata holds `pairs` distinct keys of two or three characters.
fn header_with_metadata(pairs: usize) -> Vec<u8> {
    let metadata: Metadata = (0..pairs)
        .map(|i| (format!("{i:x}"), String::new()))
        .collect();
    rmp_serde::to_vec_named(&CallHeader {
        service: "probe".into(),
        method: "add".into(),
        deadline_ms: None,
        metadata,
        sticky_key: None,
    })
    .expect("encodes")
}

#[test]
fn metadata_beyond_its_pair_limit_is_refused_before_costly_decoding() {
    // The largest CALL frame (64 KiB) could hold about 10,000 short pairs; decoding stops at
    // the limit instead of doing work quadratic in the frame's size.
    let at_limit = header_with_metadata(meshrpc::metadata::MAX_PAIRS);
    let header: CallHeader = rmp_serde::from_slice(&at_limit).expect("decodes");
    assert_eq!(header.metadata.len(), meshrpc::metadata::MAX_PAIRS);
    let huge = header_with_metadata(10_000);
    assert!(
        huge.len() <= meshrpc::wire::frame::MAX_HEADER_LEN,
        "{} bytes",
        huge.len()
    );
    let error = rmp_serde::from_slice::<CallHeader>(&huge).expect_err("too many pairs");
    assert!(error.to_string().contains("metadata pairs"), "{error}");
}

#[tokio::test]
async fn header_only_streams_do_not_starve_other_callers() {
    // A peer that opens streams, sends a CALL header and then nothing must not hold the node's
    // call slots until the read timeout: calls whose request has arrived get served.
    let setup = Setup::with_limits(Limits::default().max_concurrent_calls(4)).await;
    let mut silent = Vec::new();
    for _ in 0..4 {
        let (mut send, recv) = setup.peer.connection.open_bi().await.expect("stream");
        send.write_all(&call_frame("probe", "add", None))
            .await
            .expect("sent");
        silent.push((send, recv));
    }
    // Let the node read the four headers.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = setup.peer.exchange(&add_call(1, 2)).await;
    answer.assert_ok();
    drop(silent);
}

// ---------------------------------------------------------------------------------------------
// The HTTP tunnel (docs/PROTOCOL.md, section 11), spoken by hand

/// A node publishing the legacy HTTP handlers of `web` (`GET /check`, `POST /echo`), and a raw
/// peer connected to it.
async fn web_node() -> (TempDir, Node, RawPeer) {
    use axum::routing::{get, post};
    let state = tempfile::tempdir().expect("tempdir");
    let router = axum::Router::new()
        .route("/check", get(|| async { "All ok!" }))
        .route(
            "/echo",
            post(|body: String| async move { format!("got {} bytes", body.len()) }),
        );
    let node = Node::builder("web")
        .cluster(CLUSTER)
        .state_dir(state.path())
        .listen("127.0.0.1:0".parse().expect("address"))
        .publish_http("web", router)
        .start()
        .await
        .expect("the node starts");
    let peer = RawPeer::connect(state.path(), node.local_addr()).await;
    (state, node, peer)
}

/// Opens a tunnel to `service`, writes `request` (plain HTTP/1.1), ends the stream if `finish`,
/// and reads the node's half to its end: the raw response, or why the stream failed.
async fn tunnel(peer: &RawPeer, service: &str, request: &str, finish: bool) -> String {
    let (mut send, mut recv) = peer.connection.open_bi().await.expect("stream");
    let header = fixmap(&[("service", fixstr(service))]);
    let bytes = [frame(FrameKind::Http, &header), request.as_bytes().to_vec()].concat();
    send.write_all(&bytes).await.expect("sent");
    if finish {
        send.finish().expect("finished");
    }
    let response = tokio::time::timeout(WAIT, recv.read_to_end(64 * 1024))
        .await
        .expect("the node ends its half of the tunnel within the wait")
        .unwrap_or_else(|error| panic!("the tunnel failed: {error}"));
    String::from_utf8(response).expect("an HTTP response is text")
}

#[tokio::test]
async fn a_tunnelled_request_followed_by_fin_gets_the_whole_response() {
    let (_state, _node, peer) = web_node().await;
    // No Host header: the node does not need one.
    let response = tunnel(&peer, "web", "GET /check HTTP/1.1\r\n\r\n", true).await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.ends_with("\r\n\r\nAll ok!"), "{response}");
    let response = tunnel(
        &peer,
        "web",
        "POST /echo HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\nhello",
        true,
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.ends_with("got 5 bytes"), "{response}");
}

#[tokio::test]
async fn a_tunnel_is_ended_after_one_response_even_when_the_client_keeps_its_half_open() {
    let (_state, _node, peer) = web_node().await;
    let response = tunnel(&peer, "web", "GET /check HTTP/1.1\r\n\r\n", false).await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.contains("\r\nconnection: close\r\n"), "{response}");
    assert!(response.ends_with("All ok!"), "{response}");
}

#[tokio::test]
async fn a_tunnelled_handler_sees_its_own_path_not_the_services() {
    let (_state, _node, peer) = web_node().await;
    let response = tunnel(&peer, "web", "GET /web/check HTTP/1.1\r\n\r\n", true).await;
    assert!(
        response.starts_with("HTTP/1.1 404 Not Found\r\n"),
        "{response}"
    );
}

#[tokio::test]
async fn a_tunnel_to_a_service_without_http_handlers_gets_a_404_naming_it() {
    let (_state, _node, peer) = web_node().await;
    let response = tunnel(&peer, "billing", "GET /check HTTP/1.1\r\n\r\n", true).await;
    assert!(
        response.starts_with("HTTP/1.1 404 Not Found\r\n"),
        "{response}"
    );
    assert!(
        response.ends_with("no HTTP handler for service `billing` on this node"),
        "{response}"
    );
}

// ---------------------------------------------------------------------------------------------
// Membership (docs/PROTOCOL.md, section 10), spoken by hand

#[tokio::test]
async fn a_join_exchange_carries_member_addresses_as_ip_port_strings() {
    #[derive(serde::Deserialize, Debug)]
    struct Identity {
        a: String,
        n: String,
    }
    #[derive(serde::Deserialize, Debug)]
    struct Entry {
        id: Identity,
        state: String,
    }
    let setup = Setup::new().await;
    // Ourselves, written by hand from section 10.1: {"a": "127.0.0.1:9", "n": "raw", "c": "test",
    // "g": 1}, incarnation 0, alive.
    let me = fixmap(&[
        ("a", fixstr("127.0.0.1:9")),
        ("n", fixstr("raw")),
        ("c", fixstr(CLUSTER)),
        ("g", vec![0x01]),
    ]);
    let entry = fixmap(&[
        ("id", me),
        ("incarnation", vec![0x00]),
        ("state", fixstr("Alive")),
    ]);
    let list = [vec![0x91], entry].concat();
    let answer = setup.peer.exchange(&frame(FrameKind::Gossip, &list)).await;
    assert_eq!(answer.frames.len(), 1, "{answer:?}");
    assert_eq!(answer.frames[0].kind, FrameKind::Gossip);
    let members: Vec<Entry> =
        rmp_serde::from_slice(&answer.frames[0].body).expect("a list of members, `a` a string");
    let node = members
        .iter()
        .find(|entry| entry.id.n == "probe")
        .unwrap_or_else(|| panic!("the node lists itself: {members:?}"));
    assert_eq!(node.id.a, setup.addr().to_string());
    assert_eq!(node.state, "Alive");
    setup.assert_still_serving().await;
}

// ---------------------------------------------------------------------------------------------
// Mutual TLS: who cannot get a call in

/// Tries a `probe.add` call presenting `client_config`; the error says how it failed.
async fn attempt_call(
    client_config: rustls::ClientConfig,
    server: SocketAddr,
) -> Result<raw_peer::Answer, String> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_config)
        .map_err(|error| format!("not a QUIC config: {error}"))?;
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("address")).expect("endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let peer = RawPeer::connect_from(endpoint, server).await?;
    // In TLS 1.3 the client finishes its handshake before the server has checked the client's
    // certificate, so a refusal may only show on the first stream.
    let (mut send, recv) = tokio::time::timeout(WAIT, peer.connection.open_bi())
        .await
        .map_err(|_| "no stream within the wait".to_owned())?
        .map_err(|error| format!("open: {error} ({error:?})"))?;
    send.write_all(&add_call(1, 2))
        .await
        .map_err(|error| format!("write: {error} ({error:?})"))?;
    let _ = send.finish();
    let answer = read_answer(recv).await;
    match &answer.error {
        Some(error) => Err(format!("read: {error}")),
        None => Ok(answer),
    }
}

/// The test cluster's CA certificate, as the probe node minted it under `state`.
fn cluster_ca(state: &Path) -> Vec<u8> {
    std::fs::read(state.join(CLUSTER).join("ca.pem")).expect("the node minted its CA")
}

fn root_store(ca_pem: &[u8]) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.expect("PEM")).expect("a valid root");
    }
    roots
}

fn client_config_builder() -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier> {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
}

/// A node certificate for the DNS name `san` signed by `issuer`, as PEM (certificate, key).
fn node_cert(san: &str, issuer: &Issuer<'_, KeyPair>) -> (String, String) {
    node_cert_with(san, issuer, |_| {})
}

/// [`node_cert`], with `adjust` applied to the certificate's parameters before it is signed.
fn node_cert_with(
    san: &str,
    issuer: &Issuer<'_, KeyPair>,
    adjust: impl FnOnce(&mut CertificateParams),
) -> (String, String) {
    let mut params = CertificateParams::new(vec![san.to_owned()]).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, "intruder");
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    adjust(&mut params);
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, issuer).expect("signed");
    (cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn a_peer_of_another_ca_cannot_complete_a_call() {
    let setup = Setup::new().await;
    // A whole foreign cluster (its own dev CA, same cluster name): it does not trust the node.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let foreign = TlsMaterial::dev(elsewhere.path(), CLUSTER, "intruder").expect("material");
    let config = foreign.client_config().expect("config");
    let error = attempt_call(config, setup.addr())
        .await
        .expect_err("refused");
    // The peer refuses the node's certificate during the handshake.
    assert!(
        error.contains("handshake") && error.contains("certificate"),
        "{error}"
    );
    // A peer that trusts the node's CA but presents a certificate of a foreign CA: the node
    // refuses it.
    let foreign_ca_key = KeyPair::generate().expect("key");
    let foreign_ca = Issuer::new(
        dev_ca_params(CLUSTER).expect("CA parameters"),
        foreign_ca_key,
    );
    let (cert, key) = node_cert(SERVER_NAME, &foreign_ca);
    let material = TlsMaterial::from_pem(
        &cluster_ca(setup.state.path()),
        cert.as_bytes(),
        key.as_bytes(),
    )
    .expect("material");
    let error = attempt_call(material.client_config().expect("config"), setup.addr())
        .await
        .expect_err("refused");
    assert!(error.contains("invalid peer certificate"), "{error}");
    assert_eq!(setup.started(), 0, "no call reached the handler");
    setup.assert_still_serving().await;
}

#[tokio::test]
async fn a_peer_without_a_client_certificate_is_refused() {
    let setup = Setup::new().await;
    let mut config = client_config_builder()
        .with_root_certificates(root_store(&cluster_ca(setup.state.path())))
        .with_no_client_auth();
    config.alpn_protocols = vec![meshrpc::tls::ALPN.to_vec()];
    let error = attempt_call(config, setup.addr())
        .await
        .expect_err("refused");
    assert!(error.contains("peer sent no certificates"), "{error}");
    assert_eq!(setup.started(), 0, "no call reached the handler");
    setup.assert_still_serving().await;
}

#[tokio::test]
async fn a_peer_certified_for_another_cluster_by_the_same_ca_is_refused() {
    let setup = Setup::new().await;
    let ca_dir = setup.state.path().join(CLUSTER);
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("ca.key")).expect("key"))
        .expect("the CA key parses");
    let issuer = Issuer::new(dev_ca_params(CLUSTER).expect("CA parameters"), ca_key);
    let ca_pem = cluster_ca(setup.state.path());

    // Control: a certificate minted here for the right cluster is accepted.
    let (cert, key) = node_cert(SERVER_NAME, &issuer);
    let material =
        TlsMaterial::from_pem(&ca_pem, cert.as_bytes(), key.as_bytes()).expect("material");
    attempt_call(material.client_config().expect("config"), setup.addr())
        .await
        .expect("a certificate for test.meshrpc is accepted")
        .assert_ok();

    let (cert, key) = node_cert("other.meshrpc", &issuer);
    let material =
        TlsMaterial::from_pem(&ca_pem, cert.as_bytes(), key.as_bytes()).expect("material");
    let error = attempt_call(material.client_config().expect("config"), setup.addr())
        .await
        .expect_err("refused");
    assert!(
        error.contains("client certificate is not issued for this cluster"),
        "{error}"
    );
    assert_eq!(
        setup.started(),
        1,
        "only the control call reached the handler"
    );
    setup.assert_still_serving().await;
}

/// The issuer of the test cluster's dev CA, as the probe node minted it under `state`.
fn cluster_issuer(state: &Path) -> Issuer<'static, KeyPair> {
    let ca_dir = state.join(CLUSTER);
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("ca.key")).expect("key"))
        .expect("the CA key parses");
    Issuer::new(dev_ca_params(CLUSTER).expect("CA parameters"), ca_key)
}

#[tokio::test]
async fn a_client_certificate_with_only_the_name_and_extended_key_usage_is_accepted() {
    let setup = Setup::new().await;
    let issuer = cluster_issuer(setup.state.path());
    // No keyUsage, no authorityKeyIdentifier: neither is required (docs/PROTOCOL.md, 2.3).
    let (cert, key) = node_cert_with(SERVER_NAME, &issuer, |params| {
        params.key_usages.clear();
        params.use_authority_key_identifier_extension = false;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    });
    let material = TlsMaterial::from_pem(
        &cluster_ca(setup.state.path()),
        cert.as_bytes(),
        key.as_bytes(),
    )
    .expect("material");
    attempt_call(material.client_config().expect("config"), setup.addr())
        .await
        .expect("accepted")
        .assert_ok();
}

#[tokio::test]
async fn a_client_certificate_for_server_authentication_only_is_refused() {
    let setup = Setup::new().await;
    let issuer = cluster_issuer(setup.state.path());
    let (cert, key) = node_cert_with(SERVER_NAME, &issuer, |params| {
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    });
    let material = TlsMaterial::from_pem(
        &cluster_ca(setup.state.path()),
        cert.as_bytes(),
        key.as_bytes(),
    )
    .expect("material");
    let error = attempt_call(material.client_config().expect("config"), setup.addr())
        .await
        .expect_err("refused");
    // unsupported_certificate (43), QUIC crypto error 0x12b.
    assert!(error.contains("Code::crypto(2b)"), "{error}");
    assert!(
        error.contains(
            "invalid peer certificate: certificate does not allow extended key usage for client authentication"
        ),
        "{error}"
    );
    assert_eq!(setup.started(), 0, "no call reached the handler");
    setup.assert_still_serving().await;
}

#[tokio::test]
async fn a_peer_offering_another_alpn_or_none_is_refused() {
    let setup = Setup::new().await;
    let material = TlsMaterial::dev(setup.state.path(), CLUSTER, "alpn").expect("material");
    for alpn in [
        vec![b"meshrpc/2".to_vec()],
        vec![b"h3".to_vec()],
        Vec::new(),
    ] {
        let mut config = material.client_config().expect("config");
        config.alpn_protocols = alpn.clone();
        let error = attempt_call(config, setup.addr())
            .await
            .expect_err("refused");
        assert!(error.contains("handshake"), "{alpn:?}: {error}");
        assert!(
            error.contains("error 120") || error.contains("protocol"),
            "{alpn:?}: {error}"
        );
    }
    assert_eq!(setup.started(), 0, "no call reached the handler");
    setup.assert_still_serving().await;
}

// ---------------------------------------------------------------------------------------------
// docs/PROTOCOL.md and the fuzzing seeds

/// What each documented example is, built with meshrpc's own types.
fn expected_example(name: &str) -> Vec<u8> {
    let mut out = BytesMut::new();
    let header = |header: &CallHeader| rmp_serde::to_vec_named(header).expect("encodes");
    let status =
        |status: &Status| rmp_serde::to_vec_named(&StatusBody::from(status)).expect("encodes");
    let greet = GreetRequest { name: "Max".into() };
    match name {
        "greet-request" => {
            let call = CallHeader {
                service: "greeter".into(),
                method: "greet".into(),
                deadline_ms: Some(250),
                metadata: Metadata::new(),
                sticky_key: None,
            };
            encode_frame(FrameKind::Call, &header(&call), &mut out);
            encode_frame(
                FrameKind::Data,
                &meshrpc::codec::encode(&greet).expect("encodes"),
                &mut out,
            );
        }
        "greet-reply" => {
            let response = GreetResponse {
                message: "Hello, Max".into(),
            };
            encode_frame(
                FrameKind::Data,
                &meshrpc::codec::encode(&response).expect("encodes"),
                &mut out,
            );
            encode_frame(
                FrameKind::Status,
                &rmp_serde::to_vec_named(&StatusBody::ok()).expect("encodes"),
                &mut out,
            );
        }
        "error-reply" => {
            let error = meshrpc::service::unknown_method(&GREETER_SPEC, "great");
            encode_frame(FrameKind::Status, &status(&error), &mut out);
        }
        "refusal-reply" => {
            let refusal = Status::refused(Code::Unavailable, "this node is draining");
            encode_frame(FrameKind::Status, &status(&refusal), &mut out);
        }
        "traced-request" => {
            let call = CallHeader {
                service: "greeter".into(),
                method: "greet".into(),
                deadline_ms: Some(1_500),
                metadata: [(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )]
                .into_iter()
                .collect(),
                sticky_key: Some("user-42".into()),
            };
            encode_frame(FrameKind::Call, &header(&call), &mut out);
            encode_frame(
                FrameKind::Data,
                &meshrpc::codec::encode(&greet).expect("encodes"),
                &mut out,
            );
        }
        "ping-request" => {
            let call = CallHeader {
                service: "meshrpc.node".into(),
                method: "ping".into(),
                deadline_ms: Some(250),
                metadata: Metadata::new(),
                sticky_key: None,
            };
            encode_frame(FrameKind::Call, &header(&call), &mut out);
            encode_frame(FrameKind::Data, b"\x80", &mut out);
        }
        "ping-reply" => {
            let reply = meshrpc::node_service::PingReply {
                name: "greeter".into(),
            };
            encode_frame(
                FrameKind::Data,
                &meshrpc::codec::encode(&reply).expect("encodes"),
                &mut out,
            );
            encode_frame(
                FrameKind::Status,
                &rmp_serde::to_vec_named(&StatusBody::ok()).expect("encodes"),
                &mut out,
            );
        }
        other => panic!("no example {other:?}"),
    }
    out.to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn the_documented_examples_are_what_meshrpc_encodes() {
    for name in EXAMPLES.into_iter().chain(NODE_EXAMPLES) {
        let documented = documented_example(name);
        let expected = expected_example(name);
        assert_eq!(
            hex(&documented),
            hex(&expected),
            "the block `hex {name}` in docs/PROTOCOL.md"
        );
    }
}

#[tokio::test]
async fn a_node_answers_the_documented_request_with_the_documented_reply() {
    let state = tempfile::tempdir().expect("tempdir");
    let probe = Probe::new();
    let node = Node::builder("greeter")
        .cluster(CLUSTER)
        .state_dir(state.path())
        .listen("127.0.0.1:0".parse().expect("address"))
        .publish(Greeter)
        .publish(probe.clone())
        .start()
        .await
        .expect("the node starts");
    let peer = RawPeer::connect(state.path(), node.local_addr()).await;
    let answer = peer.exchange(&documented_example("ping-request")).await;
    assert_eq!(hex(&answer.bytes), hex(&documented_example("ping-reply")));
    for request in ["greet-request", "traced-request"] {
        let answer = peer.exchange(&documented_example(request)).await;
        assert_eq!(
            hex(&answer.bytes),
            hex(&documented_example("greet-reply")),
            "{request}"
        );
    }
    // The error example answers the same request with a method the service does not have.
    let mut wrong = documented_example("greet-request");
    let at = wrong
        .windows(6)
        .position(|window| window == b"\xa5greet")
        .expect("the method name");
    wrong[at + 1..at + 6].copy_from_slice(b"great");
    let answer = peer.exchange(&wrong).await;
    assert_eq!(hex(&answer.bytes), hex(&documented_example("error-reply")));
    // And a draining node answers with the refusal example. A slow call keeps the node
    // draining (rather than closed) while the request goes in.
    let slow = [
        call_frame("probe", "sleep", None),
        data_frame(&SleepRequest { ms: 500 }),
    ]
    .concat();
    let (mut send, slow_reply) = peer.connection.open_bi().await.expect("stream");
    send.write_all(&slow).await.expect("sent");
    send.finish().expect("finished");
    let counters = probe.counters.clone();
    assert!(eventually(WAIT, || counters.started.load(Ordering::SeqCst) == 1).await);
    let draining = {
        let node = node.clone();
        tokio::spawn(async move { node.shutdown().await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let answer = peer.exchange(&documented_example("greet-request")).await;
    assert_eq!(
        hex(&answer.bytes),
        hex(&documented_example("refusal-reply"))
    );
    read_answer(slow_reply).await.assert_ok();
    draining.await.expect("drained");
}

#[tokio::test]
async fn the_node_service_answers_describe_and_members_as_documented() {
    /// `members`' entries with exactly the documented keys: an unknown key fails the decode.
    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Member {
        name: String,
        addr: String,
        draining: bool,
        suspect: bool,
        services: Vec<String>,
        schema_hashes: std::collections::BTreeMap<String, String>,
        tags: Vec<String>,
        generation: u64,
    }
    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Members {
        members: Vec<Member>,
    }
    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Describe {
        descriptors: Vec<String>,
        manifests: Vec<String>,
    }
    let setup = Setup::new().await;
    let call = |method: &str| {
        [
            call_frame("meshrpc.node", method, Some(5_000)),
            frame(FrameKind::Data, b"\x80"),
        ]
        .concat()
    };
    let answer = setup.peer.exchange(&call("members")).await;
    answer.assert_ok();
    let reply: Members =
        rmp_serde::from_slice(answer.payload().expect("payload")).expect("documented shape");
    assert_eq!(reply.members.len(), 1, "{reply:?}");
    let me = &reply.members[0];
    assert_eq!(me.name, "probe");
    assert_eq!(me.addr, setup.addr().to_string());
    assert!(!me.draining && !me.suspect);
    assert_eq!(me.services, ["probe"]);
    assert_eq!(me.schema_hashes.len(), 1, "{me:?}");
    assert!(me.tags.is_empty(), "{me:?}");
    assert!(
        me.schema_hashes["probe"].len() == 16 && me.generation > 0,
        "{me:?}"
    );

    let answer = setup.peer.exchange(&call("describe")).await;
    answer.assert_ok();
    let reply: Describe =
        rmp_serde::from_slice(answer.payload().expect("payload")).expect("documented shape");
    assert_eq!(
        reply.descriptors.len(),
        1,
        "one per published service: {reply:?}"
    );
    assert!(
        reply.descriptors[0].starts_with('{'),
        "a JSON document: {reply:?}"
    );
    assert_eq!(reply.manifests.len(), 1, "one per descriptor: {reply:?}");

    let answer = setup.peer.exchange(&call("pong")).await;
    answer.assert_status(
        Code::Unimplemented,
        "service `meshrpc.node` has no method `pong`; its methods are: ping, describe, members, stats",
    );
}

#[tokio::test]
async fn the_node_service_answers_stats_with_the_calls_it_served() {
    /// `stats`' entries with exactly the documented keys.
    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Bucket {
        le: f64,
        count: u64,
    }
    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Method {
        side: String,
        service: String,
        method: String,
        codes: std::collections::BTreeMap<String, u64>,
        buckets: Vec<Bucket>,
        count: u64,
        sum: f64,
    }
    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Stats {
        name: String,
        methods: Vec<Method>,
    }
    let setup = Setup::new().await;
    assert_node_serves(setup.state.path(), setup.addr()).await;
    assert_node_serves(setup.state.path(), setup.addr()).await;
    let stats = [
        call_frame("meshrpc.node", "stats", Some(5_000)),
        frame(FrameKind::Data, b"\x80"),
    ]
    .concat();
    let answer = setup.peer.exchange(&stats).await;
    answer.assert_ok();
    let reply: Stats =
        rmp_serde::from_slice(answer.payload().expect("payload")).expect("documented shape");
    assert_eq!(reply.name, "probe");
    let add = reply
        .methods
        .iter()
        .find(|m| m.side == "server" && m.service == "probe" && m.method == "add")
        .unwrap_or_else(|| panic!("probe.add is counted: {reply:?}"));
    assert_eq!(add.codes.get("ok"), Some(&2), "{add:?}");
    assert_eq!(add.count, 2, "{add:?}");
    assert!(add.sum > 0.0, "{add:?}");
    assert_eq!(add.buckets.last().map(|b| b.count), Some(2), "{add:?}");
    assert!(
        add.buckets
            .windows(2)
            .all(|w| w[0].le < w[1].le && w[0].count <= w[1].count)
    );
}

/// Where the fuzz target's seed corpus lives.
fn seed_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/frame_decoder")
}

#[test]
fn the_fuzz_seeds_are_the_documented_examples() {
    // Run with MESHRPC_WRITE_SEEDS=1 to (re)write them after changing the examples.
    let write = std::env::var_os("MESHRPC_WRITE_SEEDS").is_some();
    for name in EXAMPLES {
        let path = seed_dir().join(name);
        let documented = documented_example(name);
        if write {
            std::fs::create_dir_all(seed_dir()).expect("seed directory");
            std::fs::write(&path, &documented).expect("seed written");
        }
        let seed = std::fs::read(&path).unwrap_or_else(|error| {
            panic!(
                "{}: {error} (run with MESHRPC_WRITE_SEEDS=1)",
                path.display()
            )
        });
        assert_eq!(hex(&seed), hex(&documented), "{}", path.display());
    }
}

/// One mutation of `input`, the kinds a fuzzer would try first.
fn mutate(rng: &mut XorShift, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    match rng.below(9) {
        0 if !input.is_empty() => {
            let at = rng.below(input.len());
            input[at] ^= 1 << rng.below(8);
        }
        1 if !input.is_empty() => {
            let at = rng.below(input.len());
            input[at] = rng.byte();
        }
        2 => {
            let at = rng.below(input.len() + 1);
            let bytes: Vec<u8> = (0..rng.below(8) + 1).map(|_| rng.byte()).collect();
            input.splice(at..at, bytes);
        }
        3 if !input.is_empty() => {
            let from = rng.below(input.len());
            let to = (from + rng.below(16) + 1).min(input.len());
            input.drain(from..to);
        }
        4 => input.truncate(rng.below(input.len() + 1)),
        5 if input.len() >= 5 => {
            // A length prefix of an extreme value where a frame starts or anywhere.
            let at = if rng.below(2) == 0 {
                0
            } else {
                rng.below(input.len() - 4)
            };
            let len: u32 = match rng.below(4) {
                0 => u32::MAX,
                1 => 0,
                2 => frame_check::MAX_MESSAGE as u32 + 1,
                _ => rng.next_u64() as u32,
            };
            input[at + 1..at + 5].copy_from_slice(&len.to_be_bytes());
        }
        6 => input.extend_from_slice(&seeds[rng.below(seeds.len())]),
        7 if !input.is_empty() => {
            // Repeat a slice, as a duplicated or replayed frame would.
            let from = rng.below(input.len());
            let to = (from + rng.below(32) + 1).min(input.len());
            let slice = input[from..to].to_vec();
            let at = rng.below(input.len() + 1);
            input.splice(at..at, slice);
        }
        _ => {
            // A new kind byte at a frame boundary.
            if let Some(first) = input.first_mut() {
                *first = rng.below(8) as u8;
            }
        }
    }
}

#[test]
fn chunked_decoding_of_mutated_frames_never_panics() {
    const ITERATIONS: usize = 20_000;
    let seeds: Vec<Vec<u8>> = EXAMPLES
        .iter()
        .map(|name| documented_example(name))
        .collect();
    let mut rng = XorShift::new(0x6d65_7368);
    let mut complete = 0;
    let mut truncated = 0;
    let mut refused = 0;
    for iteration in 0..ITERATIONS {
        let mut input = seeds[iteration % seeds.len()].clone();
        for _ in 0..rng.below(4) {
            mutate(&mut rng, &mut input, &seeds);
        }
        let largest = rng.below(64) + 1;
        let mut cuts = rng.clone();
        match frame_check::check(&input, || cuts.below(largest) + 1) {
            Outcome::Complete { .. } => complete += 1,
            Outcome::Truncated { .. } => truncated += 1,
            Outcome::Refused { .. } => refused += 1,
        }
        rng.next_u64();
    }
    // The mutations reach every outcome, so the checks on each of them ran.
    assert!(
        complete > 1_000 && truncated > 1_000 && refused > 1_000,
        "{complete} {truncated} {refused}"
    );
    // The seeds themselves are whole frames, in any chunking.
    for seed in &seeds {
        for cut in [1, 2, 3, 5, 7, 64] {
            assert!(matches!(
                frame_check::check(seed, || cut),
                Outcome::Complete { .. }
            ));
        }
    }
    // The fuzz target's own entry point accepts anything too.
    for seed in &seeds {
        frame_check::check_fuzz_input(seed);
        frame_check::check_fuzz_input(&seed[..seed.len() / 2]);
    }
}

#[test]
fn a_decoder_needs_the_whole_prefix_before_it_judges_it() {
    let decoder = FrameDecoder::new(16);
    let mut buffer = BytesMut::from(&b"\x02\xff\xff"[..]);
    assert_eq!(decoder.decode(&mut buffer), Ok(None));
    buffer.extend_from_slice(b"\xff\xff");
    assert!(decoder.decode(&mut buffer).is_err());
}
