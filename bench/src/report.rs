//! The report: what `run` measured, serialised as `report.json` and rendered as `report.md`.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::load::Percentiles;
use crate::systems::System;

mod overhead;
mod streaming;

/// `a ÷ b`, when both are measured and `b` is not zero.
fn quotient(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The whole run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Report {
    pub(crate) machine: Machine,
    pub(crate) settings: Settings,
    pub(crate) systems: Vec<SystemInfo>,
    pub(crate) placements: Vec<PlacementReport>,
    /// A real node's idle resident set, measured once per run with the memory scenario.
    #[serde(default)]
    pub(crate) idle_node: Option<IdleNode>,
    pub(crate) elapsed_s: f64,
}

/// Where the run happened.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Machine {
    pub(crate) cpus: usize,
    pub(crate) cpu_model: String,
    pub(crate) kernel: String,
}

/// How the run was configured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Settings {
    pub(crate) quick: bool,
    pub(crate) scenarios: Vec<String>,
    pub(crate) warmup_s: f64,
    pub(crate) duration_s: f64,
    pub(crate) in_flight: Vec<usize>,
    /// Requests in flight of the gateway scenario.
    pub(crate) gateway_in_flight: Vec<usize>,
    pub(crate) payloads: Vec<usize>,
    pub(crate) cpu_in_flight: usize,
    pub(crate) ring_peers: usize,
    pub(crate) ring_depth: u32,
    pub(crate) hold_calls: usize,
    pub(crate) hold_ms: u32,
    /// The streaming scenario's throughput runs: (message bytes, streams at once).
    #[serde(default)]
    pub(crate) stream_runs: Vec<(u32, usize)>,
    /// The streaming scenario's slow consumer.
    #[serde(default)]
    pub(crate) slow_consumer: SlowConsumerSettings,
    /// The `GLIBC_TUNABLES` every process ran with; empty for glibc's defaults.
    #[serde(default)]
    pub(crate) malloc_tunables: String,
}

/// A system's name and what it is.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SystemInfo {
    pub(crate) name: String,
    pub(crate) description: String,
}

/// Every system's figures under one CPU placement.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct PlacementReport {
    /// `same` or `separate`.
    pub(crate) key: String,
    /// What it means, for people.
    pub(crate) description: String,
    pub(crate) results: Vec<SystemResult>,
    /// The gateway scenario, when it was run.
    pub(crate) gateway: Option<Gateway>,
}

impl PlacementReport {
    /// `system`'s figures under this placement, if it was measured.
    fn result(&self, system: System) -> Option<&SystemResult> {
        self.results.iter().find(|r| r.system == system)
    }
}

/// The gateway scenario under one placement: the same `GET` served directly by axum and
/// through the gateway, mesh and a greeter.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Gateway {
    /// The path requested.
    pub(crate) path: String,
    /// One run per route and calls in flight.
    pub(crate) runs: Vec<GetRun>,
    pub(crate) errors: Vec<String>,
}

impl Gateway {
    pub(crate) fn run(&self, route: Route, in_flight: usize) -> Option<&GetRun> {
        self.runs
            .iter()
            .find(|r| r.route == route && r.in_flight == in_flight)
    }

    /// `gateway ÷ direct` of a figure at `in_flight`.
    fn ratio(&self, in_flight: usize, figure: impl Fn(&GetRun) -> f64) -> Option<f64> {
        let direct = figure(self.run(Route::Direct, in_flight)?);
        let gateway = figure(self.run(Route::Gateway, in_flight)?);
        (direct > 0.0 && gateway > 0.0).then(|| gateway / direct)
    }
}

/// Who answers the gateway scenario's `GET`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Route {
    /// The greet handler on axum, in one process.
    Direct,
    /// The gateway (`gateway::serve` on a meshrpc node) calling a greeter replica over meshrpc.
    Gateway,
}

impl Route {
    pub(crate) const ALL: [Route; 2] = [Route::Direct, Route::Gateway];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Gateway => "gateway",
        }
    }
}

/// One route at one number of requests in flight.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct GetRun {
    pub(crate) route: Route,
    pub(crate) in_flight: usize,
    pub(crate) calls: u64,
    pub(crate) calls_per_s: f64,
    #[serde(flatten)]
    pub(crate) latency: Percentiles,
    /// User + system CPU of every server process of the route (gateway: gateway + greeter)
    /// over the measured phase, per call.
    pub(crate) server_cpu_us_per_call: f64,
    /// The load generator's own CPU per call.
    pub(crate) client_cpu_us_per_call: f64,
}

