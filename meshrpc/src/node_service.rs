//! The service every node publishes about itself, `meshrpc.node`: `ping` (liveness, used by
//! [`Node::wait_for`](crate::Node::wait_for)), `describe` (the descriptors of the services it
//! publishes, which the gateway turns into routes and an OpenAPI document), `members` (its
//! view of the mesh) and `stats` (its calls counters and latency histograms, which `meshctl
//! top` reads). docs/PROTOCOL.md section 14 documents the request and reply maps.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::membership::{Liveness, Membership};
use crate::metrics::{MethodStats, Metrics};
use crate::service::{BoxFuture, Dispatch, unknown_method};
use crate::spec::{MethodKind, MethodSpec, ServiceSpec};
use crate::status::Status;
use crate::streaming::{Body, Streaming};

/// The name of the built-in service.
pub const NODE_SERVICE: &str = "meshrpc.node";

/// The built-in service's description.
pub static NODE_SPEC: ServiceSpec = ServiceSpec {
    name: NODE_SERVICE,
    doc: "What every meshrpc node answers about itself.",
    methods: &[
        MethodSpec {
            service: NODE_SERVICE,
            name: "ping",
            doc: "Answers with the node's name.",
            idempotent: true,
            timeout: None,
            attempt_timeout: None,
            hedge_after: None,
            params: &[],
            result_field: "name",
            result_type: "String",
            kind: MethodKind::Unary,
            index: 0,
        },
        MethodSpec {
            service: NODE_SERVICE,
            name: "describe",
            doc: "The JSON descriptors of the services the node publishes.",
            idempotent: true,
            timeout: None,
            attempt_timeout: None,
            hedge_after: None,
            params: &[],
            result_field: "descriptors",
            result_type: "Vec<String>",
            kind: MethodKind::Unary,
            index: 1,
        },
        MethodSpec {
            service: NODE_SERVICE,
            name: "members",
            doc: "The members in the node's view of the mesh.",
            idempotent: true,
            timeout: None,
            attempt_timeout: None,
            hedge_after: None,
            params: &[],
            result_field: "members",
            result_type: "Vec<MemberSummary>",
            kind: MethodKind::Unary,
            index: 2,
        },
        MethodSpec {
            service: NODE_SERVICE,
            name: "stats",
            doc: "The node's calls counters and latency histograms, per method and side.",
            idempotent: true,
            timeout: None,
            attempt_timeout: None,
            hedge_after: None,
            params: &[],
            result_field: "methods",
            result_type: "Vec<MethodStats>",
            kind: MethodKind::Unary,
            index: 3,
        },
    ],
    schema_hash: 0x6d65_7368_6e6f_6465,
    manifest: "",
    descriptor: "{}",
    use_schemas: &[],
};

/// The methods of `meshrpc.node`, by name.
pub mod node_methods {
    use super::NODE_SPEC;
    use crate::spec::MethodSpec;

    /// `meshrpc.node.ping`: the node's name.
    pub const PING: &MethodSpec = &NODE_SPEC.methods[0];
    /// `meshrpc.node.describe`: the descriptors of the services the node publishes.
    pub const DESCRIBE: &MethodSpec = &NODE_SPEC.methods[1];
    /// `meshrpc.node.members`: the node's view of the mesh.
    pub const MEMBERS: &MethodSpec = &NODE_SPEC.methods[2];
    /// `meshrpc.node.stats`: the node's calls counters and latency histograms.
    pub const STATS: &MethodSpec = &NODE_SPEC.methods[3];
}

/// The reply of `ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingReply {
    /// The node's name.
    pub name: String,
}

/// The reply of `describe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeReply {
    /// One JSON descriptor per published service (see `docs/MANIFEST.md`).
    pub descriptors: Vec<String>,
    /// The `services.toml` text each service was generated from, in the order of
    /// `descriptors` (empty for a service built without a manifest). Absent from nodes that
    /// predate it.
    #[serde(default)]
    pub manifests: Vec<String>,
}

