//! `cargo xtask fuzz <target> --time <secs>`: coverage-guided fuzzing of one target of `fuzz/`
//! with cargo-fuzz on nightly when both are installed; otherwise the target's checks replayed
//! over its seeds and deterministic mutations by a plain test binary on the stable toolchain,
//! for the same time where the replay supports it.

/// The targets of `fuzz/`, and the stable test that replays each.
const TARGETS: [(&str, &str, &str); 4] = [
    (
        "frame_decoder",
        "meshrpc --test hostile",
        "chunked_decoding_of_mutated_frames_never_panics",
    ),
    (
        "membership_decoder",
        "faults --test fuzz_replay",
        "membership_decoder",
    ),
    (
        "manifest_parser",
        "faults --test fuzz_replay",
        "manifest_parser",
    ),
    (
        "json_transcoder",
        "faults --test fuzz_replay",
        "json_transcoder",
    ),
];

/// Options of `cargo xtask fuzz`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The target: frame_decoder, membership_decoder, manifest_parser or json_transcoder.
    target: String,
    /// Seconds to fuzz for.
    #[arg(long, default_value_t = 60)]
    time: u64,
}

/// Whether `cargo +nightly fuzz` works here (rustup's cargo, a nightly toolchain, cargo-fuzz).
fn cargo_fuzz_on_nightly() -> bool {
    crate::command("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .is_ok_and(|output| output.status.success())
}

/// Fuzzes or replays the target.
pub(crate) fn run(args: Args) -> Result<(), String> {
    let Some((target, package_test, filter)) = TARGETS
        .iter()
        .find(|(name, _, _)| *name == args.target)
        .copied()
    else {
        let names: Vec<&str> = TARGETS.iter().map(|(name, _, _)| *name).collect();
        return Err(format!(
            "no fuzz target `{}`; the targets are: {}",
            args.target,
            names.join(", ")
        ));
    };
    let root = crate::workspace_root();
    let status = if cargo_fuzz_on_nightly() {
        let fuzz_dir = root.join("fuzz");
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .map_err(|error| format!("{}: {error}", corpus.display()))?;
        eprintln!("fuzzing {target} for {} s with cargo-fuzz", args.time);
        crate::command("cargo")
            .current_dir(&fuzz_dir)
            .args(["+nightly", "fuzz", "run", target])
            .arg(&corpus)
            .arg(fuzz_dir.join("seeds").join(target))
            .arg("--")
            .arg(format!("-max_total_time={}", args.time))
            .status()
    } else {
        eprintln!(
            "cargo-fuzz on a nightly toolchain is not available: replaying {target}'s checks over \
             its seeds and deterministic mutations instead (not coverage-guided).\nFor real \
             fuzzing: `rustup toolchain install nightly && cargo install cargo-fuzz`, then run \
             this again."
        );
        let cargo = crate::cargo();
        let mut command = crate::command(&cargo);
        command
            .current_dir(&root)
            .args(["test", "-p"])
            .args(package_test.split(' '))
            .args(["--", filter, "--nocapture"])
            .env("FAULTS_FUZZ_SECS", args.time.to_string());
        if target == "frame_decoder" {
            eprintln!(
                "(the frame_decoder replay runs its fixed 20,000 mutations; --time is ignored)"
            );
        }
        command.status()
    };
    match status {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("fuzzing {target} failed ({status})")),
        Err(error) => Err(format!("could not run cargo: {error}")),
    }
}
