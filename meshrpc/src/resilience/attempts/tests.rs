//! Tests of [`Attempts`] with paused time, over stand-in replicas behind the real balancer
//! choice, load and breaker layers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use tower::ServiceExt;

use super::*;
use crate::channel::OutgoingStream;
use crate::membership::{Liveness, MemberId, MemberView, Published, View};
use crate::metrics::Metrics;
use crate::resilience::balance::{Strategy, pick};
use crate::resilience::breaker::{BreakerConfig, Guarded};
use crate::resilience::load::Measured;
use crate::resilience::retry::RetryConfig;
use crate::streaming::Streaming;

#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// Answers after this long.
    Answers(Duration),
    /// Never answers (a process stopped with SIGSTOP).
    Frozen,
    /// Fails after this long with `unavailable`.
    Fails(Duration),
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn member(port: u16) -> MemberView {
    MemberView {
        id: MemberId {
            addr: addr(port),
            name: format!("svc-{port}"),
            cluster: "test".into(),
            generation: 1,
            draining: false,
            services: vec![Published {
                name: "svc".into(),
                schema_hash: 7,
            }],
            http: vec![],
            tags: vec![],
        },
        liveness: Liveness::Alive,
        local: false,
    }
}

/// Replicas on ports 1, 2, 3... behaving as told, counting the attempts each received and
/// the attempts dropped before they finished.
#[derive(Clone)]
struct Replicas {
    view: Arc<View>,
    state: Arc<BalanceState>,
    behaviours: Arc<Vec<Behaviour>>,
    attempts: Arc<Mutex<HashMap<u16, usize>>>,
    cancelled: Arc<AtomicUsize>,
}

impl Replicas {
    fn new(behaviours: Vec<Behaviour>) -> Replicas {
        let ports = 1..=behaviours.len() as u16;
        Replicas {
            view: Arc::new(View::new(ports.map(member).collect())),
            state: Arc::new(BalanceState::new(BreakerConfig::default())),
            behaviours: Arc::new(behaviours),
            attempts: Arc::default(),
            cancelled: Arc::default(),
        }
    }

    fn attempts(&self, port: u16) -> usize {
        crate::lock(&self.attempts).get(&port).copied().unwrap_or(0)
    }
}

/// Counts an attempt dropped before it finished.
struct Unfinished(Option<Arc<AtomicUsize>>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(cancelled) = self.0.take() {
            cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[derive(Clone)]
struct Replica {
    port: u16,
    behaviour: Behaviour,
    cancelled: Arc<AtomicUsize>,
}

impl Service<Call> for Replica {
    type Response = Body;
    type Error = Status;
    type Future = BoxFuture<'static, Result<Body, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let Replica {
            port,
            behaviour,
            cancelled,
        } = self.clone();
        Box::pin(async move {
            let mut unfinished = Unfinished(Some(cancelled));
            // A client stream is taken by the attempt that sends it.
            let _items = call.stream.as_ref().and_then(OutgoingStream::take);
            let result = match behaviour {
                Behaviour::Answers(after) => {
                    tokio::time::sleep(after).await;
                    Ok(Body::Message(Bytes::from(port.to_string())))
                }
                Behaviour::Frozen => std::future::pending().await,
                Behaviour::Fails(after) => {
                    tokio::time::sleep(after).await;
                    Err(Status::unavailable(format!("replica {port} is broken")))
                }
            };
            unfinished.0 = None;
            result
        })
    }
}

impl Route for Replicas {
    fn route(&self, call: Call) -> Result<(SocketAddr, usize, EndpointFuture), Status> {
        let tried = &call.tried;
        let member = pick(
            &self.view,
            "svc",
            None,
            call.sticky_key.as_deref(),
            Strategy::RoundRobin,
            &self.state,
            &|addr| tried.contains(addr),
        )?;
        let addr = member.id.addr;
        let port = addr.port();
        *crate::lock(&self.attempts).entry(port).or_default() += 1;
        let replica = Replica {
            port,
            behaviour: self.behaviours[usize::from(port) - 1],
            cancelled: self.cancelled.clone(),
        };
        let replicas = self.behaviours.len();
        let mut endpoint = Guarded::new(
            Measured::new(replica, self.state.load(addr)),
            addr,
            replicas,
            self.state.breakers().clone(),
        );
        Ok((addr, replicas, endpoint.call(call)))
    }

    fn state(&self) -> &Arc<BalanceState> {
        &self.state
    }
}

