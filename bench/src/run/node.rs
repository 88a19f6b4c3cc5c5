//! The idle node: the resident set of a real meshrpc node, as users start one. The release
//! `mesh-api` gateway and one release `greeter` joined to it (the demo's binaries and flags, on
//! loopback), left idle, then the greeter's peak resident set and its private part are read.
//!
//! The memory table's "server idle" column is `bench serve <system>`, an executable that links
//! every benchmarked system, so most of its resident set is pages of that executable; this is
//! the figure of a node's own, much smaller executable.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{Bench, Process};
use crate::procfs;
use crate::report::IdleNode;
use crate::systems::Result;

/// The gateway's executable (package `gateway`).
const GATEWAY: &str = "mesh-api";

/// The node measured (package `greeter`).
const GREETER: &str = "greeter";

/// How long the greeter is left alone after it has joined, before it is read.
pub(super) const IDLE: Duration = Duration::from_secs(2);

/// How long each process has to start, and the greeter to join.
const START: Duration = Duration::from_secs(30);

/// How long a process has to drain and exit after SIGTERM before it is killed.
const STOP: Duration = Duration::from_secs(10);

/// The cluster both processes join.
const CLUSTER: &str = "bench";

impl Bench {
    /// Starts the gateway and a greeter joined to it, waits until the greeter has joined and
    /// then for [`IDLE`], reads the greeter's resident set and stops both. Failures (a binary
    /// not built, say) are in the answer's `error`, not the run's.
    pub(super) fn idle_node(&self, state_dir: &Path) -> IdleNode {
        let profile = self
            .exe
            .parent()
            .and_then(Path::file_name)
            .map_or_else(String::new, |name| name.to_string_lossy().into_owned());
        let mut node = IdleNode {
            profile,
            idle_s: IDLE.as_secs_f64(),
            peak_kib: None,
            private_kib: None,
            error: None,
        };
        match self.measure_idle_node(state_dir) {
            Ok((peak_kib, private_kib)) => {
                node.peak_kib = Some(peak_kib);
                node.private_kib = Some(private_kib);
            }
            Err(error) => node.error = Some(error.to_string()),
        }
        node
    }

    fn measure_idle_node(&self, state_dir: &Path) -> Result<(u64, u64)> {
        let dir = self
            .exe
            .parent()
            .ok_or("the bench executable has no directory")?;
        let gateway_exe = binary(dir, GATEWAY)?;
        let greeter_exe = binary(dir, GREETER)?;
        std::fs::create_dir_all(state_dir)?;

        let mut command = self.node_command(&gateway_exe, state_dir);
        command.args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"]);
        command.args(["--require", GREETER]);
        // Dropped last (after the greeter): killed on every early return below.
        let mut gateway = Process::spawn(command, GATEWAY.to_owned())?;
        let (http, mesh) = gateway_addrs(&gateway.expect(START)?)?;

        let mut command = self.node_command(&greeter_exe, state_dir);
        command.args(["-N", &mesh.to_string(), "--listen", "127.0.0.1:0"]);
        let mut greeter = Process::spawn(command, GREETER.to_owned())?;
        greeter_addr(&greeter.expect(START)?)?;

        wait_joined(http, &mut [&mut gateway, &mut greeter])?;
        std::thread::sleep(IDLE);
        still_running(&mut [&mut gateway, &mut greeter], "idle")?;
        let figures = (
            procfs::peak_rss_kib(greeter.pid())?,
            procfs::private_rss_kib(greeter.pid())?,
        );
        // The greeter leaves first, as the demo drains its replicas before the gateway.
        greeter.stop(STOP);
        gateway.stop(STOP);
        Ok(figures)
    }

    /// A command running `exe` with the demo's flags (cluster, drain timeout, the development
    /// CA under `state_dir`) and the run's malloc settings, in an environment without the
    /// variables that would configure it otherwise (the `MESHRPC_*` flags, the log filter,
    /// trace export).
    fn node_command(&self, exe: &Path, state_dir: &Path) -> Command {
        let mut command = Command::new(exe);
        command
            .args(["--cluster", CLUSTER, "--drain-timeout", "5"])
            .arg("--state-dir")
            .arg(state_dir);
        for (name, _) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            if name.starts_with("MESHRPC_") || name.starts_with("OTEL_") || name == "RUST_LOG" {
                command.env_remove(name);
            }
        }
        if self.settings.malloc_tunables.is_empty() {
            command.env_remove("GLIBC_TUNABLES");
        } else {
            command.env("GLIBC_TUNABLES", &self.settings.malloc_tunables);
        }
        command
    }
}

/// `name` in `dir`, the directory of the bench executable, or an error that says how to build
/// it.
fn binary(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(not_built(&path, dir.ends_with("release")).into())
    }
}

/// Why the idle node is not measured when `path` is missing: it names the binary and the
/// command that builds it (`release` for the release profile).
fn not_built(path: &Path, release: bool) -> String {
    let profile = if release { " --release" } else { "" };
    format!(
        "`{}` is not built; build it with `cargo build{profile} -p greeter -p gateway` \
         (`cargo xtask bench` does)",
        path.display()
    )
}

