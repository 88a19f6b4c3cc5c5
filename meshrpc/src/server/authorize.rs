//! Authorization: [`Authorize`], the server-stack layer that lets a call through only if the
//! node's [`Policy`] allows its caller, named by the identity in the caller's certificate
//! (`meshrpc://<cluster>/<name>`, see [`crate::tls::identity`]).
//!
//! A refused call is answered `permission_denied`, naming the caller, the method and who may
//! call it, and never reaches the layers below. Refusals are counted per method
//! ([`Refusals`]) and logged at warn, at most once per [`LOG_INTERVAL`] with the number of
//! refusals not logged since: a caller refused in a loop must not flood the log, and the
//! counter keeps the exact figure.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::{Either, Ready, ready};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tower::{Layer, Service};

use crate::server::IncomingCall;
use crate::status::Status;
use crate::streaming::Body;

pub mod policy;

pub use policy::{Callers, EVERY_SERVICE, Policy, PolicyError, Refusal};

/// The shortest time between two refusal lines in the log.
pub const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Labels of the refusal counter: the node's own service and method, never the caller's
/// name, so the number of series is bounded by what the node serves.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    service: &'static str,
    method: &'static str,
}

/// Calls refused by the policy, by service and method
/// (`meshrpc_authorization_refusals_total` in a registry prefixed `meshrpc`).
#[derive(Clone, Debug, Default)]
pub struct Refusals {
    family: Family<RefusalLabels, Counter>,
}

impl Refusals {
    /// A refusal counter registered in `registry` as `authorization_refusals` (a counter, so
    /// rendered `<prefix>_authorization_refusals_total`).
    pub fn register(registry: &mut Registry) -> Refusals {
        let refusals = Refusals::default();
        registry.register(
            "authorization_refusals",
            "Calls refused by this node's authorization policy, by service and method",
            refusals.family.clone(),
        );
        refusals
    }

    /// Calls of `service.method` refused so far.
    pub fn count(&self, service: &'static str, method: &'static str) -> u64 {
        self.family
            .get_or_create(&RefusalLabels { service, method })
            .get()
    }

    fn record(&self, service: &'static str, method: &'static str) {
        self.family
            .get_or_create(&RefusalLabels { service, method })
            .inc();
    }
}

/// Applies a [`Policy`] to calls: see [`Authorize`].
#[derive(Debug, Clone)]
pub struct AuthorizeLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    policy: Policy,
    refusals: Refusals,
    log: RefusalLog,
}

impl AuthorizeLayer {
    /// Authorizes calls under `policy`, counting refusals in `refusals` (from
    /// [`Refusals::register`], or `Refusals::default()` to count without exporting).
    pub fn new(policy: Policy, refusals: Refusals) -> AuthorizeLayer {
        AuthorizeLayer {
            shared: Arc::new(Shared {
                policy,
                refusals,
                log: RefusalLog::default(),
            }),
        }
    }

    /// The policy applied.
    pub fn policy(&self) -> &Policy {
        &self.shared.policy
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Passes a call to the inner service only if the policy allows its caller to call its method;
/// otherwise answers `permission_denied` without calling the inner service.
#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<IncomingCall> for Authorize<S>
where
    S: Service<IncomingCall, Response = Body, Error = Status>,
{
    type Response = Body;
    type Error = Status;
    type Future = Either<S::Future, Ready<Result<Body, Status>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: IncomingCall) -> Self::Future {
        match self.shared.policy.decide(&call.caller, call.method) {
            Ok(()) => Either::Left(self.inner.call(call)),
            Err(refusal) => {
                self.shared.refusals.record(refusal.service, refusal.method);
                if let Some(unlogged) = self.shared.log.admit(Instant::now()) {
                    tracing::warn!(
                        service = refusal.service,
                        method = refusal.method,
                        caller = %refusal.caller,
                        refusals_not_logged = unlogged,
                        "refused a call: {refusal}"
                    );
                }
                Either::Right(ready(Err(Status::permission_denied(refusal.to_string()))))
            }
        }
    }
}

/// Lets one refusal line through per [`LOG_INTERVAL`] and counts the others.
#[derive(Debug, Default)]
struct RefusalLog {
    state: Mutex<LogState>,
}

#[derive(Debug, Default)]
struct LogState {
    last: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    /// `Some(refusals not logged since the last line)` if a refusal at `now` should be logged.
    fn admit(&self, now: Instant) -> Option<u64> {
        let mut state = crate::lock(&self.state);
        let due = state
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= LOG_INTERVAL);
        if due {
            state.last = Some(now);
            Some(std::mem::take(&mut state.unlogged))
        } else {
            state.unlogged = state.unlogged.saturating_add(1);
            None
        }
    }
}

#[cfg(test)]
mod tests;
