//! The streaming scenario's tables: server-stream throughput by message size and streams at
//! once, with meshrpc's ratio to each system, the slow consumer's memory and stop figures, and
//! the scenario's rows of the targets table.

use std::fmt::Write as _;

use super::{DASH, PlacementReport, Report, SystemResult, mib, rate};
use crate::systems::System;

/// The size of the messages counted per second.
const SMALL: u32 = 64;
/// The size of the messages counted in MB/s.
const LARGE: u32 = 64 << 10;

/// `value (meshrpc ÷ value)`, or the value alone on meshrpc's row.
fn with_ratio(
    system: System,
    value: Option<f64>,
    meshrpc: Option<f64>,
    show: fn(f64) -> String,
) -> String {
    match (value, meshrpc) {
        (Some(v), _) if system == System::Meshrpc => show(v),
        (Some(v), Some(m)) if v > 0.0 => format!("{} ({:.2}×)", show(v), m / v),
        (Some(v), _) => show(v),
        (None, _) => DASH.to_owned(),
    }
}

fn mb(value: f64) -> String {
    format!("{value:.0}")
}

/// Messages per second of 64 B messages on `streams` streams.
fn small(result: &SystemResult, streams: usize) -> Option<f64> {
    result.stream_run(SMALL, streams).map(|r| r.messages_per_s)
}

/// MB per second of 64 KiB messages on `streams` streams.
fn large(result: &SystemResult, streams: usize) -> Option<f64> {
    result.stream_run(LARGE, streams).map(|r| r.mb_per_s)
}

impl Report {
    pub(super) fn streaming_markdown(&self, md: &mut String, placement: &PlacementReport) {
        let results = &placement.results;
        let meshrpc = results.iter().find(|r| r.system == System::Meshrpc);
        let _ = writeln!(
            md,
            "### Server streaming: messages/s of 64 B messages, MB/s of 64 KiB ones (meshrpc ÷ this, >1 better)\n"
        );
        let _ = writeln!(
            md,
            "| system | 64 B msgs/s, 1 stream | 64 B msgs/s, 16 streams | 64 KiB MB/s, 1 stream | 64 KiB MB/s, 16 streams |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|");
        for r in results {
            if let Some(reason) = r.streaming.as_ref().and_then(|s| s.not_measured.as_ref()) {
                let _ = writeln!(md, "| {} | {reason} | | | |", r.system);
                continue;
            }
            let cell = |figure: fn(&SystemResult, usize) -> Option<f64>, streams, show| {
                with_ratio(
                    r.system,
                    figure(r, streams),
                    meshrpc.and_then(|m| figure(m, streams)),
                    show,
                )
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                r.system,
                cell(small, 1, rate),
                cell(small, 16, rate),
                cell(large, 1, mb),
                cell(large, 16, mb),
            );
        }
        let slow = &self.settings.slow_consumer;
        let _ = writeln!(
            md,
            "\n### Slow consumer: a {} MiB stream of {} KiB messages read at {:.1} MB/s for {:.0} s, then dropped\n",
            slow.total_bytes >> 20,
            slow.size >> 10,
            slow.rate_bytes_per_s as f64 / 1e6,
            slow.duration_s
        );
        let _ = writeln!(
            md,
            "Growth: the largest `VmRSS` sample (every 250 ms) over the one when the slow reading began. \
             Stop: how long after the consumer dropped its stream the server's producer was dropped.\n"
        );
        let _ = writeln!(
            md,
            "| system | read MB | server RSS MiB | server growth MiB | client RSS MiB | client growth MiB | producer stopped after | produced after the drop |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for r in results {
            let Some(s) = r.slow_consumer() else {
                continue;
            };
            let ms = |value: Option<f64>, none: &str| {
                value.map_or_else(|| none.to_owned(), |v| format!("{v:.1} ms"))
            };
            let _ = writeln!(
                md,
                "| {} | {:.1} | {} | {} | {} | {} | {} | {} |",
                r.system,
                s.bytes_read as f64 / 1e6,
                mib(s.server_rss_start_kib),
                mib(s.server_growth_kib),
                mib(s.client_rss_start_kib),
                mib(s.client_growth_kib),
                ms(s.stopped_after_ms, "not within 2 s"),
                ms(s.produced_after_cancel_ms, "nothing"),
            );
        }
        let _ = writeln!(md);
    }
}

/// The streaming rows of the targets table for one placement.
pub(super) fn target_rows(
    placement: &PlacementReport,
) -> Vec<(&'static str, &'static str, Option<f64>, f64, bool)> {
    let get = |system| placement.result(system);
    let div = |figure: fn(&SystemResult, usize) -> Option<f64>, streams, other| {
        let m = figure(get(System::Meshrpc)?, streams)?;
        let o = figure(get(other)?, streams)?;
        (o > 0.0).then(|| m / o)
    };
    let slow = get(System::Meshrpc).and_then(SystemResult::slow_consumer);
    let growth = |kib: fn(&super::SlowConsumer) -> u64| slow.map(|s| kib(s) as f64 / 1024.0);
    const BASE: &str = "baseline";
    vec![
        (
            "stream msgs/s (64 B, 1 stream) ≥ 2× tonic-tls",
            BASE,
            div(small, 1, System::TonicTls),
            2.0,
            false,
        ),
        (
            "stream msgs/s (64 B, 16 streams) ≥ 2× tonic-tls",
            BASE,
            div(small, 16, System::TonicTls),
            2.0,
            false,
        ),
        (
            "stream msgs/s (64 B, 1 stream) ≥ 0.8× bare quinn",
            BASE,
            div(small, 1, System::Quinn),
            0.8,
            false,
        ),
        (
            "stream msgs/s (64 B, 16 streams) ≥ 0.8× bare quinn",
            BASE,
            div(small, 16, System::Quinn),
            0.8,
            false,
        ),
        (
            "slow consumer: server RSS growth < 16 MiB",
            BASE,
            growth(|s| s.server_growth_kib),
            16.0,
            true,
        ),
        (
            "slow consumer: client RSS growth < 16 MiB",
            BASE,
            growth(|s| s.client_growth_kib),
            16.0,
            true,
        ),
        (
            "slow consumer: producer stops ≤ 100 ms after the consumer leaves",
            BASE,
            slow.map(|s| s.stopped_after_ms.unwrap_or(f64::INFINITY)),
            100.0,
            true,
        ),
    ]
}