/// The HTTP and mesh addresses in the gateway's first line,
/// `mesh-api serving HTTP on <addr> and the mesh on <addr>`.
fn gateway_addrs(line: &str) -> Result<(SocketAddr, SocketAddr)> {
    let unexpected = || {
        format!(
            "{GATEWAY} said `{line}`, expected `{GATEWAY} serving HTTP on <addr> and the mesh on <addr>`"
        )
    };
    let rest = line
        .strip_prefix("mesh-api serving HTTP on ")
        .ok_or_else(unexpected)?;
    let (http, mesh) = rest
        .split_once(" and the mesh on ")
        .ok_or_else(unexpected)?;
    Ok((http.trim().parse()?, mesh.trim().parse()?))
}

/// The address in the greeter's first line,
/// `greeter listening on <addr> (advertised as <addr>)`.
fn greeter_addr(line: &str) -> Result<SocketAddr> {
    let addr = line
        .strip_prefix("greeter listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or_else(|| {
            format!("{GREETER} said `{line}`, expected `{GREETER} listening on <addr> (…)`")
        })?;
    Ok(addr.parse()?)
}

/// Waits until the gateway's `/readyz` answers 200: it was started with `--require greeter`,
/// so it does once the greeter is a live member of its mesh. Fails if a process exits first.
fn wait_joined(http: SocketAddr, processes: &mut [&mut Process]) -> Result<()> {
    let started = Instant::now();
    loop {
        still_running(processes, "the greeter joined")?;
        if let Ok(200) = http_status(http, "/readyz") {
            return Ok(());
        }
        if started.elapsed() > START {
            return Err(format!(
                "the gateway's /readyz did not answer 200 within {START:?}: \
                 the greeter did not join"
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Fails, naming the process, how it exited and the end of its stderr, if one of
/// `processes` exited (`while_` says what it was doing: for the error).
fn still_running(processes: &mut [&mut Process], while_: &str) -> Result<()> {
    for process in processes.iter_mut() {
        if let Ok(Some(status)) = process.child.try_wait() {
            return Err(format!(
                "{} exited while {while_} ({status}): {}",
                process.name,
                process.stderr_tail()
            )
            .into());
        }
    }
    Ok(())
}

/// The status code of `GET <path>` on a fresh HTTP/1.1 connection.
fn http_status(addr: SocketAddr, path: &str) -> Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    status_code(&String::from_utf8_lossy(&answer))
        .ok_or_else(|| "no HTTP status line in the answer".into())
}

/// The code of an HTTP/1.x status line at the start of `answer`.
fn status_code(answer: &str) -> Option<u16> {
    let mut parts = answer.lines().next()?.split_whitespace();
    parts
        .next()
        .filter(|version| version.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_line_gives_its_http_and_mesh_addresses() {
        let (http, mesh) = gateway_addrs(
            "mesh-api serving HTTP on 127.0.0.1:41234 and the mesh on 127.0.0.1:5678",
        )
        .expect("parsed");
        assert_eq!(http, "127.0.0.1:41234".parse::<SocketAddr>().expect("addr"));
        assert_eq!(mesh, "127.0.0.1:5678".parse::<SocketAddr>().expect("addr"));
    }

    #[test]
    fn another_first_line_of_the_gateway_is_an_error_that_quotes_it() {
        let error = gateway_addrs("error: address in use").expect_err("not the line");
        assert!(
            error.to_string().contains("`error: address in use`"),
            "{error}"
        );
    }

    #[test]
    fn the_greeter_line_gives_its_listening_address() {
        let addr =
            greeter_addr("greeter listening on 127.0.0.1:40000 (advertised as 127.0.0.1:40000)")
                .expect("parsed");
        assert_eq!(addr, "127.0.0.1:40000".parse::<SocketAddr>().expect("addr"));
        assert!(greeter_addr("greeter starting").is_err());
    }

    #[test]
    fn a_missing_binary_is_named_with_the_command_that_builds_it() {
        let release = not_built(Path::new("target/release/greeter"), true);
        assert!(
            release.contains("`target/release/greeter` is not built"),
            "{release}"
        );
        assert!(
            release.contains("`cargo build --release -p greeter -p gateway`"),
            "{release}"
        );
        let debug = not_built(Path::new("target/debug/mesh-api"), false);
        assert!(
            debug.contains("`cargo build -p greeter -p gateway`"),
            "{debug}"
        );
    }

    #[test]
    fn a_binary_not_in_the_directory_is_not_built() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let error = binary(dir.path(), GREETER).expect_err("missing");
        assert!(error.to_string().contains("is not built"), "{error}");
        std::fs::write(dir.path().join(GREETER), b"").expect("written");
        assert_eq!(
            binary(dir.path(), GREETER).expect("found"),
            dir.path().join(GREETER)
        );
    }

    #[test]
    fn the_status_code_is_read_from_the_status_line() {
        assert_eq!(
            status_code("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
            Some(200)
        );
        assert_eq!(
            status_code("HTTP/1.1 503 Service Unavailable\r\n\r\n"),
            Some(503)
        );
        assert_eq!(status_code(""), None);
        assert_eq!(status_code("SSH-2.0-OpenSSH\r\n"), None);
    }
}
