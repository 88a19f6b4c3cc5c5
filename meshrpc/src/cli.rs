//! Command-line flags every meshrpc binary shares, with their environment variables, so a
//! service's `main` is a few lines:
//!
//! ```no_run
//! use clap::Parser;
//!
//! #[derive(Parser)]
//! struct Args {
//!     #[command(flatten)]
//!     node: meshrpc::cli::NodeArgs,
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let args = Args::parse();
//! let node = args.node.builder("greeter", meshrpc::cli::ANY_PORT)?.start().await?;
//! node.run_until_signal().await;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::node::{Node, NodeBuilder};
use crate::resilience::balance::Strategy;
use crate::seeds;
use crate::server::authorize::Policy;
use crate::tls::{TlsError, TlsMaterial};

/// Listen on any free port of every interface: the default for service replicas.
pub const ANY_PORT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// The well-known port of seed nodes (the gateway): `0.0.0.0:11999`.
pub const SEED_PORT: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    seeds::DEFAULT_PORT,
);

/// Flags for joining the mesh.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// Seed nodes to join through: comma-separated host or host:port entries (port 11999 by default).
    #[arg(
        short = 'N',
        long = "nodes",
        env = "MESHRPC_CLUSTER_NODES",
        value_name = "HOST[:PORT],..."
    )]
    pub nodes: Option<String>,

    /// The cluster to join; nodes of other clusters are refused.
    #[arg(
        short = 'T',
        long,
        env = "MESHRPC_CLUSTER_NAME",
        default_value = "default"
    )]
    pub cluster: String,

    /// UDP address for mesh traffic.
    #[arg(long, env = "MESHRPC_LISTEN_ADDR", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Address other members reach this node at (default: derived from --listen and the seeds).
    #[arg(long, env = "MESHRPC_ADVERTISE_ADDR", value_name = "ADDR")]
    pub advertise: Option<SocketAddr>,

    /// The cluster CA certificate (PEM). With --cert and --key; without all three a
    /// development CA is minted into the state directory.
    #[arg(long, env = "MESHRPC_CA", value_name = "PEM", requires_all = ["cert", "key"])]
    pub ca: Option<PathBuf>,

    /// This node's certificate chain (PEM), issued by the CA for `<cluster>.meshrpc`.
    #[arg(long, env = "MESHRPC_CERT", value_name = "PEM", requires_all = ["ca", "key"])]
    pub cert: Option<PathBuf>,

    /// This node's private key (PEM).
    #[arg(long, env = "MESHRPC_KEY", value_name = "PEM", requires_all = ["ca", "cert"])]
    pub key: Option<PathBuf>,

    /// Where the development CA lives (default: $XDG_STATE_HOME/meshrpc or ~/.local/state/meshrpc).
    #[arg(long, env = "MESHRPC_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Serve /metrics, /healthz and /readyz over HTTP on this address.
    #[arg(long, env = "MESHRPC_ADMIN_ADDR", value_name = "ADDR")]
    pub admin: Option<SocketAddr>,

    /// Seconds to wait for calls in flight when draining on SIGTERM.
    #[arg(
        long,
        env = "MESHRPC_DRAIN_TIMEOUT",
        default_value_t = 10.0,
        value_name = "SECS"
    )]
    pub drain_timeout: f64,

    /// How to choose among replicas.
    #[arg(long, env = "MESHRPC_BALANCING", value_enum, default_value_t = Strategy::RoundRobin)]
    pub balancing: Strategy,

    /// Free-form tags gossiped with this node (comma-separated).
    #[arg(long, env = "MESHRPC_TAGS", value_delimiter = ',')]
    pub tags: Vec<String>,

    /// Which callers may call this node: rules `<service>[.<method>]=<caller>[,<caller>...]`
    /// separated by `;`, e.g. `billing=payments; greeter.greet=*`. A caller is the name in its
    /// certificate's `meshrpc://<cluster>/<name>` URI; `*` is any member. A service without a
    /// rule stays open to every member (`*=<callers>` covers them all); `meshrpc.node` only
    /// closes to a rule that names it.
    #[arg(long, env = "MESHRPC_ALLOW", value_name = "RULES")]
    pub allow: Option<Policy>,
}

impl NodeArgs {
    /// A node builder for `name` configured from these flags; `default_listen` applies when
    /// `--listen` is not given.
    pub fn builder(&self, name: &str, default_listen: SocketAddr) -> Result<NodeBuilder, TlsError> {
        let mut builder = Node::builder(name)
            .cluster(self.cluster.clone())
            .listen(self.listen.unwrap_or(default_listen))
            .seeds(
                self.nodes
                    .as_deref()
                    .map(seeds::parse_list)
                    .unwrap_or_default(),
            )
            .tags(self.tags.iter().cloned())
            .drain_timeout(Duration::from_secs_f64(self.drain_timeout.max(0.0)))
            .balancing(self.balancing);
        if let Some(addr) = self.advertise {
            builder = builder.advertise(addr);
        }
        if let Some(addr) = self.admin {
            builder = builder.admin(addr);
        }
        if let Some(policy) = &self.allow {
            builder = builder.authorize(policy.clone());
        }
        builder = match (&self.ca, &self.cert, &self.key) {
            (Some(ca), Some(cert), Some(key)) => {
                builder.tls(TlsMaterial::from_pem_files(ca, cert, key)?)
            }
            _ => match &self.state_dir {
                Some(dir) => builder.state_dir(dir),
                None => builder,
            },
        };
        Ok(builder)
    }
}

