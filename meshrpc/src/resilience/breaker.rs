//! Failure accrual and outlier ejection, one mechanism: a replica is ejected for a while
//! (the time doubles with each ejection, up to a cap) when it
//!
//! - fails several calls in a row (transport failures, see [`is_replica_failure`]), or
//! - leaves several attempts in a row unanswered — past their attempt timeout, or while a
//!   hedge to another replica answered first (a frozen process: its connection is up, nothing
//!   answers; or one much slower than the others), or
//! - succeeds clearly less often than the other replicas over the last ten seconds;
//!
//! but never so many replicas that more than [`BreakerConfig::max_ejected_percent`] of them are
//! out (at least one may be, from two replicas up; a lone replica never is). When an ejection
//! ends the replica is on probation: its next calls probe it, and one more failure ejects it
//! again at once, for twice as long; a success ends the probation.
//!
//! [`Guarded`] is the per-endpoint layer that records every attempt's outcome.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::Service;

use crate::AddrMap;
use crate::status::{Code, Status};

/// Tuning for [`Breakers`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// Consecutive failures that eject a replica (default 5).
    pub consecutive_failures: u32,
    /// Consecutive attempts left unanswered (abandoned after their attempt timeout, or beaten by
    /// a hedge to another replica) that eject a replica (default 3); the membership is then told
    /// the replica looks unresponsive.
    pub consecutive_timeouts: u32,
    /// The first ejection's length (default 1 s); each further one doubles it.
    pub base_ejection: Duration,
    /// The longest ejection (default 30 s).
    pub max_ejection: Duration,
    /// The largest share of a service's replicas ejected at once, in percent (default 10; at
    /// least one replica may be ejected when there are two or more).
    pub max_ejected_percent: u32,
    /// Calls a replica must have had in the last ten seconds before its success rate is
    /// compared with the others' (default 20).
    pub success_rate_min_calls: u32,
    /// How far below the other replicas' average success rate a replica is ejected, in
    /// percentage points (default 20: 79 % when the others succeed always).
    pub success_rate_margin: u32,
}

setters!(BreakerConfig {
    consecutive_failures: u32,
    consecutive_timeouts: u32,
    base_ejection: Duration,
    max_ejection: Duration,
    max_ejected_percent: u32,
    success_rate_min_calls: u32,
    success_rate_margin: u32
});

impl Default for BreakerConfig {
    fn default() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 5,
            consecutive_timeouts: 3,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(30),
            max_ejected_percent: 10,
            success_rate_min_calls: 20,
            success_rate_margin: 20,
        }
    }
}

/// The window success rates are computed over.
const RATE_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    timeouts: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
    /// Ejected before and not yet seen succeeding since.
    probation: bool,
    window_started: Instant,
    window_successes: u32,
    window_failures: u32,
}

impl Record {
    fn new(now: Instant) -> Record {
        Record {
            failures: 0,
            timeouts: 0,
            ejections: 0,
            ejected_until: None,
            probation: false,
            window_started: now,
            window_successes: 0,
            window_failures: 0,
        }
    }

    fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| until > now)
    }

    /// Starts a new rate window when the current one is over.
    fn roll(&mut self, now: Instant) {
        if now.saturating_duration_since(self.window_started) >= RATE_WINDOW {
            self.window_started = now;
            self.window_successes = 0;
            self.window_failures = 0;
        }
    }

    fn calls(&self) -> u32 {
        self.window_successes + self.window_failures
    }

    fn success_rate(&self) -> f64 {
        f64::from(self.window_successes) / f64::from(self.calls().max(1))
    }
}

/// Why a replica was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ejection {
    /// Consecutive failures, a failure on probation, or a low success rate.
    Failures,
    /// Consecutive attempts left unanswered past their attempt timeout.
    Timeouts,
}

/// What runs when a replica is ejected (counting it, telling the membership).
pub type EjectHook = Arc<dyn Fn(SocketAddr, Ejection) + Send + Sync>;

/// Per-replica breaker state, shared by the calls of one service.
#[derive(Default)]
pub struct Breakers {
    config: BreakerConfig,
    records: Mutex<AddrMap<Record>>,
    on_eject: std::sync::OnceLock<EjectHook>,
}

