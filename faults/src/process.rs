//! The workspace's binaries as child processes: started with a log file, their first stdout
//! line read (every meshrpc binary prints where it listens), killed and reaped when dropped —
//! also when the test fails.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A binary of another workspace package: `target/<profile>/<name>`, next to the directory of
/// the running test executable. `cargo nextest run --workspace` (or `cargo build --workspace`)
/// builds them; a missing one fails the test with that advice.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build -p greeter -p gateway` or \
         `cargo nextest run --workspace`, which builds them)",
        path.display()
    );
    path
}

/// A running child process, SIGKILLed and reaped when dropped.
#[derive(Debug)]
pub struct Proc {
    /// What it is, for messages.
    pub name: String,
    /// The first line it printed on stdout.
    pub first_line: String,
    /// Where its stderr goes.
    pub log: PathBuf,
    child: Child,
    // Kept open so a later print cannot fail on a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl Proc {
    /// Starts `command` with stderr to `log` and waits (bounded by 20 s) for its first stdout
    /// line; panics with the log if it exits first.
    pub fn start(name: impl Into<String>, mut command: Command, log: &Path) -> Proc {
        let name = name.into();
        let stderr = std::fs::File::create(log).expect("a log file");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|error| panic!("{name} does not start: {error}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        // Read the first line on a thread, so a child that hangs cannot hang the test.
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = sender.send((reader, line));
        });
        let Ok((stdout, first_line)) = receiver.recv_timeout(Duration::from_secs(20)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} printed nothing within 20 s; log:\n{}", read(log));
        };
        if first_line.is_empty() {
            let _ = child.wait();
            panic!(
                "{name} exited before printing its address; log:\n{}",
                read(log)
            );
        }
        Proc {
            name,
            first_line,
            log: log.to_owned(),
            child,
            _stdout: stdout,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The address after `marker` in the first line ("advertised as ", "the mesh on ").
    pub fn addr_after(&self, marker: &str) -> SocketAddr {
        self.first_line
            .split_once(marker)
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .map(|addr| addr.trim_end_matches([')', ',']))
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no address after {marker:?} in {:?}", self.first_line))
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (a name `kill` understands, e.g. `TERM`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        read(&self.log)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| format!("({error})"))
}

/// Mesh flags every child of one test shares: cluster, state directory (one dev CA), a short
/// drain timeout and quiet logs.
#[derive(Debug, Clone)]
pub struct Mesh {
    /// The cluster name.
    pub cluster: String,
    /// The state directory holding the cluster's dev CA.
    pub state: PathBuf,
}

impl Mesh {
    /// A mesh called `cluster` whose CA lives in `state`.
    pub fn new(cluster: impl Into<String>, state: &Path) -> Mesh {
        Mesh {
            cluster: cluster.into(),
            state: state.to_owned(),
        }
    }

    /// `program` with the shared mesh flags, prefixed with `ip netns exec <ns>` when `netns`
    /// is given.
    pub fn command(&self, program: &Path, netns: Option<&str>) -> Command {
        let mut command = match netns {
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns]).arg(program);
                command
            }
            None => Command::new(program),
        };
        command
            .args(["--cluster", &self.cluster, "--drain-timeout", "5"])
            .arg("--state-dir")
            .arg(&self.state)
            .env("RUST_LOG", "warn");
        command
    }

    /// Starts a `greeter` with `args` (its listen address, seeds…).
    pub fn greeter(&self, label: &str, netns: Option<&str>, args: &[String]) -> Proc {
        let mut command = self.command(&binary("greeter"), netns);
        command.args(args);
        let log = self.state.join(format!("{label}.log"));
        Proc::start(label, command, &log)
    }

    /// Starts a `mesh-api` gateway with `args`.
    pub fn gateway(&self, label: &str, netns: Option<&str>, args: &[String]) -> Proc {
        let mut command = self.command(&binary("mesh-api"), netns);
        command.args(args);
        let log = self.state.join(format!("{label}.log"));
        Proc::start(label, command, &log)
    }
}

/// Turns `&str`s into the `String`s [`Mesh::greeter`] takes.
pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|arg| (*arg).to_owned()).collect()
}
