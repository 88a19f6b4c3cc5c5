//! The observed latency of a service's successful attempts, as a histogram of its recent past:
//! the clock of [per-attempt timeouts](super::attempts) and hedges.
//!
//! Fixed memory whatever the traffic: 4 buckets per power of two from 1 µs to about 70 s
//! (each bucket about 19 % wide), counted in two windows that take turns every [`WINDOW`], once
//! the one collecting holds [`MIN_SAMPLES`]. So the histogram covers the last 5–10 s of a busy
//! service and the last 100–200 answers of a quiet one, which keeps its timings however long it
//! was idle. Until a service has [`MIN_SAMPLES`] answers there are no quantiles, but
//! [`Latencies::p99`] gives the slowest answer seen so far: attempt timeouts (four times it, at
//! least 50 ms) then protect a quiet service's callers from a replica that dies or freezes,
//! instead of leaving them to wait for failure detection. Hedges wait for the quantiles: a
//! replica a little slower than the first few answers is not a reason to send calls twice.
//! Recording is two atomic increments; quantiles are recomputed at most every [`REFRESH`] and
//! read from a cache in between.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How long one window collects before the other takes over (the older one is cleared then),
/// if it holds [`MIN_SAMPLES`] by then; a window of a quiet service collects until it does.
pub const WINDOW: Duration = Duration::from_secs(5);

/// How often the cached quantiles are recomputed.
pub const REFRESH: Duration = Duration::from_millis(50);

/// Samples needed (in the two windows together) before any quantile is given (with fewer,
/// [`Latencies::p99`] is the slowest sample).
pub const MIN_SAMPLES: u64 = 100;

const SUB_BUCKETS: u32 = 4;
const BUCKETS: usize = 26 * SUB_BUCKETS as usize;

/// Latency quantiles of a service over its recent past (its last few seconds, or its last
/// 100–200 answers if it is quiet).
#[derive(Debug)]
pub struct Latencies {
    epoch: Instant,
    windows: [Window; 2],
    current: AtomicUsize,
    /// When `current` last changed, in milliseconds since `epoch`.
    rotated_at: AtomicU64,
    /// The cache: when it was computed (ms since `epoch`, `u64::MAX` for never), p50, p95 and p99 in
    /// microseconds (0 for none: p50 and p95 need [`MIN_SAMPLES`], p99 one sample).
    computed_at: AtomicU64,
    p50_micros: AtomicU64,
    p95_micros: AtomicU64,
    p99_micros: AtomicU64,
}

#[derive(Debug)]
struct Window {
    counts: [AtomicU64; BUCKETS],
    /// The samples in `counts`, so that a window is not retired before it holds enough.
    samples: AtomicU64,
}

impl Default for Window {
    fn default() -> Window {
        Window {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            samples: AtomicU64::new(0),
        }
    }
}

impl Default for Latencies {
    fn default() -> Latencies {
        Latencies {
            epoch: Instant::now(),
            windows: [Window::default(), Window::default()],
            current: AtomicUsize::new(0),
            rotated_at: AtomicU64::new(0),
            computed_at: AtomicU64::new(u64::MAX),
            p50_micros: AtomicU64::new(0),
            p95_micros: AtomicU64::new(0),
            p99_micros: AtomicU64::new(0),
        }
    }
}

/// The bucket of a latency of `micros` µs.
fn bucket(micros: u64) -> usize {
    let micros = micros.max(1);
    let log = 63 - micros.leading_zeros();
    // The two bits after the leading one pick the sub-bucket.
    let sub = if log >= 2 {
        (micros >> (log - 2)) & 0b11
    } else {
        (micros << (2 - log)) & 0b11
    };
    ((log * SUB_BUCKETS) as usize + sub as usize).min(BUCKETS - 1)
}

/// The upper edge of bucket `index`, in microseconds.
fn upper_edge(index: usize) -> u64 {
    let log = index as u32 / SUB_BUCKETS;
    let sub = u64::from(index as u32 % SUB_BUCKETS);
    let base = 1u64 << log;
    base + (base * (sub + 1)) / u64::from(SUB_BUCKETS)
}

impl Latencies {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// Records one successful attempt's latency.
    pub fn record(&self, latency: Duration) {
        let now = self.now_ms();
        let rotated = self.rotated_at.load(Ordering::Relaxed);
        let collecting = &self.windows[self.current.load(Ordering::Relaxed)];
        if now.saturating_sub(rotated) >= WINDOW.as_millis() as u64
            && collecting.samples.load(Ordering::Relaxed) >= MIN_SAMPLES
            && self
                .rotated_at
                .compare_exchange(rotated, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let next = 1 - self.current.load(Ordering::Relaxed);
            for count in &self.windows[next].counts {
                count.store(0, Ordering::Relaxed);
            }
            self.windows[next].samples.store(0, Ordering::Relaxed);
            self.current.store(next, Ordering::Relaxed);
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let window = &self.windows[self.current.load(Ordering::Relaxed)];
        window.counts[bucket(micros)].fetch_add(1, Ordering::Relaxed);
        window.samples.fetch_add(1, Ordering::Relaxed);
        if self.p99_micros.load(Ordering::Relaxed) == 0 {
            // The cache says "no samples", which is no longer true: the next read recomputes
            // it rather than keep a caller unprotected for up to [`REFRESH`].
            self.computed_at.store(u64::MAX, Ordering::Relaxed);
        }
    }

    /// The `q` quantile (0 to 1) of the recent past, computed now; `None` with fewer than
    /// [`MIN_SAMPLES`] samples.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let mut counts = [0u64; BUCKETS];
        for window in &self.windows {
            for (sum, count) in counts.iter_mut().zip(&window.counts) {
                *sum += count.load(Ordering::Relaxed);
            }
        }
        let total: u64 = counts.iter().sum();
        if total < MIN_SAMPLES {
            return None;
        }
        let rank = ((total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (index, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Duration::from_micros(upper_edge(index)));
            }
        }
        Some(Duration::from_micros(upper_edge(BUCKETS - 1)))
    }