fn stack(replicas: &Replicas, tail: TailConfig, metrics: &Metrics) -> Attempts<Replicas> {
    Attempts::new(
        replicas.clone(),
        RetryPolicy::new(RetryConfig::default()),
        Arc::new(Tail::new(tail, metrics.client_tail().clone())),
    )
}

fn idempotent_call(deadline: Duration) -> Call {
    let mut call = Call::new("svc", "m", Bytes::new());
    call.idempotent = true;
    call.deadline = Some(Instant::now() + deadline);
    call
}

/// Sends `call` through `stack`; returns the answering port (or the error) and the latency.
async fn send(stack: &Attempts<Replicas>, call: Call) -> (Result<u16, Status>, Duration) {
    let started = Instant::now();
    let result = stack.clone().oneshot(call).await.map(|body| {
        let message = body.into_message("svc.m").expect("a message");
        std::str::from_utf8(&message)
            .expect("text")
            .parse()
            .expect("a port")
    });
    (result, started.elapsed())
}

const FAST: Behaviour = Behaviour::Answers(Duration::from_millis(1));

#[tokio::test(start_paused = true)]
async fn a_frozen_replica_costs_one_attempt_timeout_per_call_until_it_is_ejected() {
    let replicas = Replicas::new(vec![Behaviour::Frozen, FAST, FAST]);
    let metrics = Metrics::new();
    let no_hedges = TailConfig {
        hedging: false,
        ..TailConfig::default()
    };
    let stack = stack(&replicas, no_hedges, &metrics);
    let mut slowest = Duration::ZERO;
    for _ in 0..60 {
        let mut call = idempotent_call(Duration::from_secs(2));
        call.attempt_timeout = Some(Duration::from_millis(50));
        let (result, latency) = send(&stack, call).await;
        assert!(matches!(result, Ok(2 | 3)), "{result:?}");
        slowest = slowest.max(latency);
    }
    assert_eq!(
        slowest,
        Duration::from_millis(51),
        "one attempt timeout, then 1 ms"
    );
    assert_eq!(
        replicas.attempts(1),
        BreakerConfig::default().consecutive_timeouts as usize,
        "ejected after its attempts timed out three times in a row"
    );
    assert!(replicas.state.breakers().is_ejected(addr(1)));
    assert_eq!(
        replicas.cancelled.load(Ordering::SeqCst),
        3,
        "every abandoned attempt was dropped (its stream reset)"
    );
    assert!(
        metrics
            .render()
            .contains("meshrpc_client_attempt_timeouts_total{service=\"svc\"} 3")
    );
}

#[tokio::test(start_paused = true)]
async fn an_attempt_timeout_never_fails_a_call_that_cannot_be_retried() {
    // A lone replica that takes 80 ms: past its 50 ms attempt timeout, with nowhere else to go.
    let replicas = Replicas::new(vec![Behaviour::Answers(Duration::from_millis(80))]);
    let stack = stack(&replicas, TailConfig::default(), &Metrics::new());
    let mut call = idempotent_call(Duration::from_secs(2));
    call.attempt_timeout = Some(Duration::from_millis(50));
    let (result, latency) = send(&stack, call).await;
    assert_eq!(result.expect("answered"), 1);
    assert!(latency <= Duration::from_millis(200), "{latency:?}");
}

#[tokio::test(start_paused = true)]
async fn a_hedge_answers_for_a_slow_replica_whose_attempt_is_dropped_until_it_is_ejected() {
    let slow = Behaviour::Answers(Duration::from_millis(100));
    let replicas = Replicas::new(vec![slow, FAST, FAST]);
    let metrics = Metrics::new();
    let generous = TailConfig {
        max_hedge_percent: 100,
        attempt_timeouts: false,
        ..TailConfig::default()
    };
    let stack = stack(&replicas, generous, &metrics);
    for _ in 0..30 {
        let mut call = idempotent_call(Duration::from_secs(2));
        call.hedge_after = Some(Duration::from_millis(5));
        let (result, latency) = send(&stack, call).await;
        assert!(matches!(result, Ok(2 | 3)), "{result:?}");
        assert!(latency <= Duration::from_millis(6), "{latency:?}");
    }
    let won = metrics.client_tail().hedges("svc", HedgeOutcome::Won);
    assert_eq!(
        won,
        replicas.attempts(1) as u64,
        "every call to the slow one was hedged"
    );
    assert_eq!(replicas.cancelled.load(Ordering::SeqCst) as u64, won);
    assert_eq!(
        won,
        u64::from(BreakerConfig::default().consecutive_timeouts),
        "three lost hedges in a row eject the slow replica"
    );
    assert!(replicas.state.breakers().is_ejected(addr(1)));
}

