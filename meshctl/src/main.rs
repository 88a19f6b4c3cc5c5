//! `meshctl`: asks a meshrpc mesh who is in it, what each member publishes, what a method
//! looks like, what a call answers, how fast members answer and how often calls fail.
//!
//! It needs no reflection service and no control plane: members gossip their services and
//! schema hashes, and every node answers the built-in `meshrpc.node` service (`members`,
//! `describe`, `ping`, `stats`; docs/PROTOCOL.md section 14). meshctl starts a node of its
//! own with the same flags and environment as every meshrpc binary, but it joins nothing: it
//! asks a seed for its view of the mesh and calls members directly, so it never appears among
//! the members and never receives traffic.
//!
//! ```text
//! meshctl -N 127.0.0.1:11999 -T demo --state-dir target/demo/state members
//! meshctl -N mesh-api services --json
//! meshctl -N mesh-api describe greeter
//! meshctl -N mesh-api call greeter.greet '{"name": "Max"}'
//! meshctl -N mesh-api ping greeter-1
//! meshctl -N mesh-api top
//! ```

mod call;
mod connect;
mod describe;
mod failure;
mod members;
mod ping;
mod services;
mod table;
mod top;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::failure::Failure;

/// Asks a meshrpc mesh about its members, services and calls, from the manifests they gossip.
///
/// Mesh flags (-N, -T, --ca/--cert/--key, --state-dir) go before the command.
#[derive(Debug, Parser)]
#[command(name = "meshctl", version)]
struct Cli {
    #[command(flatten)]
    mesh: connect::MeshArgs,

    /// Print JSON instead of tables, for scripts.
    #[arg(long, global = true)]
    json: bool,

    /// How long to wait for a seed (and each member) to answer.
    #[arg(long, global = true, default_value = "3s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    timeout: Duration,

    #[command(subcommand)]
    command: Command,
}

/// What to ask.
#[derive(Debug, Subcommand)]
enum Command {
    /// Every member: name, address, state, services, tags, age.
    Members,
    /// Every service: its replicas, schema hash (and whether replicas disagree), methods.
    Services,
    /// A service's methods with their signatures, docs, flags, timeouts and declared types.
    Describe {
        /// The service's name.
        service: String,
    },
    /// Calls a method with a JSON request and prints the JSON answer.
    Call(call::CallArgs),
    /// Round-trip times of `meshrpc.node/ping` to one member.
    Ping(ping::PingArgs),
    /// Calls/s, error rate and p50/p99 per service and method, refreshed every interval.
    Top(top::TopArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        meshrpc::cli::init_logging();
    }
    let runtime = match meshrpc::tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("meshctl: cannot start the async runtime: {error}");
            return ExitCode::from(failure::EXIT_MESH);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("meshctl: {}", failure.message);
            ExitCode::from(failure.exit)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    // A request body is read (from stdin, say) before anything touches the mesh.
    let body = match &cli.command {
        Command::Call(args) => Some(args.read_body()?),
        _ => None,
    };
    let mesh = connect::Mesh::connect(&cli.mesh, cli.timeout).await?;
    let result = match cli.command {
        Command::Members => members::run(&mesh, cli.json),
        Command::Services => services::run(&mesh, cli.json).await,
        Command::Describe { service } => describe::run(&mesh, &service, cli.json).await,
        Command::Call(args) => call::run(&mesh, args, body.unwrap_or_default(), cli.json).await,
        Command::Ping(args) => ping::run(&mesh, args, cli.json).await,
        Command::Top(args) => top::run(&mesh, args, cli.json).await,
    };
    mesh.close().await;
    result
}
