//! Who must be kept out, and clients that misbehave at the gateway. What `meshrpc/tests/
//! hostile.rs` already covers (another CA, no client certificate, another cluster's
//! certificate, wrong ALPN) is not repeated: here, an expired certificate of the right CA, a
//! whole node of another CA joining through the seeds, oversized and slow HTTP requests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use faults::load::Load;
use faults::mesh::{free_tcp_port, members_seen_by, one_greeter};
use faults::peer::{self, dev_ca_issuer, greet_raw, node_cert};
use faults::process::{Mesh, Proc, args};
use greeter::{Greeter, GreeterClient};
use meshrpc::TlsMaterial;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_of_the_cluster_ca_outside_their_validity_are_refused() {
    let _exclusive = faults::exclusive();
    let faults::mesh::OneGreeter {
        mesh,
        node,
        greeter,
        state: _state,
        ..
    } = one_greeter("expired").await;
    let target = greeter.addr_after("advertised as ");
    let issuer = dev_ca_issuer(&mesh.state, &mesh.cluster);
    let ca = std::fs::read(mesh.state.join(&mesh.cluster).join("ca.pem")).expect("CA");
    let attempt = async |not_before, not_after| {
        let (cert, key) = node_cert(&mesh.cluster, &issuer, not_before, not_after);
        let tls = TlsMaterial::from_pem(&ca, cert.as_bytes(), key.as_bytes()).expect("material");
        let endpoint = peer::endpoint_with(tls.client_config().expect("config"));
        let result = match peer::connect(&endpoint, target, &mesh.cluster).await {
            Ok(connection) => greet_raw(&connection, "intruder", Duration::from_secs(5))
                .await
                .map(|reply| format!("a reply of {} bytes", reply.len())),
            Err(error) => Err(error),
        };
        endpoint.close(0u32.into(), b"");
        result
    };
    // Control: the same recipe, valid today, gets in.
    let control = attempt((2020, 1, 1), (2090, 1, 1)).await;
    assert!(
        control.is_ok(),
        "a valid certificate is accepted: {control:?}"
    );
    for (what, not_before, not_after) in [
        ("expired", (2019, 1, 1), (2020, 1, 1)),
        ("not yet valid", (2080, 1, 1), (2090, 1, 1)),
    ] {
        let error = attempt(not_before, not_after).await.expect_err("refused");
        eprintln!("a certificate {what} is refused: {error}");
        assert!(
            error.contains("certificate") || error.contains("connection lost"),
            "{what}: {error}"
        );
    }
    let client: GreeterClient = node.client();
    assert_eq!(
        client.greet("Max".into()).await.expect("greets"),
        "Hello, Max"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_ca_joining_through_the_seeds_never_appears_in_any_view() {
    let _exclusive = faults::exclusive();
    let faults::mesh::OneGreeter {
        mesh,
        node,
        greeter,
        state: _state,
        ..
    } = one_greeter("foreign").await;
    let member = greeter.addr_after("advertised as ");
    // Same cluster name, same binary, its own development CA.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let foreign = Mesh::new(mesh.cluster.clone(), elsewhere.path());
    let intruder = foreign.greeter(
        "intruder",
        None,
        &args(&[
            "--listen",
            "127.0.0.1:0",
            "-N",
            &format!("{},{}", node.local_addr(), member),
        ]),
    );
    let intruder_addr = intruder.addr_after("advertised as ");
    // Watch for longer than its join retries and a probe round.
    let started = Instant::now();
    let mut looks = 0;
    while started.elapsed() < Duration::from_secs(6) {
        assert!(
            node.view().member_at(intruder_addr).is_none(),
            "the seed let a node of another CA in"
        );
        let seen = members_seen_by(&node, member)
            .await
            .expect("the member answers");
        assert!(
            !seen.contains(&intruder_addr),
            "a member let a node of another CA in"
        );
        looks += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(faults::mesh::live_greeters(&node), vec![member]);
    eprintln!("a node of another CA tried to join for 6 s: in no view at any of {looks} looks");
}

/// A gateway on loopback (its mesh and a greeter joined), with `extra` flags.
fn gateway(mesh: &Mesh, extra: &[&str]) -> (Proc, Proc, SocketAddr) {
    let http = SocketAddr::from(([127, 0, 0, 1], free_tcp_port("127.0.0.1")));
    let mut list = args(&["--listen", "127.0.0.1:0", "--http", &http.to_string()]);
    list.extend(args(extra));
    let gateway = mesh.gateway("mesh-api", None, &list);
    let seed = gateway.addr_after("the mesh on ").to_string();
    let greeter = mesh.greeter(
        "greeter",
        None,
        &args(&["--listen", "127.0.0.1:0", "-N", &seed]),
    );
    (gateway, greeter, http)
}

async fn wait_until_greeting(http: SocketAddr) {
    faults::within(Duration::from_secs(20), async || {
        faults::http::get(http, "/greeter/greet/Max")
            .await
            .is_ok_and(|answer| answer.status == 200)
    })
    .await
    .expect("the gateway greets");
}

/// Sends raw bytes on a fresh connection and reads the status line of the answer.
fn raw_exchange(http: SocketAddr, request: &[u8]) -> Result<String, String> {
    let mut stream = TcpStream::connect(http).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    // The server may answer and close before it read everything; that is its right.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
            Err(error) => return Err(error.to_string()),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_and_bodies_are_refused_and_the_gateway_stays_up() {
    let _exclusive = faults::exclusive();
    let state = tempfile::tempdir().expect("tempdir");
    let mesh = Mesh::new(format!("oversize-{}", std::process::id()), state.path());
    let (mut gateway, _greeter, http) = gateway(&mesh, &[]);
    wait_until_greeting(http).await;

    let huge_header = format!(
        "GET /greeter/greet/Max HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(1024 * 1024)
    );
    let many_headers = format!(
        "GET /greeter/greet/Max HTTP/1.1\r\nhost: x\r\n{}\r\n",
        (0..500)
            .map(|i| format!("x-h{i}: v\r\n"))
            .collect::<String>()
    );
    let huge_uri = format!(
        "GET /greeter/greet/{} HTTP/1.1\r\nhost: x\r\n\r\n",
        "m".repeat(1024 * 1024)
    );
    // 2 MiB in chunks, with no Content-Length to refuse it up front.
    let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "b".repeat(64 * 1024));
    let chunked = format!(
        "POST /greeter/greet HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\n\r\n{}0\r\n\r\n",
        chunk.repeat(32)
    );
    for (what, request) in [
        ("a 1 MiB header", huge_header),
        ("500 headers", many_headers),
        ("a 1 MiB path", huge_uri),
        ("a 2 MiB chunked body", chunked),
    ] {
        let line = tokio::task::spawn_blocking(move || raw_exchange(http, request.as_bytes()))
            .await
            .expect("the exchange");
        eprintln!("{what}: {line:?}");
        let status: Option<u16> = line
            .as_ref()
            .ok()
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|code| code.parse().ok());
        // A 4xx, or the connection closed without an answer: refused either way.
        assert!(
            status.is_none_or(|code| (400..500).contains(&code)),
            "{what}: {line:?}"
        );
        assert!(gateway.running(), "the gateway died after {what}");
        let answer = faults::http::get(http, "/greeter/greet/Max").await;
        assert_eq!(answer.map(|a| a.status), Ok(200), "after {what}");
    }
}

/// Opens a connection and sends `head`, then one byte of `dribble` every `pause`, for at most
/// `limit`; returns when the server closed the connection, or `None` if it never did.
fn dribble(
    http: SocketAddr,
    head: &str,
    dribble: &str,
    pause: Duration,
    limit: Duration,
) -> Option<Duration> {
    let mut stream = TcpStream::connect(http).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_millis(1)))
        .expect("timeout");
    let started = Instant::now();
    let _ = stream.write_all(head.as_bytes());
    let mut bytes = dribble.bytes().cycle();
    let mut buffer = [0u8; 1024];
    while started.elapsed() < limit {
        if stream.write_all(&[bytes.next().unwrap_or(b'a')]).is_err() {
            return Some(started.elapsed());
        }
        match stream.read(&mut buffer) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => return Some(started.elapsed()),
            Err(error)
                if error.kind() == std::io::ErrorKind::WouldBlock
                    || error.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(started.elapsed()),
        }
        std::thread::sleep(pause);
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_dribbles_its_headers_is_cut_off() {
    let _exclusive = faults::exclusive();
    let state = tempfile::tempdir().expect("tempdir");
    let mesh = Mesh::new(format!("slowhead-{}", std::process::id()), state.path());
    let (_gateway, _greeter, http) = gateway(&mesh, &["--request-timeout", "5"]);
    wait_until_greeting(http).await;
    let closed = tokio::task::spawn_blocking(move || {
        dribble(
            http,
            "GET /greeter/greet/Max HTTP/1.1\r\nhost: x\r\n",
            "x-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            Duration::from_millis(500),
            Duration::from_secs(40),
        )
    })
    .await
    .expect("the dribbler");
    eprintln!("a client dribbling its headers was cut off after {closed:?}");
    assert!(
        closed.is_some_and(|after| after < Duration::from_secs(35)),
        "{closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_dribbles_its_body_is_cut_off() {
    let _exclusive = faults::exclusive();
    let state = tempfile::tempdir().expect("tempdir");
    let mesh = Mesh::new(format!("slowbody-{}", std::process::id()), state.path());
    let (_gateway, _greeter, http) = gateway(&mesh, &["--request-timeout", "3"]);
    wait_until_greeting(http).await;
    let closed = tokio::task::spawn_blocking(move || {
        dribble(
            http,
            "POST /greeter/greet HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: 100000\r\n\r\n{\"name\": \"",
            "a",
            Duration::from_millis(500),
            Duration::from_secs(20),
        )
    })
    .await
    .expect("the dribbler");
    eprintln!("a client dribbling its body was answered or cut off after {closed:?}");
    assert!(
        closed.is_some_and(|after| after < Duration::from_secs(10)),
        "{closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_do_not_keep_the_gateway_from_serving_others() {
    const SLOW_CLIENTS: usize = 200;
    let _exclusive = faults::exclusive();
    let state = tempfile::tempdir().expect("tempdir");
    let mesh = Mesh::new(format!("slowmany-{}", std::process::id()), state.path());
    let (mut gateway, _greeter, http) = gateway(&mesh, &[]);
    wait_until_greeting(http).await;
    // Half dribble headers, half bodies; each sends a byte every 200 ms for 8 s.
    let slow: Vec<_> = (0..SLOW_CLIENTS)
        .map(|i| {
            std::thread::spawn(move || {
                let (head, tail) = if i % 2 == 0 {
                    (
                        "GET /greeter/greet/Max HTTP/1.1\r\nhost: x\r\n",
                        "x-slow: aaaaaaaaaaaa\r\n",
                    )
                } else {
                    (
                        "POST /greeter/greet HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n",
                        "a",
                    )
                };
                dribble(
                    http,
                    head,
                    tail,
                    Duration::from_millis(200),
                    Duration::from_secs(8),
                )
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = faults::http::client();
    let report = Load::start(
        4,
        2_000,
        Duration::from_secs(6),
        Duration::from_millis(5),
        move |w, n| {
            let client = client.clone();
            async move {
                let name = format!("g{w}x{n}");
                faults::http::greet_through_gateway(&client, http, &name, Duration::from_secs(5))
                    .await
            }
        },
    )
    .complete()
    .await;
    let cut_off = slow
        .into_iter()
        .filter_map(|thread| thread.join().ok().flatten())
        .count();
    eprintln!(
        "{SLOW_CLIENTS} slow clients ({cut_off} cut off within 8 s); the others: {}",
        report.summary()
    );
    assert!(gateway.running());
    assert_eq!(
        report.failed() + report.wrong(),
        0,
        "{:?}",
        report.first_problems()
    );
    assert!(report.sent() > 200);
    assert!(
        report.quantile(0.99) < Duration::from_millis(500),
        "{}",
        report.summary()
    );
}
