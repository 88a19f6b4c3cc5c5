//! `cargo xtask faults [--long]`: the fault and attack suite of `faults/` (see
//! docs/RELIABILITY.md). `--long` runs the long variants (more restart cycles, a longer
//! connection churn) and any ignored test.

/// Options of `cargo xtask faults`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The long variants, and any ignored test.
    #[arg(long)]
    long: bool,
}

/// Builds the binaries under test and runs the suite with its figures printed.
pub(crate) fn run(args: Args) -> Result<(), String> {
    let root = crate::workspace_root();
    let cargo = crate::cargo();
    crate::cargo_build(
        &["-p", "greeter", "-p", "gateway", "--bins"],
        false,
        "the binaries under test",
    )?;
    let mut suite = crate::command(&cargo);
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
