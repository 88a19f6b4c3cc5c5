//! `cargo xtask demo`: builds the binaries, then starts the demo mesh on loopback as separate
//! processes — the `mesh-api` gateway, three `greeter` replicas, a `concierge` and two `numbers`
//! replicas (the streaming example) — with the development CA minted under `target/demo/` (the
//! target directory's, `$CARGO_TARGET_DIR` when set), prints the curl and meshctl lines to try,
//! and drains everything on Ctrl-C. `--smoke` runs those requests
//! itself and stops (used by the tests).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Options of `cargo xtask demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The gateway's HTTP port.
    #[arg(long, default_value_t = 8282)]
    http_port: u16,
    /// The gateway's mesh (seed) port.
    #[arg(long, default_value_t = 11999)]
    mesh_port: u16,
    /// Greeter replicas to start.
    #[arg(long, default_value_t = 3)]
    greeters: usize,
    /// `numbers` replicas (the streaming example) to start.
    #[arg(long, default_value_t = 2)]
    numbers: usize,
    /// Build and run the release profile.
    #[arg(long)]
    release: bool,
    /// Make the demo's requests, print the answers, drain and exit (non-zero on a wrong answer).
    #[arg(long)]
    smoke: bool,
    /// Do not build first (the binaries must exist).
    #[arg(long)]
    no_build: bool,
}

/// A child process of the demo, stopped with SIGTERM (drain) when dropped.
struct Process {
    name: String,
    child: Child,
}

impl Process {
    fn terminate(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
        }
    }

    /// Waits up to `limit` for the process to exit; kills it (and answers `None`) after that.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the demo.
pub(crate) fn run(args: Args) -> Result<(), String> {
    let profile = if args.release { "release" } else { "debug" };
    if !args.no_build {
        crate::cargo_build(
            &[
                "-p",
                "gateway",
                "-p",
                "greeter",
                "-p",
                "concierge",
                "-p",
                "numbers",
                "--bins",
            ],
            args.release,
            "the demo binaries",
        )?;
    }
    let target = crate::target_dir();
    let bin = |name: &str| target.join(profile).join(name);
    let state = target.join("demo").join("state");
    std::fs::create_dir_all(&state).map_err(|e| format!("{}: {e}", state.display()))?;

    let http = SocketAddr::from(([127, 0, 0, 1], args.http_port));
    let mesh = SocketAddr::from(([127, 0, 0, 1], args.mesh_port));
    for (what, addr) in [("HTTP", http)] {
        if std::net::TcpListener::bind(addr).is_err() {
            return Err(format!(
                "the {what} port {addr} is taken; stop what uses it or pass --http-port"
            ));
        }
    }

    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let interrupted = interrupted.clone();
        ctrlc::set_handler(move || interrupted.store(true, Ordering::SeqCst))
            .map_err(|e| format!("cannot handle Ctrl-C: {e}"))?;
    }

    let common = |command: &mut Command| {
        command
            .args(["--cluster", "demo", "--drain-timeout", "5"])
            .arg("--state-dir")
            .arg(&state)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            // Children ignore the terminal's Ctrl-C; the demo drains them itself, in order.
            .process_group(0);
    };
    let mut processes = Vec::new();
    let mut gateway = Command::new(bin("mesh-api"));
    gateway
        .args(["--listen", &mesh.to_string(), "--http", &http.to_string()])
        .args(["--require", "greeter", "--require", "concierge"]);
    if args.numbers > 0 {
        gateway.args(["--require", "numbers"]);
    }
    common(&mut gateway);
    processes.push(spawn("mesh-api", &mut gateway)?);
    for index in 1..=args.greeters {
        let mut greeter = Command::new(bin("greeter"));
        greeter.args(["-N", &mesh.to_string(), "--listen", "127.0.0.1:0"]);
        common(&mut greeter);
        processes.push(spawn(&format!("greeter-{index}"), &mut greeter)?);
    }
    let mut concierge = Command::new(bin("concierge"));
    concierge.args(["-N", &mesh.to_string(), "--listen", "127.0.0.1:0"]);
    common(&mut concierge);
    processes.push(spawn("concierge", &mut concierge)?);
    for index in 1..=args.numbers {
        let mut numbers = Command::new(bin("numbers"));
        numbers.args(["-N", &mesh.to_string(), "--listen", "127.0.0.1:0"]);
        common(&mut numbers);
        processes.push(spawn(&format!("numbers-{index}"), &mut numbers)?);
    }

    let ready = wait_ready(http, Duration::from_secs(60), &interrupted, &mut processes);
    let outcome = match ready {
        Err(error) => Err(error),
        Ok(()) => {
            print_curl_lines(http, args.numbers > 0);
            print_meshctl_lines(mesh, &state);
            if args.smoke {
                smoke(http, args.numbers > 0)
            } else {
                print_processes(&processes);
                println!("\nThe mesh is up. Press Ctrl-C to drain and stop it.");
                watch(&mut processes, &interrupted);
                Ok(())
            }
        }
    };
    drain(&mut processes);
    outcome
}

