//! Unary calls between real nodes on loopback: results, deadlines, cancellation, nesting,
//! panics, size limits and concurrency.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use meshrpc::{CallOptions, Code, Limits, Node};
use tokio::time::Instant;

#[tokio::test]
async fn a_unary_call_between_two_nodes_returns_the_handlers_result() {
    let state = tempfile::tempdir().expect("tempdir");
    let server = start_probe_node(state.path(), Probe::new()).await;
    let client = start_client_node(state.path()).await;
    let channel = client.channel_to(server.local_addr());
    let reply: Reply = channel
        .unary(
            method("add"),
            &AddRequest { a: 40, b: 2 },
            &CallOptions::new(),
        )
        .await
        .expect("call succeeds");
    assert_eq!(reply, Reply { result: 42 });
    // A second call reuses the pooled connection.
    let reply: Reply = channel
        .unary(
            method("add"),
            &AddRequest { a: 1, b: 2 },
            &CallOptions::new(),
        )
        .await
        .expect("call succeeds");
    assert_eq!(reply.result, 3);
    assert_eq!(client.connections().len(), 1);
}

#[tokio::test]
async fn an_expired_deadline_answers_deadline_exceeded_and_drops_the_handler() {
    let state = tempfile::tempdir().expect("tempdir");
    let probe = Probe::new();
    let server = start_probe_node(state.path(), probe.clone()).await;
    let client = start_client_node(state.path()).await;
    let channel = client.channel_to(server.local_addr());
    let started = Instant::now();
    let error = channel
        .unary::<_, Reply>(
            method("sleep"),
            &SleepRequest { ms: 5_000 },
            &CallOptions::new().timeout(Duration::from_millis(200)),
        )
        .await
        .expect_err("deadline passes");
    let elapsed = started.elapsed();
    assert_eq!(error.code(), Code::DeadlineExceeded, "{error}");
    // The words the callee uses too, so the message does not depend on which side noticed.
    assert_eq!(
        error.message(),
        "the deadline passed before `probe.sleep` answered"
    );
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(1_500), "{elapsed:?}");
    let counters = probe.counters.clone();
    assert!(
        eventually(Duration::from_secs(2), || counters
            .dropped
            .load(Ordering::SeqCst)
            == 1)
        .await,
        "the server dropped the handler when the deadline passed"
    );
    assert_eq!(probe.counters.completed.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn dropping_the_callers_future_cancels_the_handler() {
    let state = tempfile::tempdir().expect("tempdir");
    let probe = Probe::new();
    let server = start_probe_node(state.path(), probe.clone()).await;
    let client = start_client_node(state.path()).await;
    let channel = client.channel_to(server.local_addr());
    let call = tokio::spawn(async move {
        channel
            .unary::<_, Reply>(
                method("sleep"),
                &SleepRequest { ms: 10_000 },
                &CallOptions::new(),
            )
            .await
    });
    let counters = probe.counters.clone();
    assert!(
        eventually(Duration::from_secs(2), || counters
            .started
            .load(Ordering::SeqCst)
            == 1)
        .await
    );
    call.abort();
    assert!(
        eventually(Duration::from_secs(2), || counters
            .dropped
            .load(Ordering::SeqCst)
            == 1)
        .await,
        "the handler was dropped after the caller went away"
    );
    assert_eq!(server.calls_in_flight(), 0);
}

#[tokio::test]
async fn a_nested_call_inherits_the_callers_deadline() {
    let state = tempfile::tempdir().expect("tempdir");
    let front = start_probe_node(state.path(), Probe::new()).await;
    let back = start_probe_node(state.path(), Probe::new()).await;
    let client = start_client_node(state.path()).await;
    let reply: Reply = client
        .channel_to(front.local_addr())
        .unary(
            method("nested"),
            &NestedRequest {
                addr: back.local_addr().to_string(),
            },
            &CallOptions::new().timeout(Duration::from_millis(800)),
        )
        .await
        .expect("nested call succeeds");
    // Without inheritance the nested call would get the 30 s default.
    assert!(
        reply.result > 0 && reply.result <= 800,
        "remaining at the back: {} ms",
        reply.result
    );
}

#[tokio::test]
async fn a_panicking_handler_answers_internal_and_the_node_keeps_serving() {
    let state = tempfile::tempdir().expect("tempdir");
    let server = start_probe_node(state.path(), Probe::new()).await;
    let client = start_client_node(state.path()).await;
    let channel = client.channel_to(server.local_addr());
    let error = channel
        .unary::<_, Reply>(method("panic"), &(), &CallOptions::new())
        .await
        .expect_err("panics");
    assert_eq!(error.code(), Code::Internal);
    assert!(error.message().contains("panicked"), "{error}");
    let reply: Reply = channel
        .unary(
            method("add"),
            &AddRequest { a: 1, b: 1 },
            &CallOptions::new(),
        )
        .await
        .expect("still serving");
    assert_eq!(reply.result, 2);
}

#[tokio::test]
async fn a_request_of_the_wrong_shape_is_an_invalid_argument() {
    let state = tempfile::tempdir().expect("tempdir");
    let server = start_probe_node(state.path(), Probe::new()).await;
    let client = start_client_node(state.path()).await;
    let error = client
        .channel_to(server.local_addr())
        .unary::<_, Reply>(method("add"), &SleepRequest { ms: 1 }, &CallOptions::new())
        .await
        .expect_err("wrong shape");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("`add`"), "{error}");
}

