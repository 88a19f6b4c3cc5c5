//! The client side of the streaming scenario: server streams read as fast as they come
//! (messages/s and MB/s), and the slow consumer (a large stream read at a fixed, low rate while
//! the resident sets of both processes are sampled, then dropped). Every loop is bounded in
//! messages and in time.

use std::cell::Cell;
use std::pin::pin;
use std::time::Duration;

use futures::future::{Either, select};
use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt as _};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::load::{Job, Outcome, measured};
use crate::systems::producer::unix_ns;
use crate::systems::{BenchClient, MessageStream, Received, Result};

/// Messages asked of each stream of a throughput run: more than any run reads; the client
/// drops the stream (a cancel) when its time is up.
const ENDLESS: u64 = 1 << 50;

/// Longest wait for one message before a run is declared hung.
const STALL: Duration = Duration::from_secs(10);

/// How long the slow consumer's process runs on after dropping its stream.
const LINGER: Duration = Duration::from_millis(500);

/// How often the slow consumer samples the resident sets.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// What the slow consumer measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct SlowFigures {
    /// Payload bytes read.
    pub(crate) bytes_read: u64,
    /// How long it read, seconds.
    pub(crate) read_s: f64,
    /// Server resident set (`VmRSS`) when the slow reading began, and its largest sample.
    pub(crate) server_rss_start_kib: u64,
    pub(crate) server_rss_max_kib: u64,
    /// The client's own, likewise.
    pub(crate) client_rss_start_kib: u64,
    pub(crate) client_rss_max_kib: u64,
    /// When the client dropped its stream, ns since the Unix epoch.
    pub(crate) cancelled_ns: u64,
}

/// Runs a [`Job::Stream`] or [`Job::SlowConsumer`] on `client`.
pub(crate) async fn run_stream_job<C: BenchClient>(
    client: C,
    job: &Job,
    ready: impl FnOnce() -> Result<()>,
) -> Result<Outcome> {
    match *job {
        Job::Stream {
            size,
            streams,
            warmup_s,
            duration_s,
            max_messages,
        } => {
            // Each stream is read as soon as it opens: a stream left unread while the others
            // open would fill the connection's flow-control window and stall them.
            let streams = streams.max(1);
            let opened = Cell::new(0usize);
            let opening: FuturesUnordered<_> = (0..streams)
                .map(|_| async {
                    let stream = client.server_stream(size, ENDLESS).await;
                    opened.set(opened.get() + 1);
                    stream
                })
                .collect();
            let mut merged = Box::pin(
                opening
                    .map(|opened| match opened {
                        Ok(stream) => stream,
                        Err(error) => futures::stream::once(async { Err(error) }).boxed(),
                    })
                    .flatten_unordered(None),
            );
            let warmup = Duration::from_secs_f64(warmup_s);
            let warming = Instant::now();
            read(&mut merged, warmup, max_messages / 4 + 1).await?;
            // Every stream open before the measured phase, however slow the machine.
            while opened.get() < streams {
                if warming.elapsed() > warmup + STALL {
                    return Err(format!(
                        "only {} of {streams} streams opened within {:?}",
                        opened.get(),
                        warmup + STALL
                    )
                    .into());
                }
                read(&mut merged, Duration::from_millis(20), max_messages / 4 + 1).await?;
            }
            ready()?;
            let outcome = measured(|| {
                read(
                    &mut merged,
                    Duration::from_secs_f64(duration_s),
                    max_messages,
                )
            })
            .await?;
            drop(merged);
            Ok(outcome)
        }
        Job::SlowConsumer {
            size,
            total_bytes,
            rate_bytes_per_s,
            duration_s,
            server_pid,
        } => {
            let count = total_bytes / u64::from(size.max(1));
            let mut stream = client.server_stream(size, count).await?;
            // The first message: the stream is open and flowing before the measured phase.
            let first = next(&mut stream).await?;
            ready()?;
            let mut outcome = Outcome::default();
            let figures = slow_read(
                &mut stream,
                first.map_or(0, |r| r.bytes),
                total_bytes,
                rate_bytes_per_s.max(1),
                Duration::from_secs_f64(duration_s),
                server_pid,
            )
            .await;
            // The consumer goes away: the stream is dropped (a cancel on the wire). The process
            // lives on a moment so that the cancel leaves it (a QUIC process that exits at once
            // sends nothing, and its peer learns of it only at the idle timeout).
            let cancelled_ns = unix_ns();
            drop(stream);
            tokio::time::sleep(LINGER).await;
            let mut figures = figures?;
            figures.cancelled_ns = cancelled_ns;
            outcome.calls = 1;
            outcome.bytes = figures.bytes_read;
            outcome.elapsed_s = figures.read_s;
            outcome.client_hwm_kib = crate::procfs::peak_rss_kib(std::process::id())?;
            outcome.slow = Some(figures);
            Ok(outcome)
        }
        _ => Err("not a streaming job".into()),
    }
}

