//! Bounded load: a few workers call in a loop — at most `max_calls` calls and `max_time` in
//! all — and every call's start, latency and outcome is kept, so a test asserts on what the
//! callers saw: calls sent, failed, wrong answers, and latency percentiles in any time window.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What one call returned, as the caller judges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The right answer.
    Ok,
    /// An error reached the caller.
    Failed(String),
    /// An answer came, but not the right one.
    Wrong(String),
}

/// One call.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it started, from the start of the load.
    pub at: Duration,
    /// How long it took.
    pub latency: Duration,
    /// What came back.
    pub outcome: Outcome,
}

/// Every call of a load run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The calls, in the order they finished.
    pub samples: Vec<Sample>,
}

impl Report {
    /// Calls made.
    pub fn sent(&self) -> usize {
        self.samples.len()
    }

    /// Calls that failed.
    pub fn failed(&self) -> usize {
        self.count(|outcome| matches!(outcome, Outcome::Failed(_)))
    }

    /// Calls answered wrongly.
    pub fn wrong(&self) -> usize {
        self.count(|outcome| matches!(outcome, Outcome::Wrong(_)))
    }

    fn count(&self, keep: impl Fn(&Outcome) -> bool) -> usize {
        self.samples.iter().filter(|s| keep(&s.outcome)).count()
    }

    /// The first few failures and wrong answers, for assertion messages.
    pub fn first_problems(&self) -> Vec<String> {
        self.samples
            .iter()
            .filter(|s| s.outcome != Outcome::Ok)
            .take(5)
            .map(|s| format!("{:?} at {:?}", s.outcome, s.at))
            .collect()
    }

    /// The `q` quantile (0.0 to 1.0) of the latencies of calls started in `[from, to)`.
    pub fn quantile_in(&self, q: f64, from: Duration, to: Duration) -> Duration {
        let mut latencies: Vec<Duration> = self
            .samples
            .iter()
            .filter(|s| s.at >= from && s.at < to)
            .map(|s| s.latency)
            .collect();
        if latencies.is_empty() {
            return Duration::ZERO;
        }
        latencies.sort_unstable();
        let rank = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies[rank.min(latencies.len() - 1)]
    }

    /// The `q` quantile of every call's latency.
    pub fn quantile(&self, q: f64) -> Duration {
        self.quantile_in(q, Duration::ZERO, Duration::MAX)
    }

    /// The slowest call.
    pub fn max(&self) -> Duration {
        self.samples
            .iter()
            .map(|s| s.latency)
            .max()
            .unwrap_or_default()
    }

    /// Calls started in `[from, to)`.
    pub fn sent_in(&self, from: Duration, to: Duration) -> usize {
        self.samples
            .iter()
            .filter(|s| s.at >= from && s.at < to)
            .count()
    }

    /// One line for the test's output and `docs/RELIABILITY.md`.
    pub fn summary(&self) -> String {
        format!(
            "sent {}, failed {}, wrong {}, p50 {:.1?}, p99 {:.1?}, max {:.1?}",
            self.sent(),
            self.failed(),
            self.wrong(),
            self.quantile(0.5),
            self.quantile(0.99),
            self.max()
        )
    }
}

/// A load run in the background.
#[derive(Debug)]
pub struct Load {
    started: Instant,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Vec<Sample>>>,
}

impl Load {
    /// Starts `workers` loops calling `call(worker, sequence)`, pausing `pause` between calls,
    /// until [`Load::finish`], `max_calls` calls in all, or `max_time`.
    pub fn start<F, Fut>(
        workers: usize,
        max_calls: usize,
        max_time: Duration,
        pause: Duration,
        call: F,
    ) -> Load
    where
        F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Outcome> + Send,
    {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let workers = (0..workers)
            .map(|worker| {
                let (call, stop, done) = (call.clone(), stop.clone(), done.clone());
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    let mut sequence = 0;
                    while !stop.load(Ordering::Relaxed)
                        && started.elapsed() < max_time
                        && done.fetch_add(1, Ordering::Relaxed) < max_calls
                    {
                        let at = started.elapsed();
                        let outcome = call(worker, sequence).await;
                        samples.push(Sample {
                            at,
                            latency: started.elapsed() - at,
                            outcome,
                        });
                        sequence += 1;
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                    samples
                })
            })
            .collect();
        Load {
            started,
            stop,
            workers,
        }
    }

    /// Time since the load started: the clock of [`Sample::at`].
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops the workers after their current call and collects every sample.
    pub async fn finish(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        self.complete().await
    }

    /// Lets the workers run to their bounds (`max_calls` or `max_time`) and collects every
    /// sample.
    pub async fn complete(self) -> Report {
        let mut samples = Vec::new();
        for worker in self.workers {
            samples.extend(worker.await.expect("a load worker panicked"));
        }
        samples.sort_by_key(|s| s.at);
        Report { samples }
    }
}

/// Judges a greeting: `Hello, <name>` is right, another text is wrong, an error failed.
pub fn greeting(name: &str, result: Result<String, meshrpc::Status>) -> Outcome {
    match result {
        Ok(text) if text == format!("Hello, {name}") => Outcome::Ok,
        Ok(text) => Outcome::Wrong(format!("asked to greet {name:?}, got {text:?}")),
        Err(status) => Outcome::Failed(status.to_string()),
    }
}
