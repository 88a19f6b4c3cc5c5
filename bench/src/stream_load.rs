//! The client side of the streaming scenario: server streams read as fast as they come
//! (messages/s and MB/s), and the slow consumer (a large stream read at a fixed, low rate while
//! the resident sets of both processes are sampled, then dropped). Every loop is bounded in
//! messages and in time.

use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{Either, select};
use futures::stream::FuturesUnordered;
use futures::{Future, Stream, StreamExt as _};
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

/// How far from its stream's end the slow consumer stops at the latest: more than the transport
/// holds between the producer and the consumer (a stream's flow-control window, about 4 MiB,
/// and the writer's batch), so the producer has not finished when the consumer leaves.
const END_MARGIN: u64 = 16 * 1024 * 1024;

/// How long the slow consumer's process runs on after dropping its stream.
const LINGER: Duration = Duration::from_millis(500);

/// How many items a throughput run reads between two looks at the clock: a run whose streams
/// are always ready never waits on its timer, and reading the clock per item would cost more
/// than a small message itself.
const CLOCK_EVERY: u32 = 64;

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
            let mut merged = Merged::new(
                (0..streams)
                    .map(|_| client.server_stream(size, ENDLESS))
                    .collect(),
            );
            let warmup = Duration::from_secs_f64(warmup_s);
            let warming = Instant::now();
            read(&mut merged, warmup, max_messages / 4 + 1).await?;
            // Every stream open before the measured phase, however slow the machine.
            while merged.open() < streams {
                if warming.elapsed() > warmup + STALL {
                    return Err(format!(
                        "only {} of {streams} streams opened within {:?}",
                        merged.open(),
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
            // Short of the stream's end by more than the transport holds between producer and
            // consumer: the producer is still running when the consumer leaves, even when it
            // reads for as long as the stream lasts (`--long`), so its stop is measured either
            // way.
            let figures = slow_read(
                &mut stream,
                first.map_or(0, |r| r.bytes),
                total_bytes.saturating_sub(END_MARGIN),
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
/// fails fails the run (every stream asked for more than a run reads). A window in which nothing
/// arrived is extended once, by [`STALL`], for the first message.
async fn read(
    streams: &mut (impl Stream<Item = Result<Received>> + Unpin),
    duration: Duration,
    max_messages: u64,
) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    let start = Instant::now();
    let mut end = start + duration;
    let mut over = pin!(tokio::time::sleep_until(end));
    let mut unchecked = 0;
    while outcome.calls < max_messages {
        let item = match select(streams.next(), over.as_mut()).await {
            Either::Left((item, _)) => item,
            // A window with nothing read says nothing: on a loaded machine (a debug build among
            // other tests) the first message may come later; wait for it, up to the stall bound.
            Either::Right(((), _)) if outcome.calls == 0 && end == start + duration => {
                end += STALL;
                over.set(tokio::time::sleep_until(end));
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
        // Streams that are always ready never let the timer above fire: look at the clock.
        unchecked += 1;
        if unchecked == CLOCK_EVERY {
            unchecked = 0;
            if Instant::now() >= end {
                break;
            }
        }
    }
    outcome.elapsed_s = start.elapsed().as_secs_f64();
    Ok(outcome)
}

/// The streams of a throughput run read as one: each is read from the moment it opens, and the
/// open ones take turns, one item each. (`flatten_unordered` would queue a stream again after
/// every item it yields, which costs more than a small message.)
struct Merged<O> {
    opening: FuturesUnordered<O>,
    open: Vec<MessageStream>,
    /// The stream whose turn is next.
    turn: usize,
}

impl<O: Future<Output = Result<MessageStream>>> Merged<O> {
    fn new(opening: FuturesUnordered<O>) -> Merged<O> {
        Merged {
            opening,
            open: Vec::new(),
            turn: 0,
        }
    }

    /// How many streams are open.
    fn open(&self) -> usize {
        self.open.len()
    }
}

impl<O: Future<Output = Result<MessageStream>>> Stream for Merged<O> {
    type Item = Result<Received>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        while !this.opening.is_empty() {
            match this.opening.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(stream))) => this.open.push(stream),
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        let count = this.open.len();
        for step in 0..count {
            let at = (this.turn + step) % count;
            match this.open[at].poll_next_unpin(cx) {
                Poll::Pending => continue,
                // One stream's end ends the merged one: every stream asked for more than a run
                // reads, so `read` reports it as a failure.
                ready => {
                    this.turn = (at + 1) % count;
                    return ready;
                }
            }
        }
        if this.opening.is_empty() && this.open.is_empty() {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
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
