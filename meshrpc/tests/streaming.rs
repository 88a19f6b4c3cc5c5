//! Streaming calls between real nodes on loopback: all three kinds end to end, cancellation
//! each way, and an aborted stream never looking finished — whatever aborted it.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use meshrpc::bytes::Bytes;
use meshrpc::codec::{decode_request, decode_request_item, encode};
use meshrpc::{
    Body, BoxFuture, CallOptions, Code, Dispatch, MethodKind, MethodSpec, Node, ServiceSpec,
    Status, Streaming,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use common::{eventually, start_client_node};

const fn method(
    name: &'static str,
    kind: MethodKind,
    index: usize,
    idempotent: bool,
) -> MethodSpec {
    MethodSpec {
        service: "streams",
        name,
        doc: "",
        idempotent,
        timeout: None,
        attempt_timeout: None,
        hedge_after: None,
        params: &[],
        result_field: "sum",
        result_type: "i64",
        kind,
        index,
    }
}

static STREAMS_SPEC: ServiceSpec = ServiceSpec {
    name: "streams",
    doc: "Streams for testing the runtime.",
    methods: &[
        method("count", MethodKind::ServerStreaming, 0, true),
        method("sum", MethodKind::ClientStreaming, 1, false),
        method("echo", MethodKind::Bidirectional, 2, false),
        method("panic_after", MethodKind::ServerStreaming, 3, false),
        method("endless", MethodKind::ServerStreaming, 4, true),
        method("context", MethodKind::ServerStreaming, 5, true),
        method("panic_after_typed", MethodKind::ServerStreaming, 6, false),
        method("binaries", MethodKind::ServerStreaming, 7, true),
    ],
    schema_hash: 7,
    manifest: "",
    descriptor: "{}",
    use_schemas: &[],
};

fn spec(name: &str) -> &'static MethodSpec {
    STREAMS_SPEC.method(name).expect("a streams method")
}

#[derive(Serialize, Deserialize)]
struct CountRequest {
    n: u64,
    every_ms: u64,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct SumReply {
    sum: i64,
}

/// What the handlers saw, for the tests to check.
#[derive(Default)]
struct Seen {
    /// How each `sum` input stream ended: `Ok(count)` cleanly, or the error's code.
    sum_inputs: Mutex<Vec<Result<u64, Code>>>,
    /// Items `endless` produced.
    produced: AtomicU64,
    /// When `endless`'s producer was dropped.
    producer_dropped: Mutex<Option<Instant>>,
    /// `sum` handlers started.
    sum_started: AtomicU64,
    /// Whether `echo`'s input ended with an error.
    echo_aborted: AtomicBool,
}

#[derive(Clone, Default)]
struct Streams {
    seen: Arc<Seen>,
}

/// Marks a `sum` handler dropped before its input ended (as `Err(Code::Aborted)`).
struct SumPending(Option<Arc<Seen>>);

impl Drop for SumPending {
    fn drop(&mut self) {
        if let Some(seen) = self.0.take() {
            seen.sum_inputs
                .lock()
                .expect("lock")
                .push(Err(Code::Aborted));
        }
    }
}

struct DropMark(Arc<Seen>);

impl Drop for DropMark {
    fn drop(&mut self) {
        *self.0.producer_dropped.lock().expect("lock") = Some(Instant::now());
    }
}

impl Dispatch for Streams {
    fn spec(&self) -> &'static ServiceSpec {
        &STREAMS_SPEC
    }

