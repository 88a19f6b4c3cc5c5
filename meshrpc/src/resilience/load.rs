//! The per-endpoint load measurement: a peak-EWMA of each replica's latency that counts
//! failures as slow answers, times the attempts in flight. [`Measured`] is the layer that
//! feeds it; it implements [`tower::load::Load`].
//!
//! This is `tower::load::PeakEwma`'s estimator with two changes it cannot be configured for:
//! a failure is recorded as a peak (a replica answering fast errors is not fast), and the cost
//! is a plain `f64`, shared by the clones of the endpoint (tower's `PeakEwma` is not `Clone`
//! and its `Cost` is opaque).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::Service;

use super::breaker::is_replica_failure;
use crate::status::Status;

/// How fast old latencies are forgotten.
pub const DECAY: Duration = Duration::from_secs(10);

/// A failure counts as an answer at least this slow...
const FAILURE_FLOOR: Duration = Duration::from_millis(10);

/// ...and as twice the current estimate, up to this.
const FAILURE_CEILING: Duration = Duration::from_secs(1);

/// One replica's load: latency estimate and attempts in flight.
#[derive(Debug)]
pub struct LoadEstimate {
    estimate: std::sync::Mutex<Estimate>,
    outstanding: AtomicU32,
}

#[derive(Debug, Clone, Copy)]
struct Estimate {
    /// The estimate in nanoseconds; 0 until the first sample (new replicas look cheap).
    nanos: f64,
    updated: Instant,
}

impl Default for LoadEstimate {
    fn default() -> LoadEstimate {
        LoadEstimate {
            estimate: std::sync::Mutex::new(Estimate {
                nanos: 0.0,
                updated: Instant::now(),
            }),
            outstanding: AtomicU32::new(0),
        }
    }
}

impl LoadEstimate {
    /// The cost of sending one more attempt: the decayed estimate × (attempts in flight + 1).
    pub fn cost(&self) -> f64 {
        let now = Instant::now();
        let nanos = {
            let mut estimate = crate::lock(&self.estimate);
            decay_towards(&mut estimate, 0.0, now);
            estimate.nanos
        };
        nanos * f64::from(self.outstanding.load(Ordering::Relaxed) + 1)
    }

    /// The current latency estimate, decayed to now.
    pub fn latency(&self) -> Duration {
        let estimate = crate::lock(&self.estimate);
        Duration::from_nanos(estimate.nanos as u64)
    }

    /// Marks an attempt as started.
    pub fn start(&self) -> LoadGuard<'_> {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        LoadGuard {
            load: self,
            started: Instant::now(),
            done: false,
        }
    }

    /// Records a sample: peaks count in full at once, lower values pull the estimate down
    /// by how long ago it was last updated.
    fn sample(&self, latency: Duration, failed: bool) {
        self.update(latency, failed, false);
    }

    /// Records that an attempt was abandoned after `elapsed` without an answer: a latency the
    /// replica has at least, so it may raise the estimate but never lower it.
    fn abandoned(&self, elapsed: Duration) {
        self.update(elapsed, false, true);
    }

    fn update(&self, latency: Duration, failed: bool, lower_bound: bool) {
        let now = Instant::now();
        let mut estimate = crate::lock(&self.estimate);
        let mut nanos = latency.as_nanos() as f64;
        if failed {
            let floor = (estimate.nanos * 2.0).max(FAILURE_FLOOR.as_nanos() as f64);
            nanos = nanos.max(floor).min(FAILURE_CEILING.as_nanos() as f64);
        }
        if nanos > estimate.nanos {
            estimate.nanos = nanos;
            estimate.updated = now;
        } else if !lower_bound {
            decay_towards(&mut estimate, nanos, now);
        }
    }
}

fn decay_towards(estimate: &mut Estimate, sample: f64, now: Instant) {
    let elapsed = now
        .saturating_duration_since(estimate.updated)
        .as_secs_f64();
    let weight = (-elapsed / DECAY.as_secs_f64()).exp();
    estimate.nanos = estimate.nanos * weight + sample * (1.0 - weight);
    estimate.updated = now;
}

/// One attempt in flight: records its latency when it finishes, or, when it is dropped
/// unfinished (abandoned after its attempt timeout, or the loser of a hedge), its time so far
/// as a lower bound (it may raise the estimate, never lower it).
#[derive(Debug)]
pub struct LoadGuard<'a> {
    load: &'a LoadEstimate,
    started: Instant,
    done: bool,
}

