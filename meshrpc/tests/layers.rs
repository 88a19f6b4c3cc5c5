//! Layers a user adds to the server stack (`NodeBuilder::layer`), with real nodes on loopback:
//! they see every call the node serves — its method, metadata and the caller's verified
//! identity — can refuse it before the handler runs, and run in the order they were added.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use meshrpc::server::{BoxServerService, IncomingCall};
use meshrpc::{CallOptions, Code, Node, Status};

/// What a recording layer saw of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    layer: &'static str,
    target: String,
    tenant: Option<String>,
    caller: Option<String>,
}

/// A layer that records each call and refuses those without a `tenant`.
fn recording(
    name: &'static str,
    log: Arc<Mutex<Vec<Seen>>>,
) -> impl tower::Layer<BoxServerService, Service = BoxServerService> + Clone {
    tower::layer::layer_fn(move |inner: BoxServerService| {
        let log = log.clone();
        BoxServerService::new(tower::service_fn(move |call: IncomingCall| {
            let mut inner = inner.clone();
            let log = log.clone();
            async move {
                let tenant = call.context.metadata().get("tenant").map(str::to_owned);
                log.lock().expect("lock").push(Seen {
                    layer: name,
                    target: format!("{}.{}", call.method.service, call.method.name),
                    tenant: tenant.clone(),
                    caller: call.caller.identity.as_ref().map(|id| id.name.clone()),
                });
                if tenant.is_none() {
                    return Err(Status::new(Code::InvalidArgument, "send a `tenant`"));
                }
                tower::ServiceExt::ready(&mut inner).await?;
                tower::Service::call(&mut inner, call).await
            }
        }))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_layers_see_every_call_in_order_and_may_refuse_it() {
    let state = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(Mutex::new(Vec::new()));
    let probe = Probe::new();
    let server = Node::builder("probe")
        .cluster("test")
        .state_dir(state.path())
        .listen("127.0.0.1:0".parse().expect("addr"))
        .layer(recording("outer", log.clone()))
        .layer(recording("inner", log.clone()))
        .publish(probe.clone())
        .start()
        .await
        .expect("node starts");
    let caller = Node::builder("concierge")
        .cluster("test")
        .state_dir(state.path())
        .listen("127.0.0.1:0".parse().expect("addr"))
        .start()
        .await
        .expect("node starts");
    let channel = caller.channel_to(server.local_addr());

    let with_tenant = CallOptions::new().metadata("tenant", "acme");
    let reply: Reply = channel
        .unary(method("add"), &AddRequest { a: 2, b: 3 }, &with_tenant)
        .await
        .expect("a call with a tenant is served");
    assert_eq!(reply.result, 5);
    let refused = channel
        .unary::<_, Reply>(
            method("add"),
            &AddRequest { a: 2, b: 3 },
            &CallOptions::new(),
        )
        .await
        .expect_err("a call without a tenant is refused by the layer");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(refused.message(), "send a `tenant`");

    let seen = log.lock().expect("lock").clone();
    let expected = |layer, tenant: Option<&str>| Seen {
        layer,
        target: "probe.add".to_owned(),
        tenant: tenant.map(str::to_owned),
        caller: Some("concierge".to_owned()),
    };
    assert_eq!(
        seen,
        vec![
            expected("outer", Some("acme")),
            expected("inner", Some("acme")),
            // The outer layer refuses: the inner one never sees the call.
            expected("outer", None),
        ]
    );
    assert_eq!(
        probe
            .counters
            .started
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only the call with a tenant reached the handler"
    );
    // The node's own metrics count what the layer refused.
    let metrics = server.metrics().render();
    assert!(
        metrics.contains(
            r#"meshrpc_calls_total{side="server",service="probe",method="add",code="invalid_argument"} 1"#
        ),
        "{metrics}"
    );
}
