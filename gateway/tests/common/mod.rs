//! Helpers shared by the gateway's integration tests: a small HTTP client, and child
//! processes that are killed when dropped (also when a test fails).
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// An HTTP answer, body as text.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {:?}", self.body))
    }

    /// The `error` field of a JSON error body.
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
}

/// Sends one request; panics if no answer comes within 10 s.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(body.into())).expect("a request");
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within 10 s"))
        .unwrap_or_else(|error| panic!("{method} {path}: {error}"));
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("the body").to_bytes();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    send(addr, "GET", path, &[], Bytes::new()).await
}

pub async fn post(addr: SocketAddr, path: &str, body: &str) -> Answer {
    send(addr, "POST", path, &[], body.to_owned()).await
}

/// A child process, killed and reaped when dropped.
#[derive(Debug)]
pub struct Process {
    pub name: String,
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Starts `program` and returns it with the first line it prints on stdout.
    pub fn start(program: &Path, args: &[String], stderr: Stdio) -> (Process, String) {
        let mut child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "warn,mesh_api::access=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|error| panic!("{} does not start: {error}", program.display()));
        let stdout = child.stdout.take().expect("stdout");
        let process = Process {
            name: program.display().to_string(),
            child,
        };
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("a first line");
        assert!(
            !line.is_empty(),
            "{} exited before printing its address",
            process.name
        );
        (process, line)
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// The address after `marker` in `line`.
pub fn addr_after(line: &str, marker: &str) -> SocketAddr {
    line.split_once(marker)
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .map(|addr| addr.trim_end_matches([')', ',']))
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no address after {marker:?} in {line:?}"))
}

/// A binary of another workspace package, next to this test's own directory
/// (`target/<profile>/<name>`), built with cargo if it is not there yet.
pub fn workspace_binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().expect("the test's path");
    let profile_dir = exe.parent()?.parent()?;
    let path = profile_dir.join(name);
    if path.exists() {
        return Some(path);
    }
    let profile = profile_dir.file_name()?.to_str()?.to_owned();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut build = Command::new(cargo);
    build.args(["build", "-p", name, "--bin", name]);
    if profile != "debug" {
        build.args(["--profile", &profile]);
    }
    // Bounded: under `cargo test` the parent cargo may hold the build lock.
    let mut child = build.spawn().ok()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return (status.success() && path.exists()).then_some(path),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// A running `mesh-api`, started by [`start_gateway`].
#[derive(Debug)]
pub struct Gateway {
    /// Where it serves HTTP.
    pub http: SocketAddr,
    /// Its mesh address (a seed for the services).
    pub mesh: SocketAddr,
    /// Its stderr, for tests that read its log.
    pub log: PathBuf,
    _process: Process,
}

/// Starts the real `mesh-api` on loopback ports in `cluster`, with its dev CA under `state`,
/// logging to `state/mesh-api-<cluster>.log`.
pub fn start_gateway(state: &Path, cluster: &str, extra: &[&str]) -> Gateway {
    let log = state.join(format!("mesh-api-{cluster}.log"));
    let stderr = std::fs::File::create(&log).expect("a log file");
    let mut args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--cluster",
        cluster,
        "--state-dir",
    ]
    .iter()
    .map(|arg| (*arg).to_owned())
    .collect();
    args.push(state.display().to_string());
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    let (process, line) = Process::start(
        Path::new(env!("CARGO_BIN_EXE_mesh-api")),
        &args,
        Stdio::from(stderr),
    );
    // "mesh-api serving HTTP on 127.0.0.1:A and the mesh on 127.0.0.1:B"
    Gateway {
        http: addr_after(&line, "serving HTTP on "),
        mesh: addr_after(&line, "the mesh on "),
        log,
        _process: process,
    }
}

/// Starts a service binary (`greeter`, `concierge`) on a loopback port in `cluster`, seeded
/// with `gateway`'s mesh address and sharing its dev CA under `state`; returns it with the
/// first line it prints (`... advertised as <addr>`).
pub fn start_service(
    binary: &Path,
    gateway: &Gateway,
    state: &Path,
    cluster: &str,
) -> (Process, String) {
    let args: Vec<String> = vec![
        "-N".into(),
        gateway.mesh.to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--cluster".into(),
        cluster.into(),
        "--state-dir".into(),
        state.display().to_string(),
    ];
    Process::start(binary, &args, Stdio::null())
}
