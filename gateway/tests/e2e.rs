//! End to end with real processes: the `mesh-api` binary on loopback and real `greeter`
//! replicas (and a `concierge` when its binary is built) joining it, all sharing one temporary
//! state directory (so one development CA) and a cluster name of their own. Every child is
//! killed when the test ends, failed or not.
//!
//! `greeter` and `concierge` are other packages' binaries: they are looked up next to this
//! test's directory (`target/<profile>/`), which `cargo nextest run --workspace` (or
//! `cargo build --workspace`) fills; failing that, the test builds `greeter` itself.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Answer, Gateway, Process, get, post, send, start_gateway, workspace_binary};
use tokio::time::Instant;

fn start_service(name: &str, gateway: &Gateway, state: &Path, cluster: &str) -> Option<Process> {
    let binary = workspace_binary(name)?;
    Some(common::start_service(&binary, gateway, state, cluster).0)
}

fn greeter_binary_is_there() -> bool {
    workspace_binary("greeter").is_some()
}

/// Waits until `/readyz` reports `count` live members publishing `service`.
async fn wait_for_members(gateway: &Gateway, service: &str, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = get(gateway.http, "/readyz").await;
        let live = answer.json()["dependencies"]
            .as_array()
            .and_then(|list| {
                list.iter()
                    .find(|dependency| dependency["service"] == service)
                    .and_then(|dependency| dependency["rpc_members"].as_u64())
            })
            .unwrap_or(0);
        if live == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{service} never had {count} live members: {}",
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_error(answer: &Answer, status: u16, code: &str, fragment: &str) {
    assert_eq!(answer.status, status, "{answer:?}");
    assert_eq!(answer.json()["code"], code, "{answer:?}");
    assert!(
        answer.error().contains(fragment),
        "{:?} should contain {fragment:?}",
        answer.error()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_works_against_real_processes() {
    assert!(
        greeter_binary_is_there(),
        "the greeter binary is missing: build the workspace first (cargo build --workspace)"
    );
    let state = tempfile::tempdir().expect("a temporary directory");
    let cluster = format!("e2e-readme-{}", std::process::id());
    let gateway = start_gateway(state.path(), &cluster, &["--require", "greeter"]);
    let addr = gateway.http;

    // The gateway serves at once; without a greeter, greeter routes are 503 right away.
    for (method, path, body) in [
        ("GET", "/greeter/greet/Max", ""),
        ("POST", "/greeter/greet", r#"{"name": "Max"}"#),
    ] {
        let started = Instant::now();
        let answer = send(addr, method, path, &[], body.to_owned()).await;
        let took = started.elapsed();
        eprintln!(
            "{method} {path} before any greeter: {} in {took:?}",
            answer.status
        );
        assert_error(&answer, 503, "unavailable", "`greeter`");
        assert!(took < Duration::from_secs(1), "took {took:?}");
    }
    assert_eq!(get(addr, "/readyz").await.status, 503);
    assert_eq!(get(addr, "/healthz").await.body, "ok");

    // Two greeters join through the gateway.
    let _greeters: Vec<Process> = (0..2)
        .map(|_| {
            start_service("greeter", &gateway, state.path(), &cluster).expect("greeter starts")
        })
        .collect();
    wait_for_members(&gateway, "greeter", 2).await;
    assert_eq!(get(addr, "/readyz").await.status, 200);

    // The README, byte for byte.
    let mut greets = 0;
    for _ in 0..5 {
        let answer = get(addr, "/greeter/greet/Max").await;
        greets += 1;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (200, "\"Hello, Max\"")
        );
    }
    let answer = post(addr, "/greeter/greet", r#"{"name": "Max"}"#).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, r#"{"error":"","message":"Hello, Max"}"#)
    );
    for _ in 0..4 {
        let answer = get(addr, "/greeter/check").await;
        assert_eq!(answer.status, 200, "{answer:?}");
        let time = answer
            .body
            .strip_prefix("All ok! ")
            .unwrap_or_else(|| panic!("{:?}", answer.body));
        // RFC 3339, e.g. 2019-05-24T19:09:42Z.
        assert_eq!(time.len(), 20, "{time:?}");
        assert_eq!((&time[4..5], &time[10..11], &time[19..]), ("-", "T", "Z"));
    }
    let answer = post(addr, "/greeter/sendPostcard/Max/World/Hello", "").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (
            200,
            r#"{"PictureURL":"","Address":"World","Recipient":"Max","Message":"Hello"}"#
        )
    );

    // Generic routes: the service's own error, and the caller's mistakes.
    let postcard = r#"{"card": {"picture_url": "", "address": "World", "recipient": "Max", "message": "Hello"}}"#;
    let answer = post(addr, "/greeter/send_postcard", postcard).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (
            200,
            r#"{"error":"","card":{"picture_url":"","address":"World","recipient":"Max","message":"Hello"}}"#
        )
    );
    let nobody = postcard.replace(r#""recipient": "Max""#, r#""recipient": """#);
    let answer = post(addr, "/greeter/send_postcard", &nobody).await;
    assert_error(
        &answer,
        400,
        "invalid_argument",
        "a postcard needs a recipient",
    );
    let answer = post(addr, "/greeter/greet", "name=Max").await;
    assert_error(&answer, 400, "invalid_argument", "body is not valid JSON");
    let answer = post(addr, "/greeter/greet", r#"{"name": ["Max"]}"#).await;
    assert_error(
        &answer,
        400,
        "invalid_argument",
        "field `name`: expected a string",
    );
    let answer = post(addr, "/greeter/greet", "[]").await;
    assert_error(&answer, 400, "invalid_argument", "JSON object");
    let answer = post(addr, "/weather/today", "{}").await;
    assert_error(&answer, 404, "not_found", "unknown service `weather`");
    let answer = post(addr, "/greeter/farewell", "{}").await;
    assert_error(&answer, 404, "not_found", "POST /greeter/send_postcard");
    let huge = format!(r#"{{"name": "{}"}}"#, "x".repeat(1024 * 1024 + 1));
    let answer = post(addr, "/greeter/greet", &huge).await;
    assert_error(&answer, 413, "resource_exhausted", "1048576 bytes");

    // The second service, when its binary is built.
    let concierge = start_service("concierge", &gateway, state.path(), &cluster);
    if concierge.is_some() {
        wait_for_members(&gateway, "concierge", 1).await;
        let answer = post(addr, "/concierge/welcome", r#"{"guests": ["Ada", "Max"]}"#).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.json()["error"], "");
        let greetings = answer.json()["greetings"].clone();
        let greetings: Vec<&str> = greetings
            .as_array()
            .expect("a list")
            .iter()
            .filter_map(|greeting| greeting.as_str())
            .collect();
        assert_eq!(greetings.len(), 2, "{answer:?}");
        assert!(greetings[0].contains("Ada") && greetings[1].contains("Max"));
        let answer = post(addr, "/concierge/welcome", r#"{"guests": "Ada"}"#).await;
        assert_error(
            &answer,
            400,
            "invalid_argument",
            "field `guests`: expected an array",
        );
        // A list parameter has no GET form: a JSON 405, as for any service.
        let answer = get(addr, "/concierge/welcome").await;
        assert_error(&answer, 405, "unimplemented", "answers POST");
        assert_eq!(answer.headers["allow"], "POST");
    } else {
        eprintln!("no concierge binary: the second service is not exercised");
    }

    // The document lists every method of every service in the mesh.
    let answer = get(addr, "/openapi.json").await;
    assert_eq!(answer.status, 200);
    let document: openapiv3::OpenAPI =
        serde_json::from_str(&answer.body).expect("an OpenAPI 3 document");
    let mut expected = vec![
        "/greeter/greet",
        "/greeter/send_postcard",
        "/greeter/greet/{name}",
        "/greeter/sendPostcard/{recipient}/{address}/{message}",
        "/greeter/check",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ];
    if concierge.is_some() {
        expected.push("/concierge/welcome");
    }
    for path in expected {
        let item = document
            .paths
            .paths
            .get(path)
            .and_then(|item| item.as_item())
            .unwrap_or_else(|| panic!("{path} missing from the document"));
        assert!(
            item.post.is_some() || item.get.is_some(),
            "{path} has no operation"
        );
    }

    // Metrics count what was asked.
    let metrics = get(addr, "/metrics").await;
    let line = format!(
        r#"gateway_http_requests_total{{method="GET",route="/greeter/greet/{{name}}",status="200"}} {greets}"#
    );
    assert!(metrics.body.contains(&line), "{line} in {}", metrics.body);
    assert!(
        metrics
            .body
            .contains(r#"gateway_http_requests_total{method="GET",route="/greeter/greet/{name}",status="503"} 1"#),
        "{}",
        metrics.body
    );

    // One access-log line per request, GIN-style.
    let log = std::fs::read_to_string(&gateway.log).expect("the gateway's log");
    let lines = log
        .lines()
        .filter(|line| line.contains("| GET      /greeter/greet/Max"))
        .count();
    assert_eq!(lines, greets + 1, "{log}");
    assert!(
        log.lines()
            .any(|line| line.contains("[GATEWAY] 200 |") && line.contains("127.0.0.1")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_required_by_the_real_binary() {
    assert!(
        greeter_binary_is_there(),
        "the greeter binary is missing: build the workspace first (cargo build --workspace)"
    );
    let state = tempfile::tempdir().expect("a temporary directory");
    let cluster = format!("e2e-keys-{}", std::process::id());
    let gateway = start_gateway(state.path(), &cluster, &["--api-key", "first,second"]);
    let _greeter = start_service("greeter", &gateway, state.path(), &cluster);
    wait_for_members(&gateway, "greeter", 1).await;
    let addr = gateway.http;

    for headers in [&[][..], &[("authorization", "Bearer third")][..]] {
        let answer = send(addr, "GET", "/greeter/greet/Max", headers, "").await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (
                401,
                r#"{"error":"missing or invalid API key","code":"unauthenticated"}"#
            )
        );
    }
    let answer = send(
        addr,
        "GET",
        "/greeter/greet/Max",
        &[("authorization", "Bearer second")],
        "",
    )
    .await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "\"Hello, Max\"")
    );
    let answer = send(
        addr,
        "GET",
        "/greeter/check",
        &[("authorization", "Bearer first")],
        "",
    )
    .await;
    assert!(answer.body.starts_with("All ok! "), "{answer:?}");
    assert_eq!(get(addr, "/healthz").await.status, 200);
    assert_eq!(get(addr, "/readyz").await.status, 200);
    assert_eq!(get(addr, "/openapi.json").await.status, 401);
}

/// Sends `head` (a request head, and perhaps part of a body) on a new connection and keeps the
/// connection open without finishing the request, so the gateway holds it in flight.
async fn start_unfinished(addr: std::net::SocketAddr, head: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    stream.write_all(head.as_bytes()).await.expect("writes");
    stream
}

/// Waits until the gauge `name` on `/metrics` reads `value`.
async fn wait_for_gauge(addr: std::net::SocketAddr, name: &str, value: u64) {
    let line = format!("{name} {value}\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = get(addr, "/metrics").await.body;
        if metrics.contains(&line) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never read {value}: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the gateway answered on `stream` so far (for failure messages).
async fn answered(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buffer = vec![0; 4096];
    match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buffer)).await {
        Ok(Ok(read)) => String::from_utf8_lossy(&buffer[..read]).into_owned(),
        Ok(Err(error)) => format!("error: {error}"),
        Err(_) => "nothing".to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_limits_the_gateway_answers_503_with_retry_after() {
    assert!(
        greeter_binary_is_there(),
        "the greeter binary is missing: build the workspace first (cargo build --workspace)"
    );
    let state = tempfile::tempdir().expect("a temporary directory");
    let cluster = format!("e2e-limits-{}", std::process::id());
    let gateway = start_gateway(
        state.path(),
        &cluster,
        &["--max-in-flight", "2", "--max-buffered", "1000"],
    );
    let _greeter = start_service("greeter", &gateway, state.path(), &cluster);
    wait_for_members(&gateway, "greeter", 1).await;
    let addr = gateway.http;

    // Two calls whose bodies never finish arriving fill the two places.
    let body_head = "POST /greeter/greet HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: 400\r\n\r\n{\"name\": ";
    let mut first = start_unfinished(addr, body_head).await;
    wait_for_gauge(addr, "gateway_http_requests_in_flight", 1).await;
    let mut second = start_unfinished(addr, body_head).await;
    wait_for_gauge(addr, "gateway_http_requests_in_flight", 2).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let answer = get(addr, "/greeter/greet/Max").await;
        if answer.status == 503 || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if answer.status != 503 {
        let log = std::fs::read_to_string(&gateway.log).unwrap_or_default();
        panic!(
            "never shed: {answer:?}; the held requests got {:?} and {:?}; log: {log}",
            answered(&mut first).await,
            answered(&mut second).await
        );
    }
    assert_error(&answer, 503, "unavailable", "limit of 2 requests in flight");
    assert_eq!(answer.headers["retry-after"], "1");
    // Probes and metrics are never shed.
    assert_eq!(get(addr, "/healthz").await.status, 200);
    assert_eq!(get(addr, "/readyz").await.status, 200);
    assert_eq!(get(addr, "/metrics").await.status, 200);
    drop((first, second));

    // 400 of the 1,000 body bytes are held by one unfinished call: a second declaring 700
    // does not fit, a small one does.
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(addr, "/greeter/greet/Max").await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "the places were never given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _held = start_unfinished(addr, body_head).await;
    wait_for_gauge(addr, "gateway_http_buffered_body_bytes", 400).await;
    let big = format!(r#"{{"name": "{}"}}"#, "x".repeat(688));
    assert_eq!(big.len(), 700);
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let answer = post(addr, "/greeter/greet", &big).await;
        if answer.status == 503 || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_error(
        &answer,
        503,
        "unavailable",
        "limit of 1000 buffered body bytes",
    );
    assert_eq!(answer.headers["retry-after"], "1");
    let answer = post(addr, "/greeter/greet", r#"{"name": "Max"}"#).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, r#"{"error":"","message":"Hello, Max"}"#)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_the_real_gateway_answers_is_json() {
    assert!(
        greeter_binary_is_there(),
        "the greeter binary is missing: build the workspace first (cargo build --workspace)"
    );
    let state = tempfile::tempdir().expect("a temporary directory");
    let cluster = format!("e2e-json-{}", std::process::id());
    let gateway = start_gateway(state.path(), &cluster, &[]);
    let _greeter = start_service("greeter", &gateway, state.path(), &cluster);
    wait_for_members(&gateway, "greeter", 1).await;
    let addr = gateway.http;

    // Methods a route does not answer: 405, JSON, with Allow.
    for (method, path, allow) in [
        ("POST", "/greeter/greet/Max", "GET,HEAD"),
        ("DELETE", "/healthz", "GET,HEAD"),
        ("PUT", "/openapi.json", "GET,HEAD"),
        ("GET", "/greeter/sendPostcard/Max/World/Hello", "POST"),
        ("PUT", "/greeter/greet", "GET, HEAD, POST"),
        ("GET", "/greeter/send_postcard", "POST"),
    ] {
        let answer = send(addr, method, path, &[], "").await;
        assert_error(&answer, 405, "unimplemented", "");
        assert_eq!(answer.headers["content-type"], "application/json");
        let allowed = answer.headers["allow"]
            .to_str()
            .expect("text")
            .replace(' ', "");
        assert_eq!(allowed, allow.replace(' ', ""), "{method} {path}");
    }
    // The greeter's own legacy 405 and 404 come without a body: the gateway says it in JSON,
    // keeping the Allow header.
    let answer = send(addr, "DELETE", "/greeter/check", &[], "").await;
    assert_error(&answer, 405, "unimplemented", "`greeter`");
    assert!(answer.headers.contains_key("allow"), "{answer:?}");
    let answer = get(addr, "/greeter/nosuch/page").await;
    assert_error(&answer, 404, "not_found", "`greeter` has no HTTP handler");
    // A path segment that is not UTF-8 once decoded.
    let answer = get(addr, "/greeter/greet/%FF").await;
    assert_error(&answer, 400, "invalid_argument", "bad path");
    assert_eq!(answer.headers["content-type"], "application/json");
    // `GET /greeter/greet` is the GET form of the greet method.
    let answer = get(addr, "/greeter/greet").await;
    assert_error(&answer, 400, "invalid_argument", "missing field `name`");
    let answer = get(addr, "/greeter/greet?name=Max").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, r#"{"error":"","message":"Hello, Max"}"#)
    );
    let answer = get(addr, "/greeter/greet?name=Max&name=Ada").await;
    assert_error(&answer, 400, "invalid_argument", "more than once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_normalised_and_oversized_heads_get_a_json_431() {
    assert!(
        greeter_binary_is_there(),
        "the greeter binary is missing: build the workspace first (cargo build --workspace)"
    );
    let state = tempfile::tempdir().expect("a temporary directory");
    let cluster = format!("e2e-paths-{}", std::process::id());
    let gateway = start_gateway(state.path(), &cluster, &[]);
    let _greeter = start_service("greeter", &gateway, state.path(), &cluster);
    wait_for_members(&gateway, "greeter", 1).await;
    let addr = gateway.http;

    for path in ["//greeter/check", "/greeter//check", "/greeter/check//"] {
        let answer = get(addr, path).await;
        if path.ends_with("//") {
            // `/greeter/check/` is another path than `/greeter/check` for the greeter.
            assert_ne!(answer.status, 200, "{path}: {answer:?}");
            continue;
        }
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        assert!(answer.body.starts_with("All ok! "), "{path}: {answer:?}");
    }
    let answer = get(addr, "//greeter//greet//Max").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "\"Hello, Max\"")
    );

    // 98 headers of the client's own (97 and Host): the gateway's three X-Forwarded-* ones
    // would take the request past the 100 a member's HTTP server takes.
    let names: Vec<String> = (0..97).map(|index| format!("x-extra-{index}")).collect();
    let mut headers: Vec<(&str, &str)> = names.iter().map(|name| (name.as_str(), "1")).collect();
    let answer = send(addr, "GET", "/greeter/check", &headers, "").await;
    assert_error(&answer, 431, "resource_exhausted", "over the limit of 100");
    // A few less fit.
    headers.truncate(90);
    let answer = send(addr, "GET", "/greeter/check", &headers, "").await;
    assert_eq!(answer.status, 200, "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_and_paths_do_not_grow_the_metrics() {
    let state = tempfile::tempdir().expect("a temporary directory");
    let cluster = format!("e2e-cardinality-{}", std::process::id());
    let gateway = start_gateway(state.path(), &cluster, &["--require", "greeter"]);
    let addr = gateway.http;

    async fn hostile_round(addr: std::net::SocketAddr, round: usize) {
        for index in 0..100 {
            let method = format!("M{round}X{index}{}", "Q".repeat(200));
            for path in [
                format!("/made-up-{round}-{index}"),
                format!("/greeter/made-up-{round}-{index}"),
                format!("/x{round}/y{index}/z"),
            ] {
                let answer = send(addr, &method, &path, &[], "").await;
                assert!(answer.status >= 400, "{answer:?}");
            }
        }
    }
    let series = |text: &str| {
        text.lines()
            .filter(|line| line.starts_with("gateway_http_"))
            .count()
    };
    hostile_round(addr, 0).await;
    let before = get(addr, "/metrics").await.body;
    hostile_round(addr, 1).await;
    hostile_round(addr, 2).await;
    let after = get(addr, "/metrics").await.body;
    assert!(
        after.contains(r#"method="other""#),
        "made-up methods are counted as `other`: {after}"
    );
    assert!(!after.contains("made-up"), "{after}");
    assert!(!after.contains("QQQQ"), "{after}");
    // The gateway's series are the same set: 600 more made-up requests added none (the
    // /metrics scrape between the rounds added its own).
    let scrape = r#"route="/metrics""#;
    let own = |text: &str| {
        text.lines()
            .filter(|line| line.starts_with("gateway_http_") && !line.contains(scrape))
            .count()
    };
    assert_eq!(own(&before), own(&after), "{after}");
    assert!(series(&after) <= series(&before) + 40, "{after}");
}
