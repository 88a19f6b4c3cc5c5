//! [`CatchPanic`]: a handler that panics answers `internal`, and the node keeps serving. A
//! server stream whose producer panics ends with `internal`, never with a clean end.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower::{Layer, Service};
use tracing::warn;

use super::IncomingCall;
use crate::spec::MethodSpec;
use crate::status::Status;
use crate::streaming::{Body, Streaming};

/// Catches panics of handlers: see [`CatchPanic`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CatchPanicLayer;

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;

    fn layer(&self, inner: S) -> CatchPanic<S> {
        CatchPanic { inner }
    }
}

/// Turns a panic of the handler (while it is called, while its future runs, or while its
/// reply stream produces items) into an `internal` status for the caller.
#[derive(Debug, Clone)]
pub struct CatchPanic<S> {
    inner: S,
}

impl<S> Service<IncomingCall> for CatchPanic<S>
where
    S: Service<IncomingCall, Response = Body, Error = Status>,
{
    type Response = Body;
    type Error = Status;
    type Future = Caught<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: IncomingCall) -> Self::Future {
        let method = call.method;
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(call))) {
            Ok(inner) => Caught {
                inner: Some(inner),
                method,
            },
            Err(_) => {
                warn!(method = %method.name, "handler panicked");
                Caught {
                    inner: None,
                    method,
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of a call under [`CatchPanic`].
    pub struct Caught<F> {
        #[pin]
        inner: Option<F>,
        method: &'static MethodSpec,
    }
}

impl<F> Future for Caught<F>
where
    F: Future<Output = Result<Body, Status>>,
{
    type Output = Result<Body, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let method = this.method.name;
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Err(panicked()));
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(Ok(Body::Stream(stream)))) => {
                Poll::Ready(Ok(Body::Stream(catch_stream_panics(stream, method))))
            }
            Ok(poll) => poll,
            Err(_) => {
                warn!(%method, "handler panicked");
                Poll::Ready(Err(panicked()))
            }
        }
    }
}

fn panicked() -> Status {
    Status::internal("the handler panicked")
}

/// `stream`, ending with `internal` if producing an item panics.
fn catch_stream_panics(
    stream: Streaming<bytes::Bytes>,
    method: &'static str,
) -> Streaming<bytes::Bytes> {
    stream.catch_panics(method)
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::server::tests::{call_to, echo_service};
    use crate::status::Code;

    #[tokio::test]
    async fn a_panicking_handler_answers_internal() {
        let mut service = CatchPanicLayer.layer(echo_service());
        let error = service.call(call_to("panic")).await.expect_err("panicked");
        assert_eq!(error.code(), Code::Internal);
        assert!(service.call(call_to("echo")).await.is_ok(), "still serving");
    }

    #[tokio::test]
    async fn a_stream_whose_producer_panics_ends_with_internal_not_a_finish() {
        let mut service = CatchPanicLayer.layer(echo_service());
        let Ok(Body::Stream(mut items)) = service.call(call_to("panic_stream")).await else {
            panic!("a stream");
        };
        assert!(matches!(items.next().await, Some(Ok(_))));
        let end = items
            .next()
            .await
            .expect("not a clean end")
            .expect_err("an error");
        assert_eq!(end.code(), Code::Internal);
        assert!(items.next().await.is_none());
    }
}