/// The next message of `stream`, within [`STALL`]; `None` when the stream ended.
async fn next(stream: &mut MessageStream) -> Result<Option<Received>> {
    match tokio::time::timeout(STALL, stream.next()).await {
        Err(_) => Err(format!("no message for {STALL:?}").into()),
        Ok(None) => Ok(None),
        Ok(Some(Ok(received))) => Ok(Some(received)),
        Ok(Some(Err(error))) => Err(error),
    }
}

/// Reads `streams` as fast as they come for `duration` or `max_messages`; a stream that ends or
/// fails fails the run (every stream asked for more than a run reads).
async fn read(
    streams: &mut (impl Stream<Item = Result<Received>> + Unpin),
    duration: Duration,
    max_messages: u64,
) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    let start = Instant::now();
    let mut over = pin!(tokio::time::sleep(duration));
    while outcome.calls < max_messages {
        let item = match select(streams.next(), over.as_mut()).await {
            Either::Left((item, _)) => item,
            // A window with nothing read says nothing: on a loaded machine (a debug build among
            // other tests) the first message may come later; wait for it, up to the stall bound.
            Either::Right(((), _)) if outcome.calls == 0 && start.elapsed() < duration + STALL => {
                over.set(tokio::time::sleep(STALL));
                continue;
            }
            Either::Right(((), _)) => break,
        };
        match item {
            Some(Ok(received)) => {
                outcome.calls += received.messages;
                outcome.bytes += received.bytes;
            }
            Some(Err(error)) => {
                outcome.fail(error);
                break;
            }
            None => {
                outcome.fail(format!(
                    "a stream ended after {} messages, before its time",
                    outcome.calls
                ));
                break;
            }
        }
        if start.elapsed() > duration + STALL {
            break;
        }
    }
    outcome.elapsed_s = start.elapsed().as_secs_f64();
    Ok(outcome)
}

/// Reads `stream` at `rate` bytes a second for at most `duration` (or `total` bytes),
/// sampling both resident sets every [`SAMPLE_EVERY`].
async fn slow_read(
    stream: &mut MessageStream,
    already: u64,
    total: u64,
    rate: u64,
    duration: Duration,
    server_pid: u32,
) -> Result<SlowFigures> {
    let rss = |pid: u32| crate::procfs::rss_kib(pid);
    let own = std::process::id();
    let mut figures = SlowFigures {
        bytes_read: already,
        server_rss_start_kib: rss(server_pid)?,
        client_rss_start_kib: rss(own)?,
        ..SlowFigures::default()
    };
    figures.server_rss_max_kib = figures.server_rss_start_kib;
    figures.client_rss_max_kib = figures.client_rss_start_kib;
    let start = Instant::now();
    let mut sample_at = start;
    while start.elapsed() < duration && figures.bytes_read < total {
        let now = Instant::now();
        if now >= sample_at {
            figures.server_rss_max_kib = figures.server_rss_max_kib.max(rss(server_pid)?);
            figures.client_rss_max_kib = figures.client_rss_max_kib.max(rss(own)?);
            sample_at = now + SAMPLE_EVERY;
        }
        // Read no faster than `rate`: the next message only once the bytes so far are due.
        let due =
            start + Duration::from_secs_f64((figures.bytes_read - already) as f64 / rate as f64);
        tokio::time::sleep_until(due.min(start + duration)).await;
        if start.elapsed() >= duration {
            break;
        }
        match next(stream).await? {
            Some(received) => figures.bytes_read += received.bytes,
            None => break,
        }
    }
    figures.server_rss_max_kib = figures.server_rss_max_kib.max(rss(server_pid)?);
    figures.client_rss_max_kib = figures.client_rss_max_kib.max(rss(own)?);
    figures.read_s = start.elapsed().as_secs_f64();
    Ok(figures)
}
