//! The last minute of `meshrpc.node/stats` samples per member, and what the dashboard shows
//! from them: calls/s, error rate and p50/p99 per method, totalled over the members. No I/O:
//! the poller feeds it samples with the instant they were taken.
//!
//! Everything is bounded by the membership view, never by what clients send: one ring per
//! member in view (members that left are forgotten at the next [`History::retain`]), at most
//! [`MAX_SAMPLES`] samples per ring, at most [`MAX_METHODS`] methods per sample.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshrpc::metrics::MethodStats;
use tokio::time::Instant;

/// How far back the dashboard's numbers reach.
pub const WINDOW: Duration = Duration::from_secs(60);

/// How far back the "calls/s now" rate reaches (it needs two samples that far apart).
pub const RECENT: Duration = Duration::from_secs(5);

/// Samples kept per member besides the newest, spaced at least [`SPACING`] apart: enough
/// for [`WINDOW`] at that spacing.
pub const MAX_SAMPLES: usize = 32;

/// The least time between two kept samples of one member.
pub const SPACING: Duration = Duration::from_millis(1_900);

/// Methods kept per sample; a member that answers more has the rest ignored.
pub const MAX_METHODS: usize = 256;

/// Longest failure message kept per member.
const MAX_ERROR_LEN: usize = 200;

/// One answer of one member: its server-side method stats.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    methods: Arc<BTreeMap<(String, String), MethodStats>>,
}

/// What the gateway knows of one member's stats.
#[derive(Debug, Default)]
struct Ring {
    kept: VecDeque<Sample>,
    newest: Option<Sample>,
    failure: Option<String>,
}

impl Ring {
    fn push(&mut self, sample: Sample) {
        if let Some(newest) = self.newest.take() {
            // A counter that went down: the member restarted at the same address, and its
            // earlier samples would make the differences meaningless.
            let restarted = newest.methods.iter().any(|(key, was)| {
                sample
                    .methods
                    .get(key)
                    .is_none_or(|now| now.calls() < was.calls() || now.count < was.count)
            });
            if restarted {
                self.kept.clear();
            } else if self
                .kept
                .back()
                .is_none_or(|last| newest.at.duration_since(last.at) >= SPACING)
            {
                self.kept.push_back(newest);
            }
        }
        while self.kept.len() > MAX_SAMPLES
            || self
                .kept
                .front()
                .is_some_and(|oldest| sample.at.duration_since(oldest.at) > WINDOW)
        {
            self.kept.pop_front();
        }
        self.newest = Some(sample);
        self.failure = None;
    }

    /// The newest sample and the oldest kept one at most `reach` older than it (the newest
    /// one that is at least `reach` old when `reach` is short).
    fn span(&self, reach: Duration) -> Option<(&Sample, &Sample)> {
        let newest = self.newest.as_ref()?;
        let age = |sample: &Sample| newest.at.duration_since(sample.at);
        let earlier = if reach >= WINDOW {
            self.kept.iter().find(|sample| age(sample) <= reach)
        } else {
            self.kept
                .iter()
                .rev()
                .find(|sample| age(sample) >= reach)
                .or(self.kept.front())
        }?;
        Some((earlier, newest))
    }
}

/// The stats samples of every member in view.
#[derive(Debug, Default)]
pub struct History {
    rings: HashMap<SocketAddr, Ring>,
}

/// One method's numbers, totalled over the members.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct MethodRates {
    /// Calls per second over the last [`RECENT`] seconds (or what the samples cover).
    pub calls_per_s: f64,
    /// Calls per second over the last minute (or what the samples cover).
    pub calls_per_s_minute: f64,
    /// Calls finished over the last minute.
    pub calls: u64,
    /// Of those, calls that did not end `ok`.
    pub errors: u64,
    /// Errors over calls in the last minute; `None` without calls.
    pub error_rate: Option<f64>,
    /// Median latency over the last minute, in milliseconds.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency over the last minute, in milliseconds.
    pub p99_ms: Option<f64>,
    /// Calls served since the members started.
    pub calls_total: u64,
}

