//! `cargo xtask bench`: builds the `bench` crate in release, and the `greeter` and `mesh-api`
//! binaries the memory scenario's idle node runs, then runs `bench run`, which writes
//! `target/bench/report.md`, `report.json` and `chart.svg`. See `bench/README.md`.

use std::process::Command;

/// Options of `cargo xtask bench`; anything after `--` goes to `bench run` as is
/// (`--placements same`, `--depth 500`, `--hold-calls 2000`, `--no-progress`, …).
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Short runs, a shallow ring and fewer held calls (about a minute).
    #[arg(long)]
    quick: bool,
    /// Scenarios, comma separated: latency, throughput, payload, cpu, ring, memory, streaming,
    /// gateway.
    #[arg(long)]
    scenarios: Option<String>,
    /// Systems, comma separated: meshrpc, quinn, tonic-tls, tonic-h2c, tarpc, http-json.
    #[arg(long)]
    systems: Option<String>,
    /// Seconds per measurement (default 3, quick 0.4).
    #[arg(long)]
    duration: Option<f64>,
    /// Build and run the debug profile (faster to build, meaningless figures).
    #[arg(long)]
    debug: bool,
    /// Passed to `bench run` as is.
    #[arg(last = true)]
    rest: Vec<String>,
}

/// Builds the bench and runs it.
pub(crate) fn run(args: Args) -> Result<(), String> {
    let profile = if args.debug { "debug" } else { "release" };
    crate::cargo_build(&["-p", "bench"], !args.debug, "the bench")?;
    // The idle node's binaries, built as the demo builds them. Not in the bench's cargo
    // invocation: cargo unifies the features of the packages it builds together, which would
    // turn on meshrpc's `otel` (a default of both) in the bench and change the code it measures.
    crate::cargo_build(
        &["-p", "greeter", "-p", "gateway"],
        !args.debug,
        "the idle node's binaries (greeter, mesh-api)",
    )?;
    let target = crate::target_dir();
    let exe = target.join(profile).join("bench");
    let mut bench = Command::new(&exe);
    bench
        .current_dir(crate::workspace_root())
        .arg("run")
        .arg("--out")
        .arg(target.join("bench"));
    if args.quick {
        bench.arg("--quick");
    }
    if let Some(scenarios) = &args.scenarios {
        bench.args(["--scenarios", scenarios]);
    }
    if let Some(systems) = &args.systems {
        bench.args(["--systems", systems]);
    }
    if let Some(duration) = args.duration {
        bench.args(["--duration", &duration.to_string()]);
    }
    bench.args(&args.rest);
    let status = bench
        .status()
        .map_err(|e| format!("running {}: {e}", exe.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("the bench failed ({status})"))
    }
}
