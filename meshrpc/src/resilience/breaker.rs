//! Failure accrual: a replica that fails several calls in a row is ejected for a while (the
//! time doubles with each ejection, up to a cap), but never so many replicas that less than
//! half of them remain.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::status::{Code, Status};

/// Tuning for [`Breakers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that eject a replica (default 5).
    pub consecutive_failures: u32,
    /// The first ejection's length (default 1 s); each further one doubles it.
    pub base_ejection: Duration,
    /// The longest ejection (default 30 s).
    pub max_ejection: Duration,
    /// The largest share of a service's replicas ejected at once, in percent (default 50).
    pub max_ejected_percent: u32,
}

impl Default for BreakerConfig {
    fn default() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(30),
            max_ejected_percent: 50,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Record {
    failures: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
}

/// Per-replica breaker state, shared by the calls of one service.
#[derive(Debug, Default)]
pub struct Breakers {
    config: BreakerConfig,
    records: Mutex<HashMap<SocketAddr, Record>>,
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
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Record>> {
        crate::lock(&self.records)
    }

    /// Whether `addr` is ejected now.
    pub fn is_ejected(&self, addr: SocketAddr) -> bool {
        let now = Instant::now();
        self.lock()
            .get(&addr)
            .and_then(|record| record.ejected_until)
            .is_some_and(|until| until > now)
    }

    /// Records a success: the replica's failure count starts over.
    pub fn record_success(&self, addr: SocketAddr) {
        let mut records = self.lock();
        if let Some(record) = records.get_mut(&addr) {
            record.failures = 0;
            if record
                .ejected_until
                .is_some_and(|until| until <= Instant::now())
            {
                record.ejected_until = None;
            }
        }
    }

    /// Records a failure of `addr`, one of `replicas` serving the service; ejects it when it
    /// reached the threshold and the cap allows. Returns whether it was ejected.
    pub fn record_failure(&self, addr: SocketAddr, replicas: usize) -> bool {
        let now = Instant::now();
        let mut records = self.lock();
        let ejected_now = records
            .iter()
            .filter(|(other, record)| {
                **other != addr && record.ejected_until.is_some_and(|u| u > now)
            })
            .count();
        let record = records.entry(addr).or_default();
        record.failures += 1;
        if record.failures < self.config.consecutive_failures
            || record.ejected_until.is_some_and(|until| until > now)
        {
            return false;
        }
        let allowed = replicas * self.config.max_ejected_percent as usize / 100;
        if ejected_now + 1 > allowed {
            return false;
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
        true
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
        let breakers = Breakers::new(BreakerConfig::default());
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
