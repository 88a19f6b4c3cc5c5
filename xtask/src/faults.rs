//! `cargo xtask faults [--long]`: the fault and attack suite of `faults/` (see
//! docs/RELIABILITY.md). `--long` runs the long variants (more restart cycles, a longer
//! connection churn) and any ignored test.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Options of `cargo xtask faults`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The long variants, and any ignored test.
    #[arg(long)]
    long: bool,
}

fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Builds the binaries under test and runs the suite with its figures printed.
pub(crate) fn run(args: Args) -> Result<(), String> {
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let built = Command::new(&cargo)
        .current_dir(&root)
        .args(["build", "-p", "greeter", "-p", "gateway", "--bins"])
        .status()
        .map_err(|e| format!("running {cargo}: {e}"))?;
    if !built.success() {
        return Err(format!("building the binaries under test failed ({built})"));
    }
    let mut suite = Command::new(&cargo);
    suite.current_dir(&root).args([
        "nextest",
        "run",
        "-p",
        "faults",
        "--no-capture",
        "--no-fail-fast",
    ]);
    if args.long {
        suite
            .arg("--run-ignored")
            .arg("all")
            .env("MESHRPC_FAULTS_LONG", "1");
    }
    let status = suite
        .status()
        .map_err(|e| format!("running {cargo} nextest: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("the fault suite failed ({status})"))
    }
}
