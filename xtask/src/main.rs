//! `cargo xtask <task>`: project tasks, one module per task. This file only dispatches.

mod bench;
mod demo;
mod faults;
mod fuzz;
mod sim;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

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
    /// Start the demo mesh on loopback: gateway, three greeters, a concierge and two numbers.
    Demo(demo::Args),
    /// Run the fault and attack suite (`--long` for the long variants).
    Faults(faults::Args),
    /// Fuzz one target of fuzz/ (cargo-fuzz on nightly, else a replay on stable).
    Fuzz(fuzz::Args),
    /// Simulate the membership of 10, 100 and 1,000 nodes; write target/sim/report.md.
    Sim(sim::Args),
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

/// Runs `cargo build <args>` in the workspace (`--release` when `release`); a failure names
/// `what` was being built.
fn cargo_build(args: &[&str], release: bool, what: &str) -> Result<(), String> {
    let cargo = cargo();
    let mut build = command(&cargo);
    build.current_dir(workspace_root()).arg("build").args(args);
    if release {
        build.arg("--release");
    }
    let status = build
        .status()
        .map_err(|e| format!("running {cargo}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("building {what} failed ({status})"))
    }
}

/// Cargo's target directory (`$CARGO_TARGET_DIR`, else the workspace's `target`).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// A command running `program` without the variables cargo set for this task's own package
/// (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ...). A nested cargo would hand them to build scripts
/// that watch them (ring's does) and rebuild half the dependency tree, and again on the next
/// plain `cargo build`.
fn command(program: &str) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let of_this_package = name.starts_with("CARGO_PKG_")
            || matches!(
                name,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
            );
        if of_this_package {
            command.env_remove(name);
        }
    }
    command
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::Bench(args) => bench::run(args),
        Task::Demo(args) => demo::run(args),
        Task::Faults(args) => faults::run(args),
        Task::Fuzz(args) => fuzz::run(args),
        Task::Sim(args) => sim::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_cargo_commands_drop_the_variables_of_this_package() {
        // cargo sets these for the test binary as it does for `cargo xtask`.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let command = command("cargo");
        let removed: Vec<String> = command
            .get_envs()
            .filter(|(_, value)| value.is_none())
            .map(|(name, _)| name.to_string_lossy().into_owned())
            .collect();
        assert!(
            removed.iter().any(|name| name == "CARGO_MANIFEST_DIR"),
            "{removed:?}"
        );
        assert!(
            removed.iter().any(|name| name == "CARGO_PKG_NAME"),
            "{removed:?}"
        );
        assert!(
            !removed
                .iter()
                .any(|name| name == "CARGO_HOME" || name == "PATH"),
            "{removed:?}"
        );
    }
}
