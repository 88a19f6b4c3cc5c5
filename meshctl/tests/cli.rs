//! The real `meshctl` binary against a mesh of two greeter replicas started in-process on
//! loopback.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use greeter::{GreeterServer, GreeterService};
use meshrpc::Node;
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;

const CLUSTER: &str = "meshctl-test";

/// How long any one meshctl run may take before the test gives up on it.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Two greeter replicas (`greeter-1`, the seed, and `greeter-2`, tagged `canary`) and their CA.
struct Mesh {
    state: TempDir,
    seed: Node,
    other: Node,
}

impl Mesh {
    async fn start() -> Mesh {
        let state = tempfile::tempdir().expect("tempdir");
        let seed = Node::builder("greeter-1")
            .cluster(CLUSTER)
            .state_dir(state.path())
            .listen("127.0.0.1:0".parse().expect("addr"))
            .publish(GreeterServer::new(GreeterService))
            .start()
            .await
            .expect("greeter-1 starts");
        let other = Node::builder("greeter-2")
            .cluster(CLUSTER)
            .state_dir(state.path())
            .listen("127.0.0.1:0".parse().expect("addr"))
            .seeds([seed.local_addr().to_string()])
            .tags(["canary"])
            .publish(GreeterServer::new(GreeterService))
            .start()
            .await
            .expect("greeter-2 starts");
        // Both see both, so any seed answers with the whole mesh.
        for _ in 0..200 {
            if seed.view().members().len() == 2 && other.view().members().len() == 2 {
                return Mesh { state, seed, other };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the two greeters did not see each other within 10 s");
    }

    fn seed_addr(&self) -> SocketAddr {
        self.seed.local_addr()
    }

    /// Starts a third node, `name`, publishing `service` through the seed, and waits until the
    /// seed sees it.
    async fn join(&self, name: &str, service: impl meshrpc::Dispatch) -> Node {
        let node = Node::builder(name)
            .cluster(CLUSTER)
            .state_dir(self.state.path())
            .listen("127.0.0.1:0".parse().expect("addr"))
            .seeds([self.seed_addr().to_string()])
            .publish(service)
            .start()
            .await
            .unwrap_or_else(|error| panic!("{name} starts: {error}"));
        for _ in 0..200 {
            if self.seed.view().members().len() == 3 {
                return node;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the seed did not see {name} within 10 s");
    }

    /// Runs meshctl with the mesh flags and `args`.
    async fn meshctl(&self, args: &[&str]) -> Run {
        self.meshctl_with_stdin(args, None).await
    }

    async fn meshctl_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let mut all = vec![
            "-N".to_owned(),
            self.seed_addr().to_string(),
            "-T".to_owned(),
            CLUSTER.to_owned(),
            "--state-dir".to_owned(),
            self.state.path().display().to_string(),
        ];
        all.extend(args.iter().map(|arg| (*arg).to_owned()));
        run(&all, stdin).await
    }
}

/// A finished meshctl run.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("stdout is not JSON ({error}): {self:?}"))
    }

    fn assert_success(&self) -> &Run {
        assert_eq!(self.code, Some(0), "{self:?}");
        self
    }
}

async fn run(args: &[String], stdin: Option<&str>) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshctl"));
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // The test's own environment must not point meshctl elsewhere.
    for (key, _) in std::env::vars() {
        if key.starts_with("MESHRPC_") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    let mut child = command.spawn().expect("meshctl starts");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(text.as_bytes())
            .await
            .expect("stdin written");
        drop(pipe);
    }
    let output = tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .expect("meshctl finishes")
        .expect("meshctl runs");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("file written");
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_lists_every_member_with_its_state_services_and_tags() {
    let mesh = Mesh::start().await;
    let table = mesh.meshctl(&["members"]).await;
    table.assert_success();
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two members: {table:?}");
    for title in ["NAME", "ADDR", "STATE", "SERVICES", "TAGS", "AGE"] {
        assert!(lines[0].contains(title), "{table:?}");
    }
    assert!(lines[1].starts_with("greeter-1 "), "{table:?}");
    assert!(
        lines[1].contains(&mesh.seed_addr().to_string()),
        "{table:?}"
    );
    assert!(
        lines[1].contains("alive") && lines[1].contains("greeter"),
        "{table:?}"
    );
    assert!(
        lines[2].starts_with("greeter-2 ") && lines[2].contains("canary"),
        "{table:?}"
    );

    let json = mesh.meshctl(&["members", "--json"]).await;
    json.assert_success();
    let members = json.json();
    let members = members.as_array().expect("an array");
    assert_eq!(members.len(), 2, "{json:?}");
    assert_eq!(members[0]["name"], "greeter-1");
    assert_eq!(members[0]["addr"], mesh.seed_addr().to_string());
    assert_eq!(members[0]["state"], "alive");
    assert_eq!(members[0]["services"], serde_json::json!(["greeter"]));
    assert_eq!(members[1]["name"], "greeter-2");
    assert_eq!(members[1]["addr"], mesh.other.local_addr().to_string());
    assert_eq!(members[1]["tags"], serde_json::json!(["canary"]));
    assert!(members[1]["age_s"].is_u64(), "{json:?}");

    // meshctl asked, but never joined: the mesh still has its two members.
    assert_eq!(mesh.seed.view().members().len(), 2);
    assert_eq!(mesh.other.view().members().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_lists_each_service_with_its_replicas_schema_and_methods() {
    let mesh = Mesh::start().await;
    let hash = format!("{:016x}", greeter::GREETER_SPEC.schema_hash);
    let table = mesh.meshctl(&["services"]).await;
    table.assert_success();
    let row = table
        .stdout
        .lines()
        .find(|line| line.starts_with("greeter "))
        .unwrap_or_else(|| panic!("a greeter row: {table:?}"));
    assert!(row.contains("greeter-1, greeter-2"), "{table:?}");
    assert!(row.contains(&hash), "{table:?}");
    assert!(!row.contains("disagree"), "{table:?}");
    assert!(row.contains("greet, send_postcard"), "{table:?}");

    let json = mesh.meshctl(&["--json", "services"]).await;
    json.assert_success();
    let services = json.json();
    let greeter = &services[0];
    assert_eq!(greeter["service"], "greeter", "{json:?}");
    assert_eq!(greeter["replicas"].as_array().map(Vec::len), Some(2));
    assert_eq!(greeter["schema_hashes"], serde_json::json!([hash]));
    assert_eq!(greeter["schemas_agree"], true);
    assert_eq!(
        greeter["methods"],
        serde_json::json!(["greet", "send_postcard"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_prints_signatures_docs_flags_and_declared_types_from_the_manifest() {
    let mesh = Mesh::start().await;
    let text = mesh.meshctl(&["describe", "greeter"]).await;
    text.assert_success();
    let out = &text.stdout;
    assert!(out.contains("service greeter (schema "), "{text:?}");
    assert!(out.contains("2 replicas"), "{text:?}");
    assert!(
        out.contains("Greets people and sends postcards."),
        "{text:?}"
    );
    assert!(
        out.contains("greet(name: String) -> String    [idempotent]"),
        "{text:?}"
    );
    assert!(out.contains("Says hello to `name`."), "{text:?}");
    assert!(
        out.contains("send_postcard(card: Postcard) -> Postcard\n"),
        "not idempotent, so no flags: {text:?}"
    );
    assert!(out.contains("struct Postcard {"), "{text:?}");
    assert!(out.contains("recipient: String,"), "{text:?}");
    assert!(
        out.contains("/// Who receives it; must not be empty."),
        "{text:?}"
    );

    let json = mesh.meshctl(&["describe", "greeter", "--json"]).await;
    json.assert_success();
    let described = json.json();
    assert_eq!(described["service"], "greeter");
    assert_eq!(described["replicas"], 2);
    let greet = &described["methods"][0];
    assert_eq!(greet["name"], "greet");
    assert_eq!(greet["signature"], "greet(name: String) -> String");
    assert_eq!(greet["idempotent"], true);
    assert_eq!(greet["timeout_ms"], Value::Null);
    assert_eq!(greet["request"]["properties"]["name"]["type"], "string");
    assert_eq!(described["declared_types"][0]["name"], "Postcard");
    assert!(
        described["types"]["greeter.Postcard"].is_object(),
        "{json:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_services_and_methods_are_refused_with_what_exists() {
    let mesh = Mesh::start().await;
    let service = mesh.meshctl(&["describe", "billing"]).await;
    assert_eq!(service.code, Some(3), "{service:?}");
    assert!(
        service
            .stderr
            .contains("no member publishes `billing`; services in the mesh: greeter"),
        "{service:?}"
    );
    let method = mesh.meshctl(&["call", "greeter.wave", "{}"]).await;
    assert_eq!(method.code, Some(3), "{method:?}");
    assert!(
        method.stderr.contains(
            "service `greeter` has no method `wave`; its methods are: greet, send_postcard"
        ),
        "{method:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_answers_json_from_an_argument_a_file_or_stdin() {
    let mesh = Mesh::start().await;
    let answer = mesh
        .meshctl(&["call", "greeter.greet", r#"{"name": "Max"}"#])
        .await;
    answer.assert_success();
    assert_eq!(answer.json(), serde_json::json!({"message": "Hello, Max"}));

    let file = write_file(mesh.state.path(), "request.json", r#"{"name": "Ada"}"#);
    let from_file = mesh
        .meshctl(&[
            "call",
            "greeter.greet",
            "-d",
            &format!("@{file}"),
            "--sticky",
            "user-7",
            "--deadline",
            "5s",
            "--metadata",
            "tenant=blue",
        ])
        .await;
    from_file.assert_success();
    assert_eq!(
        from_file.json(),
        serde_json::json!({"message": "Hello, Ada"})
    );

    let card =
        r#"{"card": {"picture_url": "", "address": "World", "recipient": "Max", "message": "Hi"}}"#;
    let from_stdin = mesh
        .meshctl_with_stdin(
            &["--json", "call", "greeter.send_postcard", "-d", "@-"],
            Some(card),
        )
        .await;
    from_stdin.assert_success();
    assert_eq!(
        from_stdin.json()["card"]["recipient"],
        "Max",
        "{from_stdin:?}"
    );
    assert_eq!(
        from_stdin.stdout.lines().count(),
        1,
        "--json prints one line"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_calls_read_items_from_stdin_and_print_items_as_lines() {
    let mesh = Mesh::start().await;
    let numbers = mesh
        .join(
            "numbers",
            numbers::NumbersServer::new(numbers::NumbersService),
        )
        .await;

    // A server stream: each item a line, then a clean exit.
    let counted = mesh
        .meshctl(&[
            "call",
            "numbers.count",
            r#"{"from": 1, "to": 3, "every_ms": 1}"#,
        ])
        .await;
    counted.assert_success();
    assert_eq!(
        counted.stdout, "{\"item\":1}\n{\"item\":2}\n{\"item\":3}\n",
        "{counted:?}"
    );

    // A client stream from stdin, answered with one message.
    let summed = mesh
        .meshctl_with_stdin(
            &["call", "numbers.sum"],
            Some("{\"item\": 40}\n\n{\"item\": 2}\n"),
        )
        .await;
    summed.assert_success();
    assert_eq!(summed.json(), serde_json::json!({"sum": 42}));

    // Both ways.
    let totals = mesh
        .meshctl_with_stdin(
            &["call", "numbers.running_total"],
            Some("{\"item\": 1}\n{\"item\": 2}\n{\"item\": 3}\n"),
        )
        .await;
    totals.assert_success();
    assert_eq!(
        totals.stdout, "{\"item\":1}\n{\"item\":3}\n{\"item\":6}\n",
        "{totals:?}"
    );

    // A bad line aborts the upload: the call fails naming the line, never sums what came before.
    let bad = mesh
        .meshctl_with_stdin(
            &["call", "numbers.sum"],
            Some("{\"item\": 1}\n{\"item\": \"two\"}\n"),
        )
        .await;
    assert_eq!(bad.code, Some(1), "{bad:?}");
    assert!(bad.stdout.is_empty(), "{bad:?}");
    assert!(
        bad.stderr.contains("invalid_argument") && bad.stderr.contains("stdin line 2"),
        "{bad:?}"
    );

    // A stream cut off by its deadline exits non-zero after the items it delivered.
    let cut = mesh
        .meshctl(&[
            "call",
            "numbers.count",
            r#"{"from": 1, "to": 100000, "every_ms": 5}"#,
            "--deadline",
            "300ms",
        ])
        .await;
    assert_eq!(cut.code, Some(1), "{cut:?}");
    assert!(cut.stdout.lines().count() > 1, "{cut:?}");
    assert!(cut.stderr.contains("deadline_exceeded"), "{cut:?}");
    numbers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_answered_with_a_non_ok_status_exits_1_naming_the_code() {
    let mesh = Mesh::start().await;
    let card =
        r#"{"card": {"picture_url": "", "address": "World", "recipient": "", "message": "Hi"}}"#;
    let refused = mesh.meshctl(&["call", "greeter.send_postcard", card]).await;
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(refused.stdout.is_empty(), "{refused:?}");
    assert!(
        refused
            .stderr
            .starts_with("meshctl: greeter.send_postcard answered invalid_argument: "),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_match_the_schema_is_refused_naming_the_field() {
    let mesh = Mesh::start().await;
    let card =
        r#"{"card": {"picture_url": "", "address": "World", "recipient": 5, "message": "Hi"}}"#;
    let wrong = mesh.meshctl(&["call", "greeter.send_postcard", card]).await;
    assert_eq!(wrong.code, Some(3), "{wrong:?}");
    assert!(
        wrong
            .stderr
            .starts_with("meshctl: bad request for greeter.send_postcard: "),
        "{wrong:?}"
    );
    assert!(wrong.stderr.contains("card.recipient"), "{wrong:?}");

    let not_json = mesh
        .meshctl(&["call", "greeter.greet", "{name: Max}"])
        .await;
    assert_eq!(not_json.code, Some(3), "{not_json:?}");
    assert!(not_json.stderr.contains("not valid JSON"), "{not_json:?}");

    let missing = mesh
        .meshctl(&["call", "greeter.greet", "-d", "@/nonexistent/request.json"])
        .await;
    assert_eq!(missing.code, Some(3), "{missing:?}");
    assert!(
        missing
            .stderr
            .contains("cannot read the request from `/nonexistent/request.json`"),
        "{missing:?}"
    );
}

/// `meshctl -N <seed> -T <cluster> --state-dir <state> --timeout <timeout> members`.
fn members_args(seed: SocketAddr, cluster: &str, state: &Path, timeout: &str) -> Vec<String> {
    [
        "-N",
        &seed.to_string(),
        "-T",
        cluster,
        "--state-dir",
        &state.display().to_string(),
        "--timeout",
        timeout,
        "members",
    ]
    .map(str::to_owned)
    .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_reachable_seed_meshctl_names_the_seeds_and_the_flags() {
    let state = tempfile::tempdir().expect("tempdir");
    // The cluster's CA exists (meshctl checks for it first); only the seed is missing.
    meshrpc::tls::TlsMaterial::dev(state.path(), CLUSTER, "someone").expect("mint");
    // A port nothing listens on: bound and dropped.
    let free = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .expect("a free port");
    let args = members_args(free, CLUSTER, state.path(), "1s");
    let unreachable = run(&args, None).await;
    assert_eq!(unreachable.code, Some(4), "{unreachable:?}");
    assert!(
        unreachable
            .stderr
            .contains(&format!("no seed answered (tried {free} within 1s)")),
        "{unreachable:?}"
    );
    assert!(unreachable.stderr.contains("-N/--nodes"), "{unreachable:?}");
    assert!(
        unreachable.stderr.contains("MESHRPC_CLUSTER_NODES"),
        "{unreachable:?}"
    );

    let no_seeds = run(&["members".to_owned()], None).await;
    assert_eq!(no_seeds.code, Some(4), "{no_seeds:?}");
    assert!(
        no_seeds.stderr.contains("no seed to ask: pass -N/--nodes"),
        "{no_seeds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_reports_round_trips_to_a_member_by_name_or_address() {
    let mesh = Mesh::start().await;
    let by_name = mesh.meshctl(&["ping", "greeter-2", "-c", "3"]).await;
    by_name.assert_success();
    let other = mesh.other.local_addr().to_string();
    assert!(
        by_name.stdout.contains(&format!(
            "meshrpc.node/ping greeter-2 ({other}): seq=3 time="
        )),
        "{by_name:?}"
    );
    assert!(by_name.stdout.contains("3 pings: min "), "{by_name:?}");

    let by_addr = mesh
        .meshctl(&["ping", &other, "--count", "2", "--json"])
        .await;
    by_addr.assert_success();
    let reply = by_addr.json();
    assert_eq!(reply["name"], "greeter-2");
    assert_eq!(reply["samples_ms"].as_array().map(Vec::len), Some(2));

    let nobody = mesh.meshctl(&["ping", "greeter-9"]).await;
    assert_eq!(nobody.code, Some(3), "{nobody:?}");
    assert!(
        nobody.stderr.contains("greeter-1 ("),
        "lists the members: {nobody:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_once_shows_the_calls_just_made_per_method() {
    let mesh = Mesh::start().await;
    for name in ["Max", "Ada", "Eve"] {
        mesh.meshctl(&["call", "greeter.greet", &format!(r#"{{"name": "{name}"}}"#)])
            .await
            .assert_success();
    }
    let card =
        r#"{"card": {"picture_url": "", "address": "World", "recipient": "", "message": "Hi"}}"#;
    let refused = mesh.meshctl(&["call", "greeter.send_postcard", card]).await;
    assert_eq!(refused.code, Some(1), "{refused:?}");

    let top = mesh
        .meshctl(&["top", "--once", "--json", "--interval", "200ms"])
        .await;
    top.assert_success();
    let sample = top.json();
    assert_eq!(sample["members"], 2, "{top:?}");
    let methods = sample["methods"].as_array().expect("methods");
    let row = |method: &str| {
        methods
            .iter()
            .find(|row| row["service"] == "greeter" && row["method"] == method)
            .unwrap_or_else(|| panic!("a row for greeter.{method}: {top:?}"))
            .clone()
    };
    let greet = row("greet");
    assert_eq!(greet["calls_total"], 3, "{top:?}");
    assert_eq!(greet["errors_total"], 0, "{top:?}");
    assert!(
        greet["p50_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{top:?}"
    );
    assert!(greet["p99_ms"].as_f64().is_some(), "{top:?}");
    let postcard = row("send_postcard");
    assert_eq!(postcard["calls_total"], 1, "{top:?}");
    assert_eq!(postcard["errors_total"], 1, "{top:?}");
    assert!(
        methods.iter().all(|row| row["service"] != "meshrpc.node"),
        "the mesh's own calls are left out without --all: {top:?}"
    );

    let table = mesh
        .meshctl(&["top", "--once", "--interval", "100ms"])
        .await;
    table.assert_success();
    assert!(table.stdout.contains("CALLS/S"), "{table:?}");
    let greet_line = table
        .stdout
        .lines()
        .find(|line| line.starts_with("greeter") && line.contains(" greet "))
        .unwrap_or_else(|| panic!("a greet row: {table:?}"));
    assert!(
        greet_line.split_whitespace().any(|cell| cell == "3"),
        "{table:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_cluster_or_ca_is_named_in_the_error() {
    let mesh = Mesh::start().await;
    let args = |cluster: &str, state: &Path| members_args(mesh.seed_addr(), cluster, state, "2s");
    // The state directory also holds a CA of another cluster, and another directory a CA of
    // this cluster's name that the mesh never saw: both are refused at the handshake.
    meshrpc::tls::TlsMaterial::dev(mesh.state.path(), "another", "someone").expect("mint");
    let wrong_cluster = run(&args("another", mesh.state.path()), None).await;
    let other_ca = tempfile::tempdir().expect("tempdir");
    meshrpc::tls::TlsMaterial::dev(other_ca.path(), CLUSTER, "someone").expect("mint");
    let wrong_ca = run(&args(CLUSTER, other_ca.path()), None).await;
    for (run, cluster) in [(&wrong_cluster, "another"), (&wrong_ca, CLUSTER)] {
        assert_eq!(run.code, Some(4), "{run:?}");
        assert!(run.stderr.contains("invalid peer certificate"), "{run:?}");
        assert!(
            run.stderr
                .contains("The seeds refused meshctl's certificate, or it refused theirs."),
            "{run:?}"
        );
        assert!(
            run.stderr.contains(&format!(
                "-T/--cluster, MESHRPC_CLUSTER_NAME; now `{cluster}`"
            )),
            "{run:?}"
        );
        assert!(run.stderr.contains("--state-dir"), "{run:?}");
        assert!(run.stderr.contains("--ca/--cert/--key"), "{run:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_directory_without_the_clusters_ca_is_named_and_left_as_it_was() {
    let mesh = Mesh::start().await;
    let empty = tempfile::tempdir().expect("tempdir");
    let state = empty.path().display().to_string();
    let run = run(
        &members_args(mesh.seed_addr(), CLUSTER, empty.path(), "2s"),
        None,
    )
    .await;
    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "no development CA for cluster `{CLUSTER}` under {state}"
        )),
        "{run:?}"
    );
    assert!(run.stderr.contains("does not mint one"), "{run:?}");
    assert!(run.stderr.contains("--ca/--cert/--key"), "{run:?}");
    assert!(
        std::fs::read_dir(empty.path())
            .expect("the directory")
            .next()
            .is_none(),
        "meshctl wrote into a state directory that had no CA"
    );
}

/// Calls of `greeter.greet` that `node` served, by its own metrics.
fn greets_served(node: &Node) -> u64 {
    node.metrics()
        .snapshot()
        .iter()
        .filter(|s| s.side == "server" && s.service == "greeter" && s.method == "greet")
        .map(|s| s.calls())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_with_the_same_sticky_key_land_on_the_same_replica() {
    let mesh = Mesh::start().await;
    for _ in 0..4 {
        mesh.meshctl(&[
            "call",
            "greeter.greet",
            r#"{"name": "Max"}"#,
            "--sticky",
            "cart-42",
        ])
        .await
        .assert_success();
    }
    let served = (greets_served(&mesh.seed), greets_served(&mesh.other));
    assert!(
        served == (4, 0) || served == (0, 4),
        "every call on one replica: {served:?}"
    );
}

/// The next version of the greeter, as a rolling upgrade would start it: one more method, so
/// another schema hash.
static NEXT_GREETER: meshrpc::ServiceSpec = meshrpc::ServiceSpec {
    name: "greeter",
    doc: "Greets people and waves.",
    methods: &[meshrpc::MethodSpec {
        service: "greeter",
        name: "wave",
        doc: "Waves.",
        idempotent: true,
        timeout: None,
        attempt_timeout: None,
        hedge_after: None,
        params: &[],
        result_field: "result",
        result_type: "()",
        kind: meshrpc::MethodKind::Unary,
        index: 0,
    }],
    schema_hash: 0x0123_4567_89ab_cdef,
    manifest: "[greeter]\n[greeter.methods]\nwave = \"wave()\"\n",
    descriptor: r#"{"service":"greeter","doc":"Greets people and waves.","schema_hash":"0123456789abcdef","methods":[{"name":"wave","doc":"Waves.","idempotent":true,"timeout_ms":null,"result_field":"result","request":{"type":"object","properties":{}},"response":{"type":"object","properties":{}}}],"types":{}}"#,
    use_schemas: &[],
};

#[derive(Debug, Clone)]
struct NextGreeter;

impl meshrpc::Dispatch for NextGreeter {
    fn spec(&self) -> &'static meshrpc::ServiceSpec {
        &NEXT_GREETER
    }

    fn dispatch(
        &self,
        method: &'static meshrpc::MethodSpec,
        _request: bytes::Bytes,
        _stream: Option<meshrpc::Streaming<bytes::Bytes>>,
    ) -> meshrpc::BoxFuture<'static, Result<meshrpc::Body, meshrpc::Status>> {
        let reply = match method.name {
            "wave" => Ok(meshrpc::Body::Message(bytes::Bytes::from_static(b"\x80"))),
            other => Err(meshrpc::service::unknown_method(&NEXT_GREETER, other)),
        };
        Box::pin(std::future::ready(reply))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_says_when_replicas_disagree_on_the_schema() {
    let mesh = Mesh::start().await;
    let next = mesh.join("greeter-next", NextGreeter).await;
    assert_eq!(mesh.seed.view().members().len(), 3, "greeter-next joined");

    let table = mesh.meshctl(&["services"]).await;
    table.assert_success();
    let rows: Vec<&str> = table
        .stdout
        .lines()
        .filter(|line| line.starts_with("greeter "))
        .collect();
    assert_eq!(rows.len(), 2, "one row per schema: {table:?}");
    let old = format!("{:016x}", greeter::GREETER_SPEC.schema_hash);
    assert!(
        rows.iter().any(|row| row.contains("greeter-1, greeter-2")
            && row.contains(&format!("{old} (replicas disagree)"))
            && row.contains("greet, send_postcard")),
        "{table:?}"
    );
    assert!(
        rows.iter().any(|row| row.contains("greeter-next")
            && row.contains("0123456789abcdef (replicas disagree)")
            && row.ends_with("wave")),
        "{table:?}"
    );

    let json = mesh.meshctl(&["services", "--json"]).await;
    json.assert_success();
    let greeter = &json.json()[0];
    assert_eq!(greeter["schemas_agree"], false, "{json:?}");
    assert_eq!(greeter["schema_hashes"].as_array().map(Vec::len), Some(2));
    assert_eq!(greeter["replicas"].as_array().map(Vec::len), Some(3));

    // describe and call follow the schema most replicas publish.
    let described = mesh.meshctl(&["describe", "greeter", "--json"]).await;
    described.assert_success();
    assert_eq!(described.json()["schema_hash"], old.as_str());
    next.shutdown().await;
}
