//! `concierge`: publishes the concierge service, which calls the greeter across the mesh.

use clap::Parser;
use concierge::{ConciergeServer, ConciergeService, GreeterClient};
use meshrpc::cli::{ANY_PORT, NodeArgs, init_tracing};

/// Welcomes groups of guests by calling the greeter, as a member of a meshrpc mesh.
#[derive(Debug, Parser)]
#[command(name = "concierge", version)]
struct Args {
    #[command(flatten)]
    node: NodeArgs,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Logs, and spans over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    let telemetry = init_tracing("concierge")?;
    let args = Args::parse();
    let builder = args.node.builder("concierge", ANY_PORT)?;
    let greeter: GreeterClient = builder.client();
    let node = builder
        .publish(ConciergeServer::new(ConciergeService::new(greeter)))
        .start()
        .await?;
    println!(
        "concierge listening on {} (advertised as {})",
        node.local_addr(),
        node.advertised_addr()
    );
    node.run_until_signal().await;
    telemetry.shutdown();
    Ok(())
}