/// One member, as `members` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSummary {
    /// The member's name.
    pub name: String,
    /// Its advertised address.
    pub addr: String,
    /// Whether it is draining.
    pub draining: bool,
    /// Whether it is only suspected to be alive.
    pub suspect: bool,
    /// The services it publishes.
    pub services: Vec<String>,
    /// Each published service's schema hash, 16 hex digits, by service name. Absent from
    /// nodes that predate it.
    #[serde(default)]
    pub schema_hashes: BTreeMap<String, String>,
    /// Its free-form tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Its identity's generation: microseconds since the Unix epoch when it started, plus one
    /// per change since (draining). 0 from nodes that predate it.
    #[serde(default)]
    pub generation: u64,
}

/// The reply of `members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersReply {
    /// Every member in view, the answering node included.
    pub members: Vec<MemberSummary>,
}

/// The reply of `stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsReply {
    /// The answering node's name.
    pub name: String,
    /// Every method the node served or called since it started, per side.
    pub methods: Vec<MethodStats>,
}

/// The built-in service of one node.
#[derive(Debug, Clone)]
pub(crate) struct NodeService {
    name: String,
    published: Vec<&'static ServiceSpec>,
    membership: Membership,
    metrics: Arc<Metrics>,
}

impl NodeService {
    pub(crate) fn new(
        name: &str,
        published: &[&'static ServiceSpec],
        membership: Membership,
        metrics: Arc<Metrics>,
    ) -> NodeService {
        NodeService {
            name: name.to_owned(),
            published: published.to_vec(),
            membership,
            metrics,
        }
    }
}

impl Dispatch for NodeService {
    fn spec(&self) -> &'static ServiceSpec {
        &NODE_SPEC
    }

    fn dispatch(
        &self,
        method: &'static MethodSpec,
        _request: Bytes,
        _stream: Option<Streaming<Bytes>>,
    ) -> BoxFuture<'static, Result<Body, Status>> {
        let reply = match method.index {
            0 => codec::encode(&PingReply {
                name: self.name.clone(),
            }),
            1 => codec::encode(&DescribeReply {
                descriptors: self
                    .published
                    .iter()
                    .map(|spec| spec.full_descriptor().into_owned())
                    .collect(),
                manifests: self
                    .published
                    .iter()
                    .map(|spec| spec.manifest.to_owned())
                    .collect(),
            }),
            2 => {
                let view = self.membership.view();
                let members = view
                    .members()
                    .iter()
                    .map(|member| MemberSummary {
                        name: member.id.name.clone(),
                        addr: member.id.addr.to_string(),
                        draining: member.id.draining,
                        suspect: member.liveness == Liveness::Suspect,
                        services: member.id.services.iter().map(|s| s.name.clone()).collect(),
                        schema_hashes: member
                            .id
                            .services
                            .iter()
                            .map(|s| (s.name.clone(), format!("{:016x}", s.schema_hash)))
                            .collect(),
                        tags: member.id.tags.clone(),
                        generation: member.id.generation,
                    })
                    .collect();
                codec::encode(&MembersReply { members })
            }
            3 => codec::encode(&StatsReply {
                name: self.name.clone(),
                methods: self.metrics.snapshot(),
            }),
            _ => Err(unknown_method(&NODE_SPEC, method.name)),
        };
        Box::pin(std::future::ready(reply.map(Body::Message)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_named_methods_are_the_specs_methods_at_their_index() {
        for (method, name) in [
            (node_methods::PING, "ping"),
            (node_methods::DESCRIBE, "describe"),
            (node_methods::MEMBERS, "members"),
            (node_methods::STATS, "stats"),
        ] {
            assert_eq!(method.name, name);
            assert_eq!(NODE_SPEC.methods[method.index], *method);
        }
    }
}
