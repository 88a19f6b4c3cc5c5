//! Admission: the node's limit of calls in flight and its drain switch, shared by every kind of
//! stream that does work (calls and HTTP tunnels), and [`Admit`], the layer that applies them
//! to calls.
//!
//! A permit is held until the reply has been produced (for a server stream: until its last
//! item), so a draining node waits for it; while draining, or at the limit, a call is refused
//! with a refusal the caller retries on another replica.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::OnceLock;

use tokio::sync::Semaphore;

use crate::metrics::Metrics;
use tower::{Layer, Service};

use super::IncomingCall;
use crate::status::{Code, Status};
use crate::streaming::Body;
use crate::transport::error_code;

/// The node's admission state: a permit per call (or tunnel) in flight, and whether it drains.
/// Clones share it.
#[derive(Clone)]
pub struct Admission(Arc<Shared>);

struct Shared {
    permits: Semaphore,
    limit: usize,
    draining: AtomicBool,
    /// Where the number in flight is reported, if anywhere.
    metrics: OnceLock<Arc<Metrics>>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .field("draining", &self.is_draining())
            .finish()
    }
}

/// A permit to serve one call or tunnel; released (and the in-flight gauge updated) on drop.
#[derive(Debug)]
pub struct Permit {
    admission: Admission,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.0.permits.add_permits(1);
        self.admission.report();
    }
}

/// Why [`Admission::admit`] refused a stream; either way it was never served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The node is draining.
    Draining,
    /// The node is serving its limit of calls.
    Overloaded,
}

impl Refusal {
    /// The QUIC error code that resets or stops the refused stream.
    pub fn error_code(self) -> quinn::VarInt {
        match self {
            Refusal::Draining => error_code::SHUTDOWN,
            Refusal::Overloaded => error_code::OVERLOADED,
        }
    }

    /// The status the refused call is answered with (a refusal: retried elsewhere).
    pub fn status(self, limit: usize) -> Status {
        match self {
            Refusal::Draining => Status::refused(Code::Unavailable, "this node is draining"),
            Refusal::Overloaded => Status::refused(
                Code::ResourceExhausted,
                format!("this node is serving its limit of {limit} calls; try another replica"),
            ),
        }
    }
}

impl Admission {
    /// Admission for at most `limit` calls and tunnels at once.
    pub fn new(limit: usize) -> Admission {
        Admission(Arc::new(Shared {
            permits: Semaphore::new(limit),
            limit,
            draining: AtomicBool::new(false),
            metrics: OnceLock::new(),
        }))
    }

    /// The same admission, reporting the number in flight to `metrics`
    /// (`meshrpc_calls_in_flight`). An admission reports to one registry: the first it is
    /// given.
    pub fn reporting_to(self, metrics: Arc<Metrics>) -> Admission {
        let _ = self.0.metrics.set(metrics);
        self
    }

    fn report(&self) {
        if let Some(metrics) = self.0.metrics.get() {
            metrics.set_in_flight(self.in_flight());
        }
    }

    /// A permit to serve one stream (hold it until the stream is done), or why not.
    pub fn admit(&self) -> Result<Permit, Refusal> {
        let permit = self.0.permits.try_acquire();
        // Checked once the permit is held: a drain that began meanwhile has counted it.
        if self.is_draining() {
            return Err(Refusal::Draining);
        }
        // Given back by the `Permit`'s drop, which needs no borrow of the semaphore.
        permit.map_err(|_| Refusal::Overloaded)?.forget();
        self.report();
        Ok(Permit {
            admission: self.clone(),
        })
    }

    /// The limit of calls and tunnels in flight.
    pub fn limit(&self) -> usize {
        self.0.limit
    }

    /// Starts refusing new calls and tunnels.
    pub fn start_draining(&self) {
        self.0.draining.store(true, Ordering::SeqCst);
    }

    /// Whether new calls and tunnels are refused.
    pub fn is_draining(&self) -> bool {
        self.0.draining.load(Ordering::SeqCst)
    }

    /// Calls and tunnels being served right now.
    pub fn in_flight(&self) -> usize {
        self.0.limit - self.0.permits.available_permits()
    }

    /// Waits until nothing is in flight, or `timeout` passes; returns whether all finished.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let all = u32::try_from(self.0.limit).unwrap_or(u32::MAX);
        tokio::time::timeout(timeout, self.0.permits.acquire_many(all))
            .await
            .is_ok()
    }
}

