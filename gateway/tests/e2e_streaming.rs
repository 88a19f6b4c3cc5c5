//! The streaming routes end to end: the real `mesh-api` binary on loopback and a real
//! `numbers` process (the streaming example) joining it, sharing one temporary state directory
//! (so one development CA). Every child is killed when the test ends, failed or not.
//!
//! `numbers` is another package's binary: it is looked up next to this test's directory
//! (`target/<profile>/`), which `cargo nextest run --workspace` (or `cargo build --workspace`)
//! fills; failing that, the test builds it itself.

mod common;

use std::time::Duration;

use common::{get, send, start_gateway, workspace_binary};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// Reads from `socket` until `marker` has arrived (at most 10 s); returns what was read.
async fn read_until(socket: &mut tokio::net::TcpStream, marker: &str) -> String {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&seen).contains(marker) {
        let read = tokio::time::timeout_at(deadline, socket.read(&mut buffer))
            .await
            .unwrap_or_else(|_| panic!("{marker:?} never came: {}", String::from_utf8_lossy(&seen)))
            .expect("reads");
        assert!(read > 0, "closed before {marker:?}");
        seen.extend_from_slice(&buffer[..read]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// The gateway's access-log lines for `path`.
fn access_lines(log: &std::path::Path, path: &str) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("[GATEWAY]") && line.ends_with(path))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_streams_through_the_real_gateway() {
    let numbers = workspace_binary("numbers").expect(
        "the numbers binary is missing: build the workspace first (cargo build --workspace)",
    );
    let state = tempfile::tempdir().expect("a temporary directory");
    let cluster = format!("e2e-streams-{}", std::process::id());
    let gateway = start_gateway(state.path(), &cluster, &["--require", "numbers"]);
    let _numbers = common::start_service(&numbers, &gateway, state.path(), &cluster);
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(gateway.http, "/readyz").await.status != 200 {
        assert!(Instant::now() < deadline, "numbers never joined");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Server stream: items as they are produced, then the status.
    let body = r#"{"from":1,"to":4,"every_ms":500}"#;
    let head = format!(
        "POST /numbers/count HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut socket = tokio::net::TcpStream::connect(gateway.http)
        .await
        .expect("connects");
    socket.write_all(head.as_bytes()).await.expect("writes");
    socket.write_all(body.as_bytes()).await.expect("writes");
    let first = read_until(&mut socket, "{\"item\":1}\n").await;
    assert!(first.contains("application/x-ndjson"), "{first}");
    assert!(!first.contains("\"status\""), "{first}");
    assert!(
        access_lines(&gateway.log, "/numbers/count").is_empty(),
        "the access log waits for the stream's end"
    );
    let rest = read_until(&mut socket, "{\"status\":\"ok\"}\n").await;
    for number in 2..=4 {
        assert!(rest.contains(&format!("{{\"item\":{number}}}\n")), "{rest}");
    }
    drop(socket);
    let deadline = Instant::now() + Duration::from_secs(10);
    while access_lines(&gateway.log, "/numbers/count").is_empty() {
        assert!(
            Instant::now() < deadline,
            "no access-log line after the stream's end"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let line = &access_lines(&gateway.log, "/numbers/count")[0];
    assert!(line.contains("[GATEWAY] 200 |"), "{line}");

    // Client stream.
    let answer = send(
        gateway.http,
        "POST",
        "/numbers/sum",
        &[("content-type", "application/x-ndjson")],
        "{\"item\":1}\n{\"item\":2}\n{\"item\":3}\n".to_owned(),
    )
    .await;
    assert_eq!(answer.body, r#"{"error":"","sum":6}"#, "{answer:?}");
    // A bad line is named and aborts the call.
    let answer = send(
        gateway.http,
        "POST",
        "/numbers/sum",
        &[("content-type", "application/x-ndjson")],
        "{\"item\":1}\n{\"item\":1.5}\n".to_owned(),
    )
    .await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(
        answer.error().starts_with("line 2: field `item`"),
        "{answer:?}"
    );

    // Both ways, over a WebSocket; an overflow ends the stream with its status.
    let url = format!("ws://{}/numbers/running_total", gateway.http);
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrades");
    for text in [r#"{"item":9223372036854775807}"#, r#"{"item":1}"#] {
        socket.send(Message::text(text)).await.expect("sends");
    }
    let mut received = Vec::new();
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_secs(10), socket.next()).await
    {
        match message {
            Message::Text(text) => received.push(text.as_str().to_owned()),
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(received[0], r#"{"item":9223372036854775807}"#);
    let last: serde_json::Value = serde_json::from_str(&received[1]).expect("JSON");
    assert_eq!(last["status"], "out_of_range", "{last}");
}
