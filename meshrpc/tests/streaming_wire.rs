//! Streaming calls on the wire: `docs/PROTOCOL.md`'s streaming examples (section 15.5) byte for
//! byte, against the encoder and a running node, and hostile peers on streaming methods — items
//! forever, a reply never read, a frame out of place, an item over the limit, thousands of
//! streams interleaved — after each of which the node still serves.

mod common;
mod raw_peer;

use std::time::Duration;

use futures_util::StreamExt;
use meshrpc::bytes::{Bytes, BytesMut};
use meshrpc::codec::{decode_request, decode_request_item, encode};
use meshrpc::wire::{CallHeader, FrameKind, StatusBody, encode_frame};
use meshrpc::{
    Body, BoxFuture, CallOptions, Code, Dispatch, FieldSpec, Metadata, MethodKind, MethodSpec,
    Node, ServiceSpec, Status, Streaming,
};
use raw_peer::*;
use serde::{Deserialize, Serialize};
use tempfile::TempDir;

static NUMBERS_SPEC: ServiceSpec = ServiceSpec {
    name: "numbers",
    doc: "Streams of numbers.",
    methods: &[
        MethodSpec {
            service: "numbers",
            name: "count",
            doc: "",
            idempotent: true,
            timeout: None,
            attempt_timeout: None,
            hedge_after: None,
            params: &[
                FieldSpec {
                    name: "from",
                    rust_type: "u64",
                },
                FieldSpec {
                    name: "to",
                    rust_type: "u64",
                },
                FieldSpec {
                    name: "every_ms",
                    rust_type: "u32",
                },
            ],
            result_field: "result",
            result_type: "u64",
            kind: MethodKind::ServerStreaming,
            index: 0,
        },
        MethodSpec {
            service: "numbers",
            name: "sum",
            doc: "",
            idempotent: false,
            timeout: None,
            attempt_timeout: None,
            hedge_after: None,
            params: &[FieldSpec {
                name: "numbers",
                rust_type: "Stream<i64>",
            }],
            result_field: "sum",
            result_type: "i64",
            kind: MethodKind::ClientStreaming,
            index: 1,
        },
    ],
    schema_hash: 3,
    manifest: "",
    descriptor: "{}",
    use_schemas: &[],
};

#[derive(Serialize, Deserialize)]
struct CountRequest {
    from: u64,
    to: u64,
    every_ms: u32,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct SumReply {
    sum: i64,
}

/// The `numbers` service of the examples, by hand.
struct Numbers;

impl Dispatch for Numbers {
    fn spec(&self) -> &'static ServiceSpec {
        &NUMBERS_SPEC
    }

    fn dispatch(
        &self,
        method: &'static MethodSpec,
        request: Bytes,
        stream: Option<Streaming<Bytes>>,
    ) -> BoxFuture<'static, Result<Body, Status>> {
        Box::pin(async move {
            match method.index {
                0 => {
                    let request: CountRequest = decode_request("count", &request)?;
                    let every = Duration::from_millis(u64::from(request.every_ms));
                    let items =
                        futures_util::stream::unfold(request.from, move |next| async move {
                            if next > request.to {
                                return None;
                            }
                            if !every.is_zero() {
                                tokio::time::sleep(every).await;
                            }
                            Some((encode(&next), next.checked_add(1)?))
                        });
                    Ok(Body::Stream(Streaming::new(items)))
                }
                _ => {
                    let _: serde::de::IgnoredAny = decode_request("sum", &request)?;
                    let mut items = stream.ok_or_else(|| Status::invalid_argument("no items"))?;
                    let mut sum = 0i64;
                    while let Some(item) = items.next().await {
                        sum = sum.wrapping_add(decode_request_item::<i64>("sum", &item?)?);
                    }
                    encode(&SumReply { sum }).map(Body::Message)
                }
            }
        })
    }
}

