//! Per-node metrics in the Prometheus text format (the admin endpoint, [`crate::admin`], serves
//! them).

use std::collections::BTreeMap;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::status::Code;

/// Labels of a served or sent call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    side: &'static str,
    service: String,
    method: String,
    code: &'static str,
}

/// Labels of a latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    side: &'static str,
    service: String,
    method: String,
}

/// Labels of a hedge counter: the service and what became of the hedge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HedgeLabels {
    service: String,
    outcome: &'static str,
}

/// Labels of a per-service client counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

/// Labels of an ejection counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EjectionLabels {
    service: String,
    reason: &'static str,
}

/// What became of a hedge (the `outcome` label of `meshrpc_client_hedges_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HedgeOutcome {
    /// A second attempt was sent.
    Sent,
    /// The second attempt answered first.
    Won,
    /// A hedge was due but the hedge budget refused it.
    Refused,
}

impl HedgeOutcome {
    fn label(self) -> &'static str {
        match self {
            HedgeOutcome::Sent => "sent",
            HedgeOutcome::Won => "won",
            HedgeOutcome::Refused => "refused",
        }
    }
}

/// The client-side tail-tolerance counters of a node: hedges, attempt timeouts, ejections.
#[derive(Debug, Clone, Default)]
pub struct ClientTailMetrics {
    hedges: Family<HedgeLabels, Counter>,
    attempt_timeouts: Family<ServiceLabels, Counter>,
    ejections: Family<EjectionLabels, Counter>,
}

impl ClientTailMetrics {
    fn register(registry: &mut Registry) -> ClientTailMetrics {
        let metrics = ClientTailMetrics::default();
        registry.register(
            "client_hedges",
            "Hedged attempts of idempotent calls by service and outcome (sent, won, refused by \
             the hedge budget)",
            metrics.hedges.clone(),
        );
        registry.register(
            "client_attempt_timeouts",
            "Attempts that went unanswered past their attempt timeout, by service",
            metrics.attempt_timeouts.clone(),
        );
        registry.register(
            "client_ejections",
            "Replicas a client ejected, by service and reason (failures, timeouts)",
            metrics.ejections.clone(),
        );
        metrics
    }

    /// Counts a hedge of a call to `service`.
    pub fn hedge(&self, service: &str, outcome: HedgeOutcome) {
        self.hedges
            .get_or_create(&HedgeLabels {
                service: service.to_owned(),
                outcome: outcome.label(),
            })
            .inc();
    }

    /// Counts an attempt to `service` that went unanswered past its attempt timeout.
    pub fn attempt_timeout(&self, service: &str) {
        self.attempt_timeouts
            .get_or_create(&ServiceLabels {
                service: service.to_owned(),
            })
            .inc();
    }

    /// Counts an ejection of a replica of `service`; `timeouts` if it was for timeouts.
    pub fn ejection(&self, service: &str, timeouts: bool) {
        self.ejections
            .get_or_create(&EjectionLabels {
                service: service.to_owned(),
                reason: if timeouts { "timeouts" } else { "failures" },
            })
            .inc();
    }

    /// How many hedges of `service` ended with `outcome` so far.
    pub fn hedges(&self, service: &str, outcome: HedgeOutcome) -> u64 {
        self.hedges
            .get_or_create(&HedgeLabels {
                service: service.to_owned(),
                outcome: outcome.label(),
            })
            .get()
    }
}

fn latency_histogram() -> Histogram {
    // 50 µs to about 26 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

/// The metrics of one node.
pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    latency: Family<MethodLabels, Histogram, fn() -> Histogram>,
    members: Gauge,
    in_flight: Gauge,
    refusals: crate::server::authorize::Refusals,
    client_tail: ClientTailMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

/// Which end of a call a measurement was taken at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The node served the call.
    Server,
    /// The node made the call.
    Client,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Server => "server",
            Side::Client => "client",
        }
    }
}

impl Metrics {
    /// The counter of calls the authorization policy refused.
    pub fn authorization_refusals(&self) -> &crate::server::authorize::Refusals {
        &self.refusals
    }

    /// The client-side tail-tolerance counters (hedges, attempt timeouts, ejections).
    pub fn client_tail(&self) -> &ClientTailMetrics {
        &self.client_tail
    }

