//! A two-node mesh in one process, on loopback: one node publishes the greeter, the other
//! joins from it as a seed, discovers the service, and calls it through the generated client.
//! The caller's code is written against the `Greeter` trait, so it runs unchanged on the local
//! implementation too (interface substitution).
//!
//! ```sh
//! cargo run -p greeter --example hello_mesh
//! ```

use std::error::Error;
use std::time::Duration;

use greeter::{GREETER_SPEC, Greeter, GreeterClient, GreeterServer, GreeterService, Postcard};
use meshrpc::Node;

/// Business logic that knows only the trait: it cannot tell a local greeter from a remote one.
async fn welcome(greeter: &impl Greeter, guest: &str) -> Result<String, meshrpc::Status> {
    let greeting = greeter.greet(guest.to_owned()).await?;
    let card = greeter
        .send_postcard(Postcard {
            picture_url: String::new(),
            address: "1 Harbour Road".into(),
            recipient: guest.to_owned(),
            message: greeting.clone(),
        })
        .await?;
    Ok(format!("{greeting} (postcard to {})", card.recipient))
}

/// Starts both nodes, welcomes `guest` locally and across the mesh, drains both nodes, and
/// returns the two answers.
pub(crate) async fn run(guest: &str) -> Result<(String, String), Box<dyn Error>> {
    // The development CA and node certificates go here (a real deployment passes its own).
    let state = tempfile::tempdir()?;
    let server = Node::builder("greeter")
        .cluster("hello")
        .state_dir(state.path())
        .listen("127.0.0.1:0".parse()?)
        .publish(GreeterServer::new(GreeterService))
        .start()
        .await?;
    let caller = Node::builder("caller")
        .cluster("hello")
        .state_dir(state.path())
        .listen("127.0.0.1:0".parse()?)
        .seeds([server.local_addr().to_string()])
        .start()
        .await?;
    // Discovery: wait until a member publishing the greeter is known and answers.
    caller
        .wait_for(&[&GREETER_SPEC], Duration::from_secs(10))
        .await?;

    let local = welcome(&GreeterService, guest).await?;
    let remote: GreeterClient = caller.client();
    let over_the_mesh = welcome(&remote, guest).await?;

    caller.shutdown().await;
    server.shutdown().await;
    Ok((local, over_the_mesh))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let (local, over_the_mesh) = run("Max").await?;
    println!("local:         {local}");
    println!("over the mesh: {over_the_mesh}");
    Ok(())
}
