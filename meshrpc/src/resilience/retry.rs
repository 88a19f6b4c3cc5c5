//! Retries: only what is safe to run again — calls the callee refused before starting them
//! (draining, shedding, connection never made) and failures of idempotent methods — and only
//! within a budget, so retries cannot multiply an outage.

use std::sync::Arc;
use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};

use tokio::time::Instant;

use crate::status::{Code, Status};

/// Tuning for [`RetryPolicy`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct RetryConfig {
    /// Attempts per call, the first included (default 3).
    pub max_attempts: u32,
    /// Retries always allowed per second, whatever the traffic (default 100).
    pub min_retries_per_second: u32,
    /// Further retries allowed, as a share of calls (default 0.2: one retry per five calls).
    pub retry_ratio: f32,
}

setters!(RetryConfig {
    max_attempts: u32,
    min_retries_per_second: u32,
    retry_ratio: f32
});

impl Default for RetryConfig {
    fn default() -> RetryConfig {
        RetryConfig {
            max_attempts: 3,
            min_retries_per_second: 100,
            retry_ratio: 0.2,
        }
    }
}

/// The one retry rule of a node's clients, RPCs and HTTP tunnels alike, with its budget
/// (shared by every clone: a node's clients spend one budget).
#[derive(Clone)]
pub struct RetryPolicy {
    budget: Arc<TpsBudget>,
    max_attempts: u32,
}

impl std::fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl RetryPolicy {
    /// A policy with its own budget.
    pub fn new(config: RetryConfig) -> RetryPolicy {
        RetryPolicy {
            budget: Arc::new(TpsBudget::new(
                Duration::from_secs(10),
                config.min_retries_per_second,
                config.retry_ratio,
            )),
            max_attempts: config.max_attempts.max(1),
        }
    }

    /// Attempts per call, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Counts one call: each call earns the budget a share of a retry.
    pub fn deposit(&self) {
        self.budget.deposit();
    }

    /// Whether a call that made `attempts` attempts, the last one failing with `status`, may
    /// be sent again, and after what pause. `idempotent`: the method may run twice;
    /// `replayable`: the request can still be sent again (no body or client stream was taken);
    /// `deadline`: the call's deadline, if any. Refusals are free, other retries spend the
    /// budget.
    pub fn retry_after(
        &self,
        attempts: u32,
        idempotent: bool,
        replayable: bool,
        status: &Status,
        deadline: Option<Instant>,
    ) -> Option<Duration> {
        if attempts >= self.max_attempts
            || !is_retryable(idempotent, status)
            || !replayable
            || deadline.is_some_and(|deadline| deadline <= Instant::now())
        {
            return None;
        }
        if status.is_refused() {
            return Some(Duration::ZERO);
        }
        self.budget
            .withdraw()
            .then(|| Duration::from_millis(2 * u64::from(attempts)))
    }

    /// Spends one retry from the budget: what an attempt abandoned after its attempt timeout
    /// costs before it is sent again elsewhere.
    pub fn withdraw(&self) -> bool {
        self.budget.withdraw()
    }
}

/// Whether `status` allows running a call again: a refusal (the callee never started it)
/// always, a failure of the replica only if the method is idempotent.
pub fn is_retryable(idempotent: bool, status: &Status) -> bool {
    status.is_refused()
        || (idempotent
            && matches!(
                status.code(),
                Code::Unavailable | Code::ResourceExhausted | Code::Aborted
            ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_retried_for_any_method_failures_only_for_idempotent_ones() {
        let refused = Status::refused(Code::Unavailable, "draining");
        let lost = Status::unavailable("connection lost");
        let bad = Status::invalid_argument("bad");
        assert!(is_retryable(false, &refused));
        assert!(!is_retryable(false, &lost));
        assert!(is_retryable(true, &lost));
        assert!(!is_retryable(true, &bad));
    }

    #[tokio::test]
    async fn attempts_are_bounded() {
        let policy = RetryPolicy::new(RetryConfig::default());
        policy.deposit();
        let failure = Status::unavailable("down");
        assert!(policy.retry_after(1, true, true, &failure, None).is_some());
        assert!(policy.retry_after(2, true, true, &failure, None).is_some());
        assert!(
            policy.retry_after(3, true, true, &failure, None).is_none(),
            "three attempts in all"
        );
        assert!(
            policy.retry_after(1, true, false, &failure, None).is_none(),
            "a request whose stream was taken is never sent again"
        );
    }

    #[tokio::test]
    async fn the_budget_caps_retries_of_failures_but_not_of_refusals() {
        let policy = RetryPolicy::new(RetryConfig {
            min_retries_per_second: 0,
            retry_ratio: 0.2,
            ..RetryConfig::default()
        });
        for _ in 0..10 {
            policy.deposit();
        }
        let failure = Status::unavailable("down");
        let retried = (0..10)
            .filter(|_| policy.retry_after(1, true, true, &failure, None).is_some())
            .count();
        assert_eq!(retried, 2, "one retry per five calls");
        let refused = Status::refused(Code::Unavailable, "draining");
        assert_eq!(
            policy.retry_after(1, false, true, &refused, None),
            Some(Duration::ZERO)
        );
    }
}