    /// Fresh metrics, registered under the `meshrpc_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("meshrpc");
        let calls = Family::<CallLabels, Counter>::default();
        let latency = Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let members = Gauge::default();
        let in_flight = Gauge::default();
        registry.register(
            "calls",
            "Calls by side, service, method and status",
            calls.clone(),
        );
        registry.register(
            "call_duration_seconds",
            "Call latency by side, service and method",
            latency.clone(),
        );
        registry.register(
            "members",
            "Members in this node's view, itself included",
            members.clone(),
        );
        registry.register(
            "calls_in_flight",
            "Calls this node is serving",
            in_flight.clone(),
        );
        let refusals = crate::server::authorize::Refusals::register(&mut registry);
        let client_tail = ClientTailMetrics::register(&mut registry);
        Metrics {
            refusals,
            client_tail,
            registry,
            calls,
            latency,
            members,
            in_flight,
        }
    }

    /// Records one finished call.
    pub fn record_call(
        &self,
        side: Side,
        service: &str,
        method: &str,
        code: Code,
        elapsed: Duration,
    ) {
        self.calls
            .get_or_create(&CallLabels {
                side: side.label(),
                service: service.to_owned(),
                method: method.to_owned(),
                code: code.as_str(),
            })
            .inc();
        self.latency
            .get_or_create(&MethodLabels {
                side: side.label(),
                service: service.to_owned(),
                method: method.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// A recorder for one method's calls that skips the label lookups for successful calls.
    pub fn method(&self, side: Side, service: &'static str, method: &'static str) -> MethodMetrics {
        let ok = self
            .calls
            .get_or_create(&CallLabels {
                side: side.label(),
                service: service.to_owned(),
                method: method.to_owned(),
                code: Code::Ok.as_str(),
            })
            .clone();
        let latency = self
            .latency
            .get_or_create(&MethodLabels {
                side: side.label(),
                service: service.to_owned(),
                method: method.to_owned(),
            })
            .clone();
        MethodMetrics {
            side,
            service,
            method,
            ok,
            latency,
        }
    }

    /// Sets the number of members in view.
    pub fn set_members(&self, count: usize) {
        self.members.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Sets the number of calls in flight.
    pub fn set_in_flight(&self, count: usize) {
        self.in_flight.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// The calls counters and latency histograms of every method this node served or called,
    /// sorted by service, method and side. Read from the same registry `/metrics` renders, so
    /// both always agree.
    pub fn snapshot(&self) -> Vec<MethodStats> {
        stats_from_text(&self.render())
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// The counters and latency histogram of one method on one side, as [`Metrics::snapshot`]
/// reads them (and `meshrpc.node/stats` answers them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MethodStats {
    /// `server` (calls the node served) or `client` (calls it made).
    pub side: String,
    /// The service's name.
    pub service: String,
    /// The method's name.
    pub method: String,
    /// Finished calls by status code name (`ok`, `invalid_argument`, ...).
    pub codes: BTreeMap<String, u64>,
    /// The latency histogram's buckets, cumulative, in increasing order of bound; the `+Inf`
    /// bucket is left out (its count is [`MethodStats::count`]).
    pub buckets: Vec<Bucket>,
    /// Calls the histogram measured.
    pub count: u64,
    /// Their summed latency, in seconds.
    pub sum: f64,
}

/// One cumulative histogram bucket: calls that took at most `le` seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// The bucket's upper bound, in seconds.
    pub le: f64,
    /// Calls that took at most that long.
    pub count: u64,
}

impl MethodStats {
    /// Every finished call, whatever its status.
    pub fn calls(&self) -> u64 {
        self.codes.values().sum()
    }

    /// Calls that did not end `ok`.
    pub fn errors(&self) -> u64 {
        self.codes
            .iter()
            .filter(|(code, _)| code.as_str() != "ok")
            .map(|(_, count)| count)
            .sum()
    }

    /// What happened between `earlier` (a sample of the same method on the same node) and
    /// `self`: every counter and bucket as a difference. A counter that went down (the node
    /// restarted) counts from zero.
    pub fn since(&self, earlier: &MethodStats) -> MethodStats {
        let before = |le: f64| {
            earlier
                .buckets
                .iter()
                .find(|bucket| bucket.le.to_bits() == le.to_bits())
                .map_or(0, |bucket| bucket.count)
        };
        MethodStats {
            side: self.side.clone(),
            service: self.service.clone(),
            method: self.method.clone(),
            codes: self
                .codes
                .iter()
                .map(|(code, count)| {
                    let was = earlier.codes.get(code).copied().unwrap_or(0);
                    (code.clone(), count.saturating_sub(was))
                })
                .collect(),
            buckets: self
                .buckets
                .iter()
                .map(|bucket| Bucket {
                    le: bucket.le,
                    count: bucket.count.saturating_sub(before(bucket.le)),
                })
                .collect(),
            count: self.count.saturating_sub(earlier.count),
            sum: (self.sum - earlier.sum).max(0.0),
        }
    }

    /// Adds `other`'s counters and buckets to these (the same method on another node, to
    /// total it over a mesh). Buckets are matched by bound (every reference node has the
    /// same bounds); a bound only `other` has is inserted in order.
    pub fn add(&mut self, other: &MethodStats) {
        for (code, count) in &other.codes {
            *self.codes.entry(code.clone()).or_default() += count;
        }
        for bucket in &other.buckets {
            match self
                .buckets
                .binary_search_by(|mine| mine.le.total_cmp(&bucket.le))
            {
                Ok(at) => self.buckets[at].count += bucket.count,
                Err(at) => self.buckets.insert(at, *bucket),
            }
        }
        self.count += other.count;
        self.sum += other.sum;
    }

    /// The `q` quantile (0 to 1) of the latency histogram in seconds, interpolated linearly
    /// inside its bucket as Prometheus' `histogram_quantile` does; `None` when nothing was
    /// measured. Beyond the last bound the last bound is the answer.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let target = q.clamp(0.0, 1.0) * self.count as f64;
        let mut lower = 0.0;
        let mut below = 0u64;
        for bucket in &self.buckets {
            if bucket.count as f64 >= target {
                let inside = bucket.count.saturating_sub(below);
                if inside == 0 {
                    return Some(bucket.le);
                }
                let fraction = (target - below as f64) / inside as f64;
                return Some(lower + (bucket.le - lower) * fraction.clamp(0.0, 1.0));
            }
            lower = bucket.le;
            below = bucket.count;
        }
        Some(lower)
    }
}

/// A sample's labels, in the order written.
type Labels = Vec<(String, String)>;

/// One sample line of the text exposition (`name{key="value",...} number`): metric name,
/// labels, value. Lines without labels are not needed here and give `None`.
fn parse_sample(line: &str) -> Option<(&str, Labels, f64)> {
    let (name, mut rest) = line.split_once('{')?;
    let mut labels = Vec::new();
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            let value = after.split_whitespace().next()?.parse().ok()?;
            return Some((name, labels, value));
        }
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (at, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break at + 1,
                other => value.push(other),
            }
        };
        labels.push((key.to_owned(), value));
        rest = &after[end..];
    }
}

