//! `mesh-api`: the meshrpc API gateway. Joins the mesh as its seed (UDP `0.0.0.0:11999` by
//! default) and serves HTTP on `0.0.0.0:8282`.
//!
//! ```text
//! mesh-api                                   # then: greeter -N localhost:11999
//! curl http://localhost:8282/greeter/greet/Max
//! ```

use clap::Parser;
use gateway::GatewayArgs;
use meshrpc::cli::{NodeArgs, SEED_PORT, init_tracing};

/// The HTTP API gateway of a meshrpc mesh.
#[derive(Debug, Parser)]
#[command(name = "mesh-api", version)]
struct Args {
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    gateway: GatewayArgs,
}

/// The routes this binary mounts beside the generic ones: with the `greeter-rest` feature (a
/// default), the original gateway's REST routes for the greeter.
fn extensions() -> Vec<gateway::Extension> {
    #[cfg(feature = "greeter-rest")]
    {
        vec![
            gateway::Extension::new(&greeter::GREETER_SPEC, |context| {
                greeter::rest::router(
                    context
                        .node()
                        .client::<greeter::GreeterClient>()
                        .with_options(context.call_options()),
                )
            })
            .with_openapi(greeter::rest::document),
        ]
    }
    #[cfg(not(feature = "greeter-rest"))]
    {
        Vec::new()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Logs, and spans over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    let telemetry = init_tracing("mesh-api")?;
    let args = Args::parse();
    let node = args.node.builder("mesh-api", SEED_PORT)?.start().await?;
    let gateway = gateway::serve_with(args.gateway.config(), node.clone(), extensions()).await?;
    println!(
        "mesh-api serving HTTP on {} and the mesh on {}",
        gateway.local_addr(),
        node.local_addr()
    );
    meshrpc::node::wait_for_signal().await;
    gateway.shutdown().await;
    node.shutdown().await;
    telemetry.shutdown();
    Ok(())
}
