//! The caller's side of a call: a [`Channel`] turns a typed request into a [`Call`] and sends it
//! through a tower stack (deadline, retries, balancing, transport) that ends at a QUIC stream.
//!
//! Generated clients hold a `Channel` and call [`Channel::unary`]; the gateway, which knows
//! services only by name, builds [`Call`]s itself and uses [`Channel::call`].

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

use crate::codec;
use crate::context::CallContext;
use crate::metadata::Metadata;
use crate::options::{CallOptions, DEFAULT_TIMEOUT};
use crate::spec::{MethodKind, MethodSpec};
use crate::status::Status;
use crate::streaming::{Body, Streaming};

/// One call on its way out: where it goes, by when, and its encoded request.
#[derive(Debug, Clone)]
pub struct Call {
    /// The service's name.
    pub service: Cow<'static, str>,
    /// The method's name.
    pub method: Cow<'static, str>,
    /// Whether the method may run more than once (retries are allowed after failures).
    pub idempotent: bool,
    /// When the caller stops waiting.
    pub deadline: Option<Instant>,
    /// Keeps calls with the same key on the same replica.
    pub sticky_key: Option<String>,
    /// Metadata sent in the call header.
    pub metadata: Metadata,
    /// The MessagePack-encoded request map (for a method with a client stream: its other
    /// parameters, the first message).
    pub payload: Bytes,
    /// Whether requests, replies or both are streams.
    pub kind: MethodKind,
    /// The encoded items of a client stream, sent after `payload`.
    pub stream: Option<OutgoingStream>,
    /// How long one attempt of an idempotent unary call may go unanswered before it is sent
    /// to another replica (the manifest's `attempt_timeout`); `None`: adaptive.
    pub attempt_timeout: Option<std::time::Duration>,
    /// When an unanswered idempotent unary call is also sent to a second replica (the
    /// manifest's `hedge_after`); `None`: the service's observed p95.
    pub hedge_after: Option<std::time::Duration>,
    /// Replicas earlier attempts of this call went to (recorded by the retry policy).
    pub(crate) tried: Tried,
}

/// The replicas earlier attempts of a call went to, so a balancer can try another one. The
/// first is kept inline: a call answered at its first attempt allocates nothing for it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tried(smallvec::SmallVec<[std::net::SocketAddr; 1]>);

impl Tried {
    pub(crate) fn push(&mut self, addr: std::net::SocketAddr) {
        self.0.push(addr);
    }

    pub(crate) fn contains(&self, addr: std::net::SocketAddr) -> bool {
        self.0.contains(&addr)
    }
}

impl Call {
    /// A call to `service.method` with this payload and no deadline, key or metadata.
    pub fn new(
        service: impl Into<Cow<'static, str>>,
        method: impl Into<Cow<'static, str>>,
        payload: Bytes,
    ) -> Call {
        Call {
            service: service.into(),
            method: method.into(),
            idempotent: false,
            deadline: None,
            sticky_key: None,
            metadata: Metadata::new(),
            payload,
            kind: MethodKind::Unary,
            stream: None,
            attempt_timeout: None,
            hedge_after: None,
            tried: Tried::default(),
        }
    }

    /// Whether the call can still be sent again: it has no client stream, or none of the
    /// stream's items has been taken yet.
    pub fn is_replayable(&self) -> bool {
        self.stream.as_ref().is_none_or(|stream| !stream.is_taken())
    }

    /// `service.method`, for messages.
    pub fn target(&self) -> String {
        format!("{}.{}", self.service, self.method)
    }
}

/// The encoded items of a client stream, shared by the attempts of one call: the attempt that
/// sends them takes them, and from then on the call cannot be replayed.
#[derive(Clone)]
pub struct OutgoingStream {
    items: Arc<Mutex<Option<Streaming<Bytes>>>>,
}

impl fmt::Debug for OutgoingStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutgoingStream")
            .field("taken", &self.is_taken())
            .finish()
    }
}