impl std::fmt::Debug for Breakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breakers")
            .field("config", &self.config)
            .field("records", &self.len())
            .finish_non_exhaustive()
    }
}

/// Whether a call's outcome says something about the replica's health (as opposed to the
/// caller's input or the handler's logic).
pub fn is_replica_failure(status: &Status) -> bool {
    !status.is_refused()
        && matches!(
            status.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Unknown
        )
}

impl Breakers {
    /// Breakers with this tuning.
    pub fn new(config: BreakerConfig) -> Breakers {
        Breakers {
            config,
            records: Mutex::default(),
            on_eject: std::sync::OnceLock::new(),
        }
    }

    /// Runs `hook` on every ejection from now on (the first hook set stays).
    pub fn on_eject(&self, hook: EjectHook) {
        let _ = self.on_eject.set(hook);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AddrMap<Record>> {
        crate::lock(&self.records)
    }

    /// Whether `addr` is ejected now.
    pub fn is_ejected(&self, addr: SocketAddr) -> bool {
        let now = Instant::now();
        self.lock()
            .get(&addr)
            .is_some_and(|record| record.is_ejected(now))
    }

    /// Records a success: the replica's failure counts start over and its probation ends.
    pub fn record_success(&self, addr: SocketAddr) {
        let now = Instant::now();
        let mut records = self.lock();
        let record = records.entry(addr).or_insert_with(|| Record::new(now));
        record.roll(now);
        record.window_successes = record.window_successes.saturating_add(1);
        record.failures = 0;
        record.timeouts = 0;
        if !record.is_ejected(now) {
            record.ejected_until = None;
            if record.probation {
                record.probation = false;
                record.ejections = 0;
            }
        }
    }

    /// Records a failure of `addr`, one of `replicas` serving the service; ejects it when it
    /// reached the threshold, failed on probation or succeeds clearly less often than the
    /// others, and the cap allows. Returns whether it was ejected.
    pub fn record_failure(&self, addr: SocketAddr, replicas: usize) -> bool {
        self.record(addr, replicas, Ejection::Failures).is_some()
    }

    /// Records that an attempt to `addr` was left unanswered (abandoned after its attempt
    /// timeout, or beaten by a hedge); ejects it after [`BreakerConfig::consecutive_timeouts`]
    /// in a row (if the cap allows). Returns whether it was ejected.
    pub fn record_timeout(&self, addr: SocketAddr, replicas: usize) -> bool {
        self.record(addr, replicas, Ejection::Timeouts).is_some()
    }

    fn record(&self, addr: SocketAddr, replicas: usize, kind: Ejection) -> Option<Ejection> {
        let ejection = self.record_locked(addr, replicas, kind)?;
        if let Some(hook) = self.on_eject.get() {
            hook(addr, ejection);
        }
        Some(ejection)
    }

    fn record_locked(&self, addr: SocketAddr, replicas: usize, kind: Ejection) -> Option<Ejection> {
        let now = Instant::now();
        let mut records = self.lock();
        let (others_rate, ejected_now) = {
            let mut rates = 0.0;
            let mut counted = 0u32;
            let mut ejected = 0usize;
            for (other, record) in records.iter() {
                if *other == addr {
                    continue;
                }
                if record.is_ejected(now) {
                    ejected += 1;
                } else if record.calls() >= self.config.success_rate_min_calls
                    && now.saturating_duration_since(record.window_started) < RATE_WINDOW
                {
                    rates += record.success_rate();
                    counted += 1;
                }
            }
            ((counted > 0).then(|| rates / f64::from(counted)), ejected)
        };
        let record = records.entry(addr).or_insert_with(|| Record::new(now));
        record.roll(now);
        record.window_failures = record.window_failures.saturating_add(1);
        if record.is_ejected(now) {
            return None;
        }
        let reason = match kind {
            Ejection::Failures => {
                record.failures += 1;
                let low_rate = others_rate.is_some_and(|others| {
                    record.calls() >= self.config.success_rate_min_calls
                        && record.success_rate() * 100.0
                            < others * 100.0 - f64::from(self.config.success_rate_margin)
                });
                (record.probation
                    || record.failures >= self.config.consecutive_failures
                    || low_rate)
                    .then_some(Ejection::Failures)
            }
            Ejection::Timeouts => {
                record.timeouts += 1;
                (record.probation || record.timeouts >= self.config.consecutive_timeouts.max(1))
                    .then_some(Ejection::Timeouts)
            }
        }?;
        let percent = replicas * self.config.max_ejected_percent as usize / 100;
        let allowed = if replicas >= 2 { percent.max(1) } else { 0 };
        if ejected_now + 1 > allowed {
            return None;
        }
        let factor = 1u32 << record.ejections.min(16);
        let length = self
            .config
            .base_ejection
            .saturating_mul(factor)
            .min(self.config.max_ejection);
        record.ejected_until = Some(now + length);
        record.ejections += 1;
        record.failures = 0;
        record.timeouts = 0;
        record.probation = true;
        record.window_successes = 0;
        record.window_failures = 0;
        record.window_started = now;
        Some(reason)
    }

    /// Forgets a replica that left the mesh.
    pub fn forget(&self, addr: SocketAddr) {
        self.lock().remove(&addr);
    }

    /// Forgets every replica for which `keep` does not hold (those that left the mesh).
    pub fn retain(&self, keep: impl Fn(SocketAddr) -> bool) {
        self.lock().retain(|addr, _| keep(*addr));
    }

    /// How many replicas have a record.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no replica has a record.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// The breaker layer of one endpoint: records each attempt's outcome against its replica.
#[derive(Debug, Clone)]
pub struct Guarded<S> {
    inner: S,
    addr: SocketAddr,
    replicas: usize,
    breakers: Arc<Breakers>,
}

impl<S> Guarded<S> {
    /// Records the outcomes of `inner`'s attempts, to the replica at `addr`, one of `replicas`.
    pub fn new(inner: S, addr: SocketAddr, replicas: usize, breakers: Arc<Breakers>) -> Guarded<S> {
        Guarded {
            inner,
            addr,
            replicas,
            breakers,
        }
    }
}

impl<S, R, T> Service<R> for Guarded<S>
where
    S: Service<R, Response = T, Error = Status>,
    S::Future: Unpin,
{
    type Response = T;
    type Error = Status;
    type Future = GuardedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        GuardedFuture {
            inner: self.inner.call(request),
            addr: self.addr,
            replicas: self.replicas,
            breakers: self.breakers.clone(),
        }
    }
}

/// The future of [`Guarded`]. Failures come back tagged with the replica's address.
#[derive(Debug)]
pub struct GuardedFuture<F> {
    inner: F,
    addr: SocketAddr,
    replicas: usize,
    breakers: Arc<Breakers>,
}

impl<F, T> Future for GuardedFuture<F>
where
    F: Future<Output = Result<T, Status>> + Unpin,
{
    type Output = Result<T, Status>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let result = std::task::ready!(Pin::new(&mut this.inner).poll(cx));
        let addr = this.addr;
        Poll::Ready(match result {
            Ok(reply) => {
                this.breakers.record_success(addr);
                Ok(reply)
            }
            Err(status) => {
                if is_replica_failure(&status) && this.breakers.record_failure(addr, this.replicas)
                {
                    tracing::warn!(%addr, %status, "replica ejected after failures");
                }
                Err(status.with_peer(addr))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_for_a_doubling_time() {
        let breakers = Breakers::new(BreakerConfig::default());
        for _ in 0..4 {
            assert!(!breakers.record_failure(addr(1), 4));
        }
        assert!(breakers.record_failure(addr(1), 4));
        assert!(breakers.is_ejected(addr(1)));
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(!breakers.is_ejected(addr(1)));
        for _ in 0..5 {
            breakers.record_failure(addr(1), 4);
        }
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(
            breakers.is_ejected(addr(1)),
            "the second ejection lasts 2 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_count() {
        let breakers = Breakers::new(BreakerConfig::default());
        for _ in 0..4 {
            breakers.record_failure(addr(1), 2);
        }
        breakers.record_success(addr(1));
        for _ in 0..4 {
            assert!(!breakers.record_failure(addr(1), 2));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_half_of_the_replicas_are_ejected() {
        let breakers = Breakers::new(BreakerConfig {
            max_ejected_percent: 50,
            ..BreakerConfig::default()
        });
        let mut ejected = 0;
        for port in 1..=4 {
            for _ in 0..5 {
                if breakers.record_failure(addr(port), 4) {
                    ejected += 1;
                }
            }
        }
        assert_eq!(ejected, 2);
        let single = Breakers::new(BreakerConfig::default());
        for _ in 0..10 {
            assert!(
                !single.record_failure(addr(9), 1),
                "a lone replica is never ejected"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_timing_out_in_a_row_eject_and_say_why() {
        let breakers = Breakers::new(BreakerConfig::default());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hook_seen = seen.clone();
        breakers.on_eject(Arc::new(move |addr, why| {
            crate::lock(&hook_seen).push((addr, why));
        }));
        assert!(!breakers.record_timeout(addr(1), 3));
        assert!(!breakers.record_timeout(addr(1), 3));
        assert!(
            breakers.record_timeout(addr(1), 3),
            "the third in a row ejects"
        );
        assert_eq!(*crate::lock(&seen), [(addr(1), Ejection::Timeouts)]);
        // A success in between starts the count over.
        for _ in 0..2 {
            breakers.record_timeout(addr(2), 3);
        }
        breakers.record_success(addr(2));
        assert!(!breakers.record_timeout(addr(2), 3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_failing_much_more_often_than_the_others_is_ejected() {
        let breakers = Breakers::new(BreakerConfig::default());
        for _ in 0..30 {
            breakers.record_success(addr(1));
            breakers.record_success(addr(2));
        }
        // One failure in three never makes five in a row, but 67 % is far below 100 %.
        let mut ejected_after = None;
        for call in 0..30 {
            let ejected = if call % 3 == 2 {
                breakers.record_failure(addr(3), 3)
            } else {
                breakers.record_success(addr(3));
                false
            };
            if ejected {
                ejected_after = Some(call + 1);
                break;
            }
        }
        assert_eq!(
            ejected_after,
            Some(21),
            "ejected once it had 20 calls to judge by"
        );
        assert!(breakers.is_ejected(addr(3)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejected_replica_is_probed_and_one_failure_ejects_it_again() {
        let breakers = Breakers::new(BreakerConfig::default());
        for _ in 0..5 {
            breakers.record_failure(addr(1), 3);
        }
        assert!(breakers.is_ejected(addr(1)));
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(!breakers.is_ejected(addr(1)), "back on probation");
        assert!(
            breakers.record_failure(addr(1), 3),
            "one failure on probation"
        );
        tokio::time::advance(Duration::from_millis(2001)).await;
        breakers.record_success(addr(1));
        for _ in 0..4 {
            assert!(!breakers.record_failure(addr(1), 3), "the probe succeeded");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn by_default_a_tenth_of_the_replicas_and_at_least_one_may_be_out() {
        let eject_all = |replicas: u16| {
            let breakers = Breakers::new(BreakerConfig::default());
            (1..=replicas)
                .filter(|port| {
                    (0..5).any(|_| breakers.record_failure(addr(*port), replicas.into()))
                })
                .count()
        };
        assert_eq!(eject_all(1), 0);
        assert_eq!(eject_all(2), 1);
        assert_eq!(eject_all(3), 1);
        assert_eq!(eject_all(20), 2);
    }

    #[test]
    fn only_transport_failures_count_against_a_replica() {
        assert!(is_replica_failure(&Status::unavailable("connection lost")));
        assert!(!is_replica_failure(&Status::invalid_argument("bad input")));
        assert!(!is_replica_failure(&Status::refused(
            Code::Unavailable,
            "draining"
        )));
    }

    #[test]
    fn retain_forgets_the_replicas_that_left() {
        let breakers = Breakers::default();
        for port in 1..=4 {
            breakers.record_failure(addr(port), 4);
        }
        assert_eq!(breakers.len(), 4);
        breakers.retain(|addr| addr.port() % 2 == 0);
        assert_eq!(breakers.len(), 2);
        breakers.forget(addr(2));
        breakers.forget(addr(4));
        assert!(breakers.is_empty());
    }
}
