#![warn(missing_docs)]
//! meshrpc: typed service-to-service calls over QUIC, with discovery, load balancing, mutual
//! TLS, deadlines, retries and graceful drain — and no sidecar.
//!
//! A crate describes its services in `services.toml`; `meshrpc-build` turns each into a trait, a
//! server (`GreeterServer`) and a client (`GreeterClient`) that implements the same trait, so a
//! local implementation and a remote one are interchangeable. This crate is the runtime they
//! use: the [`Status`] every call returns, the [`Channel`] clients send through, and the node
//! that publishes servers and joins the mesh.
//!
//! What a service needs is at the crate root: [`Node`] and [`NodeBuilder`] (start a node,
//! publish servers, get clients), [`Channel`] and [`CallOptions`] (how clients call),
//! [`Status`] and [`Code`] (how calls end), [`Streaming`] (the `Stream<T>` of streaming
//! methods), [`CallContext`] and [`Metadata`] (what a handler knows about its call), and the
//! configuration types ([`Limits`], [`RetryConfig`], [`BreakerConfig`], [`TailConfig`],
//! [`Strategy`], [`Policy`], [`TlsMaterial`]). Modules a user may reach into: [`server`]
//! (layers over every served call: [`NodeBuilder::layer`]), [`cli`] (the flags every service
//! binary shares) and [`tls`] (certificates). The other modules are the runtime's inside,
//! public for the workspace's gateway, tools and tests and for generated code; they are not
//! part of the API.

#[cfg(feature = "admin")]
#[doc(hidden)]
pub mod admin;
#[doc(hidden)]
pub mod channel;
#[cfg(feature = "cli")]
pub mod cli;
#[doc(hidden)]
pub mod codec;
#[doc(hidden)]
pub mod context;
#[cfg(feature = "http-tunnel")]
#[doc(hidden)]
pub mod http_tunnel;
#[doc(hidden)]
pub mod local;
#[doc(hidden)]
pub mod membership;
#[doc(hidden)]
pub mod metadata;
#[doc(hidden)]
pub mod metrics;
#[doc(hidden)]
pub mod node;
#[doc(hidden)]
pub mod node_service;
#[doc(hidden)]
pub mod options;
#[doc(hidden)]
pub mod resilience;
#[doc(hidden)]
pub mod schema;
#[doc(hidden)]
pub mod seeds;
pub mod server;
#[doc(hidden)]
pub mod service;
#[doc(hidden)]
pub mod spec;
#[doc(hidden)]
pub mod status;
#[doc(hidden)]
pub mod streaming;
#[cfg(feature = "otel")]
#[doc(hidden)]
pub mod telemetry;
pub mod tls;
#[doc(hidden)]
pub mod transport;
#[doc(hidden)]
pub mod wire;

/// What generated code uses, in one place; not part of the API.
#[doc(hidden)]
pub mod __generated {
    pub use crate::codec::{
        decode_binary_item, decode_item, decode_request, decode_request_binary_item,
        decode_request_item, decode_response, encode, encode_binary_into, encode_into,
        shared_bytes,
    };
    pub use crate::schema::openapi3;
    pub use crate::service::{failed, unknown_method};
    pub use crate::streaming::{binary_items, encoded};
}

pub use channel::{Call, Channel};
pub use context::CallContext;
#[cfg(feature = "http-tunnel")]
pub use http_tunnel::HttpClient;
pub use metadata::Metadata;
pub use metrics::MethodStats;
pub use node::{Node, NodeBuilder, NodeError, WaitError, wait_for_signal};
pub use options::CallOptions;
pub use resilience::attempts::TailConfig;
pub use resilience::balance::Strategy;
pub use resilience::breaker::BreakerConfig;
pub use resilience::retry::RetryConfig;
pub use server::authorize::Policy;
pub use server::{BoxServerService, Caller, IncomingCall, PeerIdentity};
pub use service::{BoxFuture, Dispatch, ServiceClient};
pub use spec::{FieldSpec, MethodKind, MethodSpec, ServiceSpec, UseSchema};
pub use status::{Code, Status};
pub use streaming::{Body, StreamSender, Streaming};
pub use tls::TlsMaterial;
pub use transport::Limits;

/// Re-exported so generated code (and its `#[derive]`s) needs no direct serde dependency.
pub use serde;

/// Re-exported for generated code.
pub use bytes;

/// The service descriptor's model (what `meshrpc.node.describe` answers), re-exported for
/// tools that read descriptors.
pub use meshrpc_descriptor as descriptor;

/// Re-exported so a service crate needs no tokio dependency of its own for `main`:
/// `#[meshrpc::tokio::main(crate = "meshrpc::tokio")]`.
pub use tokio;

/// Re-exported so a service crate can parse [`cli::NodeArgs`] without a clap dependency of its
/// own: with `use meshrpc::clap::{self, Parser};` in scope, `#[derive(Parser)]` finds it.
#[cfg(feature = "cli")]
pub use clap;

/// Re-exported so `use` types can derive `meshrpc::schemars::JsonSchema` without a schemars
/// dependency of their own (with `#[schemars(crate = "meshrpc::schemars")]`).
#[cfg(feature = "schemars")]
pub use schemars;

/// Re-exported so generated code can send `Vec<u8>` fields as MessagePack binaries.
pub use serde_bytes;

/// A map keyed by peer address, hashed with foldhash (seeded per process) instead of SipHash:
/// the connection pool, the balancer and the breakers look a peer up on every call, and
/// SipHash over a `SocketAddr` cost about 1 % of a call's instructions.
pub(crate) type AddrMap<V> =
    std::collections::HashMap<std::net::SocketAddr, V, foldhash::fast::RandomState>;

/// Locks `mutex`, carrying on if a thread panicked while holding it: every map and list the
/// runtime guards this way stays sound between two operations, so the poison carries no news.
/// Public so the gateway follows the same rule with the same code; not part of the API.
#[doc(hidden)]
pub fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// Includes the code `meshrpc-build` generated for one service of the crate's manifest.
///
/// ```ignore
/// meshrpc::include_services!("greeter");
/// ```
/// expands to `include!(concat!(env!("OUT_DIR"), "/greeter.rs"))`.
#[macro_export]
macro_rules! include_services {
    ($service:literal) => {
        include!(concat!(env!("OUT_DIR"), "/", $service, ".rs"));
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_mutex_poisoned_by_a_panicking_thread_still_locks_with_its_value() {
        let mutex = std::sync::Arc::new(std::sync::Mutex::new(vec![1]));
        let holder = mutex.clone();
        let panicked = std::thread::spawn(move || {
            let mut guard = holder.lock().expect("not yet poisoned");
            guard.push(2);
            panic!("poison the lock");
        })
        .join();
        assert!(panicked.is_err() && mutex.is_poisoned());
        assert_eq!(*crate::lock(&mutex), vec![1, 2]);
    }
}
