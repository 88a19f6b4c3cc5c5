//! The client side of a measurement: a job description the parent sends, the loop that runs it
//! against one system, and the figures sent back. Every loop is bounded in calls and in time.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::systems::{BenchClient, Result, greet, hop_count};

pub(crate) use crate::stream_load::{SlowFigures, run_stream_job};

/// What a client process measures.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Job {
    /// Echo calls of `payload` bytes with `in_flight` calls outstanding, after a warm-up.
    Load {
        payload: usize,
        in_flight: usize,
        warmup_s: f64,
        duration_s: f64,
        max_calls: u64,
    },
    /// Ring rounds: `relay(depth)` into peer 0, which nests `depth` hops through the ring.
    Ring {
        depth: u32,
        warmup_rounds: u32,
        max_rounds: u32,
        duration_s: f64,
    },
    /// `calls` echo calls at once, each held `sleep_ms` by the server.
    Hold { calls: usize, sleep_ms: u32 },
    /// Server streams of `size`-byte messages, `streams` at once, read as fast as they come
    /// for `duration_s` after a warm-up (the streaming scenario's throughput runs).
    Stream {
        size: u32,
        streams: usize,
        warmup_s: f64,
        duration_s: f64,
        max_messages: u64,
    },
    /// One server stream of `total_bytes` in `size`-byte messages, read at `rate_bytes_per_s`
    /// for at most `duration_s`, then dropped; the client samples its own resident set and the
    /// server's (`server_pid`) as it reads (the streaming scenario's slow consumer).
    SlowConsumer {
        size: u32,
        total_bytes: u64,
        rate_bytes_per_s: u64,
        duration_s: f64,
        server_pid: u32,
    },
    /// HTTP GETs of the greet route with `in_flight` requests outstanding, after a warm-up
    /// (the gateway scenario).
    Get {
        in_flight: usize,
        warmup_s: f64,
        duration_s: f64,
        max_calls: u64,
    },
}

/// Latency percentiles, in microseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Percentiles {
    pub(crate) p50_us: f64,
    pub(crate) p90_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) mean_us: f64,
    pub(crate) max_us: f64,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>, scale: f64) -> Percentiles {
        let us = |ns: f64| ns / 1_000.0 / scale;
        Percentiles {
            p50_us: us(histogram.value_at_quantile(0.50) as f64),
            p90_us: us(histogram.value_at_quantile(0.90) as f64),
            p99_us: us(histogram.value_at_quantile(0.99) as f64),
            mean_us: us(histogram.mean()),
            max_us: us(histogram.max() as f64),
        }
    }
}

/// What a client process reports for one job.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Outcome {
    /// Calls (or ring rounds) completed successfully in the measured phase.
    pub(crate) calls: u64,
    /// Calls that failed.
    pub(crate) errors: u64,
    /// The first failure, to say why.
    pub(crate) first_error: Option<String>,
    /// Length of the measured phase.
    pub(crate) elapsed_s: f64,
    /// Latency of each call (ring: of each hop, i.e. round time / (depth + 1)).
    pub(crate) latency: Option<Percentiles>,
    /// CPU time (user + system) the client process spent in the measured phase.
    pub(crate) client_cpu_s: f64,
    /// The client process's peak resident set, KiB.
    pub(crate) client_hwm_kib: u64,
    /// Payload bytes received (streaming runs).
    #[serde(default)]
    pub(crate) bytes: u64,
    /// The slow consumer's figures.
    #[serde(default)]
    pub(crate) slow: Option<SlowFigures>,
}

impl Outcome {
    pub(crate) fn fail(&mut self, error: impl ToString) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(error.to_string());
        }
    }
}

/// Runs `job` on `client`. `ready` is called after connecting and warming up and returns when
/// the parent says go, so that the parent can sample the server's counters around the
/// measured phase only.
pub(crate) async fn run<C: BenchClient>(
    client: C,
    job: &Job,
    ready: impl FnOnce() -> Result<()>,
) -> Result<Outcome> {
    match *job {
        Job::Load {
            payload,
            in_flight,
            warmup_s,
            duration_s,
            max_calls,
        } => {
            let payload = Bytes::from(vec![0xA5u8; payload]);
            let call = || echo(&client, &payload);
            let warmup = Duration::from_secs_f64(warmup_s);
            load(call, in_flight, warmup, max_calls / 4 + 1, false).await?;
            ready()?;
            measured(|| {
                let duration = Duration::from_secs_f64(duration_s);
                load(call, in_flight, duration, max_calls, true)
            })
            .await
        }
        Job::Ring {
            depth,
            warmup_rounds,
            max_rounds,
            duration_s,
        } => {
            for _ in 0..warmup_rounds {
                ring_round(&client, depth).await?;
            }
            ready()?;
            measured(|| {
                ring(
                    &client,
                    depth,
                    max_rounds,
                    Duration::from_secs_f64(duration_s),
                )
            })
            .await
        }
        Job::Hold { calls, sleep_ms } => {
            client.echo(Bytes::from_static(b"warm"), 0).await?;
            ready()?;
            measured(|| hold(&client, calls, sleep_ms)).await
        }
        Job::Stream { .. } | Job::SlowConsumer { .. } => run_stream_job(client, job, ready).await,
        Job::Get { .. } => Err("a GET job needs the HTTP GET client".into()),
    }
}

