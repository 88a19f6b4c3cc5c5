//! The numbers service through `Channel::local`: counts, sums and running totals, their
//! refusals, overflow, and aborted input streams.

use std::time::Duration;

use meshrpc::{Channel, Code, Status, Streaming};
use numbers::{Numbers, NumbersClient, NumbersServer, NumbersService};
use tokio::time::Instant;

fn client() -> NumbersClient {
    NumbersClient::new(Channel::local(NumbersServer::new(NumbersService)))
}

async fn collect<T>(mut stream: Streaming<T>) -> Result<Vec<T>, Status> {
    let mut items = Vec::new();
    while let Some(item) = stream.message().await? {
        items.push(item);
    }
    Ok(items)
}

#[tokio::test]
async fn count_yields_the_whole_range_then_ends() {
    let items = collect(client().count(1, 4, 0).await.expect("counts"))
        .await
        .expect("ends cleanly");
    assert_eq!(items, [1, 2, 3, 4]);
    let one = collect(client().count(9, 9, 0).await.expect("counts"))
        .await
        .expect("ends cleanly");
    assert_eq!(one, [9]);
    let top = collect(
        client()
            .count(u64::MAX - 1, u64::MAX, 0)
            .await
            .expect("counts"),
    )
    .await
    .expect("ends at u64::MAX without overflowing");
    assert_eq!(top, [u64::MAX - 1, u64::MAX]);
}

#[tokio::test]
async fn counting_backwards_is_refused_naming_both_ends() {
    let error = client().count(10, 2, 0).await.expect_err("refused");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("from 10 down to 2"), "{error}");
}

#[tokio::test]
async fn a_huge_count_is_produced_only_as_far_as_it_is_read() {
    // An eager producer would never get to answer: the range has 2^64 numbers.
    let mut count = client().count(0, u64::MAX, 0).await.expect("counts");
    for expected in 0..1_000 {
        assert_eq!(count.message().await.expect("an item"), Some(expected));
    }
}

#[tokio::test(start_paused = true)]
async fn count_paces_its_numbers_every_ms_apart() {
    let started = Instant::now();
    let items = collect(NumbersService.count(1, 3, 250).await.expect("counts"))
        .await
        .expect("ends cleanly");
    assert_eq!(items, [1, 2, 3]);
    // The first number comes at once, each next one a period later (on the paused clock).
    assert_eq!(started.elapsed(), Duration::from_millis(500));
}

#[tokio::test]
async fn sum_adds_up_the_stream() {
    assert_eq!(
        client()
            .sum(Streaming::iter([5, -2, 40]))
            .await
            .expect("sum"),
        43
    );
    assert_eq!(client().sum(Streaming::empty()).await.expect("sum"), 0);
}

#[tokio::test]
async fn sum_refuses_an_overflow_naming_the_item() {
    let error = client()
        .sum(Streaming::iter([1, i64::MAX, 3]))
        .await
        .expect_err("overflows");
    assert_eq!(error.code(), Code::OutOfRange);
    assert!(error.message().contains("at item 2"), "{error}");
    let error = client()
        .sum(Streaming::iter([i64::MIN, -1]))
        .await
        .expect_err("overflows below");
    assert_eq!(error.code(), Code::OutOfRange);
}

#[tokio::test]
async fn an_aborted_stream_is_never_summed() {
    let (sender, numbers) = Streaming::channel(4);
    sender.send(1).await.expect("room");
    sender.send(2).await.expect("room");
    sender
        .abort(Status::unavailable("the source went away"))
        .await;
    let error = client().sum(numbers).await.expect_err("no partial sum");
    assert_eq!(error.code(), Code::Unavailable);
    assert!(error.message().contains("the source went away"), "{error}");
}

#[tokio::test]
async fn running_total_answers_each_number_with_the_total_so_far() {
    let totals = collect(
        client()
            .running_total(Streaming::iter([3, 4, -10, 0]))
            .await
            .expect("answers"),
    )
    .await
    .expect("ends cleanly");
    assert_eq!(totals, [3, 7, -3, -3]);
}

#[tokio::test]
async fn running_total_answers_as_the_numbers_arrive() {
    let (sender, numbers) = Streaming::channel(1);
    let mut totals = client().running_total(numbers).await.expect("answers");
    sender.send(2).await.expect("room");
    assert_eq!(totals.message().await.expect("an item"), Some(2));
    sender.send(5).await.expect("room");
    assert_eq!(totals.message().await.expect("an item"), Some(7));
    sender.finish();
    assert_eq!(totals.message().await.expect("a clean end"), None);
}

#[tokio::test]
async fn running_total_ends_with_the_error_of_an_aborted_input_or_an_overflow() {
    let (sender, numbers) = Streaming::channel(4);
    sender.send(1).await.expect("room");
    drop(sender);
    let mut totals = client().running_total(numbers).await.expect("answers");
    assert_eq!(totals.message().await.expect("an item"), Some(1));
    let error = totals.message().await.expect_err("not a clean end");
    assert_eq!(error.code(), Code::Cancelled);

    let totals = client()
        .running_total(Streaming::iter([i64::MAX, 1, 2]))
        .await
        .expect("answers");
    let error = collect(totals).await.expect_err("overflows");
    assert_eq!(error.code(), Code::OutOfRange);
    assert!(error.message().contains("at item 2"), "{error}");
}

#[tokio::test]
async fn a_client_stream_method_called_without_a_stream_is_refused() {
    let channel = Channel::local(NumbersServer::new(NumbersService));
    let request = meshrpc::codec::encode(&numbers::numbers_messages::SumRequest {}).expect("{}");
    let mut call = meshrpc::Call::new("numbers", "sum", request);
    call.kind = meshrpc::MethodKind::ClientStreaming;
    let error = channel.call(call).await.expect_err("no stream");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("reads a stream"), "{error}");
}