#[tokio::test]
async fn a_call_to_a_node_without_the_service_is_refused_as_unimplemented_not_not_found() {
    let state = tempfile::tempdir().expect("tempdir");
    let elsewhere = start_client_node(state.path()).await;
    let client = start_client_node(state.path()).await;
    let error = client
        .channel_to(elsewhere.local_addr())
        .unary::<_, Reply>(
            method("add"),
            &AddRequest { a: 1, b: 2 },
            &CallOptions::new(),
        )
        .await
        .expect_err("that node does not publish `probe`");
    // `not_found` is what handlers say of a missing item; a missing service is the wrong place,
    // and the call never started there, so another node may take it.
    assert_eq!(error.code(), Code::Unimplemented, "{error}");
    assert!(error.is_refused(), "{error}");
    assert_eq!(
        error.message(),
        "no service `probe` on this node; it publishes: meshrpc.node"
    );
}

#[tokio::test]
async fn an_oversize_message_is_refused_with_resource_exhausted() {
    let state = tempfile::tempdir().expect("tempdir");
    let probe = Probe::new();
    let server = Node::builder("small")
        .cluster("test")
        .state_dir(state.path())
        .listen("127.0.0.1:0".parse().expect("addr"))
        .limits(Limits::default().max_message_size(64 * 1024))
        .publish(probe.clone())
        .start()
        .await
        .expect("starts");
    let client = start_client_node(state.path()).await;
    let channel = client.channel_to(server.local_addr());
    let error = channel
        .unary::<_, Echo>(
            method("echo"),
            &Echo {
                data: vec![7; 100 * 1024],
            },
            &CallOptions::new(),
        )
        .await
        .expect_err("too large");
    assert_eq!(error.code(), Code::ResourceExhausted, "{error}");
    assert!(error.message().contains("65536"), "{error}");
    assert_eq!(probe.counters.started.load(Ordering::SeqCst), 0);
    let small: Echo = channel
        .unary(
            method("echo"),
            &Echo {
                data: vec![7; 1024],
            },
            &CallOptions::new(),
        )
        .await
        .expect("a small message passes");
    assert_eq!(small.data.len(), 1024);
}

