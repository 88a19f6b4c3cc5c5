//! `cargo xtask faults [--long]`: the fault and attack suite of `faults/` (see
//! docs/RELIABILITY.md). `--long` runs the long variants (more restart cycles, a longer
//! connection churn, CPU starvation and lossy links in the tail tests) and any ignored test:
//! among them the 64-process mesh in network namespaces (`faults/tests/scale.rs`,
//! docs/SCALE.md) and 30 s of busy loops on every core (`faults/tests/starvation.rs`).
//! The tail figures the tests print are gathered into a table at the end.

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
    // The tests print their tail figures as `TAIL <fault>: ...` lines; they are echoed as they
    // come and gathered into one table at the end.
    let mut child = suite
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {cargo} nextest: {e}"))?;
    let mut tail = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("{line}");
            if let Some(figures) = line.strip_prefix("TAIL ") {
                tail.push(figures.to_owned());
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("running {cargo} nextest: {e}"))?;
    if !tail.is_empty() {
        eprintln!("\nTail figures (fault window; see docs/RELIABILITY.md):");
        for figures in &tail {
            eprintln!("  {figures}");
        }
    }
    if status.success() {
        Ok(())
    } else {
        Err(format!("the fault suite failed ({status})"))
    }
}
