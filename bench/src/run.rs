//! The parent process: plans the scenarios, starts servers and clients as pinned child
//! processes of this binary, collects their figures and writes the report. The streaming
//! scenario's runs are in [`streaming`], the idle node of the memory scenario in [`node`].

mod node;
mod streaming;

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::str::FromStr;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::load::{Job, Outcome};
use crate::procfs;
use crate::report::{
    self, Machine, PlacementReport, Report, Route, Settings, SystemInfo, SystemResult,
};
use crate::systems::{Result, System, Target, Tls, greet};

/// A scenario, by its name on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scenario {
    Latency,
    Throughput,
    Payload,
    Cpu,
    Ring,
    Memory,
    Streaming,
    Gateway,
}

impl Scenario {
    const ALL: [Scenario; 8] = [
        Scenario::Latency,
        Scenario::Throughput,
        Scenario::Payload,
        Scenario::Cpu,
        Scenario::Ring,
        Scenario::Memory,
        Scenario::Streaming,
        Scenario::Gateway,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Latency => "latency",
            Scenario::Throughput => "throughput",
            Scenario::Payload => "payload",
            Scenario::Cpu => "cpu",
            Scenario::Ring => "ring",
            Scenario::Memory => "memory",
            Scenario::Streaming => "streaming",
            Scenario::Gateway => "gateway",
        }
    }
}

impl FromStr for Scenario {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Scenario::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Scenario::ALL.iter().map(|c| c.name()).collect();
                format!(
                    "unknown scenario `{s}`; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// A CPU placement of client and servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Everything on CPU 0.
    Same,
    /// Client on CPU 0, server on CPU 1 (ring peers alternate 1, 0, 1, … so every hop crosses).
    Separate,
}

impl Placement {
    fn key(self) -> &'static str {
        match self {
            Placement::Same => "same",
            Placement::Separate => "separate",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Placement::Same => "same core: client and every server pinned to CPU 0",
            Placement::Separate => {
                "separate cores: client on CPU 0, server on CPU 1; ring peers on CPUs 1, 0, 1, 0, 1; \
                 gateway on CPU 1, its greeter on CPU 0"
            }
        }
    }

    const CLIENT_CPU: usize = 0;

    fn server_cpu(self, peer: usize) -> usize {
        match self {
            Placement::Same => 0,
            Placement::Separate => (peer + 1) % 2,
        }
    }
}

impl FromStr for Placement {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "same" => Ok(Placement::Same),
            "separate" => Ok(Placement::Separate),
            _ => Err(format!(
                "unknown placement `{s}`; expected same or separate"
            )),
        }
    }
}

/// `bench run` options (also `cargo xtask bench`'s).
#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// Short runs, a shallow ring and fewer held calls: a smoke test in about a minute.
    #[arg(long)]
    quick: bool,
    /// Scenarios to run (comma separated): latency, throughput, payload, cpu, ring, memory,
    /// streaming, gateway.
    #[arg(long, value_delimiter = ',')]
    scenarios: Option<Vec<Scenario>>,
    /// Systems to measure (comma separated): meshrpc, quinn, tonic-tls, tonic-h2c, tarpc, http-json.
    #[arg(long, value_delimiter = ',')]
    systems: Option<Vec<System>>,
    /// Seconds per measurement (default 3, quick 0.5).
    #[arg(long)]
    duration: Option<f64>,
    /// Placements (comma separated): same, separate.
    #[arg(long, value_delimiter = ',', default_value = "same,separate")]
    placements: Vec<Placement>,
    /// Nested hops per ring round (default 1000, quick 100).
    #[arg(long)]
    depth: Option<u32>,
    /// Calls held in flight for the memory scenario (default 10000, quick 1000).
    #[arg(long)]
    hold_calls: Option<usize>,
    /// How long the server holds each of those calls, ms (default 2000, quick 300).
    #[arg(long)]
    hold_ms: Option<u32>,
    /// Seconds the streaming scenario's slow consumer reads (default 20, quick 5).
    #[arg(long)]
    slow_consumer_s: Option<f64>,
    /// The slow consumer reads its 1 GiB stream at 1 MB/s, all but its last 16 MiB (about 18
    /// minutes per system and placement), instead of `--slow-consumer-s`.
    #[arg(long)]
    long: bool,
    /// Where to write report.md, report.json and chart.svg.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Run every process with glibc's default malloc settings instead of [`MALLOC_TUNABLES`].
    #[arg(long)]
    default_malloc: bool,
}