impl OutgoingStream {
    /// A handle on `items`.
    pub fn new(items: Streaming<Bytes>) -> OutgoingStream {
        OutgoingStream {
            items: Arc::new(Mutex::new(Some(items))),
        }
    }

    /// Takes the items, once; `None` if an attempt already took them.
    pub fn take(&self) -> Option<Streaming<Bytes>> {
        crate::lock(&self.items).take()
    }

    /// Whether an attempt took the items.
    pub fn is_taken(&self) -> bool {
        crate::lock(&self.items).is_none()
    }
}

/// The tower service at the bottom of every channel, boxed.
pub type CallService = BoxCloneSyncService<Call, Body, Status>;

/// A handle that sends calls; cheap to clone and share between tasks (cloning one copies a
/// pointer: clients are cloned per request by web frameworks, so a clone must not allocate).
#[derive(Clone)]
pub struct Channel {
    service: Arc<dyn SendCall>,
}

/// The channel's service behind one shared pointer: each call clones the service itself (a
/// few reference counts for the runtime's stacks) rather than a boxed copy of it.
trait SendCall: Send + Sync {
    fn send(&self, call: Call) -> crate::service::BoxFuture<'static, Result<Body, Status>>;
}

struct Shared<S>(S);

impl<S> SendCall for Shared<S>
where
    S: Service<Call, Response = Body, Error = Status> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    fn send(&self, call: Call) -> crate::service::BoxFuture<'static, Result<Body, Status>> {
        let mut service = self.0.clone();
        // Services that are always ready (the transport's, the balancer's) are called at once;
        // when their future is boxed already (as theirs are), it is returned as it is rather
        // than boxed again inside a `oneshot`.
        let mut probe = Context::from_waker(std::task::Waker::noop());
        match service.poll_ready(&mut probe) {
            Poll::Ready(Ok(())) => boxed_once(service.call(call)),
            Poll::Ready(Err(status)) => Box::pin(std::future::ready(Err(status))),
            Poll::Pending => Box::pin(service.oneshot(call)),
        }
    }
}

/// `future` as a [`BoxFuture`](crate::service::BoxFuture), boxed only if it is not one
/// already.
fn boxed_once<F>(future: F) -> crate::service::BoxFuture<'static, Result<Body, Status>>
where
    F: std::future::Future<Output = Result<Body, Status>> + Send + 'static,
{
    let mut slot = Some(future);
    let any: &mut dyn std::any::Any = &mut slot;
    if let Some(boxed) = any
        .downcast_mut::<Option<crate::service::BoxFuture<'static, Result<Body, Status>>>>()
        .and_then(Option::take)
    {
        return boxed;
    }
    match slot {
        Some(future) => Box::pin(future),
        // Taken only when it was a boxed future, which returned above.
        None => Box::pin(std::future::ready(Err(Status::internal(
            "a call's future was lost",
        )))),
    }
}

/// A [`Channel`] as a tower service (what [`Channel::service`] returns).
#[derive(Clone)]
struct ChannelService(Arc<dyn SendCall>);

impl Service<Call> for ChannelService {
    type Response = Body;
    type Error = Status;
    type Future = crate::service::BoxFuture<'static, Result<Body, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        self.0.send(call)
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel").finish_non_exhaustive()
    }
}