/// Runs until Ctrl-C, or until the gateway or every other process has exited. A replica that
/// exits (killed, say, to watch the mesh route around it) is reported and the rest carry on.
fn watch(processes: &mut [Process], interrupted: &AtomicBool) {
    let mut reported = vec![false; processes.len()];
    while !interrupted.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        for (process, reported) in processes.iter_mut().zip(reported.iter_mut()) {
            if *reported {
                continue;
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                *reported = true;
                if process.name == "mesh-api" {
                    println!("mesh-api exited ({status}); stopping the demo");
                    return;
                }
                println!(
                    "{} exited ({status}); the mesh carries on without it \
                     (Ctrl-C drains the rest)",
                    process.name
                );
            }
        }
        if reported.iter().skip(1).all(|gone| *gone) {
            println!("every service process has exited; stopping the demo");
            return;
        }
    }
}

/// The name of the first process that has exited, if any.
fn first_exited(processes: &mut [Process]) -> Option<String> {
    processes
        .iter_mut()
        .find_map(|p| matches!(p.child.try_wait(), Ok(Some(_))).then(|| p.name.clone()))
}

fn spawn(name: &str, command: &mut Command) -> Result<Process, String> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {name}: {e} (was it built?)"))?;
    // Prefix every line of the child's output with its name, like docker compose does.
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let prefix = format!("{name:>10} | ");
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                println!("{prefix}{line}");
            }
        });
    }
    Ok(Process {
        name: name.to_owned(),
        child,
    })
}

/// Waits until the gateway's `/readyz` answers 200 (every dependency has a live member).
fn wait_ready(
    http: SocketAddr,
    limit: Duration,
    interrupted: &AtomicBool,
    processes: &mut [Process],
) -> Result<(), String> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if interrupted.load(Ordering::SeqCst) {
            return Err("interrupted before the mesh was ready".into());
        }
        if let Some(dead) = first_exited(processes) {
            return Err(format!(
                "{dead} exited during start-up (see its output above)"
            ));
        }
        if let Ok((200, _)) = request(http, "GET", "/readyz", None) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("the mesh was not ready within {limit:?}"))
}

fn print_processes(processes: &[Process]) {
    println!(
        "\nProcesses (`kill <pid>` drains one, `kill -9 <pid>` crashes it; the mesh routes around it):"
    );
    for process in processes {
        println!("  {:<10} pid {}", process.name, process.child.id());
    }
}

fn print_curl_lines(http: SocketAddr, streaming: bool) {
    let base = format!("http://localhost:{}", http.port());
    println!("\nTry:");
    let streams = [
        format!("curl -N -d '{{\"from\":1,\"to\":5,\"every_ms\":200}}' {base}/numbers/count"),
        format!(
            "printf '{{\"item\":1}}\\n{{\"item\":2}}\\n{{\"item\":3}}\\n' | \
             curl -H 'content-type: application/x-ndjson' --data-binary @- {base}/numbers/sum"
        ),
        format!(
            "websocat ws://localhost:{}/numbers/running_total   \
             # then type {{\"item\":5}}, {{\"item\":2}}, …, {{\"status\":\"ok\"}}",
            http.port()
        ),
    ];
    let streams = if streaming { &streams[..] } else { &[] };
    for line in streams.iter().cloned().chain([
        format!("curl {base}/greeter/greet/Max"),
        format!("curl -d'{{\"name\": \"Max\"}}' {base}/greeter/greet"),
        format!("curl {base}/greeter/check"),
        format!("curl -X POST {base}/greeter/sendPostcard/Max/World/Hello"),
        format!("curl -d'{{\"guests\": [\"Ada\", \"Max\"]}}' {base}/concierge/welcome"),
        format!("curl {base}/readyz"),
        format!("curl {base}/openapi.json"),
        format!("curl {base}/metrics"),
    ]) {
        println!("  {line}");
    }
}

/// The `meshctl` lines to try: the gateway's mesh address as the seed, and the state directory
/// the demo minted its CA in (under `$CARGO_TARGET_DIR` when that is set), so that meshctl signs
/// its certificate with the mesh's CA wherever the demo was started from.
fn print_meshctl_lines(mesh: SocketAddr, state: &std::path::Path) {
    println!("\nAsk the mesh itself:");
    for command in meshctl_lines(mesh, &shown_path(state)) {
        println!("  {command}");
    }
}

