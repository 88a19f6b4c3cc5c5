//! Reaching the mesh without joining it: meshctl starts a node with no seeds (so it gossips
//! with nobody and no member ever routes to it), asks the seeds for their view of the mesh
//! (`meshrpc.node/members`) and calls members directly over that node's connections.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use meshrpc::cli::{ANY_PORT, NodeArgs};
use meshrpc::membership::identity::{MemberId, Published};
use meshrpc::membership::{Liveness, MemberView, View};
use meshrpc::node_service::{DescribeReply, MemberSummary, MembersReply, NODE_SPEC};
use meshrpc::{CallOptions, Channel, Node, Status, seeds};
use serde::de::DeserializeOwned;

use crate::failure::Failure;

/// The node flags that matter to a caller that joins nothing: where the seeds are, which
/// cluster, which certificates. Same names and environment variables as
/// [`NodeArgs`](meshrpc::cli::NodeArgs), whose builder meshctl uses.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct MeshArgs {
    /// Seed nodes to ask: comma-separated host or host:port entries (port 11999 by default).
    #[arg(
        short = 'N',
        long = "nodes",
        env = "MESHRPC_CLUSTER_NODES",
        value_name = "HOST[:PORT],..."
    )]
    nodes: Option<String>,

    /// The cluster to talk to.
    #[arg(
        short = 'T',
        long,
        env = "MESHRPC_CLUSTER_NAME",
        default_value = "default"
    )]
    cluster: String,

    /// The cluster CA certificate (PEM). With --cert and --key; without all three the
    /// development CA of the state directory is used.
    #[arg(long, env = "MESHRPC_CA", value_name = "PEM", requires_all = ["cert", "key"])]
    ca: Option<std::path::PathBuf>,

    /// meshctl's certificate chain (PEM), issued by the CA for `<cluster>.meshrpc`.
    #[arg(long, env = "MESHRPC_CERT", value_name = "PEM", requires_all = ["ca", "key"])]
    cert: Option<std::path::PathBuf>,

    /// meshctl's private key (PEM).
    #[arg(long, env = "MESHRPC_KEY", value_name = "PEM", requires_all = ["ca", "cert"])]
    key: Option<std::path::PathBuf>,

    /// Where the mesh's development CA lives (default: $XDG_STATE_HOME/meshrpc or
    /// ~/.local/state/meshrpc). meshctl uses the CA it finds there and never mints one.
    #[arg(long, env = "MESHRPC_STATE_DIR", value_name = "DIR")]
    state_dir: Option<std::path::PathBuf>,
}

/// Only the node flags, to get [`NodeArgs`]' defaults.
#[derive(Debug, clap::Parser)]
struct Defaults {
    #[command(flatten)]
    node: NodeArgs,
}

impl MeshArgs {
    /// The flags of a node that joins nothing: no seeds, any free port, no admin endpoint, no
    /// tags; the cluster and certificates given here.
    fn node_args(&self) -> Result<NodeArgs, Failure> {
        use clap::Parser;
        let mut node = Defaults::try_parse_from(["meshctl"])
            .map_err(|error| Failure::input(format!("bad MESHRPC_* environment: {error}")))?
            .node;
        node.nodes = None;
        node.cluster = self.cluster.clone();
        node.listen = None;
        node.advertise = None;
        node.admin = None;
        node.tags = Vec::new();
        node.ca = self.ca.clone();
        node.cert = self.cert.clone();
        node.key = self.key.clone();
        node.state_dir = self.state_dir.clone();
        Ok(node)
    }

