//! The top of a node's client stack: [`Attempts`] sends each call through the
//! [balancer](super::balance) as one or more attempts, under one retry rule and its budget
//! ([`RetryPolicy`]), and for idempotent unary calls tolerates slow replicas:
//!
//! - **Per-attempt timeouts.** An attempt unanswered after its attempt timeout (the method's
//!   `attempt_timeout`, else [`TailConfig::attempt_timeout_factor`] × the service's p99, at
//!   least [`TailConfig::attempt_timeout_floor`]) is abandoned — dropping it resets its stream
//!   — and sent to another replica, if the retry budget allows; otherwise the call keeps
//!   waiting for it (a timeout alone never fails a call). The replica is told to its breaker,
//!   which ejects it after a few in a row.
//! - **Hedges.** An attempt unanswered after the method's `hedge_after` (else the service's
//!   p95) is sent to a second replica as well; the first answer wins and the other attempt is
//!   dropped. Hedges spend their own budget, [`TailConfig::max_hedge_percent`] of the calls.
//!   A call with a sticky key is never hedged.
//!   A first attempt that loses to its hedge counts against its replica as a timeout does.
//! - **Deadlines.** No retry or hedge is sent with less time left than the service's typical
//!   (median) latency; the remaining deadline travels with each attempt.
//!
//! Calls with a stream either way, and calls of methods that are not idempotent, are never
//! hedged and have no attempt timeout; they are retried only while [`Call::is_replayable`] and
//! only for failures before their first reply (a stream that started is the caller's).

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::Service;
use tower::retry::budget::{Budget, TpsBudget};

use super::balance::{Balance, BalanceState, EndpointFuture};
use super::retry::RetryPolicy;
use crate::channel::Call;
use crate::metrics::{ClientTailMetrics, HedgeOutcome};
use crate::service::BoxFuture;
use crate::spec::MethodKind;
use crate::status::Status;
use crate::streaming::Body;

/// Tuning of per-attempt timeouts and hedging ([`NodeBuilder::tail`](crate::NodeBuilder::tail)).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct TailConfig {
    /// Whether idempotent unary calls are hedged (default true).
    pub hedging: bool,
    /// The hedge budget: hedges allowed, as a percentage of calls (default 5).
    pub max_hedge_percent: u32,
    /// The earliest a hedge is sent when it is timed by the observed p95 (default 1 ms).
    pub hedge_floor: Duration,
    /// Whether idempotent unary attempts have an attempt timeout (default true).
    pub attempt_timeouts: bool,
    /// The adaptive attempt timeout is this many times the service's p99 (default 4)...
    pub attempt_timeout_factor: u32,
    /// ...and at least this (default 50 ms).
    pub attempt_timeout_floor: Duration,
}

setters!(TailConfig {
    hedging: bool,
    max_hedge_percent: u32,
    hedge_floor: Duration,
    attempt_timeouts: bool,
    attempt_timeout_factor: u32,
    attempt_timeout_floor: Duration
});

impl Default for TailConfig {
    fn default() -> TailConfig {
        TailConfig {
            hedging: true,
            max_hedge_percent: 5,
            hedge_floor: Duration::from_millis(1),
            attempt_timeouts: true,
            attempt_timeout_factor: 4,
            attempt_timeout_floor: Duration::from_millis(50),
        }
    }
}

/// The tail-tolerance state of one service's clients: the tuning, the hedge budget and the
/// counters.
pub struct Tail {
    config: TailConfig,
    hedge_budget: TpsBudget,
    metrics: ClientTailMetrics,
}

impl std::fmt::Debug for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tail")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Tail {
    /// Tail tolerance tuned by `config`, counted in `metrics`.
    pub fn new(config: TailConfig, metrics: ClientTailMetrics) -> Tail {
        Tail {
            config,
            hedge_budget: TpsBudget::new(
                Duration::from_secs(10),
                0,
                config.max_hedge_percent.min(100) as f32 / 100.0,
            ),
            metrics,
        }
    }
}

/// What [`Attempts`] sends attempts through: a [`Balance`] (or a stand-in in tests).
pub trait Route: Clone + Send + Sync + 'static {
    /// Starts one attempt of `call` on a member chosen for it: the member's address, how
    /// many members serve the service, and the attempt; or why no member can take it.
    fn route(&self, call: Call) -> Result<(SocketAddr, usize, EndpointFuture), Status>;

    /// The state shared by the calls of the service (breakers, observed latency).
    fn state(&self) -> &Arc<BalanceState>;
}

impl Route for Balance {
    fn route(&self, call: Call) -> Result<(SocketAddr, usize, EndpointFuture), Status> {
        Balance::route(self, call)
    }

    fn state(&self) -> &Arc<BalanceState> {
        Balance::state(self)
    }
}

/// The client stack's top layer: attempts, retries, attempt timeouts and hedges over a
/// [`Balance`].
#[derive(Debug, Clone)]
pub struct Attempts<R = Balance> {
    balance: R,
    retry: RetryPolicy,
    tail: Arc<Tail>,
}