/// One system's figures under one placement. A scenario not run, or failed, is `None`/empty
/// and its failure is in `errors`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SystemResult {
    pub(crate) system: System,
    pub(crate) latency: Option<Latency>,
    pub(crate) throughput: Vec<Throughput>,
    pub(crate) payloads: Vec<Payload>,
    pub(crate) cpu: Option<Cpu>,
    pub(crate) ring: Option<Ring>,
    pub(crate) memory: Option<Memory>,
    #[serde(default)]
    pub(crate) streaming: Option<Streaming>,
    pub(crate) errors: Vec<String>,
}

impl SystemResult {
    pub(crate) fn new(system: System) -> SystemResult {
        SystemResult {
            system,
            latency: None,
            throughput: Vec::new(),
            payloads: Vec::new(),
            cpu: None,
            ring: None,
            memory: None,
            streaming: None,
            errors: Vec::new(),
        }
    }

    /// Unary p50 at one call in flight.
    fn p50_us(&self) -> Option<f64> {
        self.latency.as_ref().map(|l| l.percentiles.p50_us)
    }

    /// The hop ring's p50 per hop.
    fn per_hop_p50_us(&self) -> Option<f64> {
        self.ring.as_ref().map(|r| r.per_hop_p50_us)
    }

    fn throughput_at(&self, in_flight: usize) -> Option<f64> {
        self.throughput
            .iter()
            .find(|t| t.in_flight == in_flight)
            .map(|t| t.calls_per_s)
    }

    fn payload(&self, bytes: usize) -> Option<&Payload> {
        self.payloads.iter().find(|p| p.bytes == bytes)
    }

    fn stream_run(&self, size: u32, streams: usize) -> Option<&StreamRun> {
        self.streaming
            .as_ref()?
            .runs
            .iter()
            .find(|r| r.size == size && r.streams == streams)
    }

    fn slow_consumer(&self) -> Option<&SlowConsumer> {
        self.streaming.as_ref()?.slow.as_ref()
    }
}

/// The slow consumer's settings.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct SlowConsumerSettings {
    /// Message size, bytes.
    pub(crate) size: u32,
    /// Length of the stream the server is asked for, bytes.
    pub(crate) total_bytes: u64,
    /// How fast the consumer reads, bytes a second.
    pub(crate) rate_bytes_per_s: u64,
    /// How long it reads at most, seconds.
    pub(crate) duration_s: f64,
}

/// The streaming scenario of one system.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Streaming {
    /// Why the system was not measured (it has no server streaming, say).
    pub(crate) not_measured: Option<String>,
    /// Throughput runs.
    pub(crate) runs: Vec<StreamRun>,
    /// The slow consumer.
    pub(crate) slow: Option<SlowConsumer>,
}

/// Server-stream throughput at one message size and number of streams.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StreamRun {
    pub(crate) size: u32,
    pub(crate) streams: usize,
    pub(crate) messages: u64,
    pub(crate) messages_per_s: f64,
    /// Payload MB (10^6 bytes) a second.
    pub(crate) mb_per_s: f64,
}

/// What the slow consumer saw.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SlowConsumer {
    pub(crate) bytes_read: u64,
    pub(crate) read_s: f64,
    /// Server `VmRSS` as the slow reading began, and its growth to the largest sample.
    pub(crate) server_rss_start_kib: u64,
    pub(crate) server_growth_kib: u64,
    /// The same of the client.
    pub(crate) client_rss_start_kib: u64,
    pub(crate) client_growth_kib: u64,
    /// Messages the server produced in all.
    pub(crate) produced: u64,
    /// How long after the consumer dropped the stream the server's producer was dropped, ms
    /// (`None`: not within the wait).
    pub(crate) stopped_after_ms: Option<f64>,
    /// How long after the drop the producer made its last message, ms (`None`: before it).
    pub(crate) produced_after_cancel_ms: Option<f64>,
}

/// Unary latency, one call in flight, 64 B.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Latency {
    pub(crate) calls: u64,
    #[serde(flatten)]
    pub(crate) percentiles: Percentiles,
    /// The client process's CPU (user + system) per call over the measured phase.
    #[serde(default)]
    pub(crate) client_cpu_us_per_call: f64,
    /// The server process's CPU (user + system) per call over the measured phase.
    #[serde(default)]
    pub(crate) server_cpu_us_per_call: f64,
}

impl Latency {
    /// Client and server CPU per call: what one call at a time costs the machine.
    pub(crate) fn total_cpu_us_per_call(&self) -> f64 {
        self.client_cpu_us_per_call + self.server_cpu_us_per_call
    }
}

/// Calls per second with `in_flight` calls outstanding, 64 B.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Throughput {
    pub(crate) in_flight: usize,
    pub(crate) calls: u64,
    pub(crate) calls_per_s: f64,
    pub(crate) p50_us: f64,
}

/// One payload size at one call in flight.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Payload {
    pub(crate) bytes: usize,
    pub(crate) calls: u64,
    pub(crate) p50_us: f64,
    pub(crate) calls_per_s: f64,
}

