//! How many streams (calls) a peer may have open at once on a connection, as the callee raises
//! it from its small start.
//!
//! quinn keeps state for every stream the peer may open, so a connection starts at
//! [`INITIAL_STREAM_LIMIT`](crate::transport::endpoint::INITIAL_STREAM_LIMIT) and the limit
//! grows with use, never past `Limits::max_concurrent_streams`:
//!
//! - **busy:** whenever the peer keeps three quarters of it open, it becomes half as much again
//!   as is open (and at least [`BUSY_STEP`] more). The peer has a quarter of the limit in hand
//!   while the new credit travels, and a connection holding N calls reserves state for at most
//!   1.5 N streams once N is past a few hundred (doubling at half would reserve up to 4 N: for
//!   10,000 calls held on one connection, a limit of 20,000 and 2.5 MiB of quinn's stream maps);
//! - **fast:** it doubles, up to [`FAST_LIMIT`], whenever the peer has opened eight limits' worth
//!   of streams within [`FAST_WINDOW`]. quinn hands credit back in a `MAX_STREAMS` frame each
//!   time an eighth of the limit has been freed. It frees a stream when the peer acknowledges
//!   its answer, a moment when nothing else waits to be sent, so each of those frames goes out
//!   in a packet of its own: with 64 calls in flight (a limit of 256), two packets more for
//!   every 64 calls. At 512 it is one, for about 200 KiB more of quinn's state than at 64.

use std::time::{Duration, Instant};

/// The least a busy connection's limit grows by at once.
pub(super) const BUSY_STEP: u32 = 64;

/// The highest limit a connection reaches by its pace alone (only a busy one goes higher).
pub(super) const FAST_LIMIT: u32 = 512;

/// A connection whose peer opens eight limits' worth of streams within this time is fast.
pub(super) const FAST_WINDOW: Duration = Duration::from_secs(1);

/// A connection's stream limit and what it grows from.
#[derive(Debug)]
pub(super) struct StreamLimit {
    limit: u32,
    ceiling: u32,
    /// Streams opened since `since`.
    opened: u32,
    since: Instant,
}

impl StreamLimit {
    /// A connection's limit, starting at `initial`, never above `ceiling`.
    pub(super) fn new(initial: u32, ceiling: u32, now: Instant) -> StreamLimit {
        StreamLimit {
            limit: initial.min(ceiling),
            ceiling,
            opened: 0,
            since: now,
        }
    }

    /// The limit now.
    #[cfg(test)]
    pub(super) fn get(&self) -> u32 {
        self.limit
    }

    /// Counts a stream the peer opened, `open` of its streams being open now; the new limit,
    /// when it grows. `now` is asked only once per eight limits' worth of streams.
    pub(super) fn opened(&mut self, open: u32, now: impl FnOnce() -> Instant) -> Option<u32> {
        let mut grown = None;
        if open.saturating_mul(4) >= self.limit.saturating_mul(3) && self.limit < self.ceiling {
            let half_again = open.saturating_add(open / 2);
            self.limit = half_again
                .max(self.limit.saturating_add(BUSY_STEP))
                .min(self.ceiling);
            grown = Some(self.limit);
        }
        self.opened += 1;
        if self.opened >= self.limit.saturating_mul(8) {
            let now = now();
            let fast = now.saturating_duration_since(self.since) < FAST_WINDOW;
            self.opened = 0;
            self.since = now;
            let fast_limit = FAST_LIMIT.min(self.ceiling);
            if fast && self.limit < fast_limit {
                self.limit = self.limit.saturating_mul(2).min(fast_limit);
                grown = Some(self.limit);
            }
        }
        grown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens `count` streams one after the other (each closed before the next opens), `apart`
    /// from each other from `start`; every limit announced.
    fn cycle(
        limit: &mut StreamLimit,
        count: u32,
        start: Instant,
        apart: Duration,
    ) -> (Vec<u32>, Instant) {
        let mut announced = Vec::new();
        let mut now = start;
        for _ in 0..count {
            now += apart;
            announced.extend(limit.opened(1, || now));
        }
        (announced, now)
    }

    #[test]
    fn a_busy_peer_raises_the_limit_step_by_step_up_to_the_ceiling() {
        let start = Instant::now();
        let mut limit = StreamLimit::new(64, 300, start);
        let announced: Vec<u32> = (1..=200)
            .filter_map(|open| limit.opened(open, || start))
            .collect();
        // 64 at a time while small (48, 96 and 144 open raise it); 192 open meets the ceiling.
        assert_eq!(announced, [128, 192, 256, 300]);
        assert_eq!(limit.opened(300, || start), None);
    }

    #[test]
    fn a_busy_connection_reserves_streams_in_proportion_to_what_it_holds() {
        let start = Instant::now();
        for held in [1_000, 4_097, 10_000, 50_000] {
            let mut limit = StreamLimit::new(64, 100_000, start);
            // Slowly, so the pace alone raises nothing.
            let mut now = start;
            for open in 1..=held {
                now += Duration::from_millis(10);
                limit.opened(open, || now);
            }
            let reserved = limit.get();
            assert!(
                reserved > held,
                "{held} held, limit {reserved}: no room for the next call"
            );
            assert!(
                reserved * 2 <= held * 3,
                "{held} held, limit {reserved}: more than 1.5 times what is held"
            );
        }
    }

    #[test]
    fn a_fast_peer_raises_the_limit_to_the_fast_limit_and_no_further() {
        let start = Instant::now();
        let mut limit = StreamLimit::new(64, 4096, start);
        // 100,000 calls a second, one at a time.
        let (announced, _) = cycle(&mut limit, 200_000, start, Duration::from_micros(10));
        assert_eq!(announced, [128, 256, 512]);
        assert_eq!(limit.get(), FAST_LIMIT);
    }

    #[test]
    fn a_slow_peer_keeps_the_initial_limit() {
        let start = Instant::now();
        let mut limit = StreamLimit::new(64, 4096, start);
        // 500 calls a second, one at a time: eight limits' worth take just over a second.
        let (announced, _) = cycle(&mut limit, 5_000, start, Duration::from_millis(2));
        assert!(announced.is_empty(), "{announced:?}");
        assert_eq!(limit.get(), 64);
    }

    #[test]
    fn the_fast_limit_stays_under_a_lower_ceiling() {
        let start = Instant::now();
        let mut limit = StreamLimit::new(64, 100, start);
        let (announced, _) = cycle(&mut limit, 10_000, start, Duration::from_micros(10));
        assert_eq!(announced, [100]);
    }

    #[test]
    fn a_pause_restarts_the_pace_count() {
        let start = Instant::now();
        let mut limit = StreamLimit::new(64, 4096, start);
        // 511 streams fast, a two-second pause, then one more: not eight limits' worth within a
        // second, so no growth; the next 512 fast ones raise it.
        let (announced, now) = cycle(&mut limit, 511, start, Duration::from_micros(10));
        assert!(announced.is_empty(), "{announced:?}");
        let (announced, now) = cycle(&mut limit, 1, now, Duration::from_secs(2));
        assert!(announced.is_empty(), "{announced:?}");
        let (announced, _) = cycle(&mut limit, 512, now, Duration::from_micros(10));
        assert_eq!(announced, [128]);
    }
}