impl Channel {
    /// A channel over any tower service that answers [`Call`]s. Use this to add your own
    /// middleware below the generated clients, or to serve calls in-process in tests.
    ///
    /// Every call clones `service` and drives the clone with `oneshot`, so its `poll_ready`
    /// is honoured; make its clones cheap (share state behind `Arc`s), as tower services
    /// usually are.
    pub fn new<S>(service: S) -> Channel
    where
        S: Service<Call, Response = Body, Error = Status> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        Channel {
            service: Arc::new(Shared(service)),
        }
    }

    /// The tower service calls go through (no deadline applied).
    pub(crate) fn service(&self) -> CallService {
        BoxCloneSyncService::new(ChannelService(self.service.clone()))
    }

    /// Sends a prepared unary call and waits for its encoded response, at most until its
    /// deadline.
    ///
    /// Not an `async fn`, which would hold the call once more in its body (and `send`'s
    /// future within it): the call is held once, by [`Channel::send`].
    pub fn call(&self, call: Call) -> impl Future<Output = Result<Bytes, Status>> + Send + '_ {
        let target = (call.service.clone(), call.method.clone());
        futures_util::FutureExt::map(self.send(call), move |sent| match sent? {
            Body::Message(bytes) => Ok(bytes),
            stream @ Body::Stream(_) => stream.into_message(&format!("{}.{}", target.0, target.1)),
        })
    }

    /// Sends a prepared call of any kind and waits for its reply: one encoded message, or
    /// (for a method with a server stream) the stream of encoded items, returned once the
    /// first item or the final status arrived. The deadline bounds the whole call, the
    /// stream included.
    #[allow(
        clippy::manual_async_fn,
        reason = "an `async fn` would move the call once more into its body: twice its size in the future"
    )]
    pub fn send(&self, call: Call) -> impl Future<Output = Result<Body, Status>> + Send + '_ {
        async move {
            let deadline = call.deadline;
            // Cheap clones (borrowed names, almost always), kept for the timeout message.
            let (service_name, method_name) = (call.service.clone(), call.method.clone());
            let response = self.service.send(call);
            let Some(deadline) = deadline else {
                return response.await;
            };
            match tokio::time::timeout_at(deadline, response).await {
                Ok(Ok(Body::Stream(stream))) => Ok(Body::Stream(crate::streaming::until_deadline(
                    stream,
                    deadline,
                    Status::deadline_passed(&service_name, &method_name),
                ))),
                Ok(result) => result,
                Err(_) => Err(Status::deadline_passed(&service_name, &method_name)),
            }
        }
    }

    /// Calls `method` with a typed request and decodes the typed response. The deadline is
    /// the options' timeout, else the manifest's, else [`DEFAULT_TIMEOUT`], and never later
    /// than the deadline of the call the current task is serving.
    pub async fn unary<Req, Resp>(
        &self,
        method: &'static MethodSpec,
        request: &Req,
        options: &CallOptions,
    ) -> Result<Resp, Status>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let payload = codec::encode(request)?;
        let call = prepare_call(method, payload, options);
        let response = self.call(call).await?;
        codec::decode_response(method.name, &response)
    }

    /// Calls a method with a server stream (`-> Stream<T>`): returns the stream of decoded
    /// items once the first one (or the final status) arrived. Without a timeout in the options
    /// or the manifest the call has no deadline (a watch may run for hours); it still ends when
    /// the stream is dropped.
    pub async fn server_streaming<Req, Item>(
        &self,
        method: &'static MethodSpec,
        request: &Req,
        options: &CallOptions,
    ) -> Result<Streaming<Item>, Status>
    where
        Req: Serialize + ?Sized,
        Item: DeserializeOwned + Send + 'static,
    {
        let payload = codec::encode(request)?;
        let call = prepare_call(method, payload, options);
        let body = self.send(call).await?;
        Ok(decode_items(method, body))
    }

    /// Calls a streaming method with its items already encoded: sends the first message and
    /// then `items` (for a method with a client stream), and returns the reply as it arrives
    /// (one encoded message, or the stream of encoded items). The typed methods above and
    /// generated clients are built on this.
    #[doc(hidden)]
    pub async fn streaming_encoded<Req>(
        &self,
        method: &'static MethodSpec,
        request: &Req,
        items: Option<Streaming<Bytes>>,
        options: &CallOptions,
    ) -> Result<Body, Status>
    where
        Req: Serialize + ?Sized,
    {
        let payload = codec::encode(request)?;
        let mut call = prepare_call(method, payload, options);
        call.stream = items.map(OutgoingStream::new);
        self.send(call).await
    }

    /// Calls a method with a client stream and one reply (`(items: Stream<T>) -> R`): sends
    /// the first message, then each item of `items` as it comes; an `Err` from `items` aborts
    /// the call (the callee sees the error, never a clean end).
    pub async fn client_streaming<Req, Item, Resp>(
        &self,
        method: &'static MethodSpec,
        request: &Req,
        items: Streaming<Item>,
        options: &CallOptions,
    ) -> Result<Resp, Status>
    where
        Req: Serialize + ?Sized,
        Item: Serialize + Send + 'static,
        Resp: DeserializeOwned,
    {
        let payload = codec::encode(request)?;
        let mut call = prepare_call(method, payload, options);
        call.stream = Some(OutgoingStream::new(encode_items(items)));
        let response = self.call(call).await?;
        codec::decode_response(method.name, &response)
    }

    /// Calls a method with streams both ways (`(items: Stream<T>) -> Stream<U>`): sends the
    /// first message and then the items of `items` while the returned stream yields the
    /// callee's items. Returns as soon as the call is under way.
    pub async fn bidi_streaming<Req, In, Out>(
        &self,
        method: &'static MethodSpec,
        request: &Req,
        items: Streaming<In>,
        options: &CallOptions,
    ) -> Result<Streaming<Out>, Status>
    where
        Req: Serialize + ?Sized,
        In: Serialize + Send + 'static,
        Out: DeserializeOwned + Send + 'static,
    {
        let payload = codec::encode(request)?;
        let mut call = prepare_call(method, payload, options);
        call.stream = Some(OutgoingStream::new(encode_items(items)));
        let body = self.send(call).await?;
        Ok(decode_items(method, body))
    }
}

