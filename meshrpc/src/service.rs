//! The two traits generated code implements: [`Dispatch`] for servers and [`ServiceClient`] for
//! clients. Users rarely name them; `meshrpc-build` writes the implementations.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use crate::channel::Channel;
use crate::spec::{MethodSpec, ServiceSpec};
use crate::status::Status;
use crate::streaming::{Body, Streaming};

/// A boxed, sendable future, as returned by [`Dispatch::dispatch`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A published service: decodes a request for one of its methods, runs the user's
/// implementation and encodes the response. Generated servers (`GreeterServer<T>`) implement
/// it; `Node::publish` takes any value that does.
pub trait Dispatch: Send + Sync + 'static {
    /// The service's static description.
    fn spec(&self) -> &'static ServiceSpec;

    /// Runs `method` (one of [`Dispatch::spec`]'s methods, resolved by the runtime) on an
    /// encoded request: its first message and, for methods with a client stream, the stream of
    /// encoded items that follows it. Answers with one encoded message, or with a stream of
    /// encoded items for methods with a server stream. The call's deadline and metadata are
    /// available through [`CallContext::current`](crate::CallContext::current).
    fn dispatch(
        &self,
        method: &'static MethodSpec,
        request: Bytes,
        stream: Option<Streaming<Bytes>>,
    ) -> BoxFuture<'static, Result<Body, Status>>;
}

/// A generated client type, constructible from a [`Channel`]; `Node::client` uses it.
pub trait ServiceClient: Sized {
    /// The service the client calls.
    const SPEC: &'static ServiceSpec;

    /// A client that sends its calls through `channel`.
    fn from_channel(channel: Channel) -> Self;
}

/// The future of a call that failed before its handler ran (generated servers answer an
/// undecodable request with it).
pub fn failed(status: Status) -> BoxFuture<'static, Result<Body, Status>> {
    Box::pin(std::future::ready(Err(status)))
}

/// The error generated servers return for a method name they do not know.
pub fn unknown_method(spec: &ServiceSpec, method: &str) -> Status {
    let known: Vec<&str> = spec.method_names().collect();
    Status::unimplemented(format!(
        "service `{}` has no method `{method}`; its methods are: {}",
        spec.name,
        known.join(", ")
    ))
}
