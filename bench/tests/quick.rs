//! The harness end to end in a tiny mode: every system answers in every scenario under both
//! placements, the greet `GET` answers directly and through gateway, mesh and greeter, a real
//! node's idle resident set is measured (or said to be unbuilt), and the report has every table. Nothing here is about speed: this runs the
//! debug build that `cargo test` makes (a release build of tonic, quinn and friends would cost
//! CI minutes for figures nobody reads), with runs of 0.1 s.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const SYSTEMS: [&str; 6] = [
    "meshrpc",
    "quinn",
    "tonic-tls",
    "tonic-h2c",
    "tarpc",
    "http-json",
];

fn run_quick(out: &Path) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["run", "--quick", "--duration", "0.1", "--depth", "10"])
        .args([
            "--hold-calls",
            "200",
            "--hold-ms",
            "200",
            "--slow-consumer-s",
            "0.5",
            "--no-progress",
            "--out",
        ])
        .arg(out)
        .output()
        .expect("the bench binary starts");
    assert!(
        output.status.success(),
        "bench run failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json = std::fs::read_to_string(out.join("report.json")).expect("report.json is written");
    serde_json::from_str(&json).expect("report.json is JSON")
}

#[test]
fn a_quick_run_measures_every_system_in_every_scenario_and_writes_every_table() {
    let out = tempfile::tempdir().expect("temporary directory");
    let report = run_quick(out.path());

    let placements = report["placements"].as_array().expect("placements");
    let keys: Vec<&str> = placements
        .iter()
        .filter_map(|p| p["key"].as_str())
        .collect();
    assert_eq!(keys, ["same", "separate"]);
    let mut cpu_read = std::collections::BTreeMap::<&str, f64>::new();
    for placement in placements {
        let results = placement["results"].as_array().expect("results");
        let systems: Vec<&str> = results
            .iter()
            .filter_map(|r| r["system"].as_str())
            .collect();
        assert_eq!(systems, SYSTEMS);
        for result in results {
            let name = format!("{} / {}", placement["key"], result["system"]);
            assert_eq!(result["errors"], serde_json::json!([]), "{name}: errors");
            assert!(
                result["latency"]["calls"].as_u64() > Some(0),
                "{name}: latency"
            );
            assert!(
                result["latency"]["p50_us"].as_f64() > Some(0.0),
                "{name}: latency p50"
            );
            // CPU time is read in the kernel's 10 ms ticks: a process that ran less than a
            // tick in a 0.1 s run (a busy machine, a light server) reads 0. Each figure must
            // be there; that the reading works is checked over the whole run, below.
            for side in ["client_cpu_us_per_call", "server_cpu_us_per_call"] {
                let cpu = result["latency"][side].as_f64();
                assert!(cpu.is_some_and(|cpu| cpu >= 0.0), "{name}: latency {side}");
                *cpu_read.entry(side).or_default() += cpu.unwrap_or_default();
            }
            let throughput = result["throughput"].as_array().expect("throughput");
            let in_flight: Vec<u64> = throughput
                .iter()
                .filter_map(|t| t["in_flight"].as_u64())
                .collect();
            assert_eq!(in_flight, [1, 16, 64, 256], "{name}: throughput");
            assert!(
                throughput.iter().all(|t| t["calls"].as_u64() > Some(0)),
                "{name}: throughput calls"
            );
            let payloads = result["payloads"].as_array().expect("payloads");
            let bytes: Vec<u64> = payloads
                .iter()
                .filter_map(|p| p["bytes"].as_u64())
                .collect();
            assert_eq!(bytes, [64, 4096, 65536, 1048576], "{name}: payloads");
            assert!(result["cpu"]["calls"].as_u64() > Some(0), "{name}: cpu");
            assert!(result["ring"]["rounds"].as_u64() > Some(0), "{name}: ring");
            assert_eq!(
                result["memory"]["answered"].as_u64(),
                Some(200),
                "{name}: memory"
            );
            assert!(
                result["memory"]["idle_kib"].as_u64() > Some(0),
                "{name}: idle rss"
            );
            let private = result["memory"]["idle_private_kib"].as_u64();
            assert!(
                private > Some(0) && private < result["memory"]["idle_kib"].as_u64(),
                "{name}: the idle resident set's private part is a part of it"
            );
            // Not necessarily more than idle: 200 held calls may fit in memory the server
            // already had (bare quinn's do, in what its connection's setup freed).
            let loaded_private = result["memory"]["loaded_private_kib"].as_u64();
            assert!(
                loaded_private >= private
                    && loaded_private < result["memory"]["loaded_kib"].as_u64(),
                "{name}: the loaded server's private memory is read, a part of its resident set"
            );
            check_streaming(&name, result);
        }
    }
    for side in ["client_cpu_us_per_call", "server_cpu_us_per_call"] {
        assert!(
            cpu_read.get(side).is_some_and(|total| *total > 0.0),
            "no latency run read any {side}"
        );
    }
    for placement in placements {
        let key = placement["key"].as_str().unwrap_or("?");
        let gateway = &placement["gateway"];
        assert_eq!(
            gateway["errors"],
            serde_json::json!([]),
            "{key}: gateway errors"
        );
        assert_eq!(gateway["path"], "/greeter/greet/Max", "{key}: gateway path");
        let runs: Vec<(&str, u64)> = gateway["runs"]
            .as_array()
            .expect("gateway runs")
            .iter()
            .filter(|r| r["calls"].as_u64() > Some(0) && r["p50_us"].as_f64() > Some(0.0))
            .filter_map(|r| Some((r["route"].as_str()?, r["in_flight"].as_u64()?)))
            .collect();
        assert_eq!(
            runs,
            [
                ("direct", 1),
                ("direct", 64),
                ("gateway", 1),
                ("gateway", 64)
            ],
            "{key}: every route answered at 1 and 64 in flight"
        );
    }

    let markdown = std::fs::read_to_string(out.path().join("report.md")).expect("report.md");
    for heading in [
        "## Placement: same",
        "## Placement: separate",
        "### Unary latency",
        "### Throughput",
        "### Payloads",
        "### CPU time per call",
        "### Hop ring",
        "### Memory",
        "### Server streaming",
        "### Slow consumer",
        "## Gateway under HTTP load",
        "### Gateway GET, placement same",
        "### Gateway GET, placement separate",
        "## Targets",
    ] {
        let per_placement = heading.starts_with("###") && !heading.contains("placement");
        assert_eq!(
            markdown.matches(heading).count(),
            if per_placement { 2 } else { 1 },
            "{heading}"
        );
    }
    for row in [
        "| 1 | direct |",
        "| 1 | gateway |",
        "| 64 | direct |",
        "| 64 | gateway |",
        "| 64 | **gateway ÷ direct** |",
        "| gateway GET p50 ≤ 2× direct axum (1 in flight) | baseline | same |",
        "| gateway GET time per call ≤ 2× direct axum (64 in flight) | baseline | separate |",
        "| 1 MiB p50 ≤ 1.5× tonic-tls | baseline | same |",
        "| server bytes per held call ≤ 2 KB | DESIGN | separate |",
        "| stream msgs/s (64 B, 16 streams) ≥ 2× tonic-tls | baseline | same |",
        "| slow consumer: producer stops ≤ 100 ms after the consumer leaves | baseline | separate |",
        "| CPU per call at 64 in flight ≤ 1.15× bare quinn | overhead | same |",
        "| 256 in flight ≥ 1.0× tarpc | overhead | separate |",
        "| server bytes per held call ≤ 1,500 | overhead | same |",
        "| gateway server CPU per GET ≤ 1.25× (direct server CPU + meshrpc CPU per call), 1 in flight | overhead | separate |",
        "| idle server ≤ 20 MiB | baseline | separate |",
        "| idle node ≤ 10 MiB | overhead | same |",
        "| tarpc | tarpc has no server streaming |",
    ] {
        assert!(markdown.contains(row), "the report has `{row}`");
    }
    let node_built = check_idle_node(&report, &markdown);
    // Every target row has a figure: every system answered every scenario it needs (and the
    // idle node's, when its binaries are built).
    let targets = &markdown[markdown.find("## Targets").expect("targets table")..];
    let rows: Vec<&str> = targets
        .lines()
        .filter(|line| {
            line.ends_with("| yes |") || line.ends_with("| **no** |") || line.ends_with("| — |")
        })
        .collect();
    assert_eq!(rows.len(), 2 * 41, "41 targets per placement:\n{targets}");
    assert!(
        rows.iter()
            .filter(|row| node_built || !row.starts_with("| idle node "))
            .all(|row| !row.ends_with("| — |")),
        "a target without a figure:\n{targets}"
    );
    for system in SYSTEMS {
        assert!(
            markdown.contains(&format!("| {system} |")),
            "{system} has rows"
        );
    }
    let errors = &markdown[markdown.find("## Errors").expect("errors")..];
    if node_built {
        assert_eq!(errors.trim_end(), "## Errors\n\nNone.", "no errors");
    } else {
        assert!(
            errors
                .lines()
                .skip(1)
                .filter(|line| !line.is_empty())
                .all(|line| line.starts_with("- idle node: ")),
            "no errors but the idle node's:\n{errors}"
        );
    }

    let chart = std::fs::read_to_string(out.path().join("chart.svg")).expect("chart.svg");
    assert!(
        chart.contains("<svg") && chart.contains("tonic-tls"),
        "the chart names the systems"
    );
}

