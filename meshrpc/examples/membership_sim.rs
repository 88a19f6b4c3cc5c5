//! Runs the membership simulation for the given mesh sizes and prints the Markdown table
//! (`cargo xtask sim` runs it in release and writes `target/sim/report.md`).
//!
//! ```text
//! cargo run --release -p meshrpc --example membership_sim -- 10 100 1000
//! ```

use meshrpc::membership::sim::scenario::{Options, measure, table};

fn main() {
    let mut sizes: Vec<usize> = Vec::new();
    let mut options = Options {
        progress: true,
        ..Options::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--fixed-transmissions" => options.adaptive = false,
            "--seed" => {
                options.seed = args.next().and_then(|seed| seed.parse().ok()).unwrap_or(1);
            }
            size => match size.parse() {
                Ok(size) => sizes.push(size),
                Err(_) => {
                    eprintln!("usage: membership_sim [--seed N] [--fixed-transmissions] SIZE...");
                    std::process::exit(2);
                }
            },
        }
    }
    if sizes.is_empty() {
        sizes = vec![10, 100, 1000];
    }
    let mut rows = Vec::new();
    for size in sizes {
        let started = std::time::Instant::now();
        // A thousand nodes' bootstrap floods every node's gossip for minutes of CPU: large
        // meshes start converged (the table says so).
        let options = Options {
            warm_start: size >= 500,
            steady: if size >= 500 {
                std::time::Duration::from_secs(5)
            } else {
                options.steady
            },
            loss_phase: if size >= 500 {
                std::time::Duration::from_secs(15)
            } else {
                options.loss_phase
            },
            // Healing a partition of 1,000 nodes (each half declared the other down, then 500
            // renewals) costs many minutes of CPU to simulate.
            partition: if size >= 500 { None } else { options.partition },
            // At 20 % loss a 100-node mesh already declares most members down at least once;
            // at 1,000 the churn that follows costs many minutes of CPU to simulate.
            losses: if size >= 500 {
                vec![0.01, 0.05]
            } else {
                options.losses.clone()
            },
            ..options.clone()
        };
        let figures = measure(size, &options);
        eprintln!(
            "{size} nodes simulated in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        eprintln!("{figures:?}");
        eprintln!(
            "{}",
            table(std::slice::from_ref(&figures))
                .lines()
                .last()
                .unwrap_or("")
        );
        rows.push(figures);
    }
    print!("{}", table(&rows));
}