#[tokio::test(start_paused = true)]
async fn hedges_stay_within_their_budget() {
    let replicas = Replicas::new(vec![Behaviour::Answers(Duration::from_millis(10)); 3]);
    let metrics = Metrics::new();
    let stack = stack(&replicas, TailConfig::default(), &metrics);
    for _ in 0..400 {
        let mut call = idempotent_call(Duration::from_secs(2));
        call.hedge_after = Some(Duration::from_millis(1));
        let (result, _) = send(&stack, call).await;
        assert!(result.is_ok(), "{result:?}");
    }
    let sent = metrics.client_tail().hedges("svc", HedgeOutcome::Sent);
    let refused = metrics.client_tail().hedges("svc", HedgeOutcome::Refused);
    assert!(sent <= 20, "{sent} hedges for 400 calls: over 5 %");
    assert!(sent >= 10, "only {sent} hedges");
    assert_eq!(sent + refused, 400, "every call was due a hedge");
    let attempts: usize = (1..=3).map(|port| replicas.attempts(port)).sum();
    assert_eq!(attempts as u64, 400 + sent);
}

#[tokio::test(start_paused = true)]
async fn hedges_and_attempt_timeouts_follow_the_observed_latency() {
    let replicas = Replicas::new(vec![Behaviour::Answers(Duration::from_millis(4)); 2]);
    let stack = stack(&replicas, TailConfig::default(), &Metrics::new());
    let fresh = idempotent_call(Duration::from_secs(1));
    assert_eq!(
        stack.hedge_after(&fresh),
        None,
        "no hedges before the first answer"
    );
    assert_eq!(stack.attempt_timeout(&fresh), None);
    // One answer is enough for an attempt timeout (from the slowest answer so far), not for
    // hedges.
    let (result, _) = send(&stack, idempotent_call(Duration::from_secs(1))).await;
    assert!(result.is_ok());
    tokio::time::advance(crate::resilience::latency::REFRESH).await;
    assert_eq!(stack.hedge_after(&fresh), None, "no hedges on a guess");
    assert_eq!(
        stack.attempt_timeout(&fresh),
        Some(Duration::from_millis(50)),
        "4 × the slowest answer is under the floor"
    );
    for _ in 0..200 {
        let (result, _) = send(&stack, idempotent_call(Duration::from_secs(1))).await;
        assert!(result.is_ok());
    }
    tokio::time::advance(crate::resilience::latency::REFRESH).await;
    let hedge = stack.hedge_after(&fresh).expect("adaptive");
    assert!(
        hedge >= Duration::from_millis(4) && hedge <= Duration::from_millis(5),
        "{hedge:?}"
    );
    assert_eq!(
        stack.attempt_timeout(&fresh),
        Some(Duration::from_millis(50)),
        "4 × p99 is under the floor"
    );
    let mut manifest = idempotent_call(Duration::from_secs(1));
    manifest.hedge_after = Some(Duration::from_millis(20));
    manifest.attempt_timeout = Some(Duration::from_millis(30));
    assert_eq!(
        stack.hedge_after(&manifest),
        Some(Duration::from_millis(20))
    );
    assert_eq!(
        stack.attempt_timeout(&manifest),
        Some(Duration::from_millis(30))
    );
}

#[tokio::test(start_paused = true)]
async fn a_method_that_is_not_idempotent_is_neither_hedged_nor_retried_after_a_failure() {
    let replicas = Replicas::new(vec![Behaviour::Fails(Duration::from_millis(30)), FAST]);
    let metrics = Metrics::new();
    let stack = stack(&replicas, TailConfig::default(), &metrics);
    let mut call = idempotent_call(Duration::from_secs(2));
    call.idempotent = false;
    call.hedge_after = Some(Duration::from_millis(1));
    call.attempt_timeout = Some(Duration::from_millis(5));
    let (result, latency) = send(&stack, call).await;
    let error = result.expect_err("failed once, not retried");
    assert_eq!(error.code(), crate::Code::Unavailable);
    assert_eq!(error.peer(), Some(addr(1)));
    assert_eq!(
        latency,
        Duration::from_millis(30),
        "no attempt timeout either"
    );
    assert_eq!((replicas.attempts(1), replicas.attempts(2)), (1, 0));
    assert_eq!(metrics.client_tail().hedges("svc", HedgeOutcome::Sent), 0);
}

