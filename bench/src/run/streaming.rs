//! The streaming scenario: server-stream throughput (messages/s of 64 B messages, MB/s of
//! 64 KiB ones, on one stream and on 16 at once) against the system's shared server, then the
//! slow consumer against a fresh server: a 1 GiB stream of 64 KiB messages read at 1 MB/s for a
//! bounded time (the whole of it with `--long`), the resident-set growth of both processes over
//! that window, and how long the server's producer went on once the consumer dropped its stream.

use std::time::{Duration, Instant};

use indicatif::ProgressBar;

use super::{Bench, Placement};
use crate::load::Job;
use crate::report::{self, SlowConsumerSettings, SystemResult};
use crate::systems::producer::Stats;
use crate::systems::{Result, System};

/// The throughput runs: (message size, streams at once).
pub(super) const RUNS: [(u32, usize); 4] = [(64, 1), (64, 16), (64 << 10, 1), (64 << 10, 16)];

/// Messages a throughput run reads at most (its time bounds it long before).
const MAX_MESSAGES: u64 = 500_000_000;

/// How long the parent waits for the server's producer to be dropped after the cancel.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// The slow consumer's settings: 64 KiB messages of a 1 GiB stream at 1 MB/s, read for
/// `seconds` (default 20, quick 5), or to the end with `long`.
pub(super) fn slow_consumer(quick: bool, long: bool, seconds: Option<f64>) -> SlowConsumerSettings {
    let total_bytes: u64 = 1 << 30;
    let rate_bytes_per_s: u64 = 1_000_000;
    let duration_s = if long {
        // The whole stream, with a tenth to spare.
        total_bytes as f64 / rate_bytes_per_s as f64 * 1.1
    } else {
        seconds.unwrap_or(if quick { 5.0 } else { 20.0 })
    };
    SlowConsumerSettings {
        size: 64 << 10,
        total_bytes,
        rate_bytes_per_s,
        duration_s,
    }
}

/// Why a system is not measured here, if it is not.
pub(crate) fn not_streamed(system: System) -> Option<&'static str> {
    match system {
        System::Meshrpc | System::Quinn | System::TonicTls => None,
        System::TonicH2c => {
            Some("not measured: tonic-tls stands for tonic (the same code over TLS)")
        }
        System::Tarpc => Some("tarpc has no server streaming"),
        System::HttpJson => Some("not measured: HTTP/1.1 has no message streams of its own"),
    }
}

impl Bench {
    /// The streaming scenario for one system and placement; failures go to `result.errors`.
    pub(super) fn streaming(
        &self,
        placement: Placement,
        system: System,
        result: &mut SystemResult,
        progress: &ProgressBar,
    ) {
        let runs = &self.settings.stream_runs;
        if let Some(reason) = not_streamed(system) {
            progress.inc(runs.len() as u64 + 1);
            result.streaming = Some(report::Streaming {
                not_measured: Some(reason.to_owned()),
                ..report::Streaming::default()
            });
            return;
        }
        let mut streaming = report::Streaming::default();
        for &(size, streams) in runs {
            let run = self.stream_run(placement, system, size, streams);
            progress.inc(1);
            match run {
                Ok(run) => streaming.runs.push(run),
                Err(error) => result
                    .errors
                    .push(format!("streaming, {size} B on {streams} streams: {error}")),
            }
        }
        let slow = self.slow_consumer(placement, system);
        progress.inc(1);
        match slow {
            Ok(slow) => streaming.slow = Some(slow),
            Err(error) => result
                .errors
                .push(format!("streaming, slow consumer: {error}")),
        }
        result.streaming = Some(streaming);
    }

    /// One throughput run against the shared server of this system and placement.
    fn stream_run(
        &self,
        placement: Placement,
        system: System,
        size: u32,
        streams: usize,
    ) -> Result<report::StreamRun> {
        let mut shared = self.server.borrow_mut();
        let server = match shared.take() {
            Some(server) => server,
            None => self.server(system.into(), placement.server_cpu(0), None)?,
        };
        let job = Job::Stream {
            size,
            streams,
            warmup_s: self.settings.warmup_s,
            duration_s: self.settings.duration_s,
            max_messages: MAX_MESSAGES,
        };
        let result = self.client(system, &server, job);
        // A server that failed a run is not reused.
        if result.is_ok() {
            *shared = Some(server);
        }
        let (outcome, _) = result?;
        let seconds = outcome.elapsed_s.max(1e-9);
        Ok(report::StreamRun {
            size,
            streams,
            messages: outcome.calls,
            messages_per_s: outcome.calls as f64 / seconds,
            mb_per_s: outcome.bytes as f64 / seconds / 1e6,
        })
    }

    /// The slow consumer against a fresh server.
    fn slow_consumer(&self, placement: Placement, system: System) -> Result<report::SlowConsumer> {
        let mut server = self.server(system.into(), placement.server_cpu(0), None)?;
        let settings = &self.settings.slow_consumer;
        let job = Job::SlowConsumer {
            size: settings.size,
            total_bytes: settings.total_bytes,
            rate_bytes_per_s: settings.rate_bytes_per_s,
            duration_s: settings.duration_s,
            server_pid: server.pid(),
        };
        let (outcome, _) = self.client(system, &server, job)?;
        let figures = outcome
            .slow
            .ok_or("the slow consumer reported no figures")?;
        // When did the producer stop? Ask the server until its producer was dropped.
        let asked = Instant::now();
        let stats = loop {
            server.process.send("stats")?;
            let line = server.process.expect(Duration::from_secs(5))?;
            let json = line
                .strip_prefix("stats ")
                .ok_or_else(|| format!("server said `{line}`, expected `stats <json>`"))?;
            let stats: Stats = serde_json::from_str(json)?;
            if stats.last_dropped_ns >= figures.cancelled_ns || asked.elapsed() >= STOP_WAIT {
                break stats;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let after_cancel = |ns: u64| {
            (ns >= figures.cancelled_ns).then(|| (ns - figures.cancelled_ns) as f64 / 1e6)
        };
        Ok(report::SlowConsumer {
            bytes_read: figures.bytes_read,
            read_s: figures.read_s,
            server_rss_start_kib: figures.server_rss_start_kib,
            server_growth_kib: figures
                .server_rss_max_kib
                .saturating_sub(figures.server_rss_start_kib),
            client_rss_start_kib: figures.client_rss_start_kib,
            client_growth_kib: figures
                .client_rss_max_kib
                .saturating_sub(figures.client_rss_start_kib),
            produced: stats.produced,
            stopped_after_ms: after_cancel(stats.last_dropped_ns),
            produced_after_cancel_ms: after_cancel(stats.last_produced_ns),
        })
    }
}
