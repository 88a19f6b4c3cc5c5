//! Answering a call that was read: run it through the server stack until the handler answers
//! (or the caller stops the stream, or the node ends its calls), then write the reply.
//!
//! A held call's memory is mostly its task, so the answering future is built to be small: the
//! stack's future is created before the task waits on anything (not kept beside the call it was
//! made from), the handler's watch ([`Handling`]) and the reply's writing
//! ([`deliver`]) are two stages that share the same memory, and what only a streaming call or
//! a draining node needs is boxed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use futures_util::future::{Either, OptionFuture};
use quinn::SendStream;
use tower::{Service, ServiceExt};
use tracing::debug;

use super::connection::StreamServed;
use super::reply::{Written, write_reply, write_stream};
use super::{IncomingCall, Server};
use crate::spec::{MethodKind, MethodSpec};
use crate::status::Status;
use crate::streaming::Body;

/// The answer to `call`, to be run as (the rest of) its stream's task.
pub(super) fn answer(
    call: IncomingCall,
    send: SendStream,
    served: StreamServed,
) -> impl Future<Output = ()> + Send + 'static {
    let answering = AnsweringCall::start(served, call.method);
    let mut stack = answering.server().stack.clone();
    // The stack is ready at once unless a layer a user added holds calls back: only then does
    // the call wait (boxed) before its handler starts.
    match stack.ready().now_or_never() {
        Some(Ok(ready)) => Either::Left(handle_then_deliver(ready.call(call), send, answering)),
        Some(Err(_)) => Either::Right(Either::Left(std::future::ready(()))),
        None => Either::Right(Either::Right(Box::pin(async move {
            if let Ok(ready) = stack.ready().await {
                handle_then_deliver(ready.call(call), send, answering).await;
            }
        }))),
    }
}

/// The two stages of answering, in one piece of memory: [`Handling`] the stack's future
/// `handler`, then [`deliver`]ing what it answered.
fn handle_then_deliver<F>(
    handler: F,
    send: SendStream,
    answering: AnsweringCall,
) -> impl Future<Output = ()> + Send
where
    F: Future<Output = Result<Body, Status>> + Send,
{
    Handling::new(handler, send, answering, SendStream::stopped).then(|handled| {
        OptionFuture::from(
            handled.map(|(outcome, send, answering)| deliver(outcome, send, answering)),
        )
        .map(drop)
    })
}

/// Writes the reply (a message, a status, or a stream item by item) and, while draining,
/// waits until the peer has it.
#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` would move its arguments once more into its body: twice their size in the future"
)]
fn deliver(
    outcome: Result<Body, Status>,
    mut send: SendStream,
    answering: AnsweringCall,
) -> impl Future<Output = ()> + Send {
    async move {
        let server = answering.server();
        let method = answering.method;
        let written = match outcome {
            Ok(Body::Stream(items)) => {
                let target = format!("{}.{}", method.service, method.name);
                let ending = server.calls_ended();
                // Boxed: a unary call's task does not carry a stream writer's state.
                let (written, finished) = Box::pin(write_stream(
                    send,
                    items,
                    server.limits.max_message_size,
                    &target,
                    ending,
                ))
                .await;
                match finished {
                    Some(finished) => send = finished,
                    None => return,
                }
                written
            }
            outcome => write_reply(&mut send, outcome).await,
        };
        if written == Written::Finished && server.is_draining() {
            // Boxed: only a draining node waits for delivery.
            Box::pin(server.await_delivery(&send)).await;
        }
    }
}

/// One call being answered: the server counts it (a drain waits for it) until this is
/// dropped, and its stream's guard (which leads to the server) goes with it.
struct AnsweringCall {
    method: &'static MethodSpec,
    served: StreamServed,
}

impl AnsweringCall {
    fn start(served: StreamServed, method: &'static MethodSpec) -> AnsweringCall {
        served.server().answering.start();
        AnsweringCall { method, served }
    }

    fn server(&self) -> &Arc<Server> {
        self.served.server()
    }
}

impl Drop for AnsweringCall {
    fn drop(&mut self) {
        self.server().answering.finish();
    }
}

pin_project_lite::pin_project! {
    /// Polls a call's handler (the server stack's future) until it answers, or the caller stops
    /// the stream (the handler is then dropped: `None`), or, for a streaming call, the node
    /// ends its calls after the drain timeout (`unavailable`). A unary call is left to the
    /// connection's close, so a held unary call carries no watch of the node's end.
    struct Handling<F, W, C> {
        #[pin]
        handler: F,
        // Made when the handler first waits: most answer on their first poll and need no
        // watch (which costs a registration with the connection).
        #[pin]
        watching: Watching<C>,
        watch: W,
        call: Option<(SendStream, AnsweringCall)>,
    }
}

pin_project_lite::pin_project! {
    /// What a waiting handler's call watches.
    #[project = WatchingProj]
    enum Watching<C> {
        /// Nothing yet: the handler has not waited.
        Nothing,
        /// A unary call: the caller stopping the stream.
        Caller {
            #[pin]
            stopped: C,
        },
        /// A streaming call: the caller stopping the stream, and the node ending its calls.
        /// Boxed: a held unary call's state is not made larger by what only these need.
        CallerAndNode {
            stopped: Pin<Box<C>>,
            ended: Pin<Box<dyn Future<Output = ()> + Send>>,
        },
    }
}

impl<F, W, C> Handling<F, W, C>
where
    W: Fn(&SendStream) -> C,
{
    /// Watches `handler`, the stack's future for the call `answering` on `send`; `watch`
    /// makes the future that resolves when the caller stops the stream.
    fn new(handler: F, send: SendStream, answering: AnsweringCall, watch: W) -> Self {
        Handling {
            handler,
            watching: Watching::Nothing,
            watch,
            call: Some((send, answering)),
        }
    }
}

impl<F, W, C> Future for Handling<F, W, C>
where
    F: Future<Output = Result<Body, Status>>,
    W: Fn(&SendStream) -> C,
    C: Future,
{
    type Output = Option<(Result<Body, Status>, SendStream, AnsweringCall)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some((send, answering)) = this.call.as_ref() else {
            return Poll::Pending;
        };
        let method = answering.method;
        if let Poll::Ready(outcome) = this.handler.poll(cx) {
            let (send, answering) = this.call.take().expect("checked above");
            return Poll::Ready(Some((outcome, send, answering)));
        }
        if let WatchingProj::Nothing = this.watching.as_mut().project() {
            let stopped = (this.watch)(send);
            this.watching.set(if method.kind == MethodKind::Unary {
                Watching::Caller { stopped }
            } else {
                Watching::CallerAndNode {
                    stopped: Box::pin(stopped),
                    ended: Box::pin(answering.server().calls_ended()),
                }
            });
        }
        let stopped = match this.watching.project() {
            WatchingProj::Nothing => false,
            WatchingProj::Caller { stopped } => stopped.poll(cx).is_ready(),
            WatchingProj::CallerAndNode { stopped, ended } => {
                if ended.as_mut().poll(cx).is_ready() {
                    let (send, answering) = this.call.take().expect("checked above");
                    let status = Status::unavailable(format!(
                        "this node shut down before `{}.{}` finished",
                        method.service, method.name
                    ));
                    return Poll::Ready(Some((Err(status), send, answering)));
                }
                stopped.as_mut().poll(cx).is_ready()
            }
        };
        if stopped {
            debug!(method = %method.name, "caller cancelled; handler dropped");
            this.call.take();
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}