#[tokio::test]
async fn a_large_payload_round_trips_intact() {
    let state = tempfile::tempdir().expect("tempdir");
    let server = start_probe_node(state.path(), Probe::new()).await;
    let client = start_client_node(state.path()).await;
    let data: Vec<u8> = (0..(1024 * 1024)).map(|i| (i * 31 % 251) as u8).collect();
    let reply: Echo = client
        .channel_to(server.local_addr())
        .unary(
            method("echo"),
            &Echo { data: data.clone() },
            &CallOptions::new(),
        )
        .await
        .expect("1 MiB echo");
    assert_eq!(reply.data, data);
}

#[tokio::test]
async fn on_loopback_path_mtu_discovery_climbs_past_ethernet_sized_packets() {
    let state = tempfile::tempdir().expect("tempdir");
    let server = start_probe_node(state.path(), Probe::new()).await;
    let client = start_client_node(state.path()).await;
    let channel = client.channel_to(server.local_addr());
    let data = vec![7u8; 256 * 1024];
    // Discovery probes go out once the handshake is done; a few calls give them time.
    let climbed = eventually(Duration::from_secs(5), || {
        client
            .connections()
            .live(server.local_addr())
            .is_some_and(|connection| connection.stats().path.current_mtu > 1472)
    });
    let calls = async {
        for _ in 0..20 {
            let reply: Echo = channel
                .unary(
                    method("echo"),
                    &Echo { data: data.clone() },
                    &CallOptions::new(),
                )
                .await
                .expect("echo");
            assert_eq!(reply.data.len(), data.len());
        }
    };
    let (climbed, ()) = tokio::join!(climbed, calls);
    let mtu = client
        .connections()
        .live(server.local_addr())
        .map(|connection| connection.stats().path.current_mtu);
    assert!(
        climbed,
        "the path MTU stayed at {mtu:?}: both ends must accept datagrams larger than 1,472 bytes"
    );
}

