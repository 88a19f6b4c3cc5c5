//! `numbers`: publishes the numbers service, the streaming example, on the mesh.
//!
//! ```text
//! numbers -N localhost:11999            # join the mesh through the gateway
//! MESHRPC_CLUSTER_NODES=mesh-api numbers  # the same, from the environment
//! ```

use clap::Parser;
use meshrpc::cli::{ANY_PORT, NodeArgs, init_tracing};
use numbers::{NumbersServer, NumbersService};

/// Counts, sums and running totals of streams of numbers, as a member of a meshrpc mesh.
#[derive(Debug, Parser)]
#[command(name = "numbers", version)]
struct Args {
    #[command(flatten)]
    node: NodeArgs,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Logs, and spans over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    let telemetry = init_tracing("numbers")?;
    let args = Args::parse();
    let node = args
        .node
        .builder("numbers", ANY_PORT)?
        .publish(NumbersServer::new(NumbersService))
        .start()
        .await?;
    println!(
        "numbers listening on {} (advertised as {})",
        node.local_addr(),
        node.advertised_addr()
    );
    node.run_until_signal().await;
    telemetry.shutdown();
    Ok(())
}
