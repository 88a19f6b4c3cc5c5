//! `greeter`: publishes the greeter service and its legacy HTTP handler on the mesh.
//!
//! ```text
//! greeter -N localhost:11999            # join the mesh through the gateway
//! MESHRPC_CLUSTER_NODES=mesh-api greeter  # the same, from the environment
//! ```

use clap::Parser;
use greeter::{GreeterServer, GreeterService, http_handlers};
use meshrpc::cli::{ANY_PORT, NodeArgs, init_tracing};

/// Greets people and sends postcards, as a member of a meshrpc mesh.
#[derive(Debug, Parser)]
#[command(name = "greeter", version)]
struct Args {
    #[command(flatten)]
    node: NodeArgs,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Logs, and spans over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    let telemetry = init_tracing("greeter")?;
    let args = Args::parse();
    let node = args
        .node
        .builder("greeter", ANY_PORT)?
        .publish(GreeterServer::new(GreeterService))
        .publish_http("greeter", http_handlers())
        .start()
        .await?;
    println!(
        "greeter listening on {} (advertised as {})",
        node.local_addr(),
        node.advertised_addr()
    );
    node.run_until_signal().await;
    telemetry.shutdown();
    Ok(())
}