impl LoadGuard<'_> {
    /// The attempt finished; `failed` if the replica failed it.
    pub fn finish(mut self, failed: bool) {
        self.done = true;
        self.load.outstanding.fetch_sub(1, Ordering::Relaxed);
        self.load.sample(self.started.elapsed(), failed);
    }
}

impl Drop for LoadGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.load.outstanding.fetch_sub(1, Ordering::Relaxed);
            self.load.abandoned(self.started.elapsed());
        }
    }
}

/// The load layer of one endpoint: measures every attempt through `S`.
#[derive(Debug, Clone)]
pub struct Measured<S> {
    inner: S,
    load: Arc<LoadEstimate>,
}

impl<S> Measured<S> {
    /// Measures the attempts `inner` makes into `load`.
    pub fn new(inner: S, load: Arc<LoadEstimate>) -> Measured<S> {
        Measured { inner, load }
    }
}

impl<S> tower::load::Load for Measured<S> {
    type Metric = f64;

    fn load(&self) -> f64 {
        self.load.cost()
    }
}

impl<S, R, T> Service<R> for Measured<S>
where
    S: Service<R, Response = T, Error = Status>,
    S::Future: Unpin,
{
    type Response = T;
    type Error = Status;
    type Future = MeasuredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.load.outstanding.fetch_add(1, Ordering::Relaxed);
        MeasuredFuture {
            inner: self.inner.call(request),
            load: Some(self.load.clone()),
            started: Instant::now(),
        }
    }
}

/// The future of [`Measured`].
#[derive(Debug)]
pub struct MeasuredFuture<F> {
    inner: F,
    load: Option<Arc<LoadEstimate>>,
    started: Instant,
}

impl<F, T> Future for MeasuredFuture<F>
where
    F: Future<Output = Result<T, Status>> + Unpin,
{
    type Output = Result<T, Status>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let result = std::task::ready!(Pin::new(&mut this.inner).poll(cx));
        if let Some(load) = this.load.take() {
            load.outstanding.fetch_sub(1, Ordering::Relaxed);
            let failed = result.as_ref().is_err_and(is_replica_failure);
            load.sample(this.started.elapsed(), failed);
        }
        Poll::Ready(result)
    }
}

impl<F> Drop for MeasuredFuture<F> {
    fn drop(&mut self) {
        // Abandoned unfinished: its time so far is a latency the replica has at least.
        if let Some(load) = self.load.take() {
            load.outstanding.fetch_sub(1, Ordering::Relaxed);
            load.abandoned(self.started.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_replica_answering_fast_errors_costs_more_than_a_slow_healthy_one() {
        let erring = LoadEstimate::default();
        let healthy = LoadEstimate::default();
        for _ in 0..10 {
            erring.start().finish(true);
            let attempt = healthy.start();
            tokio::time::advance(Duration::from_millis(2)).await;
            attempt.finish(false);
        }
        assert!(
            erring.cost() > 2.0 * healthy.cost(),
            "{} against {}",
            erring.cost(),
            healthy.cost()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_attempt_raises_the_estimate_but_never_lowers_it() {
        let load = LoadEstimate::default();
        let attempt = load.start();
        tokio::time::advance(Duration::from_millis(30)).await;
        attempt.finish(false);
        let slow = load.cost();
        tokio::time::advance(Duration::from_secs(1)).await;
        let decayed = load.cost();
        // A hedge won after 2 ms and this replica's attempt was dropped unanswered.
        let loser = load.start();
        tokio::time::advance(Duration::from_millis(2)).await;
        drop(loser);
        assert!(
            load.cost() >= decayed * 0.999,
            "{} < {decayed}",
            load.cost()
        );
        let frozen = load.start();
        tokio::time::advance(Duration::from_millis(50)).await;
        drop(frozen);
        assert!(
            load.cost() > slow,
            "a 50 ms abandoned attempt is a new peak"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn peaks_count_at_once_decay_slowly_and_attempts_in_flight_multiply() {
        let load = LoadEstimate::default();
        assert_eq!(load.cost(), 0.0, "an unmeasured replica looks cheap");
        let attempt = load.start();
        tokio::time::advance(Duration::from_millis(40)).await;
        drop(attempt);
        let peak = load.cost();
        assert!((peak - 40e6).abs() < 1e3, "{peak}");
        tokio::time::advance(DECAY).await;
        let decayed = load.cost();
        assert!(decayed < peak * 0.4 && decayed > peak * 0.3, "{decayed}");
        let _one = load.start();
        let _two = load.start();
        assert!((load.cost() - 3.0 * decayed).abs() < decayed * 0.01);
    }
}
