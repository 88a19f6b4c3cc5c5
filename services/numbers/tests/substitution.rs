//! Interface substitution with streams: code written against the `Numbers` trait gets the same
//! results from the implementation itself, from the generated client over an in-process
//! channel, and from the generated client over QUIC between two nodes. An aborted client
//! stream reaches the handler as an error on all three, never as a clean end.

use std::sync::Arc;

use meshrpc::{Channel, Code, Node, Status, Streaming};
use numbers::{DynNumbers, Numbers, NumbersClient, NumbersServer, NumbersService};

/// What the business logic below observed.
#[derive(Debug, PartialEq)]
struct Outcome {
    counted: Vec<u64>,
    backwards: Code,
    sum: i64,
    overflow: Code,
    aborted_sum: Code,
    dropped_sum: Code,
    totals: Vec<i64>,
    aborted_totals: (Vec<i64>, Code),
}

/// Drains a stream into its items and the code it ended with (`Ok` for a clean end).
async fn drain<T>(mut stream: Streaming<T>) -> (Vec<T>, Code) {
    let mut items = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(item)) => items.push(item),
            Ok(None) => return (items, Code::Ok),
            Err(status) => return (items, status.code()),
        }
    }
}

/// A client stream that sends `items` and then aborts with `status`.
async fn aborting(items: &[i64], status: Status) -> Streaming<i64> {
    let (sender, stream) = Streaming::channel(items.len() + 1);
    for item in items {
        sender.send(*item).await.expect("room in the channel");
    }
    sender.abort(status).await;
    stream
}

/// Business logic that knows only the trait.
async fn exercise(numbers: &impl Numbers) -> Outcome {
    let counted = drain(numbers.count(3, 7, 0).await.expect("counts")).await;
    assert_eq!(counted.1, Code::Ok, "a count ends cleanly");
    let backwards = numbers.count(7, 3, 0).await.expect_err("refused").code();
    let sum = numbers
        .sum(Streaming::iter(1..=100))
        .await
        .expect("adds up");
    let overflow = numbers
        .sum(Streaming::iter([i64::MAX, 1]))
        .await
        .expect_err("overflows")
        .code();
    let aborted_sum = numbers
        .sum(aborting(&[1, 2, 3], Status::aborted("the producer gave up")).await)
        .await
        .expect_err("an aborted stream is no sum")
        .code();
    let (sender, dropped) = Streaming::channel(4);
    sender.send(5).await.expect("room");
    drop(sender);
    let dropped_sum = numbers
        .sum(dropped)
        .await
        .expect_err("a dropped sender is no clean end")
        .code();
    let (totals, end) = drain(
        numbers
            .running_total(Streaming::iter([1, 2, 3, -10]))
            .await
            .expect("answers"),
    )
    .await;
    assert_eq!(end, Code::Ok, "running totals end cleanly");
    let aborted_totals = drain(
        numbers
            .running_total(aborting(&[4, 5], Status::aborted("the producer gave up")).await)
            .await
            .expect("answers"),
    )
    .await;
    Outcome {
        counted: counted.0,
        backwards,
        sum,
        overflow,
        aborted_sum,
        dropped_sum,
        totals,
        aborted_totals,
    }
}

fn expected() -> Outcome {
    Outcome {
        counted: vec![3, 4, 5, 6, 7],
        backwards: Code::InvalidArgument,
        sum: 5050,
        overflow: Code::OutOfRange,
        aborted_sum: Code::Aborted,
        dropped_sum: Code::Cancelled,
        totals: vec![1, 3, 6, -4],
        aborted_totals: (vec![4, 9], Code::Aborted),
    }
}

#[tokio::test]
async fn the_same_code_gives_the_same_results_locally_and_through_a_local_channel() {
    let local = exercise(&NumbersService).await;
    assert_eq!(local, expected());
    let client = NumbersClient::new(Channel::local(NumbersServer::new(NumbersService)));
    assert_eq!(exercise(&client).await, local);
    // An implementation chosen at run time, as a trait object, and served from one.
    let chosen: Arc<DynNumbers> = Arc::new(NumbersService);
    assert_eq!(exercise(&chosen).await, local);
    let served = NumbersClient::new(Channel::local(NumbersServer::new(chosen)));
    assert_eq!(exercise(&served).await, local);
}

#[tokio::test]
async fn the_same_code_gives_the_same_results_across_the_mesh() {
    let state = tempfile::tempdir().expect("tempdir");
    let start = |name: &'static str| {
        Node::builder(name)
            .cluster("numbers-substitution")
            .state_dir(state.path())
            .listen("127.0.0.1:0".parse().expect("addr"))
    };
    let server = start("numbers")
        .publish(NumbersServer::new(NumbersService))
        .start()
        .await
        .expect("server starts");
    let caller = start("caller").start().await.expect("caller starts");
    let remote: NumbersClient = caller.client_to(server.local_addr());
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(30), exercise(&remote))
        .await
        .expect("the calls finish");
    assert_eq!(outcome, expected());
}
