//! The overhead rows of the targets table: meshrpc against the floor. Its CPU, throughput,
//! latency and held-call memory against bare quinn and tarpc, and the gateway against what its
//! two hops cost on their own (axum's direct answer plus one meshrpc call).

use super::{PlacementReport, Route, SystemResult, quotient};
use crate::systems::System;

/// The level these rows are listed under (and the idle node's, which the targets table adds
/// after them: its figure is the run's, not a placement's).
pub(super) const LEVEL: &str = "overhead";

/// `(target, level, measured, bound, at_most)`, as the other rows of the targets table.
type Row = (&'static str, &'static str, Option<f64>, f64, bool);

/// meshrpc's calls/s at `in_flight` divided by `other`'s.
fn throughput_ratio(placement: &PlacementReport, in_flight: usize, other: System) -> Option<f64> {
    let calls_per_s = |system| placement.result(system)?.throughput_at(in_flight);
    quotient(calls_per_s(System::Meshrpc), calls_per_s(other))
}

/// The overhead rows for one placement.
pub(super) fn target_rows(placement: &PlacementReport) -> Vec<Row> {
    let get = |system| placement.result(system);
    let meshrpc_latency = get(System::Meshrpc).and_then(|r| r.latency.as_ref());
    let p50 = |system| get(system).and_then(SystemResult::p50_us);
    let cpu = |system| {
        get(system)
            .and_then(|r| r.cpu.as_ref())
            .map(|c| c.total_us_per_call)
    };
    let hop = |system| get(system).and_then(SystemResult::per_hop_p50_us);
    let memory = get(System::Meshrpc).and_then(|r| r.memory.as_ref());
    let tput = |in_flight, other| throughput_ratio(placement, in_flight, other);

    // The gateway at one in flight against its two hops measured on their own: the direct
    // axum answer and one meshrpc unary call (its client and server CPU together).
    let gateway = placement.gateway.as_ref();
    let get_run = |route| gateway.and_then(|g| g.run(route, 1));
    let direct = get_run(Route::Direct);
    let through = get_run(Route::Gateway);
    let sum = |a: Option<f64>, b: Option<f64>| Some(a? + b?);
    let gateway_p50 = quotient(
        through.map(|r| r.latency.p50_us),
        sum(
            direct.map(|r| r.latency.p50_us),
            meshrpc_latency.map(|l| l.percentiles.p50_us),
        ),
    );
    let gateway_cpu = quotient(
        through.map(|r| r.server_cpu_us_per_call),
        sum(
            direct.map(|r| r.server_cpu_us_per_call),
            meshrpc_latency.map(|l| l.total_cpu_us_per_call()),
        ),
    );
    let gateway_kept = gateway.and_then(|g| g.ratio(64, |r| r.calls_per_s));

    vec![
        (
            "CPU per call at 64 in flight ≤ 1.15× bare quinn",
            LEVEL,
            quotient(cpu(System::Meshrpc), cpu(System::Quinn)),
            1.15,
            true,
        ),
        (
            "16 in flight ≥ 0.9× bare quinn",
            LEVEL,
            tput(16, System::Quinn),
            0.9,
            false,
        ),
        (
            "64 in flight ≥ 0.9× bare quinn",
            LEVEL,
            tput(64, System::Quinn),
            0.9,
            false,
        ),
        (
            "256 in flight ≥ 0.9× bare quinn",
            LEVEL,
            tput(256, System::Quinn),
            0.9,
            false,
        ),
        (
            "16 in flight ≥ 1.0× tarpc",
            LEVEL,
            tput(16, System::Tarpc),
            1.0,
            false,
        ),
        (
            "64 in flight ≥ 1.0× tarpc",
            LEVEL,
            tput(64, System::Tarpc),
            1.0,
            false,
        ),
        (
            "256 in flight ≥ 1.0× tarpc",
            LEVEL,
            tput(256, System::Tarpc),
            1.0,
            false,
        ),
        (
            "unary p50 ≤ 1.1× bare quinn",
            LEVEL,
            quotient(p50(System::Meshrpc), p50(System::Quinn)),
            1.1,
            true,
        ),
        (
            "ring per hop ≤ 1.1× bare quinn",
            LEVEL,
            quotient(hop(System::Meshrpc), hop(System::Quinn)),
            1.1,
            true,
        ),
        (
            "server bytes per held call ≤ 1,500",
            LEVEL,
            memory.map(|g| g.server_bytes_per_call / 1000.0),
            1.5,
            true,
        ),
        (
            "gateway GET p50 ≤ 1.25× (direct axum p50 + meshrpc unary p50), 1 in flight",
            LEVEL,
            gateway_p50,
            1.25,
            true,
        ),
        (
            "gateway server CPU per GET ≤ 1.25× (direct server CPU + meshrpc CPU per call), 1 in flight",
            LEVEL,
            gateway_cpu,
            1.25,
            true,
        ),
        (
            "gateway calls/s ≥ 0.6× direct (64 in flight)",
            LEVEL,
            gateway_kept,
            0.6,
            false,
        ),
    ]
}