/// Encodes each item of a client stream; an item that cannot be encoded aborts the stream.
fn encode_items<Item: Serialize + Send + 'static>(items: Streaming<Item>) -> Streaming<Bytes> {
    crate::streaming::encoded(items, |item, out| codec::encode_into(&item, out))
}

/// Decodes each item of a server stream; an undecodable item ends the stream with its error.
fn decode_items<Item: DeserializeOwned + Send + 'static>(
    method: &'static MethodSpec,
    body: Body,
) -> Streaming<Item> {
    body.into_stream()
        .try_map(move |bytes| codec::decode_item(method.name, &bytes))
}

/// Builds the [`Call`] for a generated method: deadline, inherited trace, sticky key.
fn prepare_call(method: &'static MethodSpec, payload: Bytes, options: &CallOptions) -> Call {
    // Streaming calls have no default deadline: a watch may run for hours.
    let timeout =
        options
            .get_timeout()
            .or(method.timeout)
            .or(if method.kind == MethodKind::Unary {
                Some(DEFAULT_TIMEOUT)
            } else {
                None
            });
    let mut deadline = timeout.map(|timeout| Instant::now() + timeout);
    let mut metadata = options.get_metadata().clone();
    CallContext::with_current(|parent| {
        if let Some(inherited) = parent.deadline() {
            deadline = Some(deadline.map_or(inherited, |own| own.min(inherited)));
        }
        for (key, value) in parent.metadata().iter() {
            if metadata.get(key).is_none() && is_propagated(key) {
                metadata.insert(key, value);
            }
        }
    });
    Call {
        service: Cow::Borrowed(method.service),
        method: Cow::Borrowed(method.name),
        idempotent: method.idempotent,
        deadline,
        sticky_key: options.get_sticky_key().map(str::to_owned),
        metadata,
        payload,
        kind: method.kind,
        stream: None,
        attempt_timeout: method.attempt_timeout,
        hedge_after: method.hedge_after,
        tried: Tried::default(),
    }
}

/// Metadata keys that nested calls inherit from the call being served.
fn is_propagated(key: &str) -> bool {
    key.eq_ignore_ascii_case("traceparent") || key.eq_ignore_ascii_case("tracestate")
}

