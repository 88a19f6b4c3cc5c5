//! An in-process transport: a [`Channel`] that calls a [`Dispatch`] directly, without a network.
//!
//! Useful in tests, and in a monolith that is being split: the same generated client talks to a
//! server in the same process today and to a remote one tomorrow.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower::Service;

use crate::channel::{Call, Channel, OutgoingStream};
use crate::context::CallContext;
use crate::service::{BoxFuture, Dispatch, unknown_method};
use crate::status::{Code, Status};
use crate::streaming::Body;

/// A tower service that runs calls on an in-process [`Dispatch`] (see [`Channel::local`]).
#[derive(Clone)]
pub struct LocalService {
    server: Arc<dyn Dispatch>,
}

impl std::fmt::Debug for LocalService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalService")
            .field("service", &self.server.spec().name)
            .finish()
    }
}

impl Service<Call> for LocalService {
    type Response = Body;
    type Error = Status;
    type Future = BoxFuture<'static, Result<Body, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let spec = self.server.spec();
        if call.service != spec.name {
            let status = Status::refused(
                Code::Unimplemented,
                format!(
                    "no service `{}` here; this channel serves `{}`",
                    call.service, spec.name
                ),
            );
            return Box::pin(async move { Err(status) });
        }
        let Some(method) = spec.method(&call.method) else {
            let status = unknown_method(spec, &call.method);
            return Box::pin(async move { Err(status) });
        };
        let context = CallContext::for_method(method, call.deadline, call.metadata);
        let stream = call.stream.as_ref().and_then(OutgoingStream::take);
        let response = self.server.dispatch(method, call.payload, stream);
        let stream_context = context.clone();
        Box::pin(async move {
            match context.scope(response).await? {
                Body::Stream(stream) => Ok(Body::Stream(stream.in_context(stream_context))),
                message => Ok(message),
            }
        })
    }
}

impl Channel {
    /// A channel whose calls run on `server` in this process.
    ///
    /// ```ignore
    /// let client = GreeterClient::new(Channel::local(GreeterServer::new(MyGreeter)));
    /// ```
    pub fn local(server: impl Dispatch) -> Channel {
        Channel::new(LocalService {
            server: Arc::new(server),
        })
    }
}
