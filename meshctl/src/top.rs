//! `meshctl top`: calls/s, error rate and p50/p99 per service and method, from every member's
//! `meshrpc.node/stats` (its calls counters and latency histograms; no admin port needed).
//!
//! Calls are counted where they were served (`side = server`), summed over the members, so a
//! call through the gateway counts once. Rates are the difference between two samples taken
//! `--interval` apart; p50/p99 are over that interval when it saw calls, else since the
//! members started (the JSON says which). The view redraws every interval until Ctrl-C;
//! `--once` (or `--json`) prints one sample and exits.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use meshrpc::metrics::MethodStats;
use meshrpc::node_service::StatsReply;
use meshrpc::tokio::time::Instant;
use serde_json::json;

use crate::connect::Mesh;
use crate::failure::{Failure, print_json};
use crate::table::Table;

/// Flags of `meshctl top`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct TopArgs {
    /// Print one sample and exit.
    #[arg(long)]
    once: bool,

    /// Time between samples.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    interval: Duration,

    /// Include `meshrpc.node`, the calls meshctl and the mesh itself make.
    #[arg(long)]
    all: bool,
}

/// One method's counters summed over the members.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Totals {
    /// Finished calls.
    pub(crate) calls: u64,
    /// Calls that did not end `ok`.
    pub(crate) errors: u64,
    /// Cumulative histogram, by bucket bound (the bound's bits, to order and sum exactly).
    pub(crate) buckets: BTreeMap<u64, u64>,
    /// Calls the histogram measured.
    pub(crate) measured: u64,
}

impl Totals {
    fn add(&mut self, stats: &MethodStats) {
        self.calls += stats.calls();
        self.errors += stats.errors();
        self.measured += stats.count;
        for bucket in &stats.buckets {
            *self.buckets.entry(bucket.le.to_bits()).or_default() += bucket.count;
        }
    }

    /// What happened between `earlier` and `self` (counters of members that restarted count
    /// from zero).
    fn since(&self, earlier: &Totals) -> Totals {
        Totals {
            calls: self.calls.saturating_sub(earlier.calls),
            errors: self.errors.saturating_sub(earlier.errors),
            measured: self.measured.saturating_sub(earlier.measured),
            buckets: self
                .buckets
                .iter()
                .map(|(le, count)| {
                    let before = earlier.buckets.get(le).copied().unwrap_or(0);
                    (*le, count.saturating_sub(before))
                })
                .collect(),
        }
    }

    /// The `q` quantile in seconds, interpolated inside its bucket as Prometheus'
    /// `histogram_quantile` does; `None` without measurements.
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        if self.measured == 0 {
            return None;
        }
        let target = q * self.measured as f64;
        let mut lower = 0.0;
        let mut below = 0u64;
        for (bits, cumulative) in &self.buckets {
            let le = f64::from_bits(*bits);
            if *cumulative as f64 >= target {
                let inside = cumulative.saturating_sub(below);
                if inside == 0 {
                    return Some(le);
                }
                let fraction = (target - below as f64) / inside as f64;
                return Some(lower + (le - lower) * fraction.clamp(0.0, 1.0));
            }
            lower = le;
            below = *cumulative;
        }
        // Beyond the last bound: the last bound is all we can say.
        Some(lower)
    }
}

/// The mesh's served calls per (service, method), and the members that did not answer.
#[derive(Debug, Clone, Default)]
struct Sample {
    methods: BTreeMap<(String, String), Totals>,
    silent: Vec<String>,
    members: usize,
}

async fn sample(mesh: &Mesh, all: bool) -> Sample {
    let mut asks = meshrpc::tokio::task::JoinSet::new();
    let mut sample = Sample::default();
    for member in &mesh.members {
        let Ok(addr) = member.addr.parse::<SocketAddr>() else {
            continue;
        };
        let channel = mesh.channel_to(addr);
        let timeout = mesh.timeout;
        let name = member.name.clone();
        asks.spawn(async move {
            let reply: Result<StatsReply, _> = channel
                .unary(
                    stats_method(),
                    &(),
                    &meshrpc::CallOptions::new().timeout(timeout),
                )
                .await;
            (name, addr, reply)
        });
    }
    while let Some(joined) = asks.join_next().await {
        let Ok((name, addr, reply)) = joined else {
            continue;
        };
        match reply {
            Ok(reply) => {
                sample.members += 1;
                for stats in reply.methods.iter().filter(|s| s.side == "server") {
                    if !all && stats.service == meshrpc::node_service::NODE_SERVICE {
                        continue;
                    }
                    sample
                        .methods
                        .entry((stats.service.clone(), stats.method.clone()))
                        .or_default()
                        .add(stats);
                }
            }
            Err(status) => sample.silent.push(format!("{name} ({addr}): {status}")),
        }
    }
    sample.silent.sort();
    sample
}

fn stats_method() -> &'static meshrpc::MethodSpec {
    meshrpc::node_service::NODE_SPEC
        .methods
        .iter()
        .find(|method| method.name == "stats")
        .unwrap_or(&meshrpc::node_service::NODE_SPEC.methods[0])
}

/// One row of the view.
#[derive(Debug, Clone)]
struct Row {
    service: String,
    method: String,
    total: Totals,
    window: Totals,
    seconds: f64,
}

