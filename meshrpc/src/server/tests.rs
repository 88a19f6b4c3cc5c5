//! A fake published service for the unit tests of the server stack's layers.

use std::time::Duration;

use bytes::Bytes;

use super::IncomingCall;
use super::call::Caller;
use super::route::Route;
use crate::context::CallContext;
use crate::metadata::Metadata;
use crate::service::{BoxFuture, Dispatch};
use crate::spec::{MethodKind, MethodSpec, ServiceSpec};
use crate::status::Status;
use crate::streaming::{Body, Streaming};

const fn method(name: &'static str, kind: MethodKind, index: usize) -> MethodSpec {
    MethodSpec {
        service: "test",
        name,
        doc: "",
        idempotent: false,
        timeout: None,
        attempt_timeout: None,
        hedge_after: None,
        params: &[],
        result_field: "result",
        result_type: "()",
        kind,
        index,
    }
}

/// The fake service: `echo` answers its request, `fail` answers `not_found`, `sleep` never
/// answers, `panic` panics, `stream` streams three items, `forever` streams until dropped and
/// `panic_stream` panics after one item.
pub(crate) static TEST_SPEC: ServiceSpec = ServiceSpec {
    name: "test",
    doc: "",
    methods: &[
        method("echo", MethodKind::Unary, 0),
        method("fail", MethodKind::Unary, 1),
        method("sleep", MethodKind::Unary, 2),
        method("panic", MethodKind::Unary, 3),
        method("stream", MethodKind::ServerStreaming, 4),
        method("forever", MethodKind::ServerStreaming, 5),
        method("panic_stream", MethodKind::ServerStreaming, 6),
    ],
    schema_hash: 1,
    manifest: "",
    descriptor: "{}",
    use_schemas: &[],
};

struct Fake;

impl Dispatch for Fake {
    fn spec(&self) -> &'static ServiceSpec {
        &TEST_SPEC
    }

    fn dispatch(
        &self,
        method: &'static MethodSpec,
        request: Bytes,
        _stream: Option<Streaming<Bytes>>,
    ) -> BoxFuture<'static, Result<Body, Status>> {
        Box::pin(async move {
            match method.name {
                "echo" => Ok(Body::Message(request)),
                "fail" => Err(Status::not_found("nothing here")),
                "sleep" => std::future::pending().await,
                "panic" => panic!("the handler panics"),
                "stream" => Ok(Body::Stream(Streaming::iter([
                    Bytes::from_static(b"1"),
                    Bytes::from_static(b"2"),
                    Bytes::from_static(b"3"),
                ]))),
                "forever" => Ok(Body::Stream(Streaming::new(futures_util::stream::unfold(
                    (),
                    |()| async {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        Some((Ok(Bytes::from_static(b"tick")), ()))
                    },
                )))),
                "panic_stream" => {
                    let mut sent = false;
                    Ok(Body::Stream(Streaming::new(futures_util::stream::poll_fn(
                        move |_| {
                            assert!(!sent, "the producer panics on its second item");
                            sent = true;
                            std::task::Poll::Ready(Some(Ok(Bytes::from_static(b"one"))))
                        },
                    ))))
                }
                other => Err(Status::unimplemented(other.to_owned())),
            }
        })
    }
}

/// The bottom of a stack serving the fake service.
pub(crate) fn echo_service() -> Route {
    Route::new(&[std::sync::Arc::new(Fake)])
}

/// A call to `test.<name>` with no deadline.
pub(crate) fn call_to(name: &str) -> IncomingCall {
    let method = TEST_SPEC
        .method(name)
        .expect("a method of the fake service");
    IncomingCall {
        method,
        context: CallContext::new("test", method.name, None, Metadata::new()),
        caller: std::sync::Arc::new(Caller {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 9)),
            identity: None,
        }),
        request: Bytes::from_static(b"\x80"),
        stream: None,
    }
}

/// The state every call keeps while its handler runs is what a held call costs: the server
/// stack's future stays within this many bytes, so it cannot creep back. It is 248, and 256
/// with the `otel` feature (the span's pointer). It was 584 before its refusal paths were
/// boxed, and 320 while the call's context held its service and method as two strings and
/// the access log's record a copy of the caller's address and an `Instant`.
const STACK_FUTURE_BUDGET: usize = 256;

#[test]
fn the_server_stacks_future_stays_small() {
    use tower::Service;
    let admission = super::Admission::new(4);
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let mut stack = tower::ServiceBuilder::new()
        .layer(super::admission::AdmitLayer::new(admission))
        .layer(super::observe::ObserveLayer::new(&[&TEST_SPEC], metrics))
        .layer(super::deadline::DeadlineLayer)
        .layer(super::catch_panic::CatchPanicLayer)
        .service(super::route::Handlers::Direct(echo_service()));
    let future = stack.call(call_to("sleep"));
    let size = std::mem::size_of_val(&future);
    assert!(
        size <= STACK_FUTURE_BUDGET,
        "the server stack's future grew to {size} bytes (budget {STACK_FUTURE_BUDGET})"
    );
}