/// The callee returns stream credit in a `MAX_STREAMS` frame each time an eighth of its
/// stream limit has been freed, in a packet of its own when it has nothing else to send. A
/// connection that cycles through its streams quickly has its limit raised for its pace (not
/// only for the streams it keeps open), so that those packets stay rare.
#[tokio::test]
async fn a_connection_cycling_through_its_streams_quickly_gets_its_credit_in_few_frames() {
    use futures_util::StreamExt as _;
    let state = tempfile::tempdir().expect("tempdir");
    let server = start_probe_node(state.path(), Probe::new()).await;
    let client = start_client_node(state.path()).await;
    let channel = client.channel_to(server.local_addr());
    let credit_frames = || {
        client
            .connections()
            .live(server.local_addr())
            .map_or(0, |connection| connection.stats().frame_rx.max_streams_bidi)
    };
    // 16 calls in flight never keep half of the initial limit of 64 open: only the pace can
    // raise it. At 64, credit comes back every 8 to 24 calls (up to 16 streams are freed at
    // once): 43 to 128 frames per 1,024 calls; at 512 or more, at most 16.
    const CALLS: usize = 1_024;
    const ROUNDS: usize = 20;
    let mut frames_in_last_round = 0;
    for _ in 0..ROUNDS {
        let before = credit_frames();
        let succeeded = futures_util::stream::iter(0..CALLS as i64)
            .map(|i| {
                let channel = channel.clone();
                async move {
                    let reply: Reply = channel
                        .unary(
                            method("add"),
                            &AddRequest { a: i, b: 1 },
                            &CallOptions::new(),
                        )
                        .await
                        .expect("call succeeds");
                    assert_eq!(reply.result, i + 1);
                }
            })
            .buffer_unordered(16)
            .count()
            .await;
        assert_eq!(succeeded, CALLS);
        let frames = credit_frames() - before;
        if frames <= 20 {
            return;
        }
        frames_in_last_round = frames;
    }
    panic!(
        "after {ROUNDS} rounds of {CALLS} calls, stream credit still came back in \
         {frames_in_last_round} MAX_STREAMS frames per round: the callee did not raise the \
         stream limit of a fast connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_calls_in_flight_on_one_connection_all_succeed() {
    let state = tempfile::tempdir().expect("tempdir");
    let server = start_probe_node(state.path(), Probe::new()).await;
    let client = start_client_node(state.path()).await;
    let channel = client.channel_to(server.local_addr());
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..10_000i64 {
        let channel = channel.clone();
        calls.spawn(async move {
            let reply: Reply = channel
                .unary(
                    method("add"),
                    &AddRequest { a: i, b: 1 },
                    &CallOptions::new().timeout(Duration::from_secs(60)),
                )
                .await?;
            Ok::<_, meshrpc::Status>((i, reply.result))
        });
    }
    let mut succeeded = 0;
    while let Some(joined) = calls.join_next().await {
        let (i, result) = joined.expect("task").expect("call succeeds");
        assert_eq!(result, i + 1);
        succeeded += 1;
    }
    assert_eq!(succeeded, 10_000);
    assert_eq!(
        client.connections().len(),
        1,
        "all calls shared one connection"
    );
}

#[tokio::test]
async fn shutdown_refuses_new_calls_with_a_retryable_status() {
    let state = tempfile::tempdir().expect("tempdir");
    let server = start_probe_node(state.path(), Probe::new()).await;
    let client = start_client_node(state.path()).await;
    let channel = client.channel_to(server.local_addr());
    let slow = {
        let channel = channel.clone();
        tokio::spawn(async move {
            channel
                .unary::<_, Reply>(
                    method("sleep"),
                    &SleepRequest { ms: 300 },
                    &CallOptions::new(),
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let draining = {
        let server = server.clone();
        tokio::spawn(async move { server.shutdown().await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refused = channel
        .unary::<_, Reply>(
            method("add"),
            &AddRequest { a: 1, b: 1 },
            &CallOptions::new(),
        )
        .await
        .expect_err("draining");
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(refused.is_refused(), "{refused:?}");
    slow.await
        .expect("task")
        .expect("the call in flight finishes");
    draining.await.expect("drained");
}

/// Calls that race a node's shutdown: each one either runs to its result or is refused (and
/// so is safe to send elsewhere). None is lost halfway, and none that ran reports a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_racing_a_shutdown_are_answered_or_refused_never_lost() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    let state = tempfile::tempdir().expect("tempdir");
    let probe = Probe::new();
    let counters = probe.counters.clone();
    let server = start_probe_node(state.path(), probe).await;
    let client = start_client_node(state.path()).await;
    let channel = client.channel_to(server.local_addr());
    let stopped = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..32)
        .map(|_| {
            let channel = channel.clone();
            let stopped = stopped.clone();
            tokio::spawn(async move {
                let (mut answered, mut refused, mut failed) = (0usize, 0usize, Vec::new());
                let started = Instant::now();
                // Until the node is gone (and at most 20 s or 5,000 calls per caller).
                while !stopped.load(Ordering::SeqCst)
                    && started.elapsed() < Duration::from_secs(20)
                    && answered + refused + failed.len() < 5_000
                {
                    let outcome = channel
                        .unary::<_, Reply>(
                            method("sleep"),
                            &SleepRequest { ms: 1 },
                            &CallOptions::new(),
                        )
                        .await;
                    match outcome {
                        Ok(_) => answered += 1,
                        Err(status) if status.is_refused() => refused += 1,
                        Err(status) => failed.push(status),
                    }
                }
                (answered, refused, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.shutdown().await;
    // Calls sent after the node closed are refused by the failed connection attempt.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stopped.store(true, Ordering::SeqCst);
    let (mut answered, mut refused, mut failed) = (0, 0, Vec::new());
    for caller in callers {
        let (a, r, f) = caller.await.expect("caller");
        answered += a;
        refused += r;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} calls failed without a refusal, first: {:?}",
        failed.len(),
        failed.first()
    );
    assert!(answered > 100, "only {answered} calls answered");
    assert!(refused > 0, "no call was refused");
    assert_eq!(
        counters.completed.load(Ordering::SeqCst),
        answered,
        "every handler that ran was answered, and no refused call ran"
    );
}
