//! `cargo xtask <task>`: project tasks, one module per task. This file only dispatches.

mod bench;
mod demo;
mod faults;
mod fuzz;

use std::path::{Path, PathBuf};
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

/// The workspace root: xtask's manifest sits one level below it.
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The cargo that runs this task (`$CARGO`), else `cargo` from the path.
fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
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