    fn dispatch(
        &self,
        method: &'static MethodSpec,
        request: Bytes,
        stream: Option<Streaming<Bytes>>,
    ) -> BoxFuture<'static, Result<Body, Status>> {
        let seen = self.seen.clone();
        Box::pin(async move {
            match method.name {
                "count" | "panic_after" => {
                    let request: CountRequest = decode_request(method.name, &request)?;
                    let panics = method.name == "panic_after";
                    let items = futures_util::stream::unfold(0, move |next| async move {
                        if next == request.n {
                            assert!(!panics, "the producer panics after its items");
                            return None;
                        }
                        if request.every_ms > 0 {
                            tokio::time::sleep(Duration::from_millis(request.every_ms)).await;
                        }
                        Some((encode(&next), next + 1))
                    });
                    Ok(Body::Stream(Streaming::new(items)))
                }
                // Typed items encoded as they are written, as generated code serves them.
                "panic_after_typed" => {
                    let request: CountRequest = decode_request(method.name, &request)?;
                    let items = futures_util::stream::iter(0..request.n).map(Ok).chain(
                        futures_util::stream::poll_fn(|_| {
                            panic!("the producer panics after its items")
                        }),
                    );
                    Ok(Body::Stream(meshrpc::streaming::encoded(
                        Streaming::new(items),
                        |item: u64, out| meshrpc::codec::encode_into(&item, out),
                    )))
                }
                "sum" => {
                    let mut items = stream.ok_or_else(|| Status::invalid_argument("no stream"))?;
                    seen.sum_started.fetch_add(1, Ordering::SeqCst);
                    // Records `dropped` if the handler is dropped before its input ended.
                    let mut pending = SumPending(Some(seen.clone()));
                    let (mut sum, mut count) = (0i64, 0u64);
                    let ended = loop {
                        match items.next().await {
                            Some(Ok(item)) => {
                                sum += decode_request_item::<i64>("sum", &item)?;
                                count += 1;
                            }
                            Some(Err(status)) => break Err(status),
                            None => break Ok(count),
                        }
                    };
                    pending.0 = None;
                    seen.sum_inputs
                        .lock()
                        .expect("lock")
                        .push(ended.as_ref().map(|c| *c).map_err(Status::code));
                    ended?;
                    encode(&SumReply { sum }).map(Body::Message)
                }
                "echo" => {
                    let items = stream.ok_or_else(|| Status::invalid_argument("no stream"))?;
                    let seen = seen.clone();
                    Ok(Body::Stream(Streaming::new(items.map(move |item| {
                        if item.is_err() {
                            seen.echo_aborted.store(true, Ordering::SeqCst);
                        }
                        item
                    }))))
                }
                "endless" => {
                    let mark = DropMark(seen.clone());
                    let items = futures_util::stream::unfold(mark, |mark| async move {
                        tokio::task::yield_now().await;
                        mark.0.produced.fetch_add(1, Ordering::SeqCst);
                        Some((encode(&serde_bytes::ByteBuf::from(vec![7u8; 1024])), mark))
                    });
                    Ok(Body::Stream(Streaming::new(items)))
                }
                "context" => {
                    // Each item says what the call's context is when the item is produced
                    // (after the handler returned): the `tenant` metadata, and whether a
                    // deadline is set.
                    let items = futures_util::stream::unfold(0u8, |n| async move {
                        if n == 3 {
                            return None;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        let seen = meshrpc::CallContext::current().map(|context| {
                            let tenant = context.metadata().get("tenant").map(str::to_owned);
                            (tenant, context.deadline().is_some())
                        });
                        Some((encode(&seen), n + 1))
                    });
                    Ok(Body::Stream(Streaming::new(items)))
                }
                "binaries" => Ok(Body::Stream(Streaming::iter(binaries_items()))),
                other => Err(meshrpc::service::unknown_method(&STREAMS_SPEC, other)),
            }
        })
    }
}

/// What `binaries` streams: `Bytes` items as a peer may encode them — whole MessagePack
/// binaries of each length class, an array of small integers (which decodes as bytes too), and
/// a number (which does not).
fn binaries_items() -> Vec<Bytes> {
    let binary = |bytes: Vec<u8>| encode(&serde_bytes::ByteBuf::from(bytes)).expect("encodes");
    vec![
        binary(vec![1, 2, 3]),
        binary(vec![9; 300]),
        binary(vec![8; 70_000]),
        encode(&vec![4u8, 5]).expect("encodes"),
        encode(&7u32).expect("encodes"),
        binary(vec![6]),
    ]
}

async fn pair(state: &std::path::Path, streams: Streams, drain: Duration) -> (Node, Node) {
    let server = Node::builder("streams")
        .cluster("test")
        .state_dir(state)
        .listen("127.0.0.1:0".parse().expect("addr"))
        .drain_timeout(drain)
        .publish(streams)
        .start()
        .await
        .expect("server starts");
    let client = start_client_node(state).await;
    (server, client)
}