/// Applies [`Admission`] to calls: see [`Admit`].
#[derive(Debug, Clone)]
pub struct AdmitLayer {
    admission: Admission,
}

impl AdmitLayer {
    /// Admits calls under `admission`.
    pub fn new(admission: Admission) -> AdmitLayer {
        AdmitLayer { admission }
    }
}

impl<S> Layer<S> for AdmitLayer {
    type Service = Admit<S>;

    fn layer(&self, inner: S) -> Admit<S> {
        Admit {
            inner,
            admission: self.admission.clone(),
        }
    }
}

/// Refuses calls while the node drains or serves its limit; holds each admitted call's permit
/// until its reply (its last item, for a stream) has been produced.
#[derive(Debug, Clone)]
pub struct Admit<S> {
    inner: S,
    admission: Admission,
}

impl<S> Service<IncomingCall> for Admit<S>
where
    S: Service<IncomingCall, Response = Body, Error = Status>,
{
    type Response = Body;
    type Error = Status;
    type Future = Admitted<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: IncomingCall) -> Self::Future {
        let state = match self.admission.admit() {
            Ok(permit) => AdmittedState::Running {
                inner: self.inner.call(call),
                permit: Some(permit),
            },
            Err(refusal) => AdmittedState::Refused {
                status: Some(Box::new(refusal.status(self.admission.limit()))),
            },
        };
        Admitted { state }
    }
}

pin_project_lite::pin_project! {
    /// The future of an [`Admit`]ted (or refused) call.
    pub struct Admitted<F> {
        #[pin]
        state: AdmittedState<F>,
    }
}

pin_project_lite::pin_project! {
    #[project = AdmittedProj]
    enum AdmittedState<F> {
        Running {
            #[pin]
            inner: F,
            permit: Option<Permit>,
        },
        Refused {
            status: Option<Box<Status>>,
        },
    }
}

impl<F> Future for Admitted<F>
where
    F: Future<Output = Result<Body, Status>>,
{
    type Output = Result<Body, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            AdmittedProj::Refused { status } => Poll::Ready(Err(status.take().map_or_else(
                || Status::internal("a refused call was polled twice"),
                |status| *status,
            ))),
            AdmittedProj::Running { inner, permit } => {
                let outcome = std::task::ready!(inner.poll(cx));
                let permit = permit.take();
                Poll::Ready(match outcome {
                    // The permit lives as long as the stream: the call is in flight until its
                    // last item.
                    Ok(Body::Stream(stream)) => {
                        Ok(Body::Stream(stream.on_end(move |_| drop(permit))))
                    }
                    other => other,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{FutureExt, StreamExt};

    use super::*;
    use crate::server::tests::{call_to, echo_service};

    #[tokio::test]
    async fn a_call_over_the_limit_is_refused_for_another_replica() {
        let admission = Admission::new(1);
        let held = admission.admit().expect("one permit");
        let mut service = AdmitLayer::new(admission.clone()).layer(echo_service());
        let error = service
            .call(call_to("echo"))
            .await
            .expect_err("no permit left");
        assert_eq!(error.code(), Code::ResourceExhausted);
        assert!(error.is_refused());
        drop(held);
        assert!(service.call(call_to("echo")).await.is_ok());
        assert_eq!(admission.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_draining_node_refuses_calls_and_tunnels_alike() {
        let admission = Admission::new(8);
        admission.start_draining();
        assert_eq!(admission.admit().err(), Some(Refusal::Draining));
        let mut service = AdmitLayer::new(admission).layer(echo_service());
        let error = service.call(call_to("echo")).await.expect_err("draining");
        assert_eq!(error.code(), Code::Unavailable);
        assert!(error.is_refused());
    }

    #[tokio::test]
    async fn a_streaming_reply_holds_its_permit_until_its_last_item() {
        let admission = Admission::new(4);
        let mut service = AdmitLayer::new(admission.clone()).layer(echo_service());
        let reply = service.call(call_to("stream")).now_or_never();
        let Some(Ok(Body::Stream(mut items))) = reply else {
            panic!("a stream reply");
        };
        assert_eq!(admission.in_flight(), 1);
        while items.next().await.is_some() {}
        assert_eq!(admission.in_flight(), 0);
    }
}
