//! Tail figures of a fault window: what the callers saw between the fault and the end of the
//! window (latency quantiles up to p99.9, the slowest call, failures) and the extra load the
//! caller's hedges added, read from its node's metrics.

use std::time::Duration;

use meshrpc::Node;
use meshrpc::metrics::HedgeOutcome;

use crate::load::{Outcome, Report};

/// The hedges a node sent and that won, for `service`, so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hedges {
    /// Second attempts sent.
    pub sent: u64,
    /// Second attempts that answered first.
    pub won: u64,
}

impl Hedges {
    /// `node`'s counters for `service` now.
    pub fn of(node: &Node, service: &str) -> Hedges {
        let tail = node.metrics().client_tail();
        Hedges {
            sent: tail.hedges(service, HedgeOutcome::Sent),
            won: tail.hedges(service, HedgeOutcome::Won),
        }
    }

    /// The hedges between `earlier` and these.
    pub fn since(self, earlier: Hedges) -> Hedges {
        Hedges {
            sent: self.sent.saturating_sub(earlier.sent),
            won: self.won.saturating_sub(earlier.won),
        }
    }
}

/// What the callers saw in one window of a load run.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// Calls started in the window.
    pub calls: usize,
    /// Of which failed or were answered wrongly.
    pub failed: usize,
    /// Latency quantiles of those calls.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// The slowest call.
    pub max: Duration,
    /// Hedges sent in the window, as a share of its calls.
    pub hedge_load: f64,
}

impl Figures {
    /// The figures of the calls of `report` started in `[from, to)`, with `hedges` sent
    /// meanwhile.
    pub fn of(report: &Report, from: Duration, to: Duration, hedges: Hedges) -> Figures {
        let window: Vec<_> = report
            .samples
            .iter()
            .filter(|s| s.at >= from && s.at < to)
            .collect();
        let calls = window.len();
        Figures {
            calls,
            failed: window.iter().filter(|s| s.outcome != Outcome::Ok).count(),
            p50: report.quantile_in(0.5, from, to),
            p99: report.quantile_in(0.99, from, to),
            p999: report.quantile_in(0.999, from, to),
            max: window.iter().map(|s| s.latency).max().unwrap_or_default(),
            hedge_load: hedges.sent as f64 / calls.max(1) as f64,
        }
    }

    /// One line for the test's output and `docs/RELIABILITY.md`.
    pub fn line(&self, fault: &str) -> String {
        format!(
            "TAIL {fault}: {} calls, {} failed, p50 {:.1?}, p99 {:.1?}, p99.9 {:.1?}, max {:.1?}, \
             hedges +{:.1}% load",
            self.calls,
            self.failed,
            self.p50,
            self.p99,
            self.p999,
            self.max,
            self.hedge_load * 100.0
        )
    }
}
