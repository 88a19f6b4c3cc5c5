//! Authorization between real nodes on loopback: the serving node's policy lets the callers it
//! names through, refuses the others with `permission_denied` before the handler runs, counts
//! the refusals, and keeps `meshrpc.node` open to every member.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use meshrpc::node_service::NODE_SPEC;
use meshrpc::server::authorize::Policy;
use meshrpc::tls::dev_ca_params;
use meshrpc::{CallOptions, Code, Node, TlsMaterial};
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair};
use serde::Deserialize;

/// `probe` on loopback, publishing `probe` under `policy`.
async fn start_guarded_probe(state: &std::path::Path, probe: Probe, policy: &str) -> Node {
    let policy: Policy = policy.parse().expect("policy");
    let node = Node::builder("probe")
        .cluster("test")
        .state_dir(state)
        .listen("127.0.0.1:0".parse().expect("addr"))
        .publish(probe.clone())
        .authorize(policy)
        .start()
        .await
        .expect("node starts");
    let _ = probe.node.set(node.clone());
    node
}

/// A node that only calls, named `name` (so its dev certificate names it).
async fn start_caller(state: &std::path::Path, name: &str) -> Node {
    Node::builder(name)
        .cluster("test")
        .state_dir(state)
        .listen("127.0.0.1:0".parse().expect("addr"))
        .start()
        .await
        .expect("node starts")
}

#[derive(Debug, Deserialize)]
struct Pong {
    name: String,
}

#[tokio::test]
async fn the_named_caller_is_served_and_another_member_is_refused_before_the_handler() {
    let state = tempfile::tempdir().expect("tempdir");
    let probe = Probe::new();
    let server = start_guarded_probe(state.path(), probe.clone(), "probe.add=payments").await;
    let payments = start_caller(state.path(), "payments").await;
    let concierge = start_caller(state.path(), "concierge").await;
    let add = AddRequest { a: 40, b: 2 };

    let reply: Reply = payments
        .channel_to(server.local_addr())
        .unary(method("add"), &add, &CallOptions::new())
        .await
        .expect("payments may call probe.add");
    assert_eq!(reply.result, 42);

    let refused = concierge
        .channel_to(server.local_addr())
        .unary::<_, Reply>(method("add"), &add, &CallOptions::new())
        .await
        .expect_err("concierge may not call probe.add");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(
        refused.message(),
        format!(
            "concierge ({}) may not call `probe.add`; this node allows it for: payments",
            concierge.local_addr()
        )
    );

    // No rule covers probe.echo, and meshrpc.node stays open to every member.
    let echo = Echo { data: vec![7] };
    let echoed: Echo = concierge
        .channel_to(server.local_addr())
        .unary(method("echo"), &echo, &CallOptions::new())
        .await
        .expect("probe.echo is open");
    assert_eq!(echoed, echo);
    let ping = NODE_SPEC.method("ping").expect("ping");
    let pong: Pong = concierge
        .channel_to(server.local_addr())
        .unary(ping, &(), &CallOptions::new())
        .await
        .expect("meshrpc.node.ping is open");
    assert_eq!(pong.name, "probe");

    assert_eq!(
        probe.counters.started.load(Ordering::SeqCst),
        2,
        "the refused call never reached the handler"
    );
    let metrics = server.metrics().render();
    assert!(
        metrics
            .contains("meshrpc_authorization_refusals_total{service=\"probe\",method=\"add\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_member_whose_certificate_names_no_one_is_refused_by_a_rule_that_names_callers() {
    let state = tempfile::tempdir().expect("tempdir");
    let probe = Probe::new();
    let server = start_guarded_probe(
        state.path(),
        probe.clone(),
        "probe.add=payments; probe.echo=*",
    )
    .await;
    // A certificate of the cluster CA with the cluster's name and no identity URI.
    let dir = state.path().join("test");
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key")).expect("CA key"))
        .expect("CA key PEM");
    let ca = Issuer::new(dev_ca_params("test").expect("CA parameters"), ca_key);
    let mut params = CertificateParams::new(vec!["test.meshrpc".to_owned()]).expect("params");
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca).expect("signed");
    let material = TlsMaterial::from_pem(
        &std::fs::read(dir.join("ca.pem")).expect("CA certificate"),
        cert.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
    )
    .expect("material");
    let anonymous = Node::builder("payments")
        .cluster("test")
        .tls(material)
        .listen("127.0.0.1:0".parse().expect("addr"))
        .start()
        .await
        .expect("node starts");

    let refused = anonymous
        .channel_to(server.local_addr())
        .unary::<_, Reply>(
            method("add"),
            &AddRequest { a: 1, b: 2 },
            &CallOptions::new(),
        )
        .await
        .expect_err("a node name is not a proven identity");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused
            .message()
            .contains("certificate lacks the URI `meshrpc://<cluster>/<name>`"),
        "{}",
        refused.message()
    );
    let echo = Echo { data: vec![1] };
    let echoed: Echo = anonymous
        .channel_to(server.local_addr())
        .unary(method("echo"), &echo, &CallOptions::new())
        .await
        .expect("`*` admits any member");
    assert_eq!(echoed, echo);
    assert_eq!(probe.counters.started.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_rule_for_a_service_the_node_does_not_serve_stops_the_start() {
    let state = tempfile::tempdir().expect("tempdir");
    let error = Node::builder("probe")
        .cluster("test")
        .state_dir(state.path())
        .listen("127.0.0.1:0".parse().expect("addr"))
        .publish(Probe::new())
        .authorize("prob=payments".parse().expect("policy"))
        .start()
        .await
        .expect_err("a misspelt rule");
    assert!(
        error.to_string().contains(
            "rule for `prob`: this node serves no such service; it serves `probe`, `meshrpc.node`"
        ),
        "{error}"
    );
}