/// Starts `streams.count(n, every_ms)` through `channel`; panics unless the call starts.
async fn count(
    channel: &meshrpc::Channel,
    n: u64,
    every_ms: u64,
    options: &CallOptions,
) -> Streaming<u64> {
    channel
        .server_streaming(spec("count"), &CountRequest { n, every_ms }, options)
        .await
        .expect("the call starts")
}

async fn collect(stream: Streaming<u64>) -> (Vec<u64>, Option<Status>) {
    let mut stream = stream;
    let mut items = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(item)) => items.push(item),
            Ok(None) => return (items, None),
            Err(status) => return (items, Some(status)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stream_delivers_every_item_then_ends_cleanly() {
    let state = tempfile::tempdir().expect("tempdir");
    let (server, client) = pair(state.path(), Streams::default(), Duration::from_secs(1)).await;
    let channel = client.channel_to(server.local_addr());
    let stream: Streaming<u64> = count(&channel, 500, 0, &CallOptions::new()).await;
    let (items, end) = collect(stream).await;
    assert_eq!(items, (0..500).collect::<Vec<_>>());
    assert!(end.is_none(), "a clean end: {end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stream_is_summed_and_an_aborted_one_reaches_the_handler_as_an_error() {
    let state = tempfile::tempdir().expect("tempdir");
    let streams = Streams::default();
    let (server, client) = pair(state.path(), streams.clone(), Duration::from_secs(1)).await;
    let channel = client.channel_to(server.local_addr());
    let reply: SumReply = channel
        .client_streaming(
            spec("sum"),
            &(),
            Streaming::iter(1..=100i64),
            &CallOptions::new(),
        )
        .await
        .expect("summed");
    assert_eq!(reply, SumReply { sum: 5050 });

    // A producer that fails mid-way: the handler sees its error, never a clean end.
    let items = Streaming::new(futures_util::stream::iter([
        Ok(1i64),
        Ok(2),
        Err(Status::new(Code::DataLoss, "the upload broke")),
    ]));
    let error = channel
        .client_streaming::<_, _, SumReply>(spec("sum"), &(), items, &CallOptions::new())
        .await
        .expect_err("the handler refuses a broken upload");
    assert_eq!(error.code(), Code::DataLoss, "{error}");
    assert_eq!(error.message(), "the upload broke");

    // A producer dropped without finishing (its sender gone): `cancelled`, not the end.
    let (sender, items) = Streaming::channel(4);
    sender.send(5i64).await.expect("room");
    drop(sender);
    let error = channel
        .client_streaming::<_, _, SumReply>(spec("sum"), &(), items, &CallOptions::new())
        .await
        .expect_err("a dropped producer is no upload");
    assert_eq!(error.code(), Code::Cancelled, "{error}");

    let inputs = streams.seen.sum_inputs.lock().expect("lock").clone();
    assert_eq!(
        inputs,
        vec![Ok(100), Err(Code::DataLoss), Err(Code::Cancelled)],
        "how each input ended, as the handler saw it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_goes_away_mid_upload_never_looks_finished_to_the_handler() {
    let state = tempfile::tempdir().expect("tempdir");
    let streams = Streams::default();
    let (server, client) = pair(state.path(), streams.clone(), Duration::from_secs(1)).await;
    let channel = client.channel_to(server.local_addr());
    let (sender, items) = Streaming::channel(4);
    let call = tokio::spawn(async move {
        channel
            .client_streaming::<_, _, SumReply>(spec("sum"), &(), items, &CallOptions::new())
            .await
    });
    for value in 0..10i64 {
        sender.send(value).await.expect("room");
    }
    assert!(
        eventually(Duration::from_secs(2), || {
            streams.seen.sum_started.load(Ordering::SeqCst) == 1
        })
        .await,
        "the handler started"
    );
    // The caller's task is dropped mid-upload, its sender still open.
    call.abort();
    let _ = call.await;
    assert!(
        eventually(Duration::from_secs(2), || {
            !streams.seen.sum_inputs.lock().expect("lock").is_empty()
        })
        .await,
        "the handler heard of the abort"
    );
    let inputs = streams.seen.sum_inputs.lock().expect("lock").clone();
    assert_eq!(inputs.len(), 1);
    // Either the handler read the abort, or it was dropped (the caller is gone, so nobody
    // waits for its answer); never a clean end.
    assert!(
        matches!(inputs[0], Err(Code::Cancelled | Code::Aborted)),
        "the handler saw {:?}, which must not be a clean end",
        inputs[0]
    );
    drop(sender);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidirectional_call_echoes_items_as_they_come() {
    let state = tempfile::tempdir().expect("tempdir");
    let (server, client) = pair(state.path(), Streams::default(), Duration::from_secs(1)).await;
    let channel = client.channel_to(server.local_addr());
    let (sender, items) = Streaming::channel(2);
    let mut replies: Streaming<u64> = channel
        .bidi_streaming(spec("echo"), &(), items, &CallOptions::new())
        .await
        .expect("the call starts");
    // One at a time: each item comes back before the next is sent.
    for value in [3u64, 1, 4, 1, 5] {
        sender.send(value).await.expect("room");
        let echoed = tokio::time::timeout(Duration::from_secs(2), replies.message())
            .await
            .expect("echoed in time")
            .expect("ok");
        assert_eq!(echoed, Some(value));
    }
    sender.finish();
    assert_eq!(replies.message().await.expect("clean end"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_drops_a_stream_stops_its_producer_within_a_round_trip() {
    let state = tempfile::tempdir().expect("tempdir");
    let streams = Streams::default();
    let (server, client) = pair(state.path(), streams.clone(), Duration::from_secs(1)).await;
    let channel = client.channel_to(server.local_addr());
    let mut stream: Streaming<serde_bytes::ByteBuf> = channel
        .server_streaming(spec("endless"), &(), &CallOptions::new())
        .await
        .expect("the call starts");
    for _ in 0..100 {
        stream.message().await.expect("ok").expect("an item");
    }
    let dropped_at = Instant::now();
    drop(stream);
    assert!(
        eventually(Duration::from_secs(2), || {
            streams
                .seen
                .producer_dropped
                .lock()
                .expect("lock")
                .is_some()
        })
        .await,
        "the producer was dropped"
    );
    let stopped = streams
        .seen
        .producer_dropped
        .lock()
        .expect("lock")
        .expect("set");
    let took = stopped.saturating_duration_since(dropped_at);
    assert!(
        took < Duration::from_millis(500),
        "the producer ran on for {took:?} after its consumer left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_suspends_its_producer() {
    let state = tempfile::tempdir().expect("tempdir");
    let streams = Streams::default();
    let (server, client) = pair(state.path(), streams.clone(), Duration::from_secs(1)).await;
    let channel = client.channel_to(server.local_addr());
    let mut stream: Streaming<serde_bytes::ByteBuf> = channel
        .server_streaming(spec("endless"), &(), &CallOptions::new())
        .await
        .expect("the call starts");
    let mut read = 0u64;
    for _ in 0..10 {
        stream.message().await.expect("ok").expect("an item");
        read += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The producer runs ahead by at most what QUIC's flow control lets through (the stream
    // window: the message limit plus 64 KiB), then waits for the consumer.
    let window_items = (meshrpc::Limits::default().max_message_size as u64 + 64 * 1024) / 1024;
    let mut produced = streams.seen.produced.load(Ordering::SeqCst);
    let plateau = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = streams.seen.produced.load(Ordering::SeqCst);
        if now == produced {
            break true;
        }
        assert!(
            now - read <= window_items + 64,
            "the producer ran {} items (of 1 KiB) ahead of a consumer that read {read}",
            now - read
        );
        produced = now;
        if produced - read > window_items + 64 {
            break false;
        }
    };
    assert!(plateau, "the producer never waited for its consumer");
    // Reading again lets it go on (QUIC grants more credit once a good part of the window
    // was read).
    for _ in 0..window_items / 2 {
        stream.message().await.expect("ok").expect("an item");
    }
    assert!(
        eventually(Duration::from_secs(2), || {
            streams.seen.produced.load(Ordering::SeqCst) > produced
        })
        .await,
        "the producer resumed once the consumer read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_that_panics_ends_the_stream_with_internal_not_a_finish() {
    let state = tempfile::tempdir().expect("tempdir");
    let (server, client) = pair(state.path(), Streams::default(), Duration::from_secs(1)).await;
    let channel = client.channel_to(server.local_addr());
    let stream: Streaming<u64> = channel
        .server_streaming(
            spec("panic_after"),
            &CountRequest { n: 3, every_ms: 0 },
            &CallOptions::new(),
        )
        .await
        .expect("the call starts");
    let (items, end) = collect(stream).await;
    assert_eq!(items, vec![0, 1, 2]);
    let end = end.expect("an error, not a clean end");
    assert_eq!(end.code(), Code::Internal, "{end}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_producer_that_panics_ends_the_stream_with_internal_after_its_items() {
    let state = tempfile::tempdir().expect("tempdir");
    let (server, client) = pair(state.path(), Streams::default(), Duration::from_secs(1)).await;
    let channel = client.channel_to(server.local_addr());
    let stream: Streaming<u64> = channel
        .server_streaming(
            spec("panic_after_typed"),
            &CountRequest {
                n: 500,
                every_ms: 0,
            },
            &CallOptions::new(),
        )
        .await
        .expect("the call starts");
    let (items, end) = collect(stream).await;
    assert_eq!(items, (0..500).collect::<Vec<u64>>());
    let end = end.expect("an error, not a clean end");
    assert_eq!(end.code(), Code::Internal, "{end}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_streams_items_are_produced_in_the_calls_context() {
    let state = tempfile::tempdir().expect("tempdir");
    let (server, client) = pair(state.path(), Streams::default(), Duration::from_secs(1)).await;
    let channel = client.channel_to(server.local_addr());
    let options = CallOptions::new()
        .timeout(Duration::from_secs(30))
        .metadata("tenant", "blue");
    let stream: Streaming<Option<(Option<String>, bool)>> = channel
        .server_streaming(spec("context"), &(), &options)
        .await
        .expect("the call starts");
    let mut stream = stream;
    let mut seen = Vec::new();
    while let Some(item) = stream.message().await.expect("a clean stream") {
        seen.push(item);
    }
    let expected = Some((Some("blue".to_owned()), true));
    assert_eq!(seen, vec![expected.clone(), expected.clone(), expected]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_past_its_deadline_ends_with_deadline_exceeded() {
    let state = tempfile::tempdir().expect("tempdir");
    let (server, client) = pair(state.path(), Streams::default(), Duration::from_secs(1)).await;
    let channel = client.channel_to(server.local_addr());
    let options = CallOptions::new().timeout(Duration::from_millis(300));
    let stream: Streaming<u64> = count(&channel, 1000, 20, &options).await;
    let started = Instant::now();
    let (items, end) = collect(stream).await;
    let end = end.expect("cut off, not finished");
    assert_eq!(end.code(), Code::DeadlineExceeded, "{end}");
    assert!(
        items.len() > 3 && items.len() < 1000,
        "{} items",
        items.len()
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_ends_its_open_streams_with_unavailable_after_the_drain_timeout() {
    let state = tempfile::tempdir().expect("tempdir");
    let (server, client) = pair(state.path(), Streams::default(), Duration::from_millis(300)).await;
    let channel = client.channel_to(server.local_addr());
    let stream: Streaming<u64> = count(&channel, 10_000, 10, &CallOptions::new()).await;
    let shutdown = tokio::spawn(async move { server.shutdown().await });
    let (items, end) = collect(stream).await;
    let end = end.expect("a drained stream ends with an error, not cleanly");
    assert_eq!(end.code(), Code::Unavailable, "{end}");
    assert!(!items.is_empty());
    shutdown.await.expect("shut down");
}

/// A replica of `streams` whose `count` fails: before its first item, or after two.
#[derive(Clone)]
struct Flaky {
    after_items: Option<u64>,
    calls: Arc<AtomicU64>,
}

impl Dispatch for Flaky {
    fn spec(&self) -> &'static ServiceSpec {
        &STREAMS_SPEC
    }

    fn dispatch(
        &self,
        method: &'static MethodSpec,
        _request: Bytes,
        _stream: Option<Streaming<Bytes>>,
    ) -> BoxFuture<'static, Result<Body, Status>> {
        let after_items = self.after_items;
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if method.name != "count" {
                return Err(Status::unimplemented("only count"));
            }
            let Some(items) = after_items else {
                return Err(Status::unavailable("this replica fails before any item"));
            };
            let items = futures_util::stream::iter(0..items)
                .map(|item| encode(&(item + 100)))
                .chain(futures_util::stream::iter([Err(Status::unavailable(
                    "this replica fails mid-stream",
                ))]));
            Ok(Body::Stream(Streaming::new(items)))
        })
    }
}

async fn replica(
    state: &std::path::Path,
    seed: std::net::SocketAddr,
    server: impl Dispatch,
) -> Node {
    Node::builder("streams")
        .cluster("test")
        .state_dir(state)
        .listen("127.0.0.1:0".parse().expect("addr"))
        .seeds([seed.to_string()])
        .publish(server)
        .start()
        .await
        .expect("replica starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stream_is_retried_elsewhere_only_before_its_first_item() {
    let state = tempfile::tempdir().expect("tempdir");
    let client = start_client_node(state.path()).await;
    let seed = client.local_addr();
    let _healthy = replica(state.path(), seed, Streams::default()).await;
    let broken = Flaky {
        after_items: None,
        calls: Arc::default(),
    };
    let _broken = replica(state.path(), seed, broken.clone()).await;
    assert!(
        eventually(Duration::from_secs(10), || {
            client.view().publishing("streams").count() == 2
        })
        .await,
        "both replicas in view"
    );
    // Failures before the first item: retried on the other replica, every call completes.
    for _ in 0..10 {
        // Retried on the healthy replica.
        let stream = count(&client.channel("streams"), 3, 0, &CallOptions::new()).await;
        let (items, end) = collect(stream).await;
        assert_eq!(items, vec![0, 1, 2]);
        assert!(end.is_none());
    }
    assert!(
        broken.calls.load(Ordering::SeqCst) > 0,
        "the broken replica was tried (and its failures retried)"
    );

    // A replica that fails after two items: the caller gets the two items and the error,
    // never a retry that would repeat them.
    let state = tempfile::tempdir().expect("tempdir");
    let client = start_client_node(state.path()).await;
    let _mid = replica(
        state.path(),
        client.local_addr(),
        Flaky {
            after_items: Some(2),
            calls: Arc::default(),
        },
    )
    .await;
    assert!(
        eventually(Duration::from_secs(10), || {
            client.view().publishing("streams").count() == 1
        })
        .await
    );
    // The first item arrives.
    let stream = count(&client.channel("streams"), 3, 0, &CallOptions::new()).await;
    let (items, end) = collect(stream).await;
    assert_eq!(items, vec![100, 101], "each item once");
    let end = end.expect("the failure, not a clean end");
    assert_eq!(end.code(), Code::Unavailable);
    assert_eq!(end.message(), "this replica fails mid-stream");
}

/// Every item of `stream` until its end or error.
async fn collect_bytes(mut stream: Streaming<Bytes>) -> (Vec<Bytes>, Option<Status>) {
    let mut items = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(item)) => items.push(item),
            Ok(None) => return (items, None),
            Err(status) => {
                assert!(stream.next().await.is_none(), "nothing after the error");
                return (items, Some(status));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_items_read_off_the_network_decode_as_they_do_anywhere_else() {
    let state = tempfile::tempdir().expect("tempdir");
    let (server, client) = pair(state.path(), Streams::default(), Duration::from_secs(1)).await;
    let channel = client.channel_to(server.local_addr());
    let body = channel
        .streaming_encoded(spec("binaries"), &(), None, &CallOptions::new())
        .await
        .expect("the call starts");
    // Generated clients decode `Stream<Bytes>` results this way; a stream read off the network
    // decodes its items as it reads them, any other through a mapping.
    let decode = |stream| {
        meshrpc::__generated::binary_items(
            stream,
            "binaries",
            meshrpc::__generated::decode_binary_item,
        )
    };
    let (received, received_end) = collect_bytes(decode(body.into_stream())).await;
    let (local, local_end) = collect_bytes(decode(Streaming::iter(binaries_items()))).await;
    let expected: Vec<Bytes> = vec![
        Bytes::from(vec![1, 2, 3]),
        Bytes::from(vec![9; 300]),
        Bytes::from(vec![8; 70_000]),
        Bytes::from(vec![4, 5]),
    ];
    assert_eq!(received, expected);
    assert_eq!(local, expected);
    let received_end = received_end.expect("a number is not a `Bytes` item");
    let local_end = local_end.expect("a number is not a `Bytes` item");
    assert_eq!(received_end.code(), local_end.code());
    assert_eq!(received_end.message(), local_end.message());
    assert!(
        received_end.message().contains("binaries"),
        "the error names the method: {received_end}"
    );
}
