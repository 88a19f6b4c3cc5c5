//! The caller's side of a call: a [`Channel`] turns a typed request into a [`Call`] and sends it
//! through a tower stack (deadline, retries, balancing, transport) that ends at a QUIC stream.
//!
//! Generated clients hold a `Channel` and call [`Channel::unary`]; the gateway, which knows
//! services only by name, builds [`Call`]s itself and uses [`Channel::call`].

use std::borrow::Cow;
use std::fmt;
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
use crate::spec::MethodSpec;
use crate::status::Status;

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
    /// The MessagePack-encoded request map.
    pub payload: Bytes,
    /// Replicas earlier attempts of this call went to (recorded by the retry policy).
    pub(crate) tried: Tried,
}

/// The replicas earlier attempts of a call went to, so a balancer can try another one.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tried(Vec<std::net::SocketAddr>);

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
            tried: Tried::default(),
        }
    }

    /// `service.method`, for messages.
    pub fn target(&self) -> String {
        format!("{}.{}", self.service, self.method)
    }
}

/// The tower service at the bottom of every channel.
pub type CallService = BoxCloneSyncService<Call, Bytes, Status>;

/// A handle that sends calls; cheap to clone and share between tasks.
#[derive(Clone)]
pub struct Channel {
    service: CallService,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel").finish_non_exhaustive()
    }
}

impl Channel {
    /// A channel over any tower service that answers [`Call`]s. Use this to add your own
    /// middleware below the generated clients, or to serve calls in-process in tests.
    pub fn new<S>(service: S) -> Channel
    where
        S: Service<Call, Response = Bytes, Error = Status> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        Channel {
            service: BoxCloneSyncService::new(service),
        }
    }

    /// Sends a prepared call and waits for its encoded response, at most until its deadline.
    pub async fn call(&self, call: Call) -> Result<Bytes, Status> {
        let deadline = call.deadline;
        // Cheap clones (borrowed names, almost always), kept for the timeout message.
        let (service_name, method_name) = (call.service.clone(), call.method.clone());
        let service = self.service.clone();
        let response = service.oneshot(call);
        match deadline {
            None => response.await,
            Some(deadline) => match tokio::time::timeout_at(deadline, response).await {
                Ok(result) => result,
                Err(_) => Err(Status::deadline_passed(&service_name, &method_name)),
            },
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
}

/// Builds the [`Call`] for a generated method: deadline, inherited trace, sticky key.
fn prepare_call(method: &'static MethodSpec, payload: Bytes, options: &CallOptions) -> Call {
    let timeout = options
        .get_timeout()
        .or(method.timeout)
        .unwrap_or(DEFAULT_TIMEOUT);
    let mut deadline = Instant::now() + timeout;
    let mut metadata = options.get_metadata().clone();
    CallContext::with_current(|parent| {
        if let Some(inherited) = parent.deadline() {
            deadline = deadline.min(inherited);
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
        deadline: Some(deadline),
        sticky_key: options.get_sticky_key().map(str::to_owned),
        metadata,
        payload,
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
    type Response = Bytes;
    type Error = Status;
    type Future = std::future::Ready<Result<Bytes, Status>>;

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
        params: &[],
        result_field: "result",
        result_type: "()",
    };

    #[derive(Clone)]
    struct Never;

    impl Service<Call> for Never {
        type Response = Bytes;
        type Error = Status;
        type Future = std::future::Pending<Result<Bytes, Status>>;
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
