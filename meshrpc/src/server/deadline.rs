//! [`Deadline`]: a call never runs past its deadline. The handler is cut off when it passes,
//! and so is a server stream: its consumer then gets `deadline_exceeded`, never a clean end.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use super::IncomingCall;
use crate::spec::MethodSpec;
use crate::status::Status;
use crate::streaming::{Body, until_deadline};

/// Applies each call's deadline: see [`Deadline`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

/// Answers `deadline_exceeded` (naming the method) when a call's deadline passes before its
/// handler answered; cuts a server stream off at the deadline the same way.
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
}

impl<S> Service<IncomingCall> for Deadline<S>
where
    S: Service<IncomingCall, Response = Body, Error = Status>,
{
    type Response = Body;
    type Error = Status;
    type Future = UntilDeadline<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: IncomingCall) -> Self::Future {
        let deadline = call.context.deadline();
        let method = call.method;
        UntilDeadline {
            inner: self.inner.call(call),
            timer: match deadline {
                Some(deadline) => Timer::Unarmed { deadline },
                None => Timer::None,
            },
            method,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of a call under [`Deadline`].
    pub struct UntilDeadline<F> {
        #[pin]
        inner: F,
        #[pin]
        timer: Timer,
        method: &'static MethodSpec,
    }
}

pin_project_lite::pin_project! {
    /// A call's deadline timer. It is armed on the first poll that finds the handler pending,
    /// so handlers that answer at once cost no timer.
    #[project = TimerProj]
    enum Timer {
        /// The call has no deadline.
        None,
        /// The call has a deadline, and no timer yet.
        Unarmed { deadline: Instant },
        /// The timer runs.
        Armed {
            #[pin]
            sleep: Sleep,
        },
    }
}

impl Timer {
    fn deadline(&self) -> Option<Instant> {
        match self {
            Timer::None => None,
            Timer::Unarmed { deadline } => Some(*deadline),
            Timer::Armed { sleep } => Some(sleep.deadline()),
        }
    }
}

impl<F> Future for UntilDeadline<F>
where
    F: Future<Output = Result<Body, Status>>,
{
    type Output = Result<Body, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let method = *this.method;
        if let Poll::Ready(outcome) = this.inner.poll(cx) {
            return Poll::Ready(match (outcome, this.timer.deadline()) {
                (Ok(Body::Stream(stream)), Some(deadline)) => Ok(Body::Stream(until_deadline(
                    stream,
                    deadline,
                    Status::deadline_passed(method.service, method.name),
                ))),
                (outcome, _) => outcome,
            });
        }
        if let TimerProj::Unarmed { deadline } = this.timer.as_mut().project() {
            let sleep = tokio::time::sleep_until(*deadline);
            this.timer.set(Timer::Armed { sleep });
        }
        match this.timer.project() {
            TimerProj::Armed { sleep } => sleep
                .poll(cx)
                .map(|()| Err(Status::deadline_passed(method.service, method.name))),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;

    use super::*;
    use crate::server::tests::{call_to, echo_service};
    use crate::status::Code;

    #[tokio::test(start_paused = true)]
    async fn a_handler_past_its_deadline_is_cut_off_with_deadline_exceeded() {
        let mut service = DeadlineLayer.layer(echo_service());
        let mut call = call_to("sleep");
        call.context = call
            .context
            .with_deadline(Some(Instant::now() + Duration::from_millis(20)));
        let started = Instant::now();
        let error = service.call(call).await.expect_err("cut off");
        assert_eq!(error.code(), Code::DeadlineExceeded);
        assert!(error.message().contains("`test.sleep`"), "{error}");
        assert_eq!(started.elapsed(), Duration::from_millis(20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_stream_past_its_deadline_ends_with_an_error_not_a_finish() {
        let mut service = DeadlineLayer.layer(echo_service());
        let mut call = call_to("forever");
        call.context = call
            .context
            .with_deadline(Some(Instant::now() + Duration::from_millis(50)));
        let Ok(Body::Stream(mut items)) = service.call(call).await else {
            panic!("a stream");
        };
        let mut seen = 0;
        let end = loop {
            match items.next().await {
                Some(Ok(_)) => seen += 1,
                Some(Err(status)) => break status,
                None => panic!("a stream cut by its deadline must not end cleanly"),
            }
        };
        assert!(seen > 0);
        assert_eq!(end.code(), Code::DeadlineExceeded);
    }
}