/// `meshctl members` and `meshctl call greeter.greet` against the demo mesh.
fn meshctl_lines(mesh: SocketAddr, state: &str) -> [String; 2] {
    let meshctl = format!("cargo run -q -p meshctl -- -N {mesh} -T demo --state-dir {state}");
    [
        format!("{meshctl} members"),
        format!("{meshctl} call greeter.greet '{{\"name\": \"Max\"}}'"),
    ]
}

/// `path` relative to the current directory when it is under it (`target/demo/state`, as the
/// README writes it), else as it is; in single quotes when a shell would split or expand it.
fn shown_path(path: &std::path::Path) -> String {
    let relative = std::env::current_dir().ok().and_then(|cwd| {
        path.strip_prefix(cwd)
            .ok()
            .map(std::path::Path::to_path_buf)
    });
    let shown = relative
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string();
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:@%,=".contains(c);
    if shown.chars().all(plain) {
        shown
    } else {
        format!("'{}'", shown.replace('\'', r"'\''"))
    }
}

/// One request of the smoke test: method, path, body, and a check of the answer's body.
type Check<'a> = (&'a str, &'a str, Option<&'a str>, &'a dyn Fn(&str) -> bool);

/// The streaming requests of the smoke test: a server stream (NDJSON lines, then the status
/// line) and a client stream (an NDJSON body).
fn streaming_checks() -> [(&'static str, &'static str, &'static str, &'static str); 2] {
    [
        (
            "/numbers/count",
            "application/json",
            r#"{"from":1,"to":5,"every_ms":200}"#,
            "{\"item\":1}\n{\"item\":2}\n{\"item\":3}\n{\"item\":4}\n{\"item\":5}\n\
             {\"status\":\"ok\"}\n",
        ),
        (
            "/numbers/sum",
            "application/x-ndjson",
            "{\"item\":1}\n{\"item\":2}\n{\"item\":3}\n",
            r#"{"error":"","sum":6}"#,
        ),
    ]
}

/// Makes the demo's requests and checks the answers (the streaming ones when `streaming`).
fn smoke(http: SocketAddr, streaming: bool) -> Result<(), String> {
    let checks: [Check<'_>; 5] = [
        ("GET", "/greeter/greet/Max", None, &|b| {
            b == "\"Hello, Max\""
        }),
        ("POST", "/greeter/greet", Some(r#"{"name": "Max"}"#), &|b| {
            b == r#"{"error":"","message":"Hello, Max"}"#
        }),
        ("GET", "/greeter/check", None, &|b| {
            b.starts_with("All ok! ")
        }),
        (
            "POST",
            "/greeter/sendPostcard/Max/World/Hello",
            None,
            &|b| b == r#"{"PictureURL":"","Address":"World","Recipient":"Max","Message":"Hello"}"#,
        ),
        (
            "POST",
            "/concierge/welcome",
            Some(r#"{"guests": ["Ada", "Max"]}"#),
            &|b| b == r#"{"error":"","greetings":["Hello, Ada","Hello, Max"]}"#,
        ),
    ];
    let mut failures = Vec::new();
    for (method, path, body, expected) in checks {
        match request(http, method, path, body) {
            Ok((status, answer)) => {
                println!("{method} {path} -> {status} {answer}");
                if status != 200 || !expected(&answer) {
                    failures.push(format!("{method} {path} answered {status} {answer}"));
                }
            }
            Err(error) => failures.push(format!("{method} {path}: {error}")),
        }
    }
    let streams = if streaming {
        &streaming_checks()[..]
    } else {
        &[]
    };
    for (path, content_type, body, expected) in streams {
        match request_as(http, "POST", path, content_type, Some(body)) {
            Ok((status, answer)) => {
                println!("POST {path} -> {status} {}", answer.trim_end());
                if status != 200 || answer != *expected {
                    failures.push(format!("POST {path} answered {status} {answer:?}"));
                }
            }
            Err(error) => failures.push(format!("POST {path}: {error}")),
        }
    }
    if failures.is_empty() {
        println!("smoke test passed");
        Ok(())
    } else {
        Err(format!("smoke test failed:\n  {}", failures.join("\n  ")))
    }
}

/// Drains every process with SIGTERM, the gateway last, and reports how each exited.
fn drain(processes: &mut [Process]) {
    println!("\ndraining the demo mesh…");
    let (gateway, replicas) = processes.split_at_mut(1);
    for process in replicas.iter_mut() {
        process.terminate();
    }
    for process in replicas.iter_mut().chain(gateway.iter_mut()) {
        if process.name == "mesh-api" {
            process.terminate();
        }
        match process.wait_exit(Duration::from_secs(15)) {
            Some(status) if status.success() => println!("{} drained and exited 0", process.name),
            Some(status) => println!("{} exited with {status}", process.name),
            None => println!("{} did not exit in time and was killed", process.name),
        }
    }
}

/// A minimal HTTP/1.1 request with a JSON body over a fresh connection: (status, body).
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    request_as(addr, method, path, "application/json", body)
}

