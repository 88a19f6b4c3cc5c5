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

/// The mesh's served calls per (service, method), and the members that did not answer.
#[derive(Debug, Clone, Default)]
struct Sample {
    methods: BTreeMap<(String, String), MethodStats>,
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
                    let key = (stats.service.clone(), stats.method.clone());
                    match sample.methods.get_mut(&key) {
                        Some(total) => total.add(stats),
                        None => {
                            sample.methods.insert(key, stats.clone());
                        }
                    }
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
    total: MethodStats,
    window: MethodStats,
    seconds: f64,
}

impl Row {
    fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.window.calls() as f64 / self.seconds
        } else {
            0.0
        }
    }

    fn error_rate(&self) -> Option<f64> {
        let calls = self.window.calls();
        (calls > 0).then(|| self.window.errors() as f64 / calls as f64)
    }

    /// The histogram percentiles are read from: the interval's when it saw calls.
    fn latency(&self) -> (&MethodStats, &'static str) {
        if self.window.count > 0 {
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
            let window = match earlier.methods.get(&(service.clone(), method.clone())) {
                Some(before) => total.since(before),
                None => total.clone(),
            };
            Row {
                service: service.clone(),
                method: method.clone(),
                window,
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
            row.total.calls().to_string(),
            row.total.errors().to_string(),
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
                "calls_total": row.total.calls(),
                "errors_total": row.total.errors(),
                "calls_interval": row.window.calls(),
                "errors_interval": row.window.errors(),
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