impl Row {
    fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.window.calls as f64 / self.seconds
        } else {
            0.0
        }
    }

    fn error_rate(&self) -> Option<f64> {
        (self.window.calls > 0).then(|| self.window.errors as f64 / self.window.calls as f64)
    }

    /// The histogram percentiles are read from: the interval's when it saw calls.
    fn latency(&self) -> (&Totals, &'static str) {
        if self.window.measured > 0 {
            (&self.window, "interval")
        } else {
            (&self.total, "since_start")
        }
    }
}

fn rows(earlier: &Sample, later: &Sample, seconds: f64) -> Vec<Row> {
    later
        .methods
        .iter()
        .map(|((service, method), total)| {
            let before = earlier
                .methods
                .get(&(service.clone(), method.clone()))
                .cloned()
                .unwrap_or_default();
            Row {
                service: service.clone(),
                method: method.clone(),
                window: total.since(&before),
                total: total.clone(),
                seconds,
            }
        })
        .collect()
}

fn ms(seconds: Option<f64>) -> Option<f64> {
    seconds.map(|s| (s * 1_000_000.0).round() / 1_000.0)
}

fn render(rows: &[Row], later: &Sample, mesh: &Mesh, interval: Duration) -> String {
    let mut out = format!(
        "meshctl top: {} members answered, cluster `{}` via {}, every {}\n\n",
        later.members,
        mesh.cluster(),
        mesh.seed,
        humantime::format_duration(interval)
    );
    let mut table = Table::new(&[
        "SERVICE", "METHOD", "CALLS/S", "ERR%", "P50", "P99", "CALLS", "ERRORS",
    ]);
    for row in rows {
        let (latency, _) = row.latency();
        let show = |q: f64| {
            latency
                .quantile(q)
                .map_or("-".to_owned(), |s| format!("{:.2}ms", s * 1_000.0))
        };
        table.row(vec![
            row.service.clone(),
            row.method.clone(),
            format!("{:.1}", row.rate()),
            row.error_rate()
                .map_or("-".to_owned(), |rate| format!("{:.1}", rate * 100.0)),
            show(0.5),
            show(0.99),
            row.total.calls.to_string(),
            row.total.errors.to_string(),
        ]);
    }
    if rows.is_empty() {
        out.push_str("no calls served yet\n");
    } else {
        out.push_str(&table.render());
    }
    for silent in &later.silent {
        out.push_str(&format!("not answering: {silent}\n"));
    }
    out
}

fn to_json(rows: &[Row], later: &Sample, interval: Duration) -> serde_json::Value {
    json!({
        "interval_s": interval.as_secs_f64(),
        "members": later.members,
        "not_answering": later.silent,
        "methods": rows.iter().map(|row| {
            let (latency, over) = row.latency();
            json!({
                "service": row.service,
                "method": row.method,
                "calls_per_s": row.rate(),
                "error_rate": row.error_rate(),
                "p50_ms": ms(latency.quantile(0.5)),
                "p99_ms": ms(latency.quantile(0.99)),
                "latency_over": over,
                "calls_total": row.total.calls,
                "errors_total": row.total.errors,
                "calls_interval": row.window.calls,
                "errors_interval": row.window.errors,
            })
        }).collect::<Vec<_>>(),
    })
}

/// Samples the mesh once (`--once`, `--json`) or until Ctrl-C.
pub(crate) async fn run(mesh: &Mesh, args: TopArgs, json: bool) -> Result<(), Failure> {
    let interval = args.interval.max(Duration::from_millis(50));
    let mut earlier = sample(mesh, args.all).await;
    let mut taken = Instant::now();
    if earlier.members == 0 {
        return Err(Failure::mesh(format!(
            "no member answered meshrpc.node/stats: {}",
            earlier.silent.join("; ")
        )));
    }
    loop {
        let next = taken + interval;
        meshrpc::tokio::select! {
            _ = meshrpc::tokio::time::sleep_until(next) => {}
            _ = meshrpc::tokio::signal::ctrl_c() => return Ok(()),
        }
        let later = sample(mesh, args.all).await;
        let now = Instant::now();
        let rows = rows(&earlier, &later, now.duration_since(taken).as_secs_f64());
        if json {
            return print_json(&to_json(&rows, &later, interval));
        }
        let text = render(&rows, &later, mesh, interval);
        if args.once {
            crate::failure::out!("{text}");
            return Ok(());
        }
        // Home, clear the screen, draw.
        let mut stdout = std::io::stdout().lock();
        let _ = write!(stdout, "\x1b[H\x1b[2J{text}");
        let _ = stdout.flush();
        earlier = later;
        taken = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(buckets: &[(f64, u64)], measured: u64) -> Totals {
        Totals {
            calls: measured,
            errors: 0,
            buckets: buckets.iter().map(|(le, n)| (le.to_bits(), *n)).collect(),
            measured,
        }
    }

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        // 10 calls under 1 ms, 10 more under 2 ms.
        let t = totals(&[(0.001, 10), (0.002, 20)], 20);
        assert_eq!(t.quantile(0.5), Some(0.001));
        let p75 = t.quantile(0.75).expect("measured");
        assert!((p75 - 0.0015).abs() < 1e-12, "{p75}");
        assert_eq!(totals(&[], 0).quantile(0.5), None);
    }

    #[test]
    fn a_window_is_the_difference_of_two_samples() {
        let before = totals(&[(0.001, 5), (0.002, 5)], 5);
        let after = totals(&[(0.001, 5), (0.002, 9)], 9);
        let window = after.since(&before);
        assert_eq!((window.calls, window.measured), (4, 4));
        assert_eq!(window.quantile(0.5).map(|s| s > 0.001), Some(true));
    }
}