    /// With no --ca/--cert/--key, meshctl signs its certificate with the development CA of the
    /// state directory. A node that finds no CA there mints one, but one minted by meshctl would
    /// be trusted by no member: name the directory instead of failing at the handshake.
    fn check_dev_ca(&self) -> Result<(), Failure> {
        if self.ca.is_some() {
            return Ok(());
        }
        let state_dir = self
            .state_dir
            .clone()
            .unwrap_or_else(meshrpc::tls::default_state_dir);
        let key = meshrpc::tls::dev_ca_key_path(&state_dir, &self.cluster);
        if key.exists() {
            return Ok(());
        }
        Err(Failure::mesh(format!(
            "no development CA for cluster `{cluster}` under {dir} ({key} does not exist): \
             meshctl uses the mesh's CA and does not mint one. Pass the --state-dir \
             (MESHRPC_STATE_DIR) the mesh's nodes were started with (`cargo xtask demo` prints \
             its own), check the cluster name (-T/--cluster, MESHRPC_CLUSTER_NAME; now \
             `{cluster}`), or pass --ca/--cert/--key (MESHRPC_CA, MESHRPC_CERT, MESHRPC_KEY) \
             issued for `{cluster}.meshrpc`",
            cluster = self.cluster,
            dir = state_dir.display(),
            key = key.display(),
        )))
    }
}

/// The mesh as one seed sees it, and the node meshctl calls through.
#[derive(Debug)]
pub(crate) struct Mesh {
    node: Node,
    /// The seed that answered.
    pub(crate) seed: SocketAddr,
    /// The seed's view of the members.
    pub(crate) members: Vec<MemberSummary>,
    /// How long a member may take to answer.
    pub(crate) timeout: Duration,
    cluster: String,
}

/// One `meshrpc.node` method by name.
fn node_method(name: &str) -> &'static meshrpc::MethodSpec {
    NODE_SPEC
        .methods
        .iter()
        .find(|method| method.name == name)
        .unwrap_or(&NODE_SPEC.methods[0])
}

impl Mesh {
    /// Starts meshctl's node from the usual flags and asks the seeds who is in the mesh; the
    /// first seed that answers wins. Each seed gets `timeout`, all at once.
    pub(crate) async fn connect(args: &MeshArgs, timeout: Duration) -> Result<Mesh, Failure> {
        let entries = args
            .nodes
            .as_deref()
            .map(seeds::parse_list)
            .unwrap_or_default();
        if entries.is_empty() {
            return Err(Failure::mesh(
                "no seed to ask: pass -N/--nodes HOST[:PORT],... (or set MESHRPC_CLUSTER_NODES) \
                 naming a member of the mesh, e.g. `meshctl -N 127.0.0.1:11999 members`",
            ));
        }
        args.check_dev_ca()?;
        // Our node joins nothing and serves no admin endpoint: it only makes calls.
        let node = args
            .node_args()?
            .builder("meshctl", ANY_PORT)
            .map_err(|error| {
                Failure::mesh(format!(
                    "cannot load the TLS material: {error}; check --ca/--cert/--key \
                     (MESHRPC_CA, MESHRPC_CERT, MESHRPC_KEY)"
                ))
            })?
            .start()
            .await
            .map_err(|error| Failure::mesh(format!("cannot start meshctl's node: {error}")))?;

        let addrs = seeds::resolve(&entries).await;
        if addrs.is_empty() {
            node.shutdown().await;
            return Err(Failure::mesh(format!(
                "no seed resolves: {}; check -N/--nodes (MESHRPC_CLUSTER_NODES)",
                entries.join(", ")
            )));
        }
        let mut asks = meshrpc::tokio::task::JoinSet::new();
        for (index, addr) in addrs.iter().copied().enumerate() {
            let channel = node.channel_to(addr);
            asks.spawn(async move {
                let reply = ask::<MembersReply>(&channel, node_method("members"), timeout).await;
                (index, addr, reply)
            });
        }
        let mut failures: Vec<(usize, SocketAddr, Status)> = Vec::new();
        let mut answered = None;
        while let Some(joined) = asks.join_next().await {
            let Ok((index, addr, reply)) = joined else {
                continue;
            };
            match reply {
                Ok(reply) => {
                    answered = Some((addr, reply));
                    break;
                }
                Err(status) => failures.push((index, addr, status)),
            }
        }
        asks.abort_all();
        let Some((seed, reply)) = answered else {
            failures.sort_by_key(|(index, _, _)| *index);
            let message = unreachable_message(&entries, &failures, &args.cluster, timeout);
            node.shutdown().await;
            return Err(Failure::mesh(message));
        };
        let mut members = reply.members;
        members.sort_by(|a, b| a.name.cmp(&b.name).then(a.addr.cmp(&b.addr)));
        Ok(Mesh {
            node,
            seed,
            members,
            timeout,
            cluster: args.cluster.clone(),
        })
    }

