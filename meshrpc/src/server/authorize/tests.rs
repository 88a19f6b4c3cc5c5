use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use tower::{ServiceExt, service_fn};

use super::*;
use crate::context::CallContext;
use crate::server::{Caller, PeerIdentity};
use crate::spec::{MethodKind, MethodSpec};
use crate::status::Code;

static CHARGE: MethodSpec = MethodSpec {
    service: "billing",
    name: "charge",
    doc: "",
    idempotent: false,
    timeout: None,
    attempt_timeout: None,
    hedge_after: None,
    params: &[],
    result_field: "value",
    result_type: "u64",
    kind: MethodKind::Unary,
    index: 0,
};

fn call(name: Option<&str>) -> IncomingCall {
    IncomingCall {
        method: &CHARGE,
        context: CallContext::default(),
        caller: std::sync::Arc::new(Caller {
            addr: SocketAddr::from(([127, 0, 0, 1], 4000)),
            identity: name.map(|name| {
                std::sync::Arc::new(PeerIdentity {
                    cluster: "test".to_owned(),
                    name: name.to_owned(),
                })
            }),
        }),
        request: Bytes::from_static(b"\x80"),
        stream: None,
    }
}

/// Sends `call` through the layer over a fake inner service; returns the outcome and how many
/// calls reached the inner service.
async fn serve(layer: &AuthorizeLayer, call: IncomingCall) -> (Result<Body, Status>, usize) {
    let reached = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = reached.clone();
    let inner = service_fn(move |call: IncomingCall| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, Status>(Body::Message(call.request)) }
    });
    let outcome = layer.layer(inner).oneshot(call).await;
    (outcome, reached.load(Ordering::SeqCst))
}

fn layer(policy: &str, refusals: Refusals) -> AuthorizeLayer {
    AuthorizeLayer::new(policy.parse().expect("policy"), refusals)
}

#[tokio::test]
async fn an_allowed_caller_reaches_the_inner_service() {
    let refusals = Refusals::default();
    let layer = layer("billing=payments", refusals.clone());
    let (outcome, reached) = serve(&layer, call(Some("payments"))).await;
    assert!(matches!(outcome, Ok(Body::Message(ref request)) if request[..] == b"\x80"[..]));
    assert_eq!(reached, 1);
    assert_eq!(refusals.count("billing", "charge"), 0);
}

#[tokio::test]
async fn a_refused_caller_gets_permission_denied_and_never_reaches_the_inner_service() {
    let refusals = Refusals::default();
    let layer = layer("billing.charge=payments", refusals.clone());
    let (outcome, reached) = serve(&layer, call(Some("concierge"))).await;
    let Err(status) = outcome else {
        panic!("the call was let through")
    };
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "concierge (127.0.0.1:4000) may not call `billing.charge`; this node allows it for: payments"
    );
    assert!(
        !status.is_refused(),
        "another replica applies the same policy: no retry"
    );
    assert_eq!(reached, 0);
    assert_eq!(refusals.count("billing", "charge"), 1);
}

#[tokio::test]
async fn a_caller_without_an_identity_is_refused_by_a_rule_that_names_callers_only() {
    let refusals = Refusals::default();
    let named = layer("billing=payments", refusals.clone());
    let (outcome, reached) = serve(&named, call(None)).await;
    let Err(status) = outcome else {
        panic!("the call was let through")
    };
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status
            .message()
            .contains("certificate lacks the URI `meshrpc://<cluster>/<name>`"),
        "{}",
        status.message()
    );
    assert_eq!(reached, 0);
    assert_eq!(refusals.count("billing", "charge"), 1);

    let any = layer("billing=*", Refusals::default());
    let (outcome, reached) = serve(&any, call(None)).await;
    assert!(outcome.is_ok());
    assert_eq!(reached, 1);
}

#[test]
fn refusals_are_exported_by_service_and_method() {
    let mut registry = Registry::with_prefix("meshrpc");
    let refusals = Refusals::register(&mut registry);
    refusals.record("billing", "charge");
    refusals.record("billing", "charge");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(
        text.contains(
            "meshrpc_authorization_refusals_total{service=\"billing\",method=\"charge\"} 2"
        ),
        "{text}"
    );
}

#[test]
fn the_refusal_log_writes_one_line_per_interval_with_the_number_left_out() {
    let log = RefusalLog::default();
    let start = Instant::now();
    assert_eq!(log.admit(start), Some(0));
    assert_eq!(log.admit(start + Duration::from_millis(10)), None);
    assert_eq!(log.admit(start + Duration::from_millis(999)), None);
    assert_eq!(log.admit(start + LOG_INTERVAL), Some(2));
    assert_eq!(log.admit(start + LOG_INTERVAL * 3), Some(0));
}