/// The idle node: with `greeter` and `mesh-api` built beside the bench binary, the greeter's
/// resident set and its private part are measured and shown under each memory table and in
/// the idle-node target row; without them the report says which binary is missing and how to
/// build it. Answers whether they were built.
fn check_idle_node(report: &Value, markdown: &str) -> bool {
    let dir = Path::new(env!("CARGO_BIN_EXE_bench"))
        .parent()
        .expect("the bench binary's directory");
    let built = ["greeter", "mesh-api"]
        .iter()
        .all(|name| dir.join(name).is_file());
    let profile = dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let node = &report["idle_node"];
    assert_eq!(node["profile"].as_str(), Some(profile.as_str()), "{node}");
    let line = format!("Idle node ({profile} `greeter`, joined to a gateway, alone): ");
    assert_eq!(
        markdown.matches(&line).count(),
        2,
        "one line per memory table"
    );
    if built {
        assert_eq!(node["error"], Value::Null, "idle node: {node}");
        let peak = node["peak_kib"].as_u64();
        let private = node["private_kib"].as_u64();
        assert!(peak > Some(0), "idle node: {node}");
        assert!(
            private > Some(0) && private < peak,
            "the idle node's private part is a part of its resident set: {node}"
        );
        assert!(
            markdown.contains(&format!(
                "{line}{:.1} MiB resident",
                peak.unwrap_or(0) as f64 / 1024.0
            )),
            "{markdown}"
        );
    } else {
        let error = node["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("is not built") && error.contains("cargo build -p greeter -p gateway"),
            "a missing binary is named with the command that builds it: {node}"
        );
        assert!(
            markdown.contains(&format!("{line}not measured: ")),
            "{markdown}"
        );
    }
    assert!(
        markdown.contains("| idle node ≤ 10 MiB | overhead | same | ")
            && markdown.contains("(greeter; bench server "),
        "the idle node's target row gives the bench server's figure beside it"
    );
    built
}