    /// Stops meshctl's node.
    pub(crate) async fn close(self) {
        self.node.shutdown().await;
    }

    /// The cluster meshctl was told to talk to.
    pub(crate) fn cluster(&self) -> &str {
        &self.cluster
    }

    /// A channel straight to the member at `addr`.
    pub(crate) fn channel_to(&self, addr: SocketAddr) -> Channel {
        self.node.channel_to(addr)
    }

    /// Calls `meshrpc.node/<method>` on the member at `addr`.
    pub(crate) async fn ask<T: DeserializeOwned>(
        &self,
        addr: SocketAddr,
        method: &str,
    ) -> Result<T, Status> {
        ask(&self.channel_to(addr), node_method(method), self.timeout).await
    }

    /// The members as a [`View`], for the balancer.
    pub(crate) fn view(&self) -> View {
        View::new(self.members.iter().filter_map(member_view).collect())
    }

    /// Every service some member publishes, sorted.
    pub(crate) fn services(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .members
            .iter()
            .flat_map(|member| member.services.iter().cloned())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// The descriptor and manifest text of `service` as the members publishing `hash` (or,
    /// without a hash, the schema most of them publish) describe it.
    pub(crate) async fn describe(
        &self,
        service: &str,
        hash: Option<&str>,
    ) -> Result<Described, Failure> {
        let publishing: Vec<&MemberSummary> = self
            .members
            .iter()
            .filter(|member| member.services.iter().any(|s| s == service))
            .collect();
        if publishing.is_empty() {
            return Err(Failure::input(format!(
                "no member publishes `{service}`; {}",
                self.services_sentence()
            )));
        }
        let hash = match hash {
            Some(hash) => Some(hash.to_owned()),
            None => majority_hash(&publishing, service),
        };
        // Alive, not draining members of the wanted schema first.
        let mut candidates: Vec<&MemberSummary> = publishing
            .iter()
            .copied()
            .filter(|member| {
                hash.is_none()
                    || member.schema_hashes.get(service).map(String::as_str) == hash.as_deref()
            })
            .collect();
        candidates.sort_by_key(|member| (member.draining, member.suspect));
        let mut last = String::new();
        for member in candidates {
            let Ok(addr) = member.addr.parse::<SocketAddr>() else {
                continue;
            };
            let reply: DescribeReply = match self.ask(addr, "describe").await {
                Ok(reply) => reply,
                Err(status) => {
                    last = format!(" (last: {} at {addr}: {status})", member.name);
                    continue;
                }
            };
            for (index, text) in reply.descriptors.iter().enumerate() {
                let Ok(descriptor) = gateway::descriptors::Descriptor::parse(text) else {
                    continue;
                };
                if descriptor.service != service {
                    continue;
                }
                let manifest = reply.manifests.get(index).cloned().unwrap_or_default();
                let replicas = publishing
                    .iter()
                    .filter(|m| m.schema_hashes.get(service) == Some(&descriptor.schema_hash))
                    .count();
                return Ok(Described {
                    descriptor,
                    manifest,
                    replicas: replicas.max(1),
                });
            }
        }
        Err(Failure::mesh(format!(
            "no member publishing `{service}` answered `meshrpc.node/describe` with its \
             descriptor{last}"
        )))
    }

    /// "services in the mesh: a, b" (or that there are none), for messages.
    pub(crate) fn services_sentence(&self) -> String {
        let services = self.services();
        if services.is_empty() {
            format!(
                "no member of the mesh (as {} sees it) publishes any service yet",
                self.seed
            )
        } else {
            format!("services in the mesh: {}", services.join(", "))
        }
    }
}

/// A service's descriptor with the manifest text it was generated from.
#[derive(Debug)]
pub(crate) struct Described {
    /// The JSON descriptor, parsed.
    pub(crate) descriptor: gateway::descriptors::Descriptor,
    /// The `services.toml` text (empty when the member did not send it).
    pub(crate) manifest: String,
    /// How many members publish this schema.
    pub(crate) replicas: usize,
}

/// The schema hash most members publishing `service` have.
pub(crate) fn majority_hash(publishing: &[&MemberSummary], service: &str) -> Option<String> {
    let mut counts: BTreeMap<&str, (usize, bool)> = BTreeMap::new();
    for member in publishing {
        if let Some(hash) = member.schema_hashes.get(service) {
            let entry = counts.entry(hash).or_default();
            entry.0 += 1;
            entry.1 |= !member.draining;
        }
    }
    counts
        .into_iter()
        .max_by_key(|(_, (count, live))| (*live, *count))
        .map(|(hash, _)| hash.to_owned())
}

/// One summary as the balancer's member view (`None` for an unreadable address).
fn member_view(member: &MemberSummary) -> Option<MemberView> {
    let addr = member.addr.parse().ok()?;
    Some(MemberView {
        id: MemberId {
            addr,
            name: member.name.clone(),
            cluster: String::new(),
            generation: member.generation,
            draining: member.draining,
            services: member
                .services
                .iter()
                .map(|name| Published {
                    name: name.clone(),
                    schema_hash: member
                        .schema_hashes
                        .get(name)
                        .and_then(|hash| u64::from_str_radix(hash, 16).ok())
                        .unwrap_or(0),
                })
                .collect(),
            http: Vec::new(),
            tags: member.tags.clone(),
        },
        liveness: if member.suspect {
            Liveness::Suspect
        } else {
            Liveness::Alive
        },
        local: false,
    })
}

/// One parameterless `meshrpc.node` call.
async fn ask<T: DeserializeOwned>(
    channel: &Channel,
    method: &'static meshrpc::MethodSpec,
    timeout: Duration,
) -> Result<T, Status> {
    channel
        .unary(method, &(), &CallOptions::new().timeout(timeout))
        .await
}

/// What to say when no seed answered: each seed with its failure, and what to check.
fn unreachable_message(
    entries: &[String],
    failures: &[(usize, SocketAddr, Status)],
    cluster: &str,
    timeout: Duration,
) -> String {
    let mut message = format!(
        "no seed answered (tried {} within {}):",
        entries.join(", "),
        humantime::format_duration(timeout)
    );
    for (_, addr, status) in failures {
        message.push_str(&format!("\n  {addr}: {status}"));
    }
    let text = failures
        .iter()
        .map(|(_, _, status)| status.to_string().to_lowercase())
        .collect::<Vec<_>>()
        .join(" ");
    if text.contains("certificate") || text.contains("tls") || text.contains("handshake") {
        message.push_str(&format!(
            "\nThe seeds refused meshctl's certificate, or it refused theirs. Check the cluster \
             name (-T/--cluster, MESHRPC_CLUSTER_NAME; now `{cluster}`) and the CA: the same \
             --state-dir (MESHRPC_STATE_DIR) as the mesh's development CA, or --ca/--cert/--key \
             (MESHRPC_CA, MESHRPC_CERT, MESHRPC_KEY) issued for `{cluster}.meshrpc`."
        ));
    } else {
        message.push_str(&format!(
            "\nCheck that a member listens there (-N/--nodes, MESHRPC_CLUSTER_NODES), that the \
             cluster name matches (-T/--cluster, MESHRPC_CLUSTER_NAME; now `{cluster}`) and that \
             meshctl uses the mesh's CA (--state-dir or --ca/--cert/--key)."
        ));
    }
    message
}
