//! `bench`: measures meshrpc against bare quinn, tonic, tarpc and HTTP/JSON, side by side.
//!
//! One binary plays three parts, so that servers and clients never share a runtime:
//! - `bench run` (what `cargo xtask bench` calls) plans the scenarios, starts every server and
//!   client as a child process of this same binary, pinned to CPUs, and writes the report;
//! - `bench serve <system>` runs one system's server, prints `listening <addr>`, reads its ring
//!   successor (`next <addr>` or `none`) and serves until its standard input closes. The
//!   gateway scenario's parts serve the same way: `bench serve greet-axum` (the greet handler on
//!   axum), `bench serve gateway` (the gateway on a meshrpc node; it prints `mesh <addr>`
//!   first) and `bench serve greeter --seed <that addr>` (a greeter replica joined to it);
//! - `bench client <system>` connects, warms up, prints `ready`, waits for `go`, runs one job and
//!   prints `result <json>` (a server answers `stats <json>` to `stats`: its stream producers'
//!   figures) (`bench client gateway` and `bench client greet-axum`: HTTP GETs of
//!   the greet route).
//!
//! Every process runs a tokio `current_thread` runtime, and the same malloc settings (see
//! `run::MALLOC_TUNABLES`).

mod chart;
mod load;
mod procfs;
mod profile;
mod report;
mod run;
mod stream_load;
mod systems;

use std::io::{BufRead as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use systems::{BenchClient, Result, System, Target, Tls};

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "meshrpc against the alternatives, side by side"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the scenarios and write the report (what `cargo xtask bench` runs).
    Run(run::Options),
    /// Serve one system, or a part of the gateway scenario (started by `run`).
    Serve {
        /// A system, or `gateway`, `greeter`, `greet-axum`.
        target: Target,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// The mesh address a `greeter` joins through (the gateway's node).
        #[arg(long)]
        seed: Option<SocketAddr>,
        /// CPU to pin the process to.
        #[arg(long)]
        cpu: Option<usize>,
        /// Directory with the shared certificate (`cert.pem`, `key.pem`).
        #[arg(long)]
        tls_dir: PathBuf,
    },
    /// Serve and call one system in this process on one thread, for a profiler.
    Profile(profile::Options),
    /// Run one measurement against a server (started by `run`).
    Client {
        /// A system, or `gateway`, `greet-axum` (HTTP GETs of the greet route).
        target: Target,
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        cpu: Option<usize>,
        #[arg(long)]
        tls_dir: PathBuf,
        /// The job, as JSON.
        #[arg(long)]
        job: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(options) => run::run(options),
        Command::Profile(options) => profile::run(&options),
        Command::Serve {
            target,
            listen,
            seed,
            cpu,
            tls_dir,
        } => serve(target, listen, seed, cpu, &tls_dir),
        Command::Client {
            target,
            addr,
            cpu,
            tls_dir,
            job,
        } => client(target, addr, cpu, &tls_dir, &job),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench: {error}");
            // The parent reads stdout for the protocol; say it there too.
            println!("error {}", error.to_string().replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

/// Pins the calling thread (before any other is started, so every thread inherits it).
fn pin(cpu: Option<usize>) -> Result<()> {
    let Some(cpu) = cpu else { return Ok(()) };
    let ids = core_affinity::get_core_ids().ok_or("cannot list CPUs for pinning")?;
    let id = ids
        .into_iter()
        .find(|id| id.id == cpu)
        .ok_or_else(|| format!("CPU {cpu} is not available for pinning"))?;
    if !core_affinity::set_for_current(id) {
        return Err(format!("could not pin to CPU {cpu}").into());
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn read_line() -> Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_owned())
}

fn say(line: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    Ok(())
}

fn serve(
    target: Target,
    listen: SocketAddr,
    seed: Option<SocketAddr>,
    cpu: Option<usize>,
    tls_dir: &std::path::Path,
) -> Result<()> {
    pin(cpu)?;
    let tls = Tls::load(tls_dir)?;
    let rendezvous: systems::Rendezvous = Box::new(|addr| {
        say(&format!("listening {addr}"))?;
        let line = read_line()?;
        let next = match line.strip_prefix("next ") {
            Some(next) => Some(next.parse()?),
            None if line == "none" => None,
            None => return Err(format!("expected `next <addr>` or `none`, got `{line}`").into()),
        };
        // The parent closing our stdin (or dying) stops the server; `stats` asks for the
        // streaming producers' figures (the slow consumer's stop time).
        std::thread::spawn(|| {
            let mut line = String::new();
            while std::io::stdin()
                .lock()
                .read_line(&mut line)
                .is_ok_and(|n| n > 0)
            {
                if line.trim() == "stats" {
                    let stats = systems::producer::stats();
                    let json = serde_json::to_string(&stats).unwrap_or_default();
                    if say(&format!("stats {json}")).is_err() {
                        break;
                    }
                }
                line.clear();
            }
            std::process::exit(0);
        });
        Ok(next)
    });
    runtime()?.block_on(systems::serve(target, listen, seed, tls, rendezvous))
}

fn client(
    target: Target,
    addr: SocketAddr,
    cpu: Option<usize>,
    tls_dir: &std::path::Path,
    job: &str,
) -> Result<()> {
    pin(cpu)?;
    let tls = Tls::load(tls_dir)?;
    let job: load::Job = serde_json::from_str(job)?;
    let runtime = runtime()?;
    let system = match target {
        Target::System(system) => system,
        Target::Gateway | Target::Direct => {
            let outcome = runtime.block_on(measure_get(addr, &job))?;
            return say(&format!("result {}", serde_json::to_string(&outcome)?));
        }
        Target::Greeter => return Err("the greeter has no client: measure the gateway".into()),
    };
    let outcome = match system {
        System::Meshrpc => {
            runtime.block_on(measure::<systems::meshrpc_node::Client>(addr, &tls, &job))
        }
        System::Quinn => runtime.block_on(measure::<systems::quinn_raw::Client>(addr, &tls, &job)),
        System::TonicTls => runtime.block_on(measure::<systems::tonic_grpc::Client<true>>(
            addr, &tls, &job,
        )),
        System::TonicH2c => runtime.block_on(measure::<systems::tonic_grpc::Client<false>>(
            addr, &tls, &job,
        )),
        System::Tarpc => runtime.block_on(measure::<systems::tarpc_tcp::Client>(addr, &tls, &job)),
        System::HttpJson => {
            runtime.block_on(measure::<systems::http_json::Client>(addr, &tls, &job))
        }
    }?;
    say(&format!("result {}", serde_json::to_string(&outcome)?))
}

fn ready_for_go() -> Result<()> {
    say("ready")?;
    match read_line()?.as_str() {
        "go" => Ok(()),
        other => Err(format!("expected `go`, got `{other}`").into()),
    }
}

async fn measure_get(addr: SocketAddr, job: &load::Job) -> Result<load::Outcome> {
    let client = systems::greet::Client::connect(addr).await?;
    load::run_get(client, job, ready_for_go).await
}

async fn measure<C: BenchClient>(
    addr: SocketAddr,
    tls: &Tls,
    job: &load::Job,
) -> Result<load::Outcome> {
    let client = C::connect(addr, tls).await?;
    load::run(client, job, ready_for_go).await
}
