//! The example across a real mesh on loopback: a node serves an `Arc<DynGreeter>`, another calls
//! it through its client held as an `Arc<DynGreeter>`, and the serving node's `describe` answers
//! the descriptor with the schema of the `use` type that derives `JsonSchema`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use meshrpc::node_service::{DescribeReply, NODE_SPEC};
use meshrpc::{CallOptions, Node, Status};
use meshrpc_scenario_manifest_example::model::Mood;
use meshrpc_scenario_manifest_example::{
    Address, DynGreeter, GREETER_SPEC, Greeter, GreeterClient, GreeterServer, Postcard, PostcardId,
    Topic, Weather,
};
use serde_json::Value;

/// Answers from its arguments alone.
struct Echo;

impl Greeter for Echo {
    async fn greet(&self, name: String) -> Result<String, Status> {
        Ok(format!("Hello, {name}"))
    }
    async fn send_postcard(&self, card: Postcard) -> Result<PostcardId, Status> {
        Ok(PostcardId(card.address.1.into()))
    }
    async fn postcard(&self, _id: PostcardId) -> Result<Option<Postcard>, Status> {
        Ok(None)
    }
    async fn mood(&self, of: String) -> Result<Option<Mood>, Status> {
        Ok(Some(Mood::Grumpy { reason: of }))
    }
    async fn delivery(&self, to: Address) -> Result<Duration, Status> {
        Ok(Duration::from_millis(to.1.into()))
    }
    async fn topics(&self) -> Result<Topic, Status> {
        Ok(Topic {
            name: "root".into(),
            featured: Some(Box::new(Topic::default())),
            ..Topic::default()
        })
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

#[meshrpc::tokio::test(crate = "meshrpc::tokio", flavor = "multi_thread", worker_threads = 2)]
async fn a_dyn_greeter_is_served_and_called_across_the_mesh() {
    let state = tempfile::tempdir().expect("a state directory");
    let served: Arc<DynGreeter> = Arc::new(Echo);
    let server = Node::builder("greeter")
        .cluster("manifest-example")
        .state_dir(state.path())
        .listen("127.0.0.1:0".parse().expect("address"))
        .publish(GreeterServer::new(served))
        .start()
        .await
        .expect("the serving node starts");
    let caller = Node::builder("caller")
        .cluster("manifest-example")
        .state_dir(state.path())
        .listen("127.0.0.1:0".parse().expect("address"))
        .seeds([server.local_addr().to_string()])
        .start()
        .await
        .expect("the calling node starts");
    caller
        .wait_for(&[&GREETER_SPEC], Duration::from_secs(10))
        .await
        .expect("the greeter is found");

    let remote: Arc<DynGreeter> = Arc::new(caller.client::<GreeterClient>());
    assert_eq!(
        remote.greet("Max".into()).await.expect("greets"),
        "Hello, Max"
    );
    assert_eq!(
        remote
            .delivery(Address("Main Street".into(), 250))
            .await
            .expect("delivery"),
        Duration::from_millis(250)
    );
    let topics = remote.topics().await.expect("topics");
    assert_eq!(topics.featured.as_deref(), Some(&Topic::default()));

    let reply: DescribeReply = caller
        .channel_to(server.local_addr())
        .unary(
            &NODE_SPEC.methods[1],
            &(),
            &CallOptions::new().timeout(Duration::from_secs(5)),
        )
        .await
        .expect("describe answers");
    let descriptor: Value = serde_json::from_str(&reply.descriptors[0]).expect("json");
    assert_eq!(descriptor["service"], "greeter");
    assert_eq!(
        descriptor["types"]["greeter.Stamp"]["properties"]["country"]["type"],
        "string"
    );
    assert!(descriptor["types"]["greeter.Stamp.StampKind"].is_object());

    caller.shutdown().await;
    server.shutdown().await;
}