/// The streaming scenario of one system: every run of the systems that stream read messages,
/// their slow consumer read and saw its producer stop; the others say why they were not measured.
fn check_streaming(name: &str, result: &Value) {
    let streaming = &result["streaming"];
    let system = result["system"].as_str().unwrap_or("?");
    if !["meshrpc", "quinn", "tonic-tls"].contains(&system) {
        assert!(
            streaming["not_measured"].as_str().is_some(),
            "{name}: says why it was not measured"
        );
        return;
    }
    let runs: Vec<(u64, u64)> = streaming["runs"]
        .as_array()
        .expect("streaming runs")
        .iter()
        .filter(|r| r["messages"].as_u64() > Some(0) && r["mb_per_s"].as_f64() > Some(0.0))
        .filter_map(|r| Some((r["size"].as_u64()?, r["streams"].as_u64()?)))
        .collect();
    assert_eq!(
        runs,
        [(64, 1), (64, 16), (65536, 1), (65536, 16)],
        "{name}: every streaming run read messages"
    );
    let slow = &streaming["slow"];
    assert!(
        slow["bytes_read"].as_u64() > Some(0),
        "{name}: slow consumer"
    );
    assert!(
        slow["stopped_after_ms"].as_f64().is_some(),
        "{name}: the producer stopped after the consumer left"
    );
}