/// A tower service that answers every call with the same status; the channel of a client
/// that has nowhere to send its calls.
#[derive(Debug, Clone)]
pub struct Unroutable {
    status: Status,
}

impl Unroutable {
    /// Answers every call with `status`.
    pub fn new(status: Status) -> Unroutable {
        Unroutable { status }
    }
}

impl Service<Call> for Unroutable {
    type Response = Body;
    type Error = Status;
    type Future = std::future::Ready<Result<Body, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Call) -> Self::Future {
        std::future::ready(Err(self.status.clone()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::Code;

    static SLOW: MethodSpec = MethodSpec {
        service: "svc",
        name: "slow",
        doc: "",
        idempotent: false,
        timeout: Some(Duration::from_millis(50)),
        attempt_timeout: None,
        hedge_after: None,
        params: &[],
        result_field: "result",
        result_type: "()",
        kind: MethodKind::Unary,
        index: 0,
    };

    #[derive(Clone)]
    struct Never;

    impl Service<Call> for Never {
        type Response = Body;
        type Error = Status;
        type Future = std::future::Pending<Result<Body, Status>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Call) -> Self::Future {
            std::future::pending()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_manifest_timeout_bounds_a_call_that_never_answers() {
        let channel = Channel::new(Never);
        let started = Instant::now();
        let error = channel
            .unary::<_, ()>(&SLOW, &(), &CallOptions::new())
            .await
            .expect_err("times out");
        assert_eq!(error.code(), Code::DeadlineExceeded);
        assert_eq!(started.elapsed(), Duration::from_millis(50));
    }

    /// Answers with the method's name; boxed or not, ready at once or after a wake-up.
    #[derive(Clone)]
    struct Echo {
        boxed: bool,
        ready_after: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Service<Call> for Echo {
        type Response = Body;
        type Error = Status;
        type Future = futures_util::future::Either<
            crate::service::BoxFuture<'static, Result<Body, Status>>,
            std::future::Ready<Result<Body, Status>>,
        >;
        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
            use std::sync::atomic::Ordering;
            if self.ready_after.load(Ordering::SeqCst) == 0 {
                return Poll::Ready(Ok(()));
            }
            self.ready_after.fetch_sub(1, Ordering::SeqCst);
            cx.waker().wake_by_ref();
            Poll::Pending
        }
        fn call(&mut self, call: Call) -> Self::Future {
            let answer = Ok(Body::Message(Bytes::from(call.method.into_owned())));
            if self.boxed {
                futures_util::future::Either::Left(Box::pin(std::future::ready(answer)))
            } else {
                futures_util::future::Either::Right(std::future::ready(answer))
            }
        }
    }

    #[tokio::test]
    async fn a_channel_answers_through_services_ready_at_once_or_later_boxed_or_not() {
        for boxed in [true, false] {
            for ready_after in [0, 2] {
                let channel = Channel::new(Echo {
                    boxed,
                    ready_after: Arc::new(ready_after.into()),
                });
                let call = prepare_call(&SLOW, Bytes::new(), &CallOptions::new());
                let answer = channel.call(call).await.expect("answered");
                assert_eq!(
                    &answer[..],
                    b"slow",
                    "boxed {boxed}, ready after {ready_after}"
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_nested_call_inherits_the_earlier_deadline() {
        let parent_deadline = Instant::now() + Duration::from_millis(10);
        let mut metadata = Metadata::new();
        metadata.insert("traceparent", "00-abc-def-01");
        let parent = CallContext::new("outer", "m", Some(parent_deadline), metadata);
        let call = parent
            .scope(async { prepare_call(&SLOW, Bytes::new(), &CallOptions::new()) })
            .await;
        assert_eq!(call.deadline, Some(parent_deadline));
        assert_eq!(call.metadata.get("traceparent"), Some("00-abc-def-01"));
    }
}