#[tokio::test(start_paused = true)]
async fn no_retry_is_sent_with_less_time_left_than_the_typical_latency() {
    let replicas = Replicas::new(vec![Behaviour::Fails(Duration::from_millis(10)), FAST]);
    for _ in 0..200 {
        replicas.state.latencies().record(Duration::from_millis(20));
    }
    let stack = stack(&replicas, TailConfig::default(), &Metrics::new());
    // 25 ms: after the failure at 10 ms, 15 ms are left, under the typical 20 ms.
    let (result, _) = send(&stack, idempotent_call(Duration::from_millis(25))).await;
    assert!(result.is_err(), "{result:?}");
    assert_eq!(
        replicas.attempts(2),
        0,
        "no retry without the time to answer it"
    );
    // With time enough, the same failure is retried on the other replica.
    for _ in 0..2 {
        let (result, _) = send(&stack, idempotent_call(Duration::from_secs(1))).await;
        assert_eq!(result.expect("retried"), 2);
    }
    assert_eq!((replicas.attempts(1), replicas.attempts(2)), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn streams_are_retried_only_while_their_items_were_not_taken() {
    let replicas = Replicas::new(vec![Behaviour::Fails(Duration::from_millis(1)), FAST]);
    let metrics = Metrics::new();
    let stack = stack(&replicas, TailConfig::default(), &metrics);
    // A server stream (no client stream): replayable, so retried on the other replica.
    let mut watch = idempotent_call(Duration::from_secs(1));
    watch.kind = MethodKind::ServerStreaming;
    watch.hedge_after = Some(Duration::from_micros(100));
    let (result, _) = send(&stack, watch).await;
    assert_eq!(result.expect("retried"), 2);
    // A client stream whose items the failed attempt took: never sent again.
    let mut upload = Call::new("svc", "m", Bytes::new());
    upload.kind = MethodKind::ClientStreaming;
    upload.stream = Some(OutgoingStream::new(Streaming::iter(vec![Bytes::from("x")])));
    let (result, _) = send(&stack, upload).await;
    assert!(result.is_err(), "{result:?}");
    assert_eq!(
        (replicas.attempts(1), replicas.attempts(2)),
        (2, 1),
        "the upload went to replica 1 only"
    );
    assert_eq!(metrics.client_tail().hedges("svc", HedgeOutcome::Sent), 0);
}

#[tokio::test(start_paused = true)]
async fn a_call_with_a_sticky_key_is_never_hedged_to_another_replica() {
    let slow = Behaviour::Answers(Duration::from_millis(20));
    let replicas = Replicas::new(vec![slow, slow, slow]);
    let metrics = Metrics::new();
    let generous = TailConfig {
        max_hedge_percent: 100,
        ..TailConfig::default()
    };
    let stack = stack(&replicas, generous, &metrics);
    for _ in 0..10 {
        let mut call = idempotent_call(Duration::from_secs(2));
        call.sticky_key = Some("user-7".into());
        call.hedge_after = Some(Duration::from_millis(1));
        let (result, latency) = send(&stack, call).await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(latency, Duration::from_millis(20));
    }
    assert_eq!(metrics.client_tail().hedges("svc", HedgeOutcome::Sent), 0);
    let served: Vec<usize> = (1..=3).map(|port| replicas.attempts(port)).collect();
    assert_eq!(served.iter().filter(|n| **n > 0).count(), 1, "{served:?}");
}

#[tokio::test(start_paused = true)]
async fn a_guessed_attempt_timeout_retries_elsewhere_without_holding_it_against_the_replica() {
    let replicas = Replicas::new(vec![Behaviour::Frozen, FAST, FAST]);
    let stack = stack(&replicas, TailConfig::default(), &Metrics::new());
    // A few answers: too few for quantiles, enough for a guessed attempt timeout.
    for _ in 0..6 {
        stack.latencies().record(Duration::from_millis(1));
    }
    tokio::time::advance(crate::resilience::latency::REFRESH).await;
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let (result, latency) = send(&stack, idempotent_call(Duration::from_secs(10))).await;
        assert!(matches!(result, Ok(2 | 3)), "{result:?}");
        slowest = slowest.max(latency);
    }
    assert!(replicas.attempts(1) > 0, "the frozen replica was tried");
    assert_eq!(
        slowest,
        Duration::from_millis(51),
        "one 50 ms attempt timeout, then 1 ms"
    );
    assert!(
        !replicas.state.breakers().is_ejected(addr(1)),
        "a guess is not evidence against the replica"
    );
}
