//! The fault and attack suite of meshrpc, as a library of test helpers; the tests themselves
//! live in `tests/` and `docs/RELIABILITY.md` lists what each one injects, what the system
//! promises and what was measured.
//!
//! - [`process`]: the real binaries (`greeter`, `mesh-api`) as child processes that die with the
//!   test, on loopback or inside a network namespace;
//! - [`netns`]: a [`Lab`](netns::Lab) of network namespaces on a bridge, with links that can be cut
//!   and healed; torn down when dropped;
//! - [`link`]: an impaired UDP link (delay and loss, in user space, so it works on kernels without
//!   `sch_netem` and without root);
//! - [`mesh`]: the test's own in-process node and what it asks of the mesh;
//! - [`load`]: bounded load loops that record what every caller saw;
//! - [`peer`]: a raw QUIC peer with a certificate of the cluster, for floods and churn;
//! - [`http`]: a small HTTP client and raw TCP for slow clients;
//! - [`host`]: what `/proc` says about a process (resident memory, open files);
//! - [`tail`]: the figures of a fault window (latency quantiles to p99.9, extra load of hedges);
//! - [`fuzzing`]: the checks the cargo-fuzz targets in `fuzz/` run, also replayed by a plain test.

pub mod fuzzing;
pub mod host;
pub mod http;
pub mod link;
pub mod load;
pub mod mesh;
pub mod netns;
pub mod peer;
pub mod process;
pub mod tail;

use std::time::Duration;

/// Whether the long variants run (`cargo xtask faults --long` sets `MESHRPC_FAULTS_LONG=1`).
pub fn long() -> bool {
    std::env::var("MESHRPC_FAULTS_LONG").is_ok_and(|value| value == "1")
}

/// `normal` in the CI run, `long` in the long variants.
pub fn scaled(normal: usize, long: usize) -> usize {
    if self::long() { long } else { normal }
}

/// Held by each heavy test, so that two of them never run at once (nextest runs every test in a
/// process of its own): their measurements would disturb each other on a small machine.
#[derive(Debug)]
pub struct Exclusive {
    _file: std::fs::File,
}

/// Waits (up to ten minutes) until no other heavy test of this suite runs.
pub fn exclusive() -> Exclusive {
    let path = std::env::temp_dir().join("meshrpc-faults.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        match file.try_lock() {
            Ok(()) => return Exclusive { _file: file },
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(error) => panic!("could not lock {}: {error}", path.display()),
        }
    }
}

/// Polls `condition` every 50 ms for at most `limit`; returns how long it took to hold.
pub async fn within(limit: Duration, mut condition: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let started = tokio::time::Instant::now();
    loop {
        if condition().await {
            return Some(started.elapsed());
        }
        if started.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
