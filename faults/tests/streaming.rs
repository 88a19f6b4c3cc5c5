//! Streams under real faults, with real processes on loopback: the `numbers` binary (the
//! streaming example) serves, the test's own node or a separate client process
//! (`numbers_upload`, an example of `services/numbers`) calls. What must hold each time: a
//! stream cut by a fault ends with an error, never with a clean end that would pass a partial
//! stream off as a complete one.
//!
//! - `kill -9` of the server mid-stream: the caller's stream fails within failure detection;
//! - `kill -9` of the client mid-upload: the server's `sum` handler fails (a non-ok call in the
//!   server's `/metrics`), it never adds up a partial stream;
//! - SIGTERM of one of two replicas: it refuses new streams (the caller's stream is served by
//!   the other replica), lets its open stream run for the drain timeout, then ends it with
//!   `unavailable`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use faults::mesh::{free_tcp_port, mesh_with_node};
use faults::process::{Mesh, Proc, binary};
use meshrpc::{CallOptions, Code, Node, Status, Streaming};
use numbers::{Numbers, NumbersClient};
use tokio::time::Instant;

/// How long the mesh may take to notice a dead member and fail what was on it (SWIM
/// detection is about 2.5 s on loopback; RELIABILITY.md), with slack for a busy machine.
const DETECTION: Duration = Duration::from_secs(8);

/// The drain timeout of the replicas of the drain test (the suite's usual 5 s, shortened to
/// keep the test cheap).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// A `numbers` replica joined through `seed`, with an admin endpoint on `admin`.
fn numbers_on(mesh: &Mesh, label: &str, seed: SocketAddr, admin: Option<SocketAddr>) -> Proc {
    let mut command = Command::new(binary("numbers"));
    command
        .args(["--cluster", &mesh.cluster])
        .args(["--drain-timeout", &DRAIN_TIMEOUT.as_secs().to_string()])
        .arg("--state-dir")
        .arg(&mesh.state)
        .args(["--listen", "127.0.0.1:0", "-N", &seed.to_string()])
        .env("RUST_LOG", "warn");
    if let Some(admin) = admin {
        command.args(["--admin", &admin.to_string()]);
    }
    Proc::start(label, command, &log(&mesh.state, label))
}

fn log(state: &Path, label: &str) -> std::path::PathBuf {
    state.join(format!("{label}.log"))
}

/// Waits until `node` sees `count` live, non-draining `numbers` members.
async fn wait_for_numbers(node: &Node, count: usize) {
    let seen = faults::within(Duration::from_secs(20), async || {
        node.view()
            .publishing("numbers")
            .filter(|m| m.accepts_calls() && m.liveness == meshrpc::membership::Liveness::Alive)
            .count()
            == count
    })
    .await;
    assert!(
        seen.is_some(),
        "never saw {count} live numbers members within 20 s"
    );
}

/// Reads `stream` until it ends or fails, at most `limit`; answers how it ended (`None`: it
/// did neither in time), the items read and when it ended.
async fn read_to_end(
    stream: &mut Streaming<u64>,
    limit: Duration,
) -> (Option<Result<(), Status>>, u64, Instant) {
    let deadline = Instant::now() + limit;
    let mut items = 0;
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => return (None, items, Instant::now()),
            Ok(Ok(Some(_))) => items += 1,
            Ok(Ok(None)) => return (Some(Ok(())), items, Instant::now()),
            Ok(Err(status)) => return (Some(Err(status)), items, Instant::now()),
        }
    }
}