/// A node publishing `numbers`, and a raw peer connected to it.
async fn numbers_node() -> (TempDir, Node, RawPeer) {
    let state = tempfile::tempdir().expect("tempdir");
    let node = Node::builder("numbers")
        .cluster(CLUSTER)
        .state_dir(state.path())
        .listen("127.0.0.1:0".parse().expect("address"))
        .publish(Numbers)
        .start()
        .await
        .expect("the node starts");
    let peer = RawPeer::connect(state.path(), node.local_addr()).await;
    (state, node, peer)
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What each streaming example is, built with meshrpc's own types.
fn expected_example(name: &str) -> Vec<u8> {
    let mut out = BytesMut::new();
    let header = |service: &str, method: &str, deadline_ms: Option<u64>| {
        let header = CallHeader {
            service: service.to_owned().into(),
            method: method.to_owned().into(),
            deadline_ms,
            metadata: Metadata::new(),
            sticky_key: None,
        };
        rmp_serde::to_vec_named(&header).expect("encodes")
    };
    let data = |value: &dyn erased::Encode, out: &mut BytesMut| {
        encode_frame(FrameKind::Data, &value.encode(), out);
    };
    let status = |status: &StatusBody, out: &mut BytesMut| {
        encode_frame(
            FrameKind::Status,
            &rmp_serde::to_vec_named(status).expect("encodes"),
            out,
        );
    };
    let aborted = StatusBody::from(&Status::new(Code::Cancelled, "the upload was cut"));
    match name {
        "count-request" => {
            encode_frame(
                FrameKind::Call,
                &header("numbers", "count", Some(1000)),
                &mut out,
            );
            let request = CountRequest {
                from: 1,
                to: 3,
                every_ms: 0,
            };
            data(&request, &mut out);
        }
        "count-reply" => {
            for item in 1u64..=3 {
                data(&item, &mut out);
            }
            status(&StatusBody::ok(), &mut out);
        }
        "sum-request" | "sum-aborted-request" => {
            encode_frame(FrameKind::Call, &header("numbers", "sum", None), &mut out);
            data(&erased::EmptyMap {}, &mut out);
            if name == "sum-request" {
                for item in 1i64..=3 {
                    data(&item, &mut out);
                }
            } else {
                data(&1i64, &mut out);
                status(&aborted, &mut out);
            }
        }
        "sum-reply" => {
            data(&SumReply { sum: 6 }, &mut out);
            status(&StatusBody::ok(), &mut out);
        }
        "sum-aborted-reply" => status(&aborted, &mut out),
        other => panic!("no example {other}"),
    }
    out.to_vec()
}

/// Encoding values of different types through one closure.
mod erased {
    use serde::Serialize;

    pub(crate) trait Encode {
        fn encode(&self) -> Vec<u8>;
    }

    impl<T: Serialize> Encode for T {
        fn encode(&self) -> Vec<u8> {
            meshrpc::codec::encode(self).expect("encodes").to_vec()
        }
    }

    /// The first message of a method whose only parameter is its stream: `{}`.
    #[derive(Serialize)]
    pub(crate) struct EmptyMap {}
}

const STREAMING_EXAMPLES: [&str; 6] = [
    "count-request",
    "count-reply",
    "sum-request",
    "sum-reply",
    "sum-aborted-request",
    "sum-aborted-reply",
];

#[test]
fn the_documented_streaming_examples_are_what_meshrpc_encodes() {
    for name in STREAMING_EXAMPLES {
        assert_eq!(
            hex(&documented_example(name)),
            hex(&expected_example(name)),
            "the block `hex {name}` in docs/PROTOCOL.md"
        );
    }
}

#[tokio::test]
async fn a_node_answers_the_documented_streaming_requests_with_the_documented_replies() {
    let (_state, _node, peer) = numbers_node().await;
    for (request, reply) in [
        ("count-request", "count-reply"),
        ("sum-request", "sum-reply"),
        ("sum-aborted-request", "sum-aborted-reply"),
    ] {
        let answer = peer.exchange(&documented_example(request)).await;
        assert_eq!(
            hex(&answer.bytes),
            hex(&documented_example(reply)),
            "{request}"
        );
    }
}

fn sum_opening() -> Vec<u8> {
    [
        call_frame("numbers", "sum", None),
        frame(FrameKind::Data, b"\x80"),
    ]
    .concat()
}

fn item(value: u8) -> Vec<u8> {
    frame(FrameKind::Data, &[value])
}

#[tokio::test]
async fn a_status_ok_in_the_callers_half_is_a_protocol_error_not_the_end() {
    let (_state, _node, peer) = numbers_node().await;
    let ok = frame(
        FrameKind::Status,
        &rmp_serde::to_vec_named(&StatusBody::ok()).expect("encodes"),
    );
    let answer = peer.exchange(&[sum_opening(), item(1), ok].concat()).await;
    answer.assert_status(Code::InvalidArgument, "ends with FIN");
    peer.exchange(&documented_example("sum-request"))
        .await
        .assert_ok();
}

#[tokio::test]
async fn a_call_frame_among_the_items_is_answered_with_invalid_argument() {
    let (_state, _node, peer) = numbers_node().await;
    let request = [sum_opening(), item(1), call_frame("numbers", "sum", None)].concat();
    let answer = peer.exchange(&request).await;
    answer.assert_status(Code::InvalidArgument, "Call frame inside a stream of items");
    peer.exchange(&documented_example("sum-request"))
        .await
        .assert_ok();
}

#[tokio::test]
async fn an_item_over_the_message_limit_is_refused_before_it_is_read() {
    let (_state, node, peer) = numbers_node().await;
    let limit = node.limits().max_message_size;
    let huge = prefix(
        FrameKind::Data as u8,
        u32::try_from(limit + 1).expect("fits"),
    );
    let answer = peer
        .exchange(&[sum_opening(), item(1), huge].concat())
        .await;
    answer.assert_status(Code::ResourceExhausted, "exceeds the limit");
    peer.exchange(&documented_example("sum-request"))
        .await
        .assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_sent_for_seconds_are_consumed_as_they_come_and_the_node_keeps_serving() {
    let (_state, _node, peer) = numbers_node().await;
    let (mut send, recv) = peer.connection.open_bi().await.expect("a stream");
    send.write_all(&sum_opening()).await.expect("written");
    // Two seconds of items, in batches: the handler consumes them as they come (QUIC's flow
    // control would stop this writer otherwise), and other callers are served meanwhile.
    let batch: Vec<u8> = (0..1000).flat_map(|_| item(1)).collect();
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut sent = 0u64;
    while tokio::time::Instant::now() < until {
        tokio::time::timeout(WAIT, send.write_all(&batch))
            .await
            .expect("the node keeps reading")
            .expect("written");
        sent += 1000;
        if sent % 50_000 == 0 {
            let answer = peer.exchange(&documented_example("count-request")).await;
            assert_eq!(hex(&answer.bytes), hex(&documented_example("count-reply")));
        }
    }
    send.finish().expect("finished");
    let answer = read_answer(recv).await;
    answer.assert_ok();
    let reply: SumReply = rmp_serde::from_slice(answer.payload().expect("a sum")).expect("decodes");
    assert_eq!(reply.sum, i64::try_from(sent).expect("fits"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_stream_never_read_holds_no_more_than_its_window() {
    let (_state, node, peer) = numbers_node().await;
    let before = memory_kib("VmRSS");
    // Eight endless counts whose replies nobody reads.
    let mut held = Vec::new();
    for _ in 0..8 {
        let (mut send, recv) = peer.connection.open_bi().await.expect("a stream");
        let request = [
            call_frame("numbers", "count", None),
            data_frame(&CountRequest {
                from: 0,
                to: u64::MAX,
                every_ms: 0,
            }),
        ]
        .concat();
        send.write_all(&request).await.expect("written");
        send.finish().expect("finished");
        held.push((send, recv));
    }
    // Each producer waits once QUIC's windows are full (its stream's, within the connection's
    // receive and send windows: a few tens of MiB in all, not growing). Filling them with tiny
    // items takes a debug build a second or more on a busy machine, so memory is sampled until
    // a quarter of a second adds less than 1 MiB, and must stay under the bound all along.
    let settle_by = tokio::time::Instant::now() + Duration::from_secs(10);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut grown = memory_kib("VmRSS").saturating_sub(before);
    assert!(grown < 64 * 1024, "resident memory grew by {grown} KiB");
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = memory_kib("VmRSS").saturating_sub(before);
        assert!(now < 64 * 1024, "resident memory grew by {now} KiB");
        if now < grown + 1024 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < settle_by,
            "memory kept growing for 10 s while nobody read: {now} KiB"
        );
        grown = now;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = memory_kib("VmRSS").saturating_sub(before);
    assert!(
        later < grown + 8 * 1024,
        "memory kept growing while nobody read: {grown} KiB, then {later} KiB"
    );
    assert_eq!(node.calls_in_flight(), 8);
    // Other callers are served. (This peer's own connection is not: its unread streams hold
    // the connection's flow-control window, docs/PROTOCOL.md section 15.4.)
    let other = RawPeer::connect(_state.path(), node.local_addr()).await;
    other
        .exchange(&documented_example("sum-request"))
        .await
        .assert_ok();
    // Dropping the readers stops the producers.
    drop(held);
    assert!(
        common::eventually(Duration::from_secs(2), || node.calls_in_flight() == 0).await,
        "the held calls ended once their readers left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_interleaved_streams_each_get_their_own_items() {
    let state = tempfile::tempdir().expect("tempdir");
    let server = Node::builder("numbers")
        .cluster(CLUSTER)
        .state_dir(state.path())
        .listen("127.0.0.1:0".parse().expect("address"))
        .publish(Numbers)
        .start()
        .await
        .expect("the node starts");
    let client = common::start_client_node(state.path()).await;
    let channel = client.channel_to(server.local_addr());
    let mut calls = tokio::task::JoinSet::new();
    for start in 0..2000u64 {
        let channel = channel.clone();
        calls.spawn(async move {
            let request = CountRequest {
                from: start * 1000,
                to: start * 1000 + 9,
                every_ms: 1,
            };
            let stream: Streaming<u64> = channel
                .server_streaming(&NUMBERS_SPEC.methods[0], &request, &CallOptions::new())
                .await?;
            let items: Vec<u64> = stream
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<_, _>>()?;
            Ok::<_, Status>((start, items))
        });
    }
    let mut done = 0;
    while let Some(joined) = calls.join_next().await {
        let (start, items) = joined.expect("joined").expect("the stream completes");
        assert_eq!(
            items,
            (start * 1000..=start * 1000 + 9).collect::<Vec<_>>(),
            "stream {start}"
        );
        done += 1;
    }
    assert_eq!(done, 2000);
}

fn memory_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

/// The seeds of the `stream_items` fuzz target: the streaming examples' items, each after the
/// control byte that picks its half.
fn item_seeds() -> Vec<Vec<u8>> {
    let opening_skipped = |bytes: Vec<u8>| {
        let mut rest = &bytes[..];
        for _ in 0..2 {
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            rest = &rest[5 + len..];
        }
        rest.to_vec()
    };
    vec![
        [vec![1], documented_example("count-reply")].concat(),
        [vec![0], opening_skipped(documented_example("sum-request"))].concat(),
        [
            vec![0],
            opening_skipped(documented_example("sum-aborted-request")),
        ]
        .concat(),
        [vec![1], documented_example("sum-aborted-reply")].concat(),
    ]
}

#[test]
fn the_stream_items_fuzz_seeds_are_the_documented_examples() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/stream_items");
    let names = [
        "count-reply",
        "sum-items",
        "sum-aborted-items",
        "sum-aborted-reply",
    ];
    for (name, seed) in names.iter().zip(item_seeds()) {
        let path = dir.join(name);
        if std::env::var_os("MESHRPC_WRITE_SEEDS").is_some() {
            std::fs::write(&path, &seed).expect("seed written");
        }
        let stored = std::fs::read(&path).expect("the seed file");
        assert_eq!(hex(&stored), hex(&seed), "{}", path.display());
    }
}

#[test]
fn mutated_streams_of_items_never_look_finished_unless_they_are() {
    use meshrpc::wire::Direction;
    use raw_peer::frame_check::XorShift;
    use raw_peer::item_check::{self, Ending};

    const ITERATIONS: usize = 20_000;
    let seeds = item_seeds();
    // The documented streams end as documented, in any chunking.
    for cut in [1, 2, 5, 64] {
        assert_eq!(
            item_check::check(&seeds[0][1..], Direction::Reply, || cut),
            Ending::Finished { items: 3 }
        );
        assert_eq!(
            item_check::check(&seeds[1][1..], Direction::Request, || cut),
            Ending::Finished { items: 3 }
        );
        assert_eq!(
            item_check::check(&seeds[2][1..], Direction::Request, || cut),
            Ending::Failed {
                items: 1,
                code: Code::Cancelled
            }
        );
    }
    let mut rng = XorShift::new(0x7374_7265_616d);
    let (mut finished, mut failed) = (0, 0);
    for iteration in 0..ITERATIONS {
        let mut input = seeds[iteration % seeds.len()].clone();
        for _ in 0..=rng.below(3) {
            match rng.below(5) {
                0 if input.len() > 1 => {
                    let at = 1 + rng.below(input.len() - 1);
                    input[at] = rng.byte();
                }
                1 if input.len() > 1 => {
                    let at = 1 + rng.below(input.len() - 1);
                    input.truncate(at);
                }
                2 => input.extend_from_slice(&seeds[rng.below(seeds.len())][1..]),
                3 => input[0] = rng.byte(),
                _ => {
                    let at = 1 + rng.below(input.len().max(2) - 1);
                    input.insert(at.min(input.len()), rng.byte());
                }
            }
        }
        let direction = if input[0] & 1 == 0 {
            Direction::Request
        } else {
            Direction::Reply
        };
        let largest = rng.below(32) + 1;
        let mut cuts = rng.clone();
        match item_check::check(&input[1..], direction, || cuts.below(largest) + 1) {
            Ending::Finished { .. } => finished += 1,
            Ending::Failed { .. } => failed += 1,
        }
        item_check::check_fuzz_input(&input);
        rng.next_u64();
    }
    assert!(finished > 1_000 && failed > 1_000, "{finished} {failed}");
}