/// What a member's stats say, for the members table.
#[derive(Debug, Clone, PartialEq)]
pub enum Answering {
    /// Not asked yet.
    Pending,
    /// Its last answer came this long ago.
    Answered(Duration),
    /// Its last ask failed, for this reason.
    Failed(String),
}

impl History {
    /// Records `member`'s `stats` answer taken at `at` (its server-side methods only).
    pub fn record(&mut self, member: SocketAddr, at: Instant, methods: Vec<MethodStats>) {
        let methods = methods
            .into_iter()
            .filter(|stats| stats.side == "server")
            .take(MAX_METHODS)
            .map(|stats| ((stats.service.clone(), stats.method.clone()), stats))
            .collect();
        self.rings.entry(member).or_default().push(Sample {
            at,
            methods: Arc::new(methods),
        });
    }

    /// Records that `member` did not answer, keeping its samples (they age out).
    pub fn record_failure(&mut self, member: SocketAddr, why: &str) {
        let mut why = why.to_owned();
        if why.len() > MAX_ERROR_LEN {
            let mut end = MAX_ERROR_LEN;
            while !why.is_char_boundary(end) {
                end -= 1;
            }
            why.truncate(end);
            why.push('…');
        }
        self.rings.entry(member).or_default().failure = Some(why);
    }

    /// Forgets every member `keep` says no to: those that left the view.
    pub fn retain(&mut self, mut keep: impl FnMut(&SocketAddr) -> bool) {
        self.rings.retain(|addr, _| keep(addr));
    }

    /// Members with a ring.
    pub fn members(&self) -> usize {
        self.rings.len()
    }

    /// Samples held for `member`, the newest included.
    pub fn samples(&self, member: SocketAddr) -> usize {
        self.rings.get(&member).map_or(0, |ring| {
            ring.kept.len() + usize::from(ring.newest.is_some())
        })
    }

    /// How `member`'s stats answers have gone, as of `now`.
    pub fn answering(&self, member: SocketAddr, now: Instant) -> Answering {
        match self.rings.get(&member) {
            None => Answering::Pending,
            Some(Ring {
                failure: Some(why), ..
            }) => Answering::Failed(why.clone()),
            Some(Ring {
                newest: Some(newest),
                ..
            }) => Answering::Answered(now.saturating_duration_since(newest.at)),
            Some(_) => Answering::Pending,
        }
    }

