//! Local health: how far behind this node's own event loop runs, and how much it should slow its
//! probing and stretch its suspicions to make up for it (Lifeguard's "local health multiplier",
//! which memberlist credits with cutting false deaths by more than 50×).
//!
//! A node starved of CPU reads its acks late, so its probes fail and it suspects live members;
//! its suspicion timers fire late too, and with a fixed 1.5 s suspicion it would declare them
//! down before their refutation is read. The signal used here is the one a starved process can
//! measure itself: how late its timers fire. The score rises with the lag seen during a probe
//! period and falls by one per period on time; while it is above zero the core multiplies the
//! probe period, the probe's round-trip allowance and the suspicion timeout by `1 + score`.

use std::time::Duration;

/// The highest score: timeouts are at most nine times their configured value (Lifeguard's
/// default maximum multiplier is 8 extra).
pub(crate) const MAX_SCORE: u32 = 8;

/// The local health of one node.
#[derive(Debug, Clone)]
pub(crate) struct LocalHealth {
    score: u32,
    /// The largest timer lag seen since the last [`LocalHealth::tick`].
    lag: Duration,
    /// Lag up to this is normal scheduling noise.
    tolerance: Duration,
    /// Each step of lag (the probe's round-trip allowance) is worth one point.
    step: Duration,
    /// Off, the score stays 0 (foca's fixed timings, for comparison in the simulation).
    enabled: bool,
}

impl LocalHealth {
    /// A healthy node whose probes allow `probe_rtt` for an answer.
    pub(crate) fn new(probe_rtt: Duration) -> LocalHealth {
        let step = probe_rtt.max(Duration::from_millis(1));
        LocalHealth {
            score: 0,
            lag: Duration::ZERO,
            tolerance: step / 2,
            step,
            enabled: true,
        }
    }

    /// Turns the mechanism on (the default) or off (the score stays 0).
    pub(crate) fn set_enabled(&mut self, enabled: bool) {
        self.enabled = enabled;
        if !enabled {
            self.score = 0;
        }
    }

    /// Records that a timer fired `late` after its deadline.
    pub(crate) fn observe(&mut self, late: Duration) {
        self.lag = self.lag.max(late);
    }

    /// Ends a probe period: a period that saw more lag than the tolerance (half a probe
    /// round-trip: a busy machine's scheduling delays stay below it) raises the score (by
    /// at least one, and to at least one point per probe round-trip of lag, so a stall of two
    /// seconds is answered at once); a period on time lowers it by one.
    pub(crate) fn tick(&mut self) {
        if !self.enabled {
            self.lag = Duration::ZERO;
            return;
        }
        if self.lag > self.tolerance {
            let steps = self.lag.as_nanos().div_ceil(self.step.as_nanos());
            let steps = u32::try_from(steps).unwrap_or(u32::MAX);
            self.score = self.score.saturating_add(1).max(steps).min(MAX_SCORE);
        } else {
            self.score = self.score.saturating_sub(1);
        }
        self.lag = Duration::ZERO;
    }

    /// The current score, 0 (healthy) to [`MAX_SCORE`].
    pub(crate) fn score(&self) -> u32 {
        self.score
    }

    /// `timeout` stretched by the score: `timeout × (1 + score)`.
    pub(crate) fn scale(&self, timeout: Duration) -> Duration {
        timeout.saturating_mul(1 + self.score)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Duration = Duration::from_millis(200);

    #[test]
    fn scheduling_noise_leaves_a_node_healthy() {
        let mut health = LocalHealth::new(RTT);
        for _ in 0..10 {
            health.observe(Duration::from_millis(90));
            health.tick();
        }
        assert_eq!(health.score(), 0);
        assert_eq!(health.scale(RTT), RTT);
    }

    #[test]
    fn a_stall_raises_the_score_at_once_and_periods_on_time_lower_it() {
        let mut health = LocalHealth::new(RTT);
        health.observe(Duration::from_millis(130));
        health.tick();
        assert_eq!(health.score(), 1, "a little lag: one point");
        health.observe(Duration::from_millis(1100));
        health.tick();
        assert_eq!(health.score(), 6, "1.1 s of lag: one point per 200 ms");
        assert_eq!(health.scale(RTT), RTT * 7);
        health.observe(Duration::from_secs(60));
        health.tick();
        assert_eq!(health.score(), MAX_SCORE, "capped");
        for expected in (0..MAX_SCORE).rev() {
            health.tick();
            assert_eq!(health.score(), expected);
        }
        health.tick();
        assert_eq!(health.score(), 0);
    }

    #[test]
    fn only_the_largest_lag_of_a_period_counts() {
        let mut health = LocalHealth::new(RTT);
        health.observe(Duration::from_millis(450));
        health.observe(Duration::from_millis(10));
        health.tick();
        assert_eq!(health.score(), 3);
        health.tick();
        assert_eq!(health.score(), 2, "the lag was forgotten at the tick");
    }
}