/// The malloc settings of every server and client process, whatever the system: keep freed
/// memory instead of trimming the heap and unmapping large blocks after every call. With
/// glibc's defaults a process moving megabyte messages hands its buffers back to the kernel
/// and faults them in again on the next call, which then measures the allocator's heuristics
/// rather than the RPC stack. Services that move large messages set the same (OPERATIONS.md).
pub(crate) const MALLOC_TUNABLES: &str =
    "glibc.malloc.trim_threshold=268435456:glibc.malloc.mmap_threshold=33554432";

/// Runs the bench and writes the report.
pub(crate) fn run(options: Options) -> Result<()> {
    let started = Instant::now();
    let scenarios = options
        .scenarios
        .clone()
        .unwrap_or_else(|| Scenario::ALL.to_vec());
    let systems = options
        .systems
        .clone()
        .unwrap_or_else(|| System::ALL.to_vec());
    let duration = options
        .duration
        .unwrap_or(if options.quick { 0.5 } else { 3.0 });
    if !(duration > 0.0 && duration <= 600.0) {
        return Err(format!("--duration must be in (0, 600] seconds, got {duration}").into());
    }
    let settings = Settings {
        quick: options.quick,
        scenarios: scenarios.iter().map(|s| s.name().to_owned()).collect(),
        warmup_s: if options.quick {
            0.2f64.min(duration)
        } else {
            0.5f64.min(duration)
        },
        duration_s: duration,
        in_flight: vec![1, 16, 64, 256],
        gateway_in_flight: vec![1, 64],
        payloads: vec![64, 4 << 10, 64 << 10, 1 << 20],
        cpu_in_flight: 64,
        ring_peers: 5,
        ring_depth: options
            .depth
            .unwrap_or(if options.quick { 100 } else { 1000 }),
        hold_calls: options
            .hold_calls
            .unwrap_or(if options.quick { 1000 } else { 10_000 }),
        hold_ms: options
            .hold_ms
            .unwrap_or(if options.quick { 500 } else { 2000 }),
        stream_runs: streaming::RUNS.to_vec(),
        slow_consumer: streaming::slow_consumer(
            options.quick,
            options.long,
            options.slow_consumer_s,
        ),
        malloc_tunables: if options.default_malloc {
            String::new()
        } else {
            MALLOC_TUNABLES.to_owned()
        },
    };
    let machine = machine();
    if machine.cpus < 2 && options.placements.contains(&Placement::Separate) {
        return Err("the `separate` placement needs two CPUs; pass --placements same".into());
    }

    std::fs::create_dir_all(&options.out)?;
    let tls_dir = options.out.join("tls");
    Tls::create(&tls_dir)?;
    let exe = std::env::current_exe()?;
    let bench = Bench {
        exe,
        tls_dir,
        settings: settings.clone(),
        server: RefCell::new(None),
        loads: RefCell::new(HashMap::new()),
    };

    let measured: Vec<Scenario> = scenarios
        .iter()
        .copied()
        .filter(|s| *s != Scenario::Gateway)
        .collect();
    let gateway = scenarios.contains(&Scenario::Gateway);
    let jobs_per_system: u64 = measured.iter().map(|s| bench.job_count(*s)).sum();
    let gateway_jobs = if gateway {
        bench.job_count(Scenario::Gateway)
    } else {
        0
    };
    // A real node's idle resident set, once per run, beside the memory scenario's servers.
    let idle_node = scenarios.contains(&Scenario::Memory) && systems.contains(&System::Meshrpc);
    let total = (jobs_per_system * systems.len() as u64 + gateway_jobs)
        * options.placements.len() as u64
        + u64::from(idle_node);
    let progress = if options.no_progress {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    progress.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")?
            .progress_chars("=> "),
    );

    let mut placements = Vec::new();
    for &placement in &options.placements {
        let mut results = Vec::new();
        for &system in &systems {
            let mut result = SystemResult::new(system);
            bench.forget();
            for &scenario in &measured {
                progress.set_message(format!(
                    "{} · {system} · {}",
                    placement.key(),
                    scenario.name()
                ));
                if let Err(error) =
                    bench.scenario(placement, system, scenario, &mut result, &progress)
                {
                    result.errors.push(format!("{}: {error}", scenario.name()));
                }
            }
            bench.forget();
            results.push(result);
        }
        let gateway = gateway.then(|| {
            progress.set_message(format!("{} · gateway", placement.key()));
            bench.gateway(placement, &progress)
        });
        placements.push(PlacementReport {
            key: placement.key().to_owned(),
            description: placement.description().to_owned(),
            results,
            gateway,
        });
    }
    let idle_node = idle_node.then(|| {
        progress.set_message("idle node");
        let node = bench.idle_node(&options.out.join("node-state"));
        progress.inc(1);
        node
    });
    progress.finish_and_clear();

    let report = Report {
        machine,
        settings,
        systems: systems
            .iter()
            .map(|s| SystemInfo {
                name: s.name().to_owned(),
                description: s.describe().to_owned(),
            })
            .collect(),
        placements,
        idle_node,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    write_report(&report, &options.out)
}

fn write_report(report: &Report, out: &Path) -> Result<()> {
    let markdown = report.markdown();
    std::fs::write(out.join("report.md"), &markdown)?;
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    crate::chart::draw(report, &out.join("chart.svg"))?;
    println!("{markdown}");
    eprintln!(
        "wrote {}, {} and {}",
        out.join("report.md").display(),
        out.join("report.json").display(),
        out.join("chart.svg").display()
    );
    Ok(())
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .unwrap_or_default();
    let cpus = core_affinity::get_core_ids().map_or(1, |ids| ids.len());
    Machine {
        cpus,
        cpu_model,
        kernel,
    }
}

/// What every scenario needs to start processes.
struct Bench {
    exe: PathBuf,
    tls_dir: PathBuf,
    settings: Settings,
    /// The echo server of the current system and placement, shared by the load scenarios.
    server: RefCell<Option<Server>>,
    /// Load runs already made for the current system and placement, by (payload, in flight):
    /// latency, throughput at 1, the 64 B payload and CPU at 64 reuse each other's runs.
    loads: RefCell<HashMap<(usize, usize), (Outcome, f64)>>,
}

impl Bench {
    fn job_count(&self, scenario: Scenario) -> u64 {
        match scenario {
            Scenario::Throughput => self.settings.in_flight.len() as u64,
            Scenario::Payload => self.settings.payloads.len() as u64,
            Scenario::Gateway => (Route::ALL.len() * self.settings.gateway_in_flight.len()) as u64,
            Scenario::Streaming => self.settings.stream_runs.len() as u64 + 1,
            _ => 1,
        }
    }

    fn load_job(&self, payload: usize, in_flight: usize) -> Job {
        Job::Load {
            payload,
            in_flight,
            warmup_s: self.settings.warmup_s,
            duration_s: self.settings.duration_s,
            max_calls: 50_000_000,
        }
    }

    /// Drops the shared server and the remembered runs (next system or placement).
    fn forget(&self) {
        self.server.borrow_mut().take();
        self.loads.borrow_mut().clear();
    }

    /// A 64 B-style echo load run against the shared server, made once per system and
    /// placement: returns the client's figures and the server's CPU seconds.
    fn load(
        &self,
        placement: Placement,
        system: System,
        payload: usize,
        in_flight: usize,
    ) -> Result<(Outcome, f64)> {
        if let Some(done) = self.loads.borrow().get(&(payload, in_flight)) {
            return Ok(done.clone());
        }
        let mut shared = self.server.borrow_mut();
        let server = match shared.take() {
            Some(server) => server,
            None => self.server(system.into(), placement.server_cpu(0), None)?,
        };
        let result = self.client(system, &server, self.load_job(payload, in_flight));
        // A server that failed a run is not reused.
        if result.is_ok() {
            *shared = Some(server);
        }
        let result = result?;
        self.loads
            .borrow_mut()
            .insert((payload, in_flight), result.clone());
        Ok(result)
    }

    fn scenario(
        &self,
        placement: Placement,
        system: System,
        scenario: Scenario,
        result: &mut SystemResult,
        progress: &ProgressBar,
    ) -> Result<()> {
        let s = &self.settings;
        match scenario {
            Scenario::Latency => {
                let (outcome, server_cpu_s) = self.load(placement, system, 64, 1)?;
                progress.inc(1);
                let per_call = |seconds: f64| seconds * 1e6 / outcome.calls.max(1) as f64;
                result.latency = Some(report::Latency {
                    calls: outcome.calls,
                    client_cpu_us_per_call: per_call(outcome.client_cpu_s),
                    server_cpu_us_per_call: per_call(server_cpu_s),
                    percentiles: outcome.latency.unwrap_or_default(),
                });
            }
            Scenario::Throughput => {
                for &in_flight in &s.in_flight {
                    let outcome = self.load(placement, system, 64, in_flight);
                    progress.inc(1);
                    let (outcome, _) = outcome?;
                    result.throughput.push(report::Throughput {
                        in_flight,
                        calls: outcome.calls,
                        calls_per_s: outcome.calls as f64 / outcome.elapsed_s,
                        p50_us: outcome.latency.map_or(0.0, |l| l.p50_us),
                    });
                }
            }
            Scenario::Payload => {
                for &bytes in &s.payloads {
                    let outcome = self.load(placement, system, bytes, 1);
                    progress.inc(1);
                    let (outcome, _) = outcome?;
                    result.payloads.push(report::Payload {
                        bytes,
                        calls: outcome.calls,
                        p50_us: outcome.latency.map_or(0.0, |l| l.p50_us),
                        calls_per_s: outcome.calls as f64 / outcome.elapsed_s,
                    });
                }
            }
            Scenario::Cpu => {
                let outcome = self.load(placement, system, 64, s.cpu_in_flight);
                progress.inc(1);
                let (outcome, server_cpu_s) = outcome?;
                let per_call = |seconds: f64| seconds * 1e6 / outcome.calls.max(1) as f64;
                result.cpu = Some(report::Cpu {
                    in_flight: s.cpu_in_flight,
                    calls: outcome.calls,
                    client_us_per_call: per_call(outcome.client_cpu_s),
                    server_us_per_call: per_call(server_cpu_s),
                    total_us_per_call: per_call(outcome.client_cpu_s + server_cpu_s),
                });
            }
            Scenario::Ring => {
                let outcome = self.ring(placement, system);
                progress.inc(1);
                let outcome = outcome?;
                let latency = outcome.latency.unwrap_or_default();
                result.ring = Some(report::Ring {
                    peers: s.ring_peers,
                    depth: s.ring_depth,
                    rounds: outcome.calls,
                    per_hop_p50_us: latency.p50_us,
                    per_hop_mean_us: latency.mean_us,
                });
            }
            Scenario::Memory => {
                let server = self.server(system.into(), placement.server_cpu(0), None)?;
                let job = Job::Hold {
                    calls: s.hold_calls,
                    sleep_ms: s.hold_ms,
                };
                let (mut idle_kib, mut idle_private_kib) = (0, 0);
                let outcome = self.client_with(system, &server, job, || {
                    idle_kib = procfs::peak_rss_kib(server.pid())?;
                    idle_private_kib = procfs::private_rss_kib(server.pid())?;
                    Ok(())
                });
                progress.inc(1);
                let (outcome, _) = outcome?;
                let loaded_kib = procfs::peak_rss_kib(server.pid())?;
                let loaded_private_kib = procfs::private_rss_kib(server.pid())?;
                result.memory = Some(report::Memory {
                    idle_kib,
                    idle_private_kib,
                    loaded_kib,
                    loaded_private_kib,
                    calls: s.hold_calls,
                    answered: outcome.calls,
                    server_bytes_per_call: (loaded_kib.saturating_sub(idle_kib) * 1024) as f64
                        / s.hold_calls.max(1) as f64,
                    client_kib: outcome.client_hwm_kib,
                });
            }
            Scenario::Streaming => {
                self.streaming(placement, system, result, progress);
            }
            // Once per placement, not per system: see `Bench::gateway`.
            Scenario::Gateway => {}
        }
        Ok(())
    }

    /// The gateway scenario under `placement`: the greet `GET` served directly by axum, then
    /// through gateway, mesh and greeter, at each number of requests in flight.
    fn gateway(&self, placement: Placement, progress: &ProgressBar) -> report::Gateway {
        let s = &self.settings;
        let mut gateway = report::Gateway {
            path: greet::path(),
            runs: Vec::new(),
            errors: Vec::new(),
        };
        for route in Route::ALL {
            let servers = match route {
                Route::Direct => self
                    .server(Target::Direct, placement.server_cpu(0), None)
                    .map(|server| vec![server]),
                Route::Gateway => self.mesh_gateway(placement),
            };
            let servers = match servers {
                Ok(servers) => servers,
                Err(error) => {
                    gateway
                        .errors
                        .push(format!("{}: starting the servers: {error}", route.name()));
                    progress.inc(s.gateway_in_flight.len() as u64);
                    continue;
                }
            };
            let target = match route {
                Route::Direct => Target::Direct,
                Route::Gateway => Target::Gateway,
            };
            let pids: Vec<u32> = servers.iter().map(Server::pid).collect();
            for &in_flight in &s.gateway_in_flight {
                let job = Job::Get {
                    in_flight,
                    warmup_s: s.warmup_s,
                    duration_s: s.duration_s,
                    max_calls: 50_000_000,
                };
                let outcome = self.client_on(target, servers[0].addr, &pids, job, || Ok(()));
                progress.inc(1);
                match outcome {
                    Ok((outcome, server_cpu_s)) => {
                        let per_call = |seconds: f64| seconds * 1e6 / outcome.calls.max(1) as f64;
                        gateway.runs.push(report::GetRun {
                            route,
                            in_flight,
                            calls: outcome.calls,
                            calls_per_s: outcome.calls as f64 / outcome.elapsed_s,
                            latency: outcome.latency.clone().unwrap_or_default(),
                            server_cpu_us_per_call: per_call(server_cpu_s),
                            client_cpu_us_per_call: per_call(outcome.client_cpu_s),
                        });
                    }
                    Err(error) => gateway.errors.push(format!(
                        "{} at {in_flight} in flight: {error}",
                        route.name()
                    )),
                }
            }
        }
        gateway
    }

    /// A gateway process on a meshrpc node (placed as ring peer 0) and a greeter replica seeded
    /// to it (as peer 1); the gateway first. Clients wait for the route to answer 200.
    fn mesh_gateway(&self, placement: Placement) -> Result<Vec<Server>> {
        let mut process = self.spawn_server(Target::Gateway, placement.server_cpu(0), None)?;
        let line = process.expect(Duration::from_secs(30))?;
        let mesh: SocketAddr = line
            .strip_prefix("mesh ")
            .ok_or_else(|| format!("gateway said `{line}`, expected `mesh <addr>`"))?
            .parse()?;
        let addr = Self::listening(&process, Target::Gateway)?;
        process.send("none")?;
        let gateway = Server { process, addr };
        let greeter = self.server(Target::Greeter, placement.server_cpu(1), Some(mesh))?;
        Ok(vec![gateway, greeter])
    }

    fn ring(&self, placement: Placement, system: System) -> Result<Outcome> {
        let peers = self.settings.ring_peers;
        let mut servers = Vec::with_capacity(peers);
        for peer in 0..peers {
            servers.push(self.server_unlinked(system, placement.server_cpu(peer))?);
        }
        let addrs: Vec<SocketAddr> = servers.iter().map(|(_, addr)| *addr).collect();
        let mut linked = Vec::with_capacity(peers);
        for (peer, (mut process, addr)) in servers.into_iter().enumerate() {
            process.send(&format!("next {}", addrs[(peer + 1) % peers]))?;
            linked.push(Server { process, addr });
        }
        let s = &self.settings;
        let job = Job::Ring {
            depth: s.ring_depth,
            warmup_rounds: 2,
            max_rounds: 100_000,
            duration_s: s.duration_s,
        };
        let (outcome, _) = self.client(system, &linked[0], job)?;
        Ok(outcome)
    }

    /// A command running this bench binary with the run's malloc settings.
    fn command(&self) -> Command {
        let mut command = Command::new(&self.exe);
        if self.settings.malloc_tunables.is_empty() {
            command.env_remove("GLIBC_TUNABLES");
        } else {
            command.env("GLIBC_TUNABLES", &self.settings.malloc_tunables);
        }
        command
    }

    /// Starts `bench serve <target>` pinned to `cpu`; `seed` is a greeter's `--seed`.
    fn spawn_server(
        &self,
        target: Target,
        cpu: usize,
        seed: Option<SocketAddr>,
    ) -> Result<Process> {
        let mut command = self.command();
        command
            .arg("serve")
            .arg(target.name())
            .args(["--listen", "127.0.0.1:0", "--cpu", &cpu.to_string()])
            .arg("--tls-dir")
            .arg(&self.tls_dir);
        if let Some(seed) = seed {
            command.args(["--seed", &seed.to_string()]);
        }
        Process::spawn(command, format!("{target} server"))
    }

    /// Reads a server's `listening <addr>`.
    fn listening(process: &Process, target: Target) -> Result<SocketAddr> {
        let line = process.expect(Duration::from_secs(30))?;
        Ok(line
            .strip_prefix("listening ")
            .ok_or_else(|| format!("{target} server said `{line}`, expected `listening <addr>`"))?
            .parse()?)
    }

    fn server_unlinked(&self, system: System, cpu: usize) -> Result<(Process, SocketAddr)> {
        let process = self.spawn_server(system.into(), cpu, None)?;
        let addr = Self::listening(&process, system.into())?;
        Ok((process, addr))
    }

    /// A server of `target` (greeter: joined through `seed`) with no ring successor.
    fn server(&self, target: Target, cpu: usize, seed: Option<SocketAddr>) -> Result<Server> {
        let mut process = self.spawn_server(target, cpu, seed)?;
        let addr = Self::listening(&process, target)?;
        process.send("none")?;
        Ok(Server { process, addr })
    }

    fn client(&self, system: System, server: &Server, job: Job) -> Result<(Outcome, f64)> {
        self.client_with(system, server, job, || Ok(()))
    }

    /// Runs one client job; `at_ready` runs once the client is warm, before it is told to go.
    /// Returns the client's figures and the server's CPU seconds over the measured phase.
    fn client_with(
        &self,
        system: System,
        server: &Server,
        job: Job,
        at_ready: impl FnOnce() -> Result<()>,
    ) -> Result<(Outcome, f64)> {
        self.client_on(system.into(), server.addr, &[server.pid()], job, at_ready)
    }

    /// [`Bench::client_with`] for any target, against `addr`, counting the CPU time of every
    /// process in `server_pids`.
    fn client_on(
        &self,
        system: Target,
        addr: SocketAddr,
        server_pids: &[u32],
        job: Job,
        at_ready: impl FnOnce() -> Result<()>,
    ) -> Result<(Outcome, f64)> {
        let s = &self.settings;
        let server_cpu = || -> Result<f64> {
            server_pids
                .iter()
                .map(|&pid| procfs::cpu_seconds(pid))
                .sum::<Result<f64>>()
        };
        let mut command = self.command();
        command
            .arg("client")
            .arg(system.name())
            .args(["--addr", &addr.to_string()])
            .args(["--cpu", &Placement::CLIENT_CPU.to_string()])
            .arg("--tls-dir")
            .arg(&self.tls_dir)
            .args(["--job", &serde_json::to_string(&job)?]);
        let mut client = Process::spawn(command, format!("{system} client"))?;
        // Generous bounds: a hung system fails its scenario instead of hanging the run.
        let slack = Duration::from_secs(60);
        let phase = match &job {
            Job::SlowConsumer { duration_s, .. } => Duration::from_secs_f64(*duration_s),
            _ => {
                Duration::from_secs_f64(s.warmup_s + s.duration_s)
                    + Duration::from_millis(u64::from(s.hold_ms))
            }
        };
        let line = client.expect(phase + slack)?;
        if line != "ready" {
            return Err(format!("{system} client said `{line}`, expected `ready`").into());
        }
        at_ready()?;
        let server_cpu_before = server_cpu()?;
        client.send("go")?;
        let line = client.expect(phase + slack)?;
        let server_cpu_s = server_cpu()? - server_cpu_before;
        let json = line
            .strip_prefix("result ")
            .ok_or_else(|| format!("{system} client said `{line}`, expected `result <json>`"))?;
        let outcome: Outcome = serde_json::from_str(json)?;
        if outcome.errors > 0 {
            return Err(format!(
                "{} of {} calls failed; first: {}",
                outcome.errors,
                outcome.errors + outcome.calls,
                outcome.first_error.as_deref().unwrap_or("?")
            )
            .into());
        }
        if outcome.calls == 0 {
            return Err("no call completed".into());
        }
        Ok((outcome, server_cpu_s))
    }
}

/// A running server and where it listens.
struct Server {
    process: Process,
    addr: SocketAddr,
}

impl Server {
    fn pid(&self) -> u32 {
        self.process.pid()
    }
}

/// A child process speaking the line protocol on stdin/stdout; killed when dropped.
struct Process {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Process {
    fn spawn(mut command: Command, name: String) -> Result<Process> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {name}: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let stderr_pipe = child.stderr.take().ok_or("no stderr")?;
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let tail = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines().map_while(|l| l.ok()) {
                if let Ok(mut tail) = tail.lock() {
                    if tail.len() == 5 {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            }
        });
        Ok(Process {
            name,
            child,
            stdin,
            lines,
            stderr,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks the process to stop with SIGTERM (a meshrpc binary drains and exits) and waits up
    /// to `limit` for it to exit; kills it after that.
    fn stop(&mut self, limit: Duration) {
        self.stdin.take();
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid().to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn stderr_tail(&self) -> String {
        // Give the reader thread a moment to collect the last words of a dying process.
        std::thread::sleep(Duration::from_millis(50));
        self.stderr
            .lock()
            .map(|tail| tail.iter().cloned().collect::<Vec<_>>().join(" / "))
            .unwrap_or_default()
    }

    /// The next line of output, within `timeout`.
    fn expect(&self, timeout: Duration) -> Result<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => match line.strip_prefix("error ") {
                Some(error) => Err(format!("{}: {error}", self.name).into()),
                None => Ok(line),
            },
            Err(RecvTimeoutError::Timeout) => {
                Err(format!("{} said nothing for {timeout:?}", self.name).into())
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err(format!("{} exited: {}", self.name, self.stderr_tail()).into())
            }
        }
    }

    fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
