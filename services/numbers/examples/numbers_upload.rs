//! A client process that uploads numbers to `numbers.sum` slowly and without end: one number
//! every `--every-ms` milliseconds, until it is killed. The fault suite starts it, waits until
//! the server serves the call, and `kill -9`s it mid-upload (the server must see an error,
//! never a clean end of the stream).
//!
//! ```text
//! cargo run -p numbers --example numbers_upload -- -N localhost:11999 --every-ms 20
//! ```

use std::time::Duration;

use clap::Parser;
use meshrpc::Streaming;
use meshrpc::cli::{ANY_PORT, NodeArgs};
use numbers::{Numbers, NumbersClient};

/// Uploads numbers to `numbers.sum` until killed.
#[derive(Debug, Parser)]
#[command(name = "numbers_upload")]
struct Args {
    #[command(flatten)]
    node: NodeArgs,
    /// Milliseconds between two numbers.
    #[arg(long, default_value_t = 20)]
    every_ms: u64,
    /// How long to wait for a `numbers` member to appear, seconds.
    #[arg(long, default_value_t = 20)]
    wait_s: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let node = args
        .node
        .builder("numbers-upload", ANY_PORT)?
        .start()
        .await?;
    let wait = Duration::from_secs(args.wait_s);
    let started = tokio::time::Instant::now();
    while node.view().publishing("numbers").next().is_none() {
        if started.elapsed() > wait {
            return Err(format!("no numbers member joined within {wait:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client: NumbersClient = node.client();
    let (sender, numbers) = Streaming::channel(16);
    let every = Duration::from_millis(args.every_ms.max(1));
    tokio::spawn(async move {
        for number in 1i64.. {
            if sender.send(number).await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
    });
    println!("uploading to numbers.sum from {}", node.local_addr());
    // Only a kill ends the upload; should the call end anyway, say how.
    let outcome = client.sum(numbers).await;
    println!("the upload ended: {outcome:?}");
    Ok(())
}
