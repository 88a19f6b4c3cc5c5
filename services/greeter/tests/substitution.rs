//! Interface substitution: code written against the `Greeter` trait runs unchanged on the local
//! implementation and on a client whose calls cross the mesh over QUIC.

use greeter::{Greeter, GreeterClient, GreeterServer, GreeterService, Postcard};
use meshrpc::{Code, Node};

/// Business logic that knows only the trait.
async fn greet_and_post(greeter: &impl Greeter, name: &str) -> (String, Result<Postcard, Code>) {
    let greeting = greeter.greet(name.to_owned()).await.expect("greets");
    let card = Postcard {
        picture_url: String::new(),
        address: "World".into(),
        recipient: name.to_owned(),
        message: greeting.clone(),
    };
    let sent = greeter
        .send_postcard(card)
        .await
        .map_err(|status| status.code());
    (greeting, sent)
}

#[tokio::test]
async fn the_same_code_gives_the_same_results_locally_and_across_the_mesh() {
    let state = tempfile::tempdir().expect("tempdir");
    let start = |name: &'static str| {
        Node::builder(name)
            .cluster("substitution")
            .state_dir(state.path())
            .listen("127.0.0.1:0".parse().expect("addr"))
    };
    let server = start("greeter")
        .publish(GreeterServer::new(GreeterService))
        .start()
        .await
        .expect("server starts");
    let caller = start("caller").start().await.expect("caller starts");
    let remote: GreeterClient = caller.client_to(server.local_addr());

    for name in ["Max", "Ada", ""] {
        let local = greet_and_post(&GreeterService, name).await;
        let over_the_mesh = greet_and_post(&remote, name).await;
        assert_eq!(local, over_the_mesh, "for {name:?}");
    }
    // The empty recipient is refused the same way on both sides.
    assert_eq!(
        greet_and_post(&remote, "").await.1,
        Err(Code::InvalidArgument)
    );
}
