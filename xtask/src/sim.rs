//! `cargo xtask sim`: the membership simulation for 10, 100 and 1,000 nodes (or the sizes
//! given), built in release; writes the Markdown table to `target/sim/report.md` and stdout.
//!
//! The simulation itself lives in meshrpc (`membership::sim`, driven by the `membership_sim`
//! example) so it runs the node's own membership code; this task only builds, runs and files.

use std::process::Stdio;

use clap::Parser;

#[derive(Debug, Parser)]
pub(crate) struct Args {
    /// Mesh sizes to simulate.
    #[arg(default_values_t = [10, 100, 1000])]
    sizes: Vec<usize>,
    /// The seed of every random choice: the same seed gives the same table.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Keep foca's max_transmissions at its start value instead of growing it with the mesh.
    #[arg(long)]
    fixed_transmissions: bool,
}

pub(crate) fn run(args: Args) -> Result<(), String> {
    crate::cargo_build(
        &["-p", "meshrpc", "--example", "membership_sim"],
        true,
        "the membership simulation",
    )?;
    let binary = crate::target_dir().join("release/examples/membership_sim");
    let mut command = crate::command(&binary.to_string_lossy());
    command.arg("--seed").arg(args.seed.to_string());
    if args.fixed_transmissions {
        command.arg("--fixed-transmissions");
    }
    command.args(args.sizes.iter().map(ToString::to_string));
    let output = command
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running {}: {e}", binary.display()))?;
    if !output.status.success() {
        return Err(format!("the simulation failed ({})", output.status));
    }
    let table = String::from_utf8_lossy(&output.stdout);
    let report = format!(
        "# Membership simulation\n\nSeed {}, sizes {:?}{}. Virtual time; foca payload bytes \
         (no QUIC/UDP/IP headers); see docs/SCALE.md for what is and is not simulated.\n\n{table}",
        args.seed,
        args.sizes,
        if args.fixed_transmissions {
            ", max_transmissions fixed"
        } else {
            ""
        },
    );
    let dir = crate::target_dir().join("sim");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = dir.join("report.md");
    std::fs::write(&path, &report).map_err(|e| format!("writing {}: {e}", path.display()))?;
    print!("{report}");
    eprintln!("written to {}", path.display());
    Ok(())
}