/// Reads `count` items of `stream`, at most 10 s.
async fn read_items(stream: &mut Streaming<u64>, count: usize) -> Vec<u64> {
    let mut items = Vec::with_capacity(count);
    while items.len() < count {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("an item within 10 s")
            .expect("the stream runs")
            .expect("the stream has not ended");
        items.push(item);
    }
    items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_stream_fails_the_callers_stream_never_ends_it() {
    let _exclusive = faults::exclusive();
    let (_state, mesh, node) = mesh_with_node("stream-kill-server").await;
    let mut server = numbers_on(&mesh, "numbers", node.local_addr(), None);
    wait_for_numbers(&node, 1).await;

    let client: NumbersClient = node.client();
    // 100 numbers a second, far more than the test reads: the stream is cut, not finished.
    let mut stream = client
        .count(0, 1_000_000, 10)
        .await
        .expect("the stream starts");
    assert_eq!(
        read_items(&mut stream, 10).await,
        (0..10).collect::<Vec<_>>()
    );

    server.kill9();
    let killed = Instant::now();
    let (end, items, ended) = read_to_end(&mut stream, DETECTION + Duration::from_secs(5)).await;
    let after = ended - killed;
    eprintln!(
        "kill -9 of the server: the stream ended after {after:?} ({items} more items): {end:?}"
    );
    match end {
        Some(Err(status)) => assert_ne!(status.code(), Code::Ok, "{status:?}"),
        Some(Ok(())) => panic!("the stream of a killed server ended cleanly after {items} items"),
        None => panic!("the stream of a killed server neither ended nor failed"),
    }
    assert!(
        after <= DETECTION,
        "the stream failed only {after:?} after the kill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_mid_upload_fails_the_servers_sum_never_ends_it() {
    let _exclusive = faults::exclusive();
    let (_state, mesh, node) = mesh_with_node("stream-kill-client").await;
    let admin: SocketAddr = format!("127.0.0.1:{}", free_tcp_port("127.0.0.1"))
        .parse()
        .expect("addr");
    let _server = numbers_on(&mesh, "numbers", node.local_addr(), Some(admin));
    wait_for_numbers(&node, 1).await;

    let mut upload = Command::new(binary("examples/numbers_upload"));
    upload
        .args(["--cluster", &mesh.cluster, "--state-dir"])
        .arg(&mesh.state)
        .args([
            "--listen",
            "127.0.0.1:0",
            "-N",
            &node.local_addr().to_string(),
        ])
        .args(["--every-ms", "20"])
        .env("RUST_LOG", "warn");
    let mut upload = Proc::start("numbers_upload", upload, &log(&mesh.state, "upload"));
    // Mid-upload: the server is serving the call.
    let serving = faults::within(Duration::from_secs(10), async || {
        metrics(admin)
            .await
            .and_then(|text| faults::http::metric(&text, "meshrpc_calls_in_flight "))
            .is_some_and(|in_flight| in_flight >= 1.0)
    })
    .await;
    assert!(serving.is_some(), "the server never served the upload");
    tokio::time::sleep(Duration::from_millis(300)).await;

    upload.kill9();
    let killed = Instant::now();
    let calls = r#"meshrpc_calls_total{side="server",service="numbers",method="sum",code=""#;
    let mut ended = None;
    let failed = faults::within(DETECTION, async || {
        let Some(text) = metrics(admin).await else {
            return false;
        };
        // Every line of a call that ended (the registry may list codes at zero).
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(calls) && !l.ends_with(" 0"))
            .collect();
        if lines.is_empty() {
            return false;
        }
        ended = Some(lines.join("\n"));
        true
    })
    .await;
    let ended = ended.unwrap_or_default();
    eprintln!(
        "kill -9 of the uploading client: the server's call ended {:?} after the kill:\n{ended}",
        failed.map(|_| killed.elapsed())
    );
    assert!(
        failed.is_some(),
        "the server's sum never ended within {DETECTION:?} of the client's kill"
    );
    let text = metrics(admin).await.expect("the server's metrics");
    assert_eq!(
        faults::http::metric(&text, &format!("{calls}ok\"}}")).unwrap_or(0.0),
        0.0,
        "the server added up a partial upload as if it were complete:\n{ended}"
    );
    assert!(
        ended.lines().all(|line| !line.contains("code=\"ok\"")),
        "{ended}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_replica_refuses_new_streams_and_ends_its_open_one_with_unavailable() {
    let _exclusive = faults::exclusive();
    let (_state, mesh, node) = mesh_with_node("stream-drain").await;
    let mut draining = numbers_on(&mesh, "numbers-0", node.local_addr(), None);
    let _other = numbers_on(&mesh, "numbers-1", node.local_addr(), None);
    wait_for_numbers(&node, 2).await;
    let draining_addr = draining.addr_after("advertised as ");

    // A long stream open on the replica that will drain.
    let direct: NumbersClient = node.client_to(draining_addr);
    let mut open = direct
        .count(0, 1_000_000, 20)
        .await
        .expect("the stream starts");
    read_items(&mut open, 5).await;

    draining.signal("TERM");
    let signalled = Instant::now();
    // Let the replica start draining before it is asked for more.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // New streams asked of it directly are refused...
    let refused = match direct.count(1, 3, 0).await {
        Err(status) => Err(status),
        Ok(mut stream) => match read_to_end(&mut stream, Duration::from_secs(5)).await {
            (Some(Err(status)), _, _) => Err(status),
            (end, items, _) => Ok((end, items)),
        },
    };
    match refused {
        Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        Ok(served) => panic!("a draining replica served a new stream: {served:?}"),
    }
    // ...and the mesh's callers get every new stream served whole, by the other replica.
    let balanced: NumbersClient = node.client();
    let balanced = balanced.with_options(CallOptions::new().timeout(Duration::from_secs(10)));
    for call in 0..6 {
        let mut stream = balanced
            .count(1, 3, 0)
            .await
            .unwrap_or_else(|status| panic!("new stream {call} during the drain: {status:?}"));
        let mut items = Vec::new();
        let end = loop {
            match stream.message().await {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break Ok(()),
                Err(status) => break Err(status),
            }
        };
        assert_eq!(
            (end, items),
            (Ok(()), vec![1, 2, 3]),
            "new stream {call} during the drain"
        );
    }

    // The open stream runs on through the drain, then ends with `unavailable`, never cleanly.
    let (end, items, ended) = read_to_end(&mut open, DRAIN_TIMEOUT + DETECTION).await;
    eprintln!(
        "SIGTERM: the open stream ended {:?} after the signal, {items} items later: {end:?}",
        ended - signalled
    );
    assert!(
        items > 0,
        "the open stream stopped at once instead of running through the drain"
    );
    match end {
        Some(Err(status)) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        Some(Ok(())) => panic!("the open stream of a draining replica ended cleanly"),
        None => panic!("the open stream outlived the drain timeout"),
    }
    assert!(
        draining.wait_exit(Duration::from_secs(10)).is_some(),
        "the drained replica did not exit; log:\n{}",
        draining.log_text()
    );
}

/// The server's `/metrics` text, if it answers.
async fn metrics(admin: SocketAddr) -> Option<String> {
    faults::http::get(admin, "/metrics")
        .await
        .ok()
        .map(|answer| answer.body)
}