/// Reads the calls counters and latency histograms out of a text exposition.
fn stats_from_text(text: &str) -> Vec<MethodStats> {
    let mut by_method: BTreeMap<(String, String, String), MethodStats> = BTreeMap::new();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some((name, labels, value)) = parse_sample(line) else {
            continue;
        };
        let label = |key: &str| {
            labels
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let key = (label("service"), label("method"), label("side"));
        let entry = || MethodStats {
            side: key.2.clone(),
            service: key.0.clone(),
            method: key.1.clone(),
            ..MethodStats::default()
        };
        // Counts are whole numbers in the exposition; `as` saturates anything odd.
        let count = value as u64;
        match name {
            "meshrpc_calls_total" => {
                let stats = by_method.entry(key.clone()).or_insert_with(entry);
                *stats.codes.entry(label("code")).or_default() += count;
            }
            "meshrpc_call_duration_seconds_bucket" => {
                let le = label("le");
                if le == "+Inf" {
                    continue;
                }
                let Ok(le) = le.parse::<f64>() else { continue };
                let stats = by_method.entry(key.clone()).or_insert_with(entry);
                stats.buckets.push(Bucket { le, count });
            }
            "meshrpc_call_duration_seconds_count" => {
                by_method.entry(key.clone()).or_insert_with(entry).count = count;
            }
            "meshrpc_call_duration_seconds_sum" => {
                by_method.entry(key.clone()).or_insert_with(entry).sum = value;
            }
            _ => {}
        }
    }
    let mut all: Vec<MethodStats> = by_method.into_values().collect();
    for stats in &mut all {
        stats.buckets.sort_by(|a, b| a.le.total_cmp(&b.le));
    }
    all
}

/// Pre-resolved metrics of one method (see [`Metrics::method`]).
#[derive(Debug, Clone)]
pub struct MethodMetrics {
    side: Side,
    service: &'static str,
    method: &'static str,
    ok: Counter,
    latency: Histogram,
}