impl<R: Route> Attempts<R> {
    /// Sends calls through `balance`, retried by `retry`, hedged and timed per attempt as
    /// `tail` says.
    pub fn new(balance: R, retry: RetryPolicy, tail: Arc<Tail>) -> Attempts<R> {
        Attempts {
            balance,
            retry,
            tail,
        }
    }
}

impl<R: Route> Service<Call> for Attempts<R> {
    type Response = Body;
    type Error = Status;
    type Future = BoxFuture<'static, Result<Body, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let this = self.clone();
        this.retry.deposit();
        if call.kind == MethodKind::Unary && call.idempotent {
            Box::pin(this.tolerant(call))
        } else {
            Box::pin(this.plain(call))
        }
    }
}

/// One attempt in flight.
struct InFlight {
    addr: SocketAddr,
    replicas: usize,
    started: Instant,
    attempt: EndpointFuture,
    hedge: bool,
    /// Its attempt timeout passed and no retry could be sent: waited for all the same.
    overdue: bool,
}

/// What happened next in [`Attempts::tolerant`].
enum Event {
    Done(bool, Result<Body, Status>),
    HedgeDue,
    Overdue(bool),
}

/// Waits for the attempt in `slot`, forever if there is none.
async fn answer(slot: &mut Option<InFlight>) -> Result<Body, Status> {
    match slot {
        Some(flight) => (&mut flight.attempt).await,
        None => std::future::pending().await,
    }
}

impl<R: Route> Attempts<R> {
    fn latencies(&self) -> &super::latency::Latencies {
        self.balance.state().latencies()
    }

    /// Sends one attempt, noting its replica as tried.
    fn launch(&self, call: &mut Call, hedge: bool) -> Result<InFlight, Status> {
        let (addr, replicas, attempt) = self.balance.route(call.clone())?;
        call.tried.push(addr);
        Ok(InFlight {
            addr,
            replicas,
            started: Instant::now(),
            attempt,
            hedge,
            overdue: false,
        })
    }

    /// Whether the deadline leaves time for one more attempt: at least the service's
    /// typical latency.
    fn time_for_another(&self, call: &Call) -> bool {
        let Some(deadline) = call.deadline else {
            return true;
        };
        let typical = self.latencies().p50().unwrap_or_default();
        deadline.saturating_duration_since(Instant::now()) > typical
    }