/// Runs a [`Job::Get`] on the gateway scenario's HTTP client, as [`run`] does a load job.
pub(crate) async fn run_get(
    client: greet::Client,
    job: &Job,
    ready: impl FnOnce() -> Result<()>,
) -> Result<Outcome> {
    let Job::Get {
        in_flight,
        warmup_s,
        duration_s,
        max_calls,
    } = *job
    else {
        return Err("the HTTP GET client runs GET jobs only".into());
    };
    let get = || client.get();
    let warmup = Duration::from_secs_f64(warmup_s);
    load(get, in_flight, warmup, max_calls / 4 + 1, false).await?;
    ready()?;
    measured(|| {
        let duration = Duration::from_secs_f64(duration_s);
        load(get, in_flight, duration, max_calls, true)
    })
    .await
}

pub(crate) async fn measured<F: Future<Output = Result<Outcome>>>(
    phase: impl FnOnce() -> F,
) -> Result<Outcome> {
    let cpu_before = crate::procfs::cpu_seconds(std::process::id())?;
    let mut outcome = phase().await?;
    outcome.client_cpu_s = crate::procfs::cpu_seconds(std::process::id())? - cpu_before;
    outcome.client_hwm_kib = crate::procfs::peak_rss_kib(std::process::id())?;
    Ok(outcome)
}

fn histogram() -> Result<Histogram<u64>> {
    // 1 ns to 100 s at three significant figures.
    Ok(Histogram::new_with_bounds(1, 100_000_000_000, 3)?)
}

/// One echo call, checked for the payload's length.
async fn echo<C: BenchClient>(client: &C, payload: &Bytes) -> Result<()> {
    let reply = client.echo(payload.clone(), 0).await?;
    if reply.len() != payload.len() {
        return Err(format!("echo returned {} bytes for {}", reply.len(), payload.len()).into());
    }
    Ok(())
}

/// Keeps `in_flight` calls (made by `call`) outstanding until `duration` or `max_calls` is
/// reached.
async fn load<F, Fut>(
    call: F,
    in_flight: usize,
    duration: Duration,
    max_calls: u64,
    record: bool,
) -> Result<Outcome>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut histogram = histogram()?;
    let mut outcome = Outcome::default();
    let call = |started: Instant| {
        let reply = call();
        async move { (started, reply.await) }
    };
    let start = Instant::now();
    let deadline = start + duration;
    let mut started = 0u64;
    let mut pending = FuturesUnordered::new();
    while started < max_calls && pending.len() < in_flight.max(1) {
        pending.push(call(Instant::now()));
        started += 1;
    }
    while let Some((begun, result)) = pending.next().await {
        let now = Instant::now();
        match result {
            Ok(()) => {
                outcome.calls += 1;
                if record {
                    histogram.saturating_record((now - begun).as_nanos() as u64);
                }
            }
            Err(error) => outcome.fail(error),
        }
        // Stop early on a broken system rather than spin on errors.
        if now < deadline && started < max_calls && outcome.errors < 100 {
            pending.push(call(now));
            started += 1;
        }
    }
    outcome.elapsed_s = start.elapsed().as_secs_f64();
    if record && outcome.calls > 0 {
        outcome.latency = Some(Percentiles::of(&histogram, 1.0));
    }
    Ok(outcome)
}

async fn ring_round<C: BenchClient>(client: &C, depth: u32) -> Result<()> {
    let reply = client.relay(depth, Bytes::from(vec![0u8; 64])).await?;
    match hop_count(&reply) {
        count if count == depth => Ok(()),
        count => Err(format!("ring state came back after {count} hops, expected {depth}").into()),
    }
}

async fn ring<C: BenchClient>(
    client: &C,
    depth: u32,
    max_rounds: u32,
    duration: Duration,
) -> Result<Outcome> {
    let mut histogram = histogram()?;
    let mut outcome = Outcome::default();
    let start = Instant::now();
    for _ in 0..max_rounds.max(1) {
        let begun = Instant::now();
        match ring_round(client, depth).await {
            Ok(()) => {
                outcome.calls += 1;
                histogram.saturating_record(begun.elapsed().as_nanos() as u64);
            }
            Err(error) => {
                outcome.fail(error);
                break;
            }
        }
        if start.elapsed() >= duration {
            break;
        }
    }
    outcome.elapsed_s = start.elapsed().as_secs_f64();
    if outcome.calls > 0 {
        // Every round is depth + 1 calls: client to peer 0, then `depth` peer-to-peer hops.
        outcome.latency = Some(Percentiles::of(&histogram, f64::from(depth) + 1.0));
    }
    Ok(outcome)
}

async fn hold<C: BenchClient>(client: &C, calls: usize, sleep_ms: u32) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    let start = Instant::now();
    let payload = Bytes::from(vec![0x5Au8; 64]);
    let mut pending: FuturesUnordered<_> = (0..calls)
        .map(|_| client.echo(payload.clone(), sleep_ms))
        .collect();
    while let Some(result) = pending.next().await {
        match result {
            Ok(_) => outcome.calls += 1,
            Err(error) => outcome.fail(error),
        }
    }
    outcome.elapsed_s = start.elapsed().as_secs_f64();
    Ok(outcome)
}