/// [`request`] with a body of `content_type`.
fn request_as(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()))
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, payload) = text
        .split_once("\r\n\r\n")
        .ok_or("no end of headers in the response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or("no status in the response")?;
    let chunked = head.lines().any(|line| {
        line.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(payload)
    } else {
        payload.to_owned()
    };
    Ok((status, body))
}

/// Decodes a chunked body.
fn dechunk(mut payload: &str) -> String {
    let mut body = String::new();
    while let Some((size, rest)) = payload.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        body.push_str(&rest[..size]);
        payload = rest[size..].trim_start_matches("\r\n");
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(name: &str) -> Process {
        Process {
            name: name.to_owned(),
            child: Command::new("sleep").arg("30").spawn().expect("sleep runs"),
        }
    }

    /// Runs `watch` on its own thread and SIGKILLs `kill`; returns whether `watch` returned
    /// within `wait` (then interrupts it).
    fn watch_returns_after(
        processes: Vec<Process>,
        wait: Duration,
        kill: &[u32],
    ) -> (bool, std::thread::JoinHandle<Vec<Process>>) {
        let interrupted = Arc::new(AtomicBool::new(false));
        let watcher = {
            let interrupted = interrupted.clone();
            std::thread::spawn(move || {
                let mut processes = processes;
                watch(&mut processes, &interrupted);
                processes
            })
        };
        for pid in kill {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let started = Instant::now();
        while !watcher.is_finished() && started.elapsed() < wait {
            std::thread::sleep(Duration::from_millis(20));
        }
        let returned = watcher.is_finished();
        interrupted.store(true, Ordering::SeqCst);
        (returned, watcher)
    }

    #[test]
    fn the_demo_carries_on_when_a_replica_dies_and_stops_when_the_gateway_does() {
        let processes = vec![
            sleeper("mesh-api"),
            sleeper("greeter-1"),
            sleeper("greeter-2"),
        ];
        let replica = processes[1].child.id();
        let (returned, watcher) =
            watch_returns_after(processes, Duration::from_millis(500), &[replica]);
        assert!(!returned, "a dead replica stopped the demo");
        let processes = watcher.join().expect("watcher");

        let gateway = processes[0].child.id();
        let (returned, _) = watch_returns_after(processes, Duration::from_secs(10), &[gateway]);
        assert!(returned, "the demo kept running without its gateway");
    }

    #[test]
    fn the_demo_stops_once_every_service_process_is_gone() {
        let processes = vec![
            sleeper("mesh-api"),
            sleeper("greeter-1"),
            sleeper("concierge"),
        ];
        let pids: Vec<u32> = processes[1..].iter().map(|p| p.child.id()).collect();
        let (returned, _) = watch_returns_after(processes, Duration::from_secs(10), &pids);
        assert!(
            returned,
            "the demo kept running with nothing but its gateway"
        );
    }

    #[test]
    fn the_meshctl_lines_name_the_demos_seed_and_state_directory() {
        let mesh = SocketAddr::from(([127, 0, 0, 1], 12001));
        let [members, call] = meshctl_lines(mesh, "/elsewhere/target/demo/state");
        assert_eq!(
            members,
            "cargo run -q -p meshctl -- -N 127.0.0.1:12001 -T demo \
             --state-dir /elsewhere/target/demo/state members"
        );
        assert!(
            call.ends_with(
                r#"--state-dir /elsewhere/target/demo/state call greeter.greet '{"name": "Max"}'"#
            ),
            "{call}"
        );
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(
            shown_path(&cwd.join("target").join("demo").join("state")),
            "target/demo/state"
        );
        assert_eq!(
            shown_path(std::path::Path::new("/elsewhere/state")),
            "/elsewhere/state"
        );
        assert_eq!(
            shown_path(std::path::Path::new("/my projects/it's/state")),
            r"'/my projects/it'\''s/state'"
        );
    }

    #[test]
    fn chunked_bodies_are_reassembled() {
        assert_eq!(
            dechunk("5\r\nHello\r\n6\r\n, Max!\r\n0\r\n\r\n"),
            "Hello, Max!"
        );
    }
}
