//! Callers' reports of members that stopped answering calls, and the probes they start.
//!
//! A caller's client stack reports a replica whose calls time out
//! ([`Membership::report_unresponsive`](super::Membership::report_unresponsive)). The core then
//! sends that member a direct ping at once instead of waiting for its turn in the probe round
//! (`members × probe period`, 32 s in a mesh of 64), and suspects it through foca's normal
//! machinery if no ack comes back in time: the member refutes the suspicion if it is alive, and
//! is declared down only when the suspicion runs out. A report never declares a member dead.
//!
//! One report per member is acted on per [`REPORT_COOLDOWN`]: whatever the callers send, a
//! member gets at most one extra ping per cool-down from this node, and the state held is one
//! entry per reported member of the view (reports of addresses outside the view are ignored).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

/// How long after a report further reports of the same member are ignored.
pub(crate) const REPORT_COOLDOWN: Duration = Duration::from_secs(5);

/// How many probe round-trips a reported member has to answer the ping.
pub(crate) const REPORT_PROBE_RTTS: u32 = 2;

/// The reports under way, by member address.
#[derive(Debug, Default)]
pub(crate) struct Reports {
    pending: HashMap<SocketAddr, Report>,
    /// The probe number of the next report's ping.
    next_probe: u8,
}

#[derive(Debug)]
struct Report {
    probe: u8,
    answered: bool,
}

impl Reports {
    /// Starts a report of the member at `addr`: the probe number to ping it with, or `None` if
    /// it was reported within the cool-down.
    pub(crate) fn start(&mut self, addr: SocketAddr) -> Option<u8> {
        if self.pending.contains_key(&addr) {
            return None;
        }
        let probe = self.next_probe;
        self.next_probe = self.next_probe.wrapping_add(1);
        self.pending.insert(
            addr,
            Report {
                probe,
                answered: false,
            },
        );
        Some(probe)
    }

    /// Records an ack numbered `probe` from `addr`; returns whether it answered a report's ping.
    pub(crate) fn ack(&mut self, addr: SocketAddr, probe: u8) -> bool {
        match self.pending.get_mut(&addr) {
            Some(report) if report.probe == probe => {
                report.answered = true;
                true
            }
            _ => false,
        }
    }

    /// Whether the report of `addr` is still waiting for its ack (it is under way and no ack
    /// came).
    pub(crate) fn unanswered(&self, addr: SocketAddr) -> bool {
        self.pending
            .get(&addr)
            .is_some_and(|report| !report.answered)
    }

    /// Ends the cool-down of `addr`: the next report of it is acted on.
    pub(crate) fn forget(&mut self, addr: SocketAddr) {
        self.pending.remove(&addr);
    }

    /// How many members are within their cool-down.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_reported_once_per_cool_down() {
        let addr: SocketAddr = "127.0.0.1:7000".parse().expect("addr");
        let other: SocketAddr = "127.0.0.1:7001".parse().expect("addr");
        let mut reports = Reports::default();
        let probe = reports.start(addr).expect("first report");
        assert_eq!(reports.start(addr), None, "within the cool-down");
        let second = reports.start(other).expect("another member");
        assert_ne!(probe, second);
        assert!(reports.unanswered(addr));
        assert!(
            !reports.ack(addr, probe.wrapping_add(7)),
            "another probe's ack"
        );
        assert!(reports.unanswered(addr));
        assert!(reports.ack(addr, probe));
        assert!(!reports.unanswered(addr));
        assert_eq!(reports.len(), 2);
        reports.forget(addr);
        assert!(reports.start(addr).is_some(), "after the cool-down");
    }
}