/// CPU time per call (user + system), from `/proc/<pid>/stat`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Cpu {
    pub(crate) in_flight: usize,
    pub(crate) calls: u64,
    pub(crate) client_us_per_call: f64,
    pub(crate) server_us_per_call: f64,
    pub(crate) total_us_per_call: f64,
}

/// The hop ring.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Ring {
    pub(crate) peers: usize,
    pub(crate) depth: u32,
    pub(crate) rounds: u64,
    pub(crate) per_hop_p50_us: f64,
    pub(crate) per_hop_mean_us: f64,
}

/// Peak resident sets (`VmHWM`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Memory {
    /// Server after start, one connection and one call.
    pub(crate) idle_kib: u64,
    /// The private part of the idle server's resident set (`RssAnon`): its own memory, without
    /// the pages of the executable it maps (which the bench's, holding every system, inflates).
    #[serde(default)]
    pub(crate) idle_private_kib: u64,
    /// Server after holding `calls` calls in flight at once.
    pub(crate) loaded_kib: u64,
    /// The private part of the server's resident set once it had held them (`RssAnon`, read
    /// when the last call was answered: the bench's malloc settings keep freed memory, so this
    /// is what holding them took). Beside `idle_private_kib` it shows what a system allocates
    /// per connection up front (bare quinn's stream slots) against on demand (meshrpc's).
    #[serde(default)]
    pub(crate) loaded_private_kib: u64,
    pub(crate) calls: usize,
    /// Held calls answered without error.
    pub(crate) answered: u64,
    pub(crate) server_bytes_per_call: f64,
    /// Client process peak while holding them.
    pub(crate) client_kib: u64,
}

/// The idle resident set of a real node: a release `greeter` joined to a release `mesh-api`
/// gateway, both started as the demo starts them, read after `idle_s` alone. Its executable
/// holds one service, where the bench server's (the memory table) holds every system.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct IdleNode {
    /// The cargo profile of the binaries (`release`, or `debug` in tests): the directory the
    /// bench executable and they are in.
    pub(crate) profile: String,
    /// How long the greeter was idle after joining before it was read, seconds.
    pub(crate) idle_s: f64,
    /// Its peak resident set (`VmHWM`), KiB.
    pub(crate) peak_kib: Option<u64>,
    /// The private part of its resident set (`RssAnon`), KiB.
    pub(crate) private_kib: Option<u64>,
    /// Why it was not measured (a binary not built, say).
    pub(crate) error: Option<String>,
}

impl IdleNode {
    /// Its peak resident set, MiB, when measured.
    fn peak_mib(&self) -> Option<f64> {
        self.peak_kib.map(|kib| kib as f64 / 1024.0)
    }

    /// Its line in the memory section.
    fn markdown(&self) -> String {
        let what = format!(
            "Idle node ({} `greeter`, joined to a gateway, alone)",
            self.profile
        );
        match (self.peak_kib, self.private_kib) {
            (Some(peak), Some(private)) => format!(
                "{what}: {} MiB resident, {} MiB private (`VmHWM` and `RssAnon` after {} s idle; \
                 once per run, not pinned). The server idle column above is the bench's own \
                 executable, which links every system.",
                mib(peak),
                mib(private),
                self.idle_s
            ),
            _ => format!(
                "{what}: not measured: {}",
                self.error.as_deref().unwrap_or("no figure")
            ),
        }
    }
}

/// One row of the targets table. `beside`, when given, follows the measured figure: another
/// figure to read with it.
fn target_row(
    target: &str,
    level: &str,
    placement: &str,
    value: Option<f64>,
    bound: f64,
    at_most: bool,
    beside: Option<&str>,
) -> String {
    let met = match value {
        Some(v) if (at_most && v <= bound) || (!at_most && v >= bound) => "yes",
        Some(_) => "**no**",
        None => DASH,
    };
    let mut shown = value.map_or_else(|| DASH.to_owned(), |v| format!("{v:.2}"));
    if let Some(beside) = beside {
        shown = format!("{shown} ({beside})");
    }
    format!("| {target} | {level} | {placement} | {shown} | {met} |")
}

const DASH: &str = "—";