    /// Streams and methods that are not idempotent: attempts one after the other, retried
    /// only while the rule allows and the request can be sent again.
    #[allow(
        clippy::manual_async_fn,
        reason = "an `async fn` would move its arguments once more into its body: twice their size in the future"
    )]
    fn plain(self, mut call: Call) -> impl Future<Output = Result<Body, Status>> + Send + 'static {
        async move {
            let mut attempts = 0;
            loop {
                attempts += 1;
                let started = Instant::now();
                let result = match self.balance.route(call.clone()) {
                    Ok((_, _, attempt)) => attempt.await,
                    Err(status) => Err(status),
                };
                let status = match result {
                    Ok(body) => {
                        if call.kind == MethodKind::Unary {
                            self.latencies().record(started.elapsed());
                        }
                        return Ok(body);
                    }
                    Err(status) => status,
                };
                if let Some(peer) = status.peer() {
                    call.tried.push(peer);
                }
                let replayable = call.is_replayable();
                match self.retry.retry_after(
                    attempts,
                    call.idempotent,
                    replayable,
                    &status,
                    call.deadline,
                ) {
                    Some(pause) if self.time_for_another(&call) => tokio::time::sleep(pause).await,
                    _ => return Err(status),
                }
            }
        }
    }

    /// The attempt timeout of `call`, if it has one.
    fn attempt_timeout(&self, call: &Call) -> Option<Duration> {
        let config = &self.tail.config;
        if !config.attempt_timeouts {
            return None;
        }
        call.attempt_timeout.or_else(|| {
            let p99 = self.latencies().p99()?;
            Some(
                p99.saturating_mul(config.attempt_timeout_factor)
                    .max(config.attempt_timeout_floor),
            )
        })
    }

    /// When an unanswered attempt of `call` is hedged, if it is.
    fn hedge_after(&self, call: &Call) -> Option<Duration> {
        let config = &self.tail.config;
        // A call with a sticky key belongs on its replica: a hedge elsewhere could answer it
        // from another one.
        if !config.hedging || call.sticky_key.is_some() {
            return None;
        }
        call.hedge_after
            .or_else(|| Some(self.latencies().p95()?.max(config.hedge_floor)))
    }

    /// Idempotent unary calls: up to two attempts in flight (a hedge), attempt timeouts, and
    /// retries of failures, the first answer winning.
    #[allow(
        clippy::manual_async_fn,
        reason = "an `async fn` would move its arguments once more into its body: twice their size in the future"
    )]
    fn tolerant(
        self,
        mut call: Call,
    ) -> impl Future<Output = Result<Body, Status>> + Send + 'static {
        async move {
            let tail = self.tail.clone();
            tail.hedge_budget.deposit();
            let attempt_timeout = self.attempt_timeout(&call);
            // Before the service has quantiles, its attempt timeout is a guess from its slowest
            // answers so far: an attempt past it is sent elsewhere, but not held against its
            // replica (one a little slower than the first answers would be ejected for it).
            let guessed = call.attempt_timeout.is_none() && self.latencies().p95().is_none();
            let hedge_after = self.hedge_after(&call);
            let max_attempts = self.retry.max_attempts();
            let mut attempts = 1;
            let mut first = Some(self.launch(&mut call, false)?);
            let mut second: Option<InFlight> = None;
            let mut hedged = false;
            let mut last: Option<Status> = None;
            loop {
                let far = Instant::now() + Duration::from_secs(86_400);
                let hedge_at = match (&first, &second, hedge_after) {
                    (Some(flight), None, Some(after)) if !hedged && attempts < max_attempts => {
                        Some(flight.started + after)
                    }
                    _ => None,
                };
                let overdue_at = |slot: &Option<InFlight>| match (slot, attempt_timeout) {
                    (Some(flight), Some(timeout)) if !flight.overdue => {
                        Some(flight.started + timeout)
                    }
                    _ => None,
                };
                let (first_overdue, second_overdue) = (overdue_at(&first), overdue_at(&second));
                // One timer for whichever of the three comes first, not one each: a timer costs
                // a registration with the runtime per call.
                let wake_at = [first_overdue, second_overdue, hedge_at]
                    .into_iter()
                    .flatten()
                    .min();
                let event = tokio::select! {
                    result = answer(&mut first) => Event::Done(false, result),
                    result = answer(&mut second) => Event::Done(true, result),
                    _ = tokio::time::sleep_until(wake_at.unwrap_or(far)), if wake_at.is_some() => {
                        if first_overdue == wake_at {
                            Event::Overdue(false)
                        } else if second_overdue == wake_at {
                            Event::Overdue(true)
                        } else {
                            Event::HedgeDue
                        }
                    }
                };
                match event {
                    Event::Done(in_second, result) => {
                        let done = if in_second {
                            second.take()
                        } else {
                            first.take()
                        };
                        let Some(done) = done else { continue };
                        match result {
                            Ok(body) => {
                                self.latencies().record(done.started.elapsed());
                                if done.hedge {
                                    tail.metrics.hedge(&call.service, HedgeOutcome::Won);
                                    // The first attempt, still unanswered, lost to a later one on
                                    // another replica: its replica left it hanging, as a timeout.
                                    let loser = if in_second {
                                        first.take()
                                    } else {
                                        second.take()
                                    };
                                    if let Some(loser) = loser.filter(|loser| !loser.hedge) {
                                        self.balance
                                            .state()
                                            .breakers()
                                            .record_timeout(loser.addr, loser.replicas);
                                    }
                                }
                                // The other attempt, if any, is dropped here: its stream is reset.
                                return Ok(body);
                            }
                            Err(status) => {
                                if first.is_some() || second.is_some() {
                                    // The other attempt may still answer.
                                    last = Some(status);
                                    continue;
                                }
                                let pause = self.retry.retry_after(
                                    attempts,
                                    true,
                                    true,
                                    &status,
                                    call.deadline,
                                );
                                match pause {
                                    Some(pause) if self.time_for_another(&call) => {
                                        tokio::time::sleep(pause).await;
                                        attempts += 1;
                                        match self.launch(&mut call, false) {
                                            Ok(flight) => first = Some(flight),
                                            Err(refused) => return Err(last.unwrap_or(refused)),
                                        }
                                    }
                                    _ => return Err(status),
                                }
                            }
                        }
                    }
                    Event::HedgeDue => {
                        hedged = true;
                        if !self.time_for_another(&call) {
                            continue;
                        }
                        if !tail.hedge_budget.withdraw() {
                            tail.metrics.hedge(&call.service, HedgeOutcome::Refused);
                            continue;
                        }
                        if let Ok(flight) = self.launch(&mut call, true) {
                            if first.as_ref().is_some_and(|f| f.addr == flight.addr) {
                                // Only one replica can take it: a hedge would go to the same one.
                                continue;
                            }
                            attempts += 1;
                            tail.metrics.hedge(&call.service, HedgeOutcome::Sent);
                            second = Some(flight);
                        }
                    }
                    Event::Overdue(in_second) => {
                        let slot = if in_second { &mut second } else { &mut first };
                        let Some(flight) = slot.as_mut() else {
                            continue;
                        };
                        flight.overdue = true;
                        tail.metrics.attempt_timeout(&call.service);
                        if !guessed {
                            let breakers = self.balance.state().breakers();
                            breakers.record_timeout(flight.addr, flight.replicas);
                        }
                        let other_busy = if in_second {
                            first.is_some()
                        } else {
                            second.is_some()
                        };
                        // Abandon it for another replica only if a retry may be sent now.
                        if other_busy
                            || attempts >= max_attempts
                            || !self.time_for_another(&call)
                            || !self.retry.withdraw()
                        {
                            continue;
                        }
                        match self.launch(&mut call, false) {
                            Ok(flight) => {
                                attempts += 1;
                                let slot = if in_second { &mut second } else { &mut first };
                                // Dropping the overdue attempt resets its stream.
                                *slot = Some(flight);
                            }
                            Err(status) => last = Some(status),
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
