//! `cargo xtask <task>`: project tasks, one module per task. This file only dispatches.

mod bench;
mod demo;
mod faults;
mod fuzz;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "meshrpc project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Measure meshrpc against bare quinn, tonic, tarpc and HTTP/JSON; write target/bench/.
    Bench(bench::Args),
    /// Start the demo mesh on loopback: gateway, three greeters and a concierge.
    Demo(demo::Args),
    /// Run the fault and attack suite (`--long` for the long variants).
    Faults(faults::Args),
    /// Fuzz one target of fuzz/ (cargo-fuzz on nightly, else a replay on stable).
    Fuzz(fuzz::Args),
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::Bench(args) => bench::run(args),
        Task::Demo(args) => demo::run(args),
        Task::Faults(args) => faults::run(args),
        Task::Fuzz(args) => fuzz::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error}");
            ExitCode::FAILURE
        }
    }
}
