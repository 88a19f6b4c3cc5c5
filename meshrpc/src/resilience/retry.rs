//! Retries: only what is safe to run again — calls the callee refused before starting them
//! (draining, shedding, connection never made) and failures of idempotent methods — and only
//! within a budget, so retries cannot multiply an outage.

use std::sync::Arc;
use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};

use crate::channel::Call;
use crate::service::BoxFuture;
use crate::status::{Code, Status};
use crate::streaming::Body;

/// Tuning for [`RetryPolicy`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryConfig {
    /// Attempts per call, the first included (default 3).
    pub max_attempts: u32,
    /// Retries always allowed per second, whatever the traffic (default 100).
    pub min_retries_per_second: u32,
    /// Further retries allowed, as a share of calls (default 0.2: one retry per five calls).
    pub retry_ratio: f32,
}

impl Default for RetryConfig {
    fn default() -> RetryConfig {
        RetryConfig {
            max_attempts: 3,
            min_retries_per_second: 100,
            retry_ratio: 0.2,
        }
    }
}

/// The tower retry policy of every balanced channel.
#[derive(Clone)]
pub struct RetryPolicy {
    budget: Arc<TpsBudget>,
    max_attempts: u32,
    attempts: u32,
}

impl std::fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("attempts", &self.attempts)
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
            attempts: 0,
        }
    }
}

/// Whether `status` allows running `call` again.
pub fn is_retryable(call: &Call, status: &Status) -> bool {
    status.is_refused()
        || (call.idempotent
            && matches!(
                status.code(),
                Code::Unavailable | Code::ResourceExhausted | Code::Aborted
            ))
}

impl tower::retry::Policy<Call, Body, Status> for RetryPolicy {
    type Future = BoxFuture<'static, ()>;

    fn retry(
        &mut self,
        call: &mut Call,
        result: &mut Result<Body, Status>,
    ) -> Option<Self::Future> {
        let status = result.as_ref().err()?;
        self.attempts += 1;
        if let Some(peer) = status.peer() {
            call.tried.push(peer);
        }
        // A client stream whose items an attempt took cannot be sent again.
        if self.attempts >= self.max_attempts
            || !is_retryable(call, status)
            || !call.is_replayable()
        {
            return None;
        }
        if call
            .deadline
            .is_some_and(|deadline| deadline <= tokio::time::Instant::now())
        {
            return None;
        }
        // Refusals cost the callee nothing; other retries spend the budget.
        if !status.is_refused() && !self.budget.withdraw() {
            return None;
        }
        let pause = if status.is_refused() {
            Duration::ZERO
        } else {
            Duration::from_millis(2 * u64::from(self.attempts))
        };
        Some(Box::pin(tokio::time::sleep(pause)))
    }

    fn clone_request(&mut self, call: &Call) -> Option<Call> {
        if self.attempts == 0 {
            self.budget.deposit();
        }
        Some(call.clone())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn call(idempotent: bool) -> Call {
        let mut call = Call::new("svc", "m", Bytes::new());
        call.idempotent = idempotent;
        call
    }

    #[test]
    fn refusals_are_retried_for_any_method_failures_only_for_idempotent_ones() {
        let refused = Status::refused(Code::Unavailable, "draining");
        let lost = Status::unavailable("connection lost");
        let bad = Status::invalid_argument("bad");
        assert!(is_retryable(&call(false), &refused));
        assert!(!is_retryable(&call(false), &lost));
        assert!(is_retryable(&call(true), &lost));
        assert!(!is_retryable(&call(true), &bad));
    }

    #[tokio::test]
    async fn attempts_are_bounded() {
        use tower::retry::Policy;
        let mut policy = RetryPolicy::new(RetryConfig::default());
        let mut request = call(true);
        let _ = policy.clone_request(&request);
        let mut failure: Result<Body, Status> = Err(Status::unavailable("down"));
        assert!(policy.retry(&mut request, &mut failure).is_some());
        assert!(policy.retry(&mut request, &mut failure).is_some());
        assert!(
            policy.retry(&mut request, &mut failure).is_none(),
            "three attempts in all"
        );
    }
}