    /// Every (service, method) some member served, with its numbers totalled over the
    /// members accepted by `include`: each member's rate over its own span, summed, and the
    /// percentiles of the summed histogram differences.
    pub fn rates(
        &self,
        mut include: impl FnMut(&SocketAddr, &str) -> bool,
    ) -> BTreeMap<(String, String), MethodRates> {
        struct Sums {
            recent: f64,
            minute: f64,
            window: MethodStats,
            total: u64,
        }
        let mut sums: BTreeMap<(String, String), Sums> = BTreeMap::new();
        let empty = MethodStats::default();
        for (addr, ring) in &self.rings {
            let Some(newest) = &ring.newest else { continue };
            let minute = ring.span(WINDOW);
            let recent = ring.span(RECENT);
            for (key, now) in newest.methods.iter() {
                if !include(addr, &key.0) {
                    continue;
                }
                let entry = sums.entry(key.clone()).or_insert_with(|| Sums {
                    recent: 0.0,
                    minute: 0.0,
                    window: MethodStats::default(),
                    total: 0,
                });
                entry.total += now.calls();
                let rate = |span: Option<(&Sample, &Sample)>| {
                    let (earlier, later) = span?;
                    let seconds = later.at.duration_since(earlier.at).as_secs_f64();
                    if seconds <= 0.0 {
                        return None;
                    }
                    let before = earlier.methods.get(key).unwrap_or(&empty);
                    Some(now.since(before).calls() as f64 / seconds)
                };
                entry.recent += rate(recent).unwrap_or(0.0);
                entry.minute += rate(minute).unwrap_or(0.0);
                if let Some((earlier, _)) = minute.filter(|(earlier, _)| earlier.at != newest.at) {
                    entry
                        .window
                        .add(&now.since(earlier.methods.get(key).unwrap_or(&empty)));
                }
            }
        }
        sums.into_iter()
            .map(|(key, sums)| {
                let calls = sums.window.calls();
                let errors = sums.window.errors();
                let ms = |q: f64| sums.window.quantile(q).map(|s| s * 1_000.0);
                let rates = MethodRates {
                    calls_per_s: sums.recent,
                    calls_per_s_minute: sums.minute,
                    calls,
                    errors,
                    error_rate: (calls > 0).then(|| errors as f64 / calls as f64),
                    p50_ms: ms(0.5),
                    p99_ms: ms(0.99),
                    calls_total: sums.total,
                };
                (key, rates)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshrpc::metrics::Bucket;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// `greeter.greet` served `ok` calls (of which `errors` failed), every one under 1 ms
    /// but the `slow` ones, which took between 1 and 2 ms.
    fn greet(ok: u64, errors: u64, slow: u64) -> Vec<MethodStats> {
        let all = ok + errors;
        vec![
            MethodStats {
                side: "server".into(),
                service: "greeter".into(),
                method: "greet".into(),
                codes: BTreeMap::from([("ok".into(), ok), ("internal".into(), errors)]),
                buckets: vec![
                    Bucket {
                        le: 0.001,
                        count: all - slow,
                    },
                    Bucket {
                        le: 0.002,
                        count: all,
                    },
                ],
                count: all,
                sum: 0.0,
            },
            // The client side of the same method is the caller's view: not counted.
            MethodStats {
                side: "client".into(),
                service: "greeter".into(),
                method: "greet".into(),
                codes: BTreeMap::from([("ok".into(), 1_000_000)]),
                ..MethodStats::default()
            },
        ]
    }

    fn greet_rates(history: &History) -> MethodRates {
        history
            .rates(|_, _| true)
            .remove(&("greeter".to_owned(), "greet".to_owned()))
            .expect("greeter.greet is listed")
    }

    #[test]
    fn rates_are_differences_over_the_time_between_samples_summed_over_members() {
        let start = Instant::now();
        let mut history = History::default();
        for second in 0..=10u64 {
            let at = start + Duration::from_secs(second);
            // One replica serves 10 calls a second, the other 30.
            history.record(addr(1), at, greet(100 + 10 * second, 0, 0));
            history.record(addr(2), at, greet(500 + 30 * second, 0, 0));
        }
        let rates = greet_rates(&history);
        assert!((rates.calls_per_s - 40.0).abs() < 1e-9, "{rates:?}");
        assert!((rates.calls_per_s_minute - 40.0).abs() < 1e-9, "{rates:?}");
        // Over ten seconds (the oldest kept sample is the first).
        assert_eq!(rates.calls, 400);
        assert_eq!(rates.calls_total, 100 + 100 + 500 + 300);
        assert_eq!(rates.error_rate, Some(0.0));
    }

    #[test]
    fn percentiles_and_errors_come_from_the_calls_of_the_window_only() {
        let start = Instant::now();
        let mut history = History::default();
        // Before the window: a thousand slow calls, which must not count.
        history.record(addr(1), start, greet(1_000, 0, 1_000));
        // In it: 100 more, 10 of them failed, 2 of them slow.
        let later = start + Duration::from_secs(20);
        history.record(addr(1), later, greet(1_090, 10, 1_002));
        let rates = greet_rates(&history);
        assert_eq!((rates.calls, rates.errors), (100, 10));
        assert_eq!(rates.error_rate, Some(0.1));
        let p50 = rates.p50_ms.expect("measured");
        assert!(p50 < 1.0, "{p50}");
        let p99 = rates.p99_ms.expect("measured");
        assert!(p99 > 1.0 && p99 <= 2.0, "{p99}");
        assert!((rates.calls_per_s_minute - 5.0).abs() < 1e-9, "{rates:?}");
    }

    #[test]
    fn samples_older_than_the_window_stop_counting() {
        let start = Instant::now();
        let mut history = History::default();
        history.record(addr(1), start, greet(0, 0, 0));
        history.record(addr(1), start + Duration::from_secs(2), greet(1_000, 0, 0));
        // Nothing more for two minutes: the burst is out of the window.
        for step in 1..=60u64 {
            let at = start + Duration::from_secs(2 + 2 * step);
            history.record(addr(1), at, greet(1_000, 0, 0));
        }
        let rates = greet_rates(&history);
        assert_eq!(rates.calls, 0);
        assert_eq!(rates.calls_per_s_minute, 0.0);
        assert_eq!(rates.p50_ms, None);
        assert_eq!(rates.error_rate, None);
        assert_eq!(rates.calls_total, 1_000);
    }

    #[test]
    fn a_member_that_left_the_view_is_forgotten() {
        let start = Instant::now();
        let mut history = History::default();
        for second in 0..5u64 {
            let at = start + Duration::from_secs(second);
            history.record(addr(1), at, greet(10 * second, 0, 0));
            history.record(addr(2), at, greet(10 * second, 0, 0));
        }
        history.record_failure(addr(2), "unavailable: connection lost");
        assert_eq!(
            history.answering(addr(2), start),
            Answering::Failed("unavailable: connection lost".into())
        );
        history.retain(|member| *member == addr(1));
        assert_eq!(history.members(), 1);
        assert_eq!(history.samples(addr(2)), 0);
        assert_eq!(history.answering(addr(2), start), Answering::Pending);
        assert!((greet_rates(&history).calls_per_s - 10.0).abs() < 1e-9);
    }

    #[test]
    fn rings_stay_bounded_however_often_and_long_they_are_fed() {
        let start = Instant::now();
        let mut history = History::default();
        for step in 0..2_000u64 {
            let at = start + Duration::from_millis(100 * step);
            history.record(addr(1), at, greet(step, 0, 0));
            assert!(history.samples(addr(1)) <= MAX_SAMPLES + 1);
        }
        // A sample every 100 ms keeps one per SPACING, the window's worth.
        let kept = history.samples(addr(1));
        assert!(kept >= 25, "{kept}");
        let many: Vec<MethodStats> = (0..MAX_METHODS * 4)
            .map(|n| MethodStats {
                side: "server".into(),
                service: "s".into(),
                method: format!("m{n}"),
                ..MethodStats::default()
            })
            .collect();
        history.record(addr(3), start, many);
        assert_eq!(
            history.rates(|member, _| *member == addr(3)).len(),
            MAX_METHODS
        );
        history.record_failure(addr(3), &"x".repeat(10_000));
        let Answering::Failed(why) = history.answering(addr(3), start) else {
            panic!("a failure");
        };
        assert!(why.len() <= MAX_ERROR_LEN + 3);
    }

    #[test]
    fn a_restarted_member_starts_its_differences_afresh() {
        let start = Instant::now();
        let mut history = History::default();
        history.record(addr(1), start, greet(5_000, 0, 0));
        history.record(addr(1), start + Duration::from_secs(2), greet(5_020, 0, 0));
        // It restarted: its counters begin again at zero.
        history.record(addr(1), start + Duration::from_secs(4), greet(6, 0, 0));
        history.record(addr(1), start + Duration::from_secs(6), greet(26, 0, 0));
        let rates = greet_rates(&history);
        assert_eq!(rates.calls, 20);
        assert!((rates.calls_per_s_minute - 10.0).abs() < 1e-9, "{rates:?}");
    }
}
