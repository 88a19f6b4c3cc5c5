//! A node serving the example greeter, written with no dependency but `meshrpc`: tokio and clap
//! come through its re-exports.
//!
//! ```text
//! manifest-example -N localhost:11999
//! ```

use std::collections::HashMap;
use std::time::Duration;

use meshrpc::Status;
use meshrpc::clap::{self, Parser};
use meshrpc::cli::{ANY_PORT, NodeArgs};
use meshrpc_scenario_manifest_example::model::Mood;
use meshrpc_scenario_manifest_example::{
    Address, Greeter, GreeterServer, Postcard, PostcardId, Topic, Weather,
};

/// Greets people, as a member of a meshrpc mesh.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    node: NodeArgs,
}

/// Answers without keeping anything.
struct Forgetful;

impl Greeter for Forgetful {
    async fn greet(&self, name: String) -> Result<String, Status> {
        Ok(format!("Hello, {name}"))
    }
    async fn send_postcard(&self, _card: Postcard) -> Result<PostcardId, Status> {
        Ok(PostcardId(1))
    }
    async fn postcard(&self, _id: PostcardId) -> Result<Option<Postcard>, Status> {
        Ok(None)
    }
    async fn mood(&self, _of: String) -> Result<Option<Mood>, Status> {
        Ok(Some(Mood::Happy))
    }
    async fn delivery(&self, _to: Address) -> Result<Duration, Status> {
        Ok(Duration::from_secs(86_400))
    }
    async fn topics(&self) -> Result<Topic, Status> {
        Ok(Topic::default())
    }
    async fn resend(&self, copies: HashMap<PostcardId, u8>) -> Result<u32, Status> {
        Ok(copies.values().map(|copies| u32::from(*copies)).sum())
    }
    async fn ping(&self) -> Result<(), Status> {
        Ok(())
    }
    async fn forecast(&self, days: u8) -> Result<Vec<Weather>, Status> {
        Ok(vec![Weather::Sunny; usize::from(days)])
    }
}

#[meshrpc::tokio::main(crate = "meshrpc::tokio")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let node = args
        .node
        .builder("greeter", ANY_PORT)?
        .publish(GreeterServer::new(Forgetful))
        .start()
        .await?;
    node.run_until_signal().await;
    Ok(())
}