    /// The slowest sample of the recent past (the upper edge of its bucket), if any.
    pub fn slowest(&self) -> Option<Duration> {
        (0..BUCKETS)
            .rev()
            .find(|&index| {
                self.windows
                    .iter()
                    .any(|window| window.counts[index].load(Ordering::Relaxed) > 0)
            })
            .map(|index| Duration::from_micros(upper_edge(index)))
    }

    fn refresh(&self) {
        let now = self.now_ms();
        let computed = self.computed_at.load(Ordering::Relaxed);
        if computed != u64::MAX && now.saturating_sub(computed) < REFRESH.as_millis() as u64 {
            return;
        }
        if self
            .computed_at
            .compare_exchange(computed, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let micros = |q| self.quantile(q).map_or(0, |d| d.as_micros() as u64);
        self.p50_micros.store(micros(0.5), Ordering::Relaxed);
        self.p95_micros.store(micros(0.95), Ordering::Relaxed);
        let p99 = self.quantile(0.99).or_else(|| self.slowest());
        self.p99_micros
            .store(p99.map_or(0, |d| d.as_micros() as u64), Ordering::Relaxed);
    }

    fn cached(&self, slot: &AtomicU64) -> Option<Duration> {
        self.refresh();
        match slot.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }

    /// The median latency (cached for up to [`REFRESH`]); `None` until there are enough
    /// samples.
    pub fn p50(&self) -> Option<Duration> {
        self.cached(&self.p50_micros)
    }

    /// The p95 latency (cached for up to [`REFRESH`]); `None` until there are enough samples.
    pub fn p95(&self) -> Option<Duration> {
        self.cached(&self.p95_micros)
    }

    /// The p99 latency (cached for up to [`REFRESH`]); until there are enough samples, the
    /// slowest answer so far (`None` before the first).
    pub fn p99(&self) -> Option<Duration> {
        self.cached(&self.p99_micros)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_their_edges_bound_their_values() {
        let mut last = 0;
        for micros in [1u64, 2, 3, 5, 7, 100, 1_000, 12_345, 1_000_000, 60_000_000] {
            let index = bucket(micros);
            assert!(index >= last, "{micros} µs fell before a smaller value");
            assert!(
                upper_edge(index) >= micros,
                "{micros} µs above its bucket's edge"
            );
            assert!(
                upper_edge(index) <= micros + micros / 3 + 1,
                "{micros} µs in a bucket up to {}",
                upper_edge(index)
            );
            last = index;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn few_samples_give_the_slowest_as_p99_and_enough_give_quantiles_of_the_recent_past() {
        let latencies = Latencies::default();
        assert_eq!(latencies.quantile(0.5), None, "no samples, no guess");
        assert_eq!(latencies.p99(), None);
        latencies.record(Duration::from_millis(1));
        assert!(
            latencies.p99().is_some(),
            "the first sample counts at once, not after the cached \"none\" expires"
        );
        latencies.record(Duration::from_millis(30));
        for _ in 0..(MIN_SAMPLES - 3) {
            latencies.record(Duration::from_millis(1));
        }
        tokio::time::advance(REFRESH).await;
        assert_eq!(
            latencies.quantile(0.5),
            None,
            "too few samples for quantiles"
        );
        assert_eq!(latencies.p95(), None, "no hedges on a guess");
        let guess = latencies.p99().expect("the slowest so far");
        assert!(
            guess >= Duration::from_millis(30) && guess < Duration::from_millis(40),
            "with {} samples the p99 is the slowest: {guess:?}",
            MIN_SAMPLES - 1
        );
        for _ in 0..900 {
            latencies.record(Duration::from_millis(1));
        }
        for _ in 0..100 {
            latencies.record(Duration::from_millis(30));
        }
        let p50 = latencies.quantile(0.5).expect("enough samples");
        assert!(p50 >= Duration::from_millis(1) && p50 < Duration::from_micros(1_300));
        tokio::time::advance(REFRESH).await;
        let p95 = latencies.p95().expect("enough samples");
        assert!(p95 >= Duration::from_millis(30), "{p95:?}");
        // A quiet service keeps its timings: nothing is forgotten while nothing new arrives.
        tokio::time::advance(WINDOW * 20).await;
        latencies.record(Duration::from_millis(2));
        tokio::time::advance(REFRESH).await;
        assert!(latencies.p95().expect("kept") >= Duration::from_millis(30));
        // New answers take over once a window of them is full: then only they count.
        for _ in 0..200 {
            latencies.record(Duration::from_millis(2));
        }
        tokio::time::advance(WINDOW).await;
        for _ in 0..200 {
            latencies.record(Duration::from_millis(2));
        }
        tokio::time::advance(REFRESH).await;
        let p99 = latencies.p99().expect("enough samples");
        assert!(
            p99 >= Duration::from_millis(2) && p99 < Duration::from_micros(2_600),
            "{p99:?}"
        );
    }
}