/// Installs a `tracing` subscriber that prints to stderr, filtered by `RUST_LOG` (default
/// `info`).
pub fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let _ = tracing_subscriber::registry().with(log_layer()).try_init();
}

/// The stderr log, filtered by `RUST_LOG` (default `info`).
fn log_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    use std::io::IsTerminal;
    use tracing_subscriber::Layer as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_filter(filter)
}

/// Installs logging as [`init_logging`] does and, when the environment asks for it, trace
/// export: with `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set,
/// every call this process makes or serves becomes a span sent over OTLP/HTTP (protobuf) to
/// that collector, under `service.name` `OTEL_SERVICE_NAME`, else `node_name`. Without an
/// endpoint nothing else is installed and calls make no spans.
///
/// Keep the returned guard until the process ends: dropping it sends the spans still buffered.
/// Export needs meshrpc's `otel` feature; a build without it says so on stderr when an endpoint
/// is set, and otherwise only logs.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let _telemetry = meshrpc::cli::init_tracing("greeter")?;
/// # Ok(()) }
/// ```
pub fn init_tracing(node_name: &str) -> Result<Telemetry, TelemetryError> {
    #[cfg(feature = "otel")]
    {
        use tracing_subscriber::Layer as _;
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        if let Some((exporter, layer)) = crate::telemetry::install(node_name)? {
            // Spans at `info` and above of any target, whatever `RUST_LOG` lets the log show;
            // of events only warnings and errors (attached to the span they happen in), so the
            // per-call access log stays off the call path when the log does not want it.
            let spans = tracing_subscriber::filter::filter_fn(|metadata| {
                let level = *metadata.level();
                if metadata.is_span() {
                    level <= tracing::Level::INFO
                } else {
                    level <= tracing::Level::WARN
                }
            })
            .with_max_level_hint(tracing_subscriber::filter::LevelFilter::INFO);
            let installed = tracing_subscriber::registry()
                .with(log_layer())
                .with(layer.with_filter(spans))
                .try_init()
                .is_ok();
            if installed {
                crate::telemetry::activate();
            }
            return Ok(Telemetry {
                exporter: Some(exporter),
            });
        }
    }
    #[cfg(not(feature = "otel"))]
    if [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()))
    {
        eprintln!(
            "{node_name}: an OTLP endpoint is set, but this build exports no traces \
             (build meshrpc with feature `otel`)"
        );
    }
    let _ = node_name;
    init_logging();
    Ok(Telemetry {
        #[cfg(feature = "otel")]
        exporter: None,
    })
}

/// Trace export while it lives; see [`init_tracing`]. Dropping it sends the spans still
/// buffered.
#[derive(Debug)]
#[must_use = "trace export stops when this is dropped"]
pub struct Telemetry {
    #[cfg(feature = "otel")]
    exporter: Option<crate::telemetry::Exporter>,
}

impl Telemetry {
    /// Sends the spans still buffered and stops exporting (as dropping it does).
    pub fn shutdown(self) {
        #[cfg(feature = "otel")]
        if let Some(exporter) = self.exporter {
            exporter.shutdown();
        }
    }
}

/// Why [`init_tracing`] could not set up trace export.
#[cfg(feature = "otel")]
pub type TelemetryError = crate::telemetry::TelemetryError;

/// Why [`init_tracing`] could not set up trace export (never, without feature `otel`).
#[cfg(not(feature = "otel"))]
#[derive(Debug, thiserror::Error)]
#[error("trace export is not built in")]
pub struct TelemetryError(());

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Debug, Parser)]
    struct Args {
        #[command(flatten)]
        node: NodeArgs,
    }

    fn parse(flags: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("node").chain(flags.iter().copied()))
    }

    #[test]
    fn the_balancing_flag_names_a_strategy_in_kebab_case() {
        let balancing = |flags: &[&str]| parse(flags).expect("valid flags").node.balancing;
        assert_eq!(balancing(&[]), Strategy::RoundRobin);
        assert_eq!(
            balancing(&["--balancing", "round-robin"]),
            Strategy::RoundRobin
        );
        assert_eq!(balancing(&["--balancing", "peak-ewma"]), Strategy::PeakEwma);
        let error = parse(&["--balancing", "random"]).expect_err("unknown strategy");
        assert!(
            error
                .to_string()
                .contains("[possible values: round-robin, peak-ewma]"),
            "{error}"
        );
    }

    #[test]
    fn the_allow_flag_parses_a_policy_and_names_a_bad_rule() {
        assert_eq!(parse(&[]).expect("no flags").node.allow, None);
        let policy = parse(&[
            "--allow",
            "greeter=concierge,mesh-api; billing.charge=payments",
        ])
        .expect("valid rules")
        .node
        .allow
        .expect("a policy");
        assert_eq!(
            policy.to_string(),
            "billing.charge=payments; greeter=concierge,mesh-api"
        );
        let error = parse(&["--allow", "greeter=concierge; billing payments"])
            .expect_err("a rule without `=`");
        assert!(
            error.to_string().contains(
                "invalid value 'greeter=concierge; billing payments' for '--allow <RULES>': \
                 rule `billing payments` has no `=`"
            ),
            "{error}"
        );
    }

    #[test]
    fn the_balancing_flag_explains_each_strategy() {
        let help = Args::command().render_long_help().to_string();
        assert!(
            help.contains("- round-robin: One replica after the other\n"),
            "{help}"
        );
        assert!(
            help.contains("- peak-ewma:   Power of two choices by peak-EWMA latency\n"),
            "{help}"
        );
    }
}