fn us(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

fn rate(value: f64) -> String {
    if value >= 10_000.0 {
        format!("{:.1}k", value / 1000.0)
    } else {
        format!("{value:.0}")
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// `meshrpc ÷ this`, or a dash when either side is missing.
fn ratio(meshrpc: Option<f64>, this: Option<f64>) -> String {
    match (meshrpc, this) {
        (Some(m), Some(t)) if t > 0.0 && m > 0.0 => format!("{:.2}×", m / t),
        _ => DASH.to_owned(),
    }
}

/// [`ratio`] for a table row: meshrpc's own row has none.
fn row_ratio(system: System, meshrpc: Option<f64>, this: Option<f64>) -> String {
    match system {
        System::Meshrpc => DASH.to_owned(),
        _ => ratio(meshrpc, this),
    }
}

fn opt(value: Option<f64>, show: fn(f64) -> String) -> String {
    value.map_or_else(|| DASH.to_owned(), show)
}

fn payload_label(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

impl Report {
    /// The Markdown report.
    pub(crate) fn markdown(&self) -> String {
        let mut md = String::new();
        let s = &self.settings;
        let _ = writeln!(md, "# meshrpc bench report\n");
        let _ = writeln!(
            md,
            "Machine: {} CPUs, {}, Linux {}. Run took {:.0} s{}.\n",
            self.machine.cpus,
            self.machine.cpu_model,
            self.machine.kernel,
            self.elapsed_s,
            if s.quick {
                " (quick mode: short runs, small ring and hold; figures are indicative only)"
            } else {
                ""
            }
        );
        let malloc = if s.malloc_tunables.is_empty() {
            "glibc malloc with its default settings".to_owned()
        } else {
            format!(
                "glibc malloc tuned to keep freed memory (`GLIBC_TUNABLES={}`)",
                s.malloc_tunables
            )
        };
        let _ = writeln!(
            md,
            "Every server and client is its own process with a tokio `current_thread` runtime, on \
             loopback, and {malloc}. Warm-up {} s, then {} s per measurement. Scenarios: {}.\n",
            s.warmup_s,
            s.duration_s,
            s.scenarios.join(", ")
        );
        let _ = writeln!(md, "Systems:\n");
        for system in &self.systems {
            let _ = writeln!(md, "- **{}**: {}", system.name, system.description);
        }
        let _ = writeln!(
            md,
            "\n**Reading the ratios.** Every table has a `meshrpc ÷ this` column (or suffix): meshrpc's \
             figure divided by that system's, in the same run and placement. For latency, CPU and memory \
             (lower is better) a ratio **below 1.00×** means meshrpc is better; for throughput (higher is \
             better) a ratio **above 1.00×** means meshrpc is better. A dash means a figure is missing \
             (meshrpc not measured, or the scenario failed: see Errors).\n"
        );

        for placement in &self.placements {
            self.placement_markdown(&mut md, placement);
        }

        self.gateway_markdown(&mut md);
        self.targets_markdown(&mut md);

        let errors: Vec<String> = self
            .placements
            .iter()
            .flat_map(|p| {
                let systems = p.results.iter().flat_map(move |r| {
                    r.errors
                        .iter()
                        .map(move |e| format!("- {} / {}: {e}", p.key, r.system))
                });
                let gateway = p.gateway.iter().flat_map(move |g| {
                    g.errors
                        .iter()
                        .map(move |e| format!("- {} / gateway scenario: {e}", p.key))
                });
                systems.chain(gateway)
            })
            .chain(
                self.idle_node
                    .iter()
                    .filter_map(|node| node.error.as_ref())
                    .map(|e| format!("- idle node: {e}")),
            )
            .collect();
        let _ = writeln!(md, "## Errors\n");
        if errors.is_empty() {
            let _ = writeln!(md, "None.");
        } else {
            for error in errors {
                let _ = writeln!(md, "{error}");
            }
        }
        md
    }

    fn placement_markdown(&self, md: &mut String, placement: &PlacementReport) {
        let s = &self.settings;
        let results = &placement.results;
        let meshrpc = results.iter().find(|r| r.system == System::Meshrpc);
        let _ = writeln!(
            md,
            "## Placement: {} ({})\n",
            placement.key, placement.description
        );

        let _ = writeln!(
            md,
            "### Unary latency: 64 B echo, one call in flight (µs)\n"
        );
        let _ = writeln!(
            md,
            "| system | p50 | p90 | p99 | mean | CPU µs/call (client + server) | calls | meshrpc ÷ this (p50, <1 better) |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
        let m = meshrpc.and_then(SystemResult::p50_us);
        for r in results {
            match &r.latency {
                Some(l) => {
                    let p = &l.percentiles;
                    let cpu = format!(
                        "{:.1} ({:.1} + {:.1})",
                        l.total_cpu_us_per_call(),
                        l.client_cpu_us_per_call,
                        l.server_cpu_us_per_call
                    );
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} | {} | {} | {} | {} | {} |",
                        r.system,
                        us(p.p50_us),
                        us(p.p90_us),
                        us(p.p99_us),
                        us(p.mean_us),
                        cpu,
                        l.calls,
                        row_ratio(r.system, m, Some(p.p50_us))
                    );
                }
                None => {
                    let _ = writeln!(
                        md,
                        "| {} | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} |",
                        r.system
                    );
                }
            }
        }

        let _ = writeln!(
            md,
            "\n### Throughput: 64 B echo, calls/s by calls in flight (meshrpc ÷ this, >1 better)\n"
        );
        let header: Vec<String> = s.in_flight.iter().map(|n| n.to_string()).collect();
        let _ = writeln!(md, "| system | {} |", header.join(" | "));
        let _ = writeln!(md, "|---|{}", "---:|".repeat(s.in_flight.len()));
        for r in results {
            let cells: Vec<String> = s
                .in_flight
                .iter()
                .map(|&n| {
                    let this = r.throughput_at(n);
                    let mut cell = opt(this, rate);
                    if this.is_some() && r.system != System::Meshrpc {
                        let mine = meshrpc.and_then(|m| m.throughput_at(n));
                        if mine.is_some() {
                            cell = format!("{cell} ({})", ratio(mine, this));
                        }
                    }
                    cell
                })
                .collect();
            let _ = writeln!(md, "| {} | {} |", r.system, cells.join(" | "));
        }

        let _ = writeln!(
            md,
            "\n### Payloads: echo p50 at one call in flight, µs (meshrpc ÷ this, <1 better)\n"
        );
        let header: Vec<String> = s.payloads.iter().map(|&b| payload_label(b)).collect();
        let _ = writeln!(md, "| system | {} |", header.join(" | "));
        let _ = writeln!(md, "|---|{}", "---:|".repeat(s.payloads.len()));
        for r in results {
            let cells: Vec<String> = s
                .payloads
                .iter()
                .map(|&b| {
                    let this = r.payload(b).map(|p| p.p50_us);
                    let mine = meshrpc.and_then(|m| m.payload(b)).map(|p| p.p50_us);
                    match (this, r.system) {
                        (Some(t), System::Meshrpc) => us(t),
                        (Some(t), _) if mine.is_some() => {
                            format!("{} ({})", us(t), ratio(mine, this))
                        }
                        (Some(t), _) => us(t),
                        (None, _) => DASH.to_owned(),
                    }
                })
                .collect();
            let _ = writeln!(md, "| {} | {} |", r.system, cells.join(" | "));
        }
        let _ = writeln!(md, "\nSame runs, calls/s (meshrpc ÷ this, >1 better):\n");
        let _ = writeln!(md, "| system | {} |", header.join(" | "));
        let _ = writeln!(md, "|---|{}", "---:|".repeat(s.payloads.len()));
        for r in results {
            let cells: Vec<String> = s
                .payloads
                .iter()
                .map(|&b| {
                    let this = r.payload(b).map(|p| p.calls_per_s);
                    let mine = meshrpc.and_then(|m| m.payload(b)).map(|p| p.calls_per_s);
                    match (this, r.system) {
                        (Some(t), System::Meshrpc) => rate(t),
                        (Some(t), _) if mine.is_some() => {
                            format!("{} ({})", rate(t), ratio(mine, this))
                        }
                        (Some(t), _) => rate(t),
                        (None, _) => DASH.to_owned(),
                    }
                })
                .collect();
            let _ = writeln!(md, "| {} | {} |", r.system, cells.join(" | "));
        }

        let _ = writeln!(
            md,
            "\n### CPU time per call: user + system, µs, at {} calls in flight\n",
            s.cpu_in_flight
        );
        let _ = writeln!(
            md,
            "| system | client | server | total | calls | meshrpc ÷ this (total, <1 better) |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
        let m = meshrpc
            .and_then(|r| r.cpu.as_ref())
            .map(|c| c.total_us_per_call);
        for r in results {
            match &r.cpu {
                Some(c) => {
                    let _ = writeln!(
                        md,
                        "| {} | {:.1} | {:.1} | {:.1} | {} | {} |",
                        r.system,
                        c.client_us_per_call,
                        c.server_us_per_call,
                        c.total_us_per_call,
                        c.calls,
                        row_ratio(r.system, m, Some(c.total_us_per_call))
                    );
                }
                None => {
                    let _ = writeln!(
                        md,
                        "| {} | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} |",
                        r.system
                    );
                }
            }
        }

        let _ = writeln!(
            md,
            "\n### Hop ring: {} peers, {} nested hops per round, latency per hop (µs)\n",
            s.ring_peers, s.ring_depth
        );
        let _ = writeln!(
            md,
            "| system | per hop p50 | per hop mean | rounds | meshrpc ÷ this (p50, <1 better) |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|");
        let m = meshrpc.and_then(SystemResult::per_hop_p50_us);
        for r in results {
            match &r.ring {
                Some(g) => {
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} | {} | {} |",
                        r.system,
                        us(g.per_hop_p50_us),
                        us(g.per_hop_mean_us),
                        g.rounds,
                        row_ratio(r.system, m, Some(g.per_hop_p50_us))
                    );
                }
                None => {
                    let _ = writeln!(md, "| {} | {DASH} | {DASH} | {DASH} | {DASH} |", r.system);
                }
            }
        }

        let _ = writeln!(
            md,
            "\n### Memory: peak RSS (VmHWM), server idle and holding {} calls in flight ({} ms each)\n",
            s.hold_calls, s.hold_ms
        );
        let _ = writeln!(
            md,
            "| system | server idle MiB | of which private MiB | server loaded MiB | of which private MiB | server bytes per call | client loaded MiB | answered | meshrpc ÷ this (bytes/call, <1 better) |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        let m = meshrpc
            .and_then(|r| r.memory.as_ref())
            .map(|g| g.server_bytes_per_call);
        for r in results {
            match &r.memory {
                Some(g) => {
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} | {} | {} | {:.0} | {} | {}/{} | {} |",
                        r.system,
                        mib(g.idle_kib),
                        mib(g.idle_private_kib),
                        mib(g.loaded_kib),
                        mib(g.loaded_private_kib),
                        g.server_bytes_per_call,
                        mib(g.client_kib),
                        g.answered,
                        g.calls,
                        row_ratio(r.system, m, Some(g.server_bytes_per_call))
                    );
                }
                None => {
                    let _ = writeln!(
                        md,
                        "| {} | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} |",
                        r.system
                    );
                }
            }
        }
        let _ = writeln!(
            md,
            "\nServer bytes per call: what holding the calls added to the idle server, divided by the \
             calls. It includes per-connection state that a system sets up on demand (meshrpc raises \
             a connection's stream limit as calls arrive, and quinn keeps state for every stream \
             allowed), which a system that sets it up at the handshake (bare quinn allows all its \
             streams at once) has in its idle figure instead. The private memory with the calls held \
             (`RssAnon`, read once they were answered) compares what each keeps (bench/README.md, \
             \"Per connection, not per call\")."
        );
        if let Some(node) = &self.idle_node {
            let _ = writeln!(md, "\n{}", node.markdown());
        }
        let _ = writeln!(md);
        if self.settings.scenarios.iter().any(|s| s == "streaming") {
            self.streaming_markdown(md, placement);
        }
    }

    fn gateway_markdown(&self, md: &mut String) {
        let _ = writeln!(md, "## Gateway under HTTP load\n");
        let measured: Vec<(&PlacementReport, &Gateway)> = self
            .placements
            .iter()
            .filter_map(|p| p.gateway.as_ref().map(|g| (p, g)))
            .collect();
        if measured.is_empty() {
            let _ = writeln!(md, "Not run (select it with `--scenarios gateway`).\n");
            return;
        }
        let _ = writeln!(
            md,
            "`GET {}` answered with the JSON string `\"Hello, {}\"`, two ways: **direct** is the \
             same greet handler served by axum in one process; **gateway** is the real gateway \
             (`gateway::serve`, what `mesh-api` runs, with its auth, metrics and access-log \
             middleware) on a meshrpc node in one process, calling a greeter replica \
             (`greeter::GreeterService` on a node of its own process) over meshrpc. The client is \
             a hyper keep-alive pool over HTTP/1.1 (one connection per request in flight). Server \
             CPU counts every server process of the route. The `gateway ÷ direct` row divides the \
             gateway's figure by the direct one: for latency and CPU it is the cost of going \
             through the mesh (DESIGN: ≤ 2×), for calls/s the share of direct throughput kept \
             (≥ 0.5× for the same target).\n",
            measured[0].1.path,
            crate::systems::greet::NAME,
        );
        for (placement, gateway) in measured {
            let _ = writeln!(
                md,
                "### Gateway GET, placement {} ({})\n",
                placement.key, placement.description
            );
            let _ = writeln!(
                md,
                "| in flight | route | p50 µs | p90 µs | p99 µs | calls/s | server CPU µs/call | client CPU µs/call | calls |"
            );
            let _ = writeln!(md, "|---:|---|---:|---:|---:|---:|---:|---:|---:|");
            let mut in_flights: Vec<usize> = gateway.runs.iter().map(|r| r.in_flight).collect();
            in_flights.sort_unstable();
            in_flights.dedup();
            for in_flight in in_flights {
                for route in Route::ALL {
                    match gateway.run(route, in_flight) {
                        Some(r) => {
                            let _ = writeln!(
                                md,
                                "| {in_flight} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {} |",
                                route.name(),
                                us(r.latency.p50_us),
                                us(r.latency.p90_us),
                                us(r.latency.p99_us),
                                rate(r.calls_per_s),
                                r.server_cpu_us_per_call,
                                r.client_cpu_us_per_call,
                                r.calls
                            );
                        }
                        None => {
                            let _ = writeln!(
                                md,
                                "| {in_flight} | {} | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} |",
                                route.name()
                            );
                        }
                    }
                }
                let times = |value: Option<f64>| {
                    value.map_or_else(|| DASH.to_owned(), |v| format!("{v:.2}×"))
                };
                let _ = writeln!(
                    md,
                    "| {in_flight} | **gateway ÷ direct** | {} | {} | {} | {} | {} | {} | {DASH} |",
                    times(gateway.ratio(in_flight, |r| r.latency.p50_us)),
                    times(gateway.ratio(in_flight, |r| r.latency.p90_us)),
                    times(gateway.ratio(in_flight, |r| r.latency.p99_us)),
                    times(gateway.ratio(in_flight, |r| r.calls_per_s)),
                    times(gateway.ratio(in_flight, |r| r.server_cpu_us_per_call)),
                    times(gateway.ratio(in_flight, |r| r.client_cpu_us_per_call)),
                );
            }
            let _ = writeln!(md);
        }
    }

    fn targets_markdown(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "## Targets (ratios in one run, same placement)\n\n\
             **baseline**: what meshrpc must reach; **DESIGN**: the stricter goals of DESIGN.md; \
             **overhead**: meshrpc against the floor (bare quinn, tarpc, and a gateway that costs \
             no more than its two hops: axum's direct answer plus one meshrpc call).\n"
        );
        let _ = writeln!(md, "| target | level | placement | measured | met |");
        let _ = writeln!(md, "|---|---|---|---:|---|");
        for placement in &self.placements {
            let get = |system| placement.result(system);
            let p50 = |system| get(system).and_then(SystemResult::p50_us);
            let tput = |system| get(system).and_then(|r| r.throughput_at(64));
            let hop = |system| get(system).and_then(SystemResult::per_hop_p50_us);
            let mib1 = |system| {
                get(system)
                    .and_then(|r| r.payload(1 << 20))
                    .map(|p| p.p50_us)
            };
            let gateway = placement.gateway.as_ref();
            // Cost of a GET through gateway, mesh and greeter over the same GET served by axum:
            // latency at one in flight, time per call (1 / calls/s) at 64.
            let gateway_p50 = gateway.and_then(|g| g.ratio(1, |r| r.latency.p50_us));
            let gateway_time = gateway
                .and_then(|g| g.ratio(64, |r| r.calls_per_s))
                .map(|kept| 1.0 / kept);
            let m = System::Meshrpc;
            let memory = get(m).and_then(|r| r.memory.as_ref());
            let idle_mib = memory.map(|g| g.idle_kib as f64 / 1024.0);
            const BASE: &str = "baseline";
            const DESIGN: &str = "DESIGN";
            let mut rows: Vec<(&str, &str, Option<f64>, f64, bool)> = vec![
                (
                    "unary p50 ≤ 0.8× tonic-tls",
                    BASE,
                    quotient(p50(m), p50(System::TonicTls)),
                    0.8,
                    true,
                ),
                (
                    "unary p50 ≤ 0.5× tonic-tls",
                    DESIGN,
                    quotient(p50(m), p50(System::TonicTls)),
                    0.5,
                    true,
                ),
                (
                    "unary p50 ≤ 1.0× tarpc",
                    DESIGN,
                    quotient(p50(m), p50(System::Tarpc)),
                    1.0,
                    true,
                ),
                (
                    "unary p50 ≤ 1.15× bare quinn",
                    DESIGN,
                    quotient(p50(m), p50(System::Quinn)),
                    1.15,
                    true,
                ),
                (
                    "64 in flight ≥ 1.5× tonic-tls",
                    BASE,
                    quotient(tput(m), tput(System::TonicTls)),
                    1.5,
                    false,
                ),
                (
                    "64 in flight ≥ 4× tonic-tls",
                    DESIGN,
                    quotient(tput(m), tput(System::TonicTls)),
                    4.0,
                    false,
                ),
                (
                    "64 in flight ≥ 1.0× tarpc",
                    DESIGN,
                    quotient(tput(m), tput(System::Tarpc)),
                    1.0,
                    false,
                ),
                (
                    "ring per hop ≤ 0.8× tonic-tls",
                    BASE,
                    quotient(hop(m), hop(System::TonicTls)),
                    0.8,
                    true,
                ),
                (
                    "ring per hop ≤ 0.8× tonic-h2c",
                    BASE,
                    quotient(hop(m), hop(System::TonicH2c)),
                    0.8,
                    true,
                ),
                (
                    "ring per hop ≤ 0.75× tonic-h2c",
                    DESIGN,
                    quotient(hop(m), hop(System::TonicH2c)),
                    0.75,
                    true,
                ),
                (
                    "ring per hop ≤ 1.1× bare quinn",
                    DESIGN,
                    quotient(hop(m), hop(System::Quinn)),
                    1.1,
                    true,
                ),
                (
                    "1 MiB p50 ≤ 1.5× tonic-tls",
                    BASE,
                    quotient(mib1(m), mib1(System::TonicTls)),
                    1.5,
                    true,
                ),
                (
                    "1 MiB p50 ≤ 0.8× tonic-tls",
                    DESIGN,
                    quotient(mib1(m), mib1(System::TonicTls)),
                    0.8,
                    true,
                ),
                (
                    "gateway GET p50 ≤ 2× direct axum (1 in flight)",
                    BASE,
                    gateway_p50,
                    2.0,
                    true,
                ),
                (
                    "gateway GET time per call ≤ 2× direct axum (64 in flight)",
                    BASE,
                    gateway_time,
                    2.0,
                    true,
                ),
                ("idle server ≤ 20 MiB", BASE, idle_mib, 20.0, true),
                ("idle server ≤ 12 MiB", DESIGN, idle_mib, 12.0, true),
                (
                    "server bytes per held call ≤ 2 KB",
                    DESIGN,
                    memory.map(|g| g.server_bytes_per_call / 1000.0),
                    2.0,
                    true,
                ),
                (
                    "held calls answered without error (share)",
                    DESIGN,
                    memory.map(|g| g.answered as f64 / g.calls.max(1) as f64),
                    1.0,
                    false,
                ),
                (
                    "held calls ≥ 10,000 (full run)",
                    DESIGN,
                    memory.map(|g| g.calls as f64 / 10_000.0),
                    1.0,
                    false,
                ),
            ];
            rows.extend(streaming::target_rows(placement));
            rows.extend(overhead::target_rows(placement));
            for (target, level, value, bound, at_most) in rows {
                let row = target_row(target, level, &placement.key, value, bound, at_most, None);
                let _ = writeln!(md, "{row}");
            }
            // A real node's figure, with the bench server's beside it.
            let node = self.idle_node.as_ref().and_then(IdleNode::peak_mib);
            let beside = format!(
                "greeter; bench server {}",
                opt(idle_mib, |v| format!("{v:.2}"))
            );
            let row = target_row(
                "idle node ≤ 10 MiB",
                overhead::LEVEL,
                &placement.key,
                node,
                10.0,
                true,
                Some(&beside),
            );
            let _ = writeln!(md, "{row}");
        }
        let _ = writeln!(
            md,
            "\nRatios are meshrpc ÷ the other system (for the gateway: through the gateway ÷ direct, \
             or, in the overhead rows at one in flight, ÷ the sum of direct and one meshrpc call); \
             bytes per held call are in KB (1,000 bytes); the held-call rows are shares (1.00 = all); \
             the slow consumer's growth is in MiB and its stop in ms; the idle rows are peak resident \
             sets in MiB: the idle server's is the bench server's (an executable that links every \
             system), the idle node's a release `greeter`'s (the bench server's beside it).\n"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(peak_kib: Option<u64>, private_kib: Option<u64>, error: Option<&str>) -> IdleNode {
        IdleNode {
            profile: "release".to_owned(),
            idle_s: 2.0,
            peak_kib,
            private_kib,
            error: error.map(str::to_owned),
        }
    }

    #[test]
    fn a_measured_idle_node_gives_its_resident_and_private_mib() {
        let line = node(Some(8499), Some(614), None).markdown();
        assert!(
            line.starts_with(
                "Idle node (release `greeter`, joined to a gateway, alone): \
                 8.3 MiB resident, 0.6 MiB private (`VmHWM` and `RssAnon` after 2 s idle"
            ),
            "{line}"
        );
    }

    #[test]
    fn an_idle_node_not_measured_says_why() {
        let line = node(None, None, Some("`target/release/greeter` is not built")).markdown();
        assert_eq!(
            line,
            "Idle node (release `greeter`, joined to a gateway, alone): not measured: \
             `target/release/greeter` is not built"
        );
    }

    #[test]
    fn a_target_row_shows_the_figure_beside_another_and_is_judged_on_the_first() {
        let row = target_row(
            "idle node ≤ 10 MiB",
            "overhead",
            "same",
            Some(8.3),
            10.0,
            true,
            Some("greeter; bench server 11.01"),
        );
        assert_eq!(
            row,
            "| idle node ≤ 10 MiB | overhead | same | 8.30 (greeter; bench server 11.01) | yes |"
        );
        let missed = target_row("x ≥ 1", "DESIGN", "separate", Some(0.5), 1.0, false, None);
        assert_eq!(missed, "| x ≥ 1 | DESIGN | separate | 0.50 | **no** |");
        let missing = target_row("x ≤ 1", "baseline", "same", None, 1.0, true, None);
        assert_eq!(missing, "| x ≤ 1 | baseline | same | — | — |");
    }
}