impl MethodMetrics {
    /// Records one finished call.
    pub fn record(&self, metrics: &Metrics, code: Code, elapsed: Duration) {
        if code == Code::Ok {
            self.ok.inc();
            self.latency.observe(elapsed.as_secs_f64());
        } else {
            metrics.record_call(self.side, self.service, self.method, code, elapsed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_by_service_method_and_code() {
        let metrics = Metrics::new();
        metrics.record_call(
            Side::Server,
            "greeter",
            "greet",
            Code::Ok,
            Duration::from_micros(80),
        );
        metrics.record_call(
            Side::Server,
            "greeter",
            "greet",
            Code::Ok,
            Duration::from_micros(90),
        );
        let text = metrics.render();
        assert!(
            text.contains(
                r#"meshrpc_calls_total{side="server",service="greeter",method="greet",code="ok"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains("meshrpc_call_duration_seconds_bucket"),
            "{text}"
        );
    }

    #[test]
    fn a_snapshot_reads_counts_by_code_and_the_histogram_of_each_method() {
        let metrics = Metrics::new();
        let greet = metrics.method(Side::Server, "greeter", "greet");
        greet.record(&metrics, Code::Ok, Duration::from_micros(80));
        greet.record(&metrics, Code::Ok, Duration::from_millis(3));
        greet.record(&metrics, Code::InvalidArgument, Duration::from_micros(70));
        metrics.record_call(
            Side::Client,
            "greeter",
            "send_postcard",
            Code::Unavailable,
            Duration::from_millis(1),
        );
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.len(), 2, "{snapshot:?}");
        let greet = &snapshot[0];
        assert_eq!(
            (
                greet.side.as_str(),
                greet.service.as_str(),
                greet.method.as_str()
            ),
            ("server", "greeter", "greet")
        );
        assert_eq!(greet.codes.get("ok"), Some(&2));
        assert_eq!(greet.codes.get("invalid_argument"), Some(&1));
        assert_eq!((greet.calls(), greet.errors(), greet.count), (3, 1, 3));
        assert_eq!(greet.buckets.len(), 20);
        assert!(greet.buckets.windows(2).all(|w| w[0].le < w[1].le));
        // 70 µs and 80 µs fall under 100 µs; 3 ms does not.
        let under = |bound: f64| {
            greet
                .buckets
                .iter()
                .find(|bucket| (bucket.le - bound).abs() < 1e-9)
                .map(|bucket| bucket.count)
        };
        assert_eq!(under(0.0001), Some(2));
        assert_eq!(greet.buckets.last().map(|bucket| bucket.count), Some(3));
        let postcard = &snapshot[1];
        assert_eq!((postcard.side.as_str(), postcard.errors()), ("client", 1));
    }

    fn stats(buckets: &[(f64, u64)]) -> MethodStats {
        let count = buckets.last().map_or(0, |(_, count)| *count);
        MethodStats {
            codes: BTreeMap::from([("ok".to_owned(), count)]),
            buckets: buckets
                .iter()
                .map(|(le, count)| Bucket {
                    le: *le,
                    count: *count,
                })
                .collect(),
            count,
            ..MethodStats::default()
        }
    }

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        // 10 calls under 1 ms, 10 more between 1 and 2 ms.
        let both = stats(&[(0.001, 10), (0.002, 20)]);
        assert_eq!(both.quantile(0.5), Some(0.001));
        let p75 = both.quantile(0.75).expect("measured");
        assert!((p75 - 0.0015).abs() < 1e-12, "{p75}");
        assert_eq!(stats(&[]).quantile(0.5), None);
    }

    #[test]
    fn the_difference_of_two_samples_is_what_happened_between_them() {
        let before = stats(&[(0.001, 5), (0.002, 5)]);
        let after = stats(&[(0.001, 5), (0.002, 9)]);
        let window = after.since(&before);
        assert_eq!((window.calls(), window.count), (4, 4));
        // All four were slower than 1 ms.
        assert!(window.quantile(0.5).is_some_and(|s| s > 0.001));
        // A restarted node counts from zero rather than going negative.
        assert_eq!(before.since(&after).count, 0);
    }

    #[test]
    fn samples_of_several_nodes_add_up_bucket_by_bucket() {
        let mut total = stats(&[(0.001, 2), (0.002, 3)]);
        total.add(&stats(&[(0.001, 1), (0.002, 4)]));
        assert_eq!((total.calls(), total.count), (7, 7));
        let bounds: Vec<(f64, u64)> = total.buckets.iter().map(|b| (b.le, b.count)).collect();
        assert_eq!(bounds, vec![(0.001, 3), (0.002, 7)]);
    }

    #[test]
    fn sample_lines_parse_with_escaped_label_values() {
        let (name, labels, value) =
            parse_sample(r#"meshrpc_calls_total{service="a\"b",code="ok"} 7"#).expect("parses");
        assert_eq!(name, "meshrpc_calls_total");
        assert_eq!(labels[0], ("service".to_owned(), "a\"b".to_owned()));
        assert_eq!(labels[1], ("code".to_owned(), "ok".to_owned()));
        assert_eq!(value, 7.0);
        assert!(parse_sample("meshrpc_members 3").is_none());
    }
}
