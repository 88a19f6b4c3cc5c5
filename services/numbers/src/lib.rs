#![warn(missing_docs)]
//! The numbers service, the streaming example: the generated `Numbers` trait, `NumbersServer`,
//! `NumbersClient` and `NUMBERS_SPEC` (from `services.toml`), and [`NumbersService`], the
//! implementation that nodes publish.
//!
//! ```
//! use meshrpc::{Channel, Streaming};
//! use numbers::{Numbers, NumbersClient, NumbersServer, NumbersService};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let client = NumbersClient::new(Channel::local(NumbersServer::new(NumbersService)));
//! let mut count = client.count(1, 3, 0).await.unwrap();
//! while let Some(number) = count.message().await.unwrap() {
//!     println!("{number}");
//! }
//! assert_eq!(client.sum(Streaming::iter([1, 2, 3])).await.unwrap(), 6);
//! # });
//! ```

use std::time::Duration;

use meshrpc::{Status, Streaming};
use tokio::time::{Interval, MissedTickBehavior};

meshrpc::include_services!("numbers");

/// The numbers service: counts, sums and running totals.
///
/// Every stream it answers is produced lazily, one item each time the caller asks for the
/// next: a caller that reads slowly slows the producer down instead of piling items up.
#[derive(Debug, Clone, Copy, Default)]
pub struct NumbersService;

impl Numbers for NumbersService {
    async fn count(&self, from: u64, to: u64, every_ms: u32) -> Result<Streaming<u64>, Status> {
        if from > to {
            return Err(Status::invalid_argument(format!(
                "cannot count from {from} down to {to}: `from` must not be greater than `to`"
            )));
        }
        Ok(counter(from, to, every_ms))
    }

    async fn sum(&self, mut numbers: Streaming<i64>) -> Result<i64, Status> {
        let mut total: i64 = 0;
        let mut items: u64 = 0;
        // An aborted stream ends the call with its error: never a partial sum.
        while let Some(number) = numbers.message().await? {
            items += 1;
            total = total
                .checked_add(number)
                .ok_or_else(|| overflow("sum", items, number))?;
        }
        Ok(total)
    }

    async fn running_total(&self, numbers: Streaming<i64>) -> Result<Streaming<i64>, Status> {
        let mut total: i64 = 0;
        let mut items: u64 = 0;
        Ok(numbers.try_map(move |number| {
            items += 1;
            total = total
                .checked_add(number)
                .ok_or_else(|| overflow("running total", items, number))?;
            Ok(total)
        }))
    }
}

/// The `out_of_range` error of a total that no longer fits in an `i64`.
fn overflow(what: &str, items: u64, number: i64) -> Status {
    Status::out_of_range(format!(
        "the {what} no longer fits in a 64-bit integer at item {items} ({number}); \
         send fewer or smaller numbers"
    ))
}

/// `from..=to`, one number per `every_ms` (as fast as it is read when 0), produced only as it
/// is read.
fn counter(from: u64, to: u64, every_ms: u32) -> Streaming<u64> {
    let ticks = (every_ms > 0).then(|| {
        let mut interval = tokio::time::interval(Duration::from_millis(u64::from(every_ms)));
        // A slow reader gets the next number at once, not a burst to catch up.
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        interval
    });
    let state: (Option<u64>, Option<Interval>) = (Some(from), ticks);
    Streaming::new(futures_util::stream::unfold(
        state,
        move |(next, mut ticks)| async move {
            let number = next?;
            if let Some(ticks) = ticks.as_mut() {
                ticks.tick().await;
            }
            let following = (number < to).then(|| number + 1);
            Some((Ok(number), (following, ticks)))
        },
    ))
}
