//! The server side of the streaming scenario, shared by every system that streams: a
//! [`Producer`] yields `count` payloads of `size` bytes, one each time the transport pulls the
//! next (so a slow reader slows it down), and records in [`stats`] how many it produced, when
//! it last produced one and when it was dropped (the call ended or was cancelled): the figures
//! the slow-consumer run reads to tell when the producer stopped after its consumer left.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// What this server process's producers did so far.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Stats {
    /// Streams opened.
    pub(crate) opened: u64,
    /// Messages produced, over every stream.
    pub(crate) produced: u64,
    /// When the last message was produced, ns since the Unix epoch (0: never); for messages
    /// under 4 KiB, when the last of each 256 was.
    pub(crate) last_produced_ns: u64,
    /// When the last producer was dropped, ns since the Unix epoch (0: none yet).
    pub(crate) last_dropped_ns: u64,
}

static OPENED: AtomicU64 = AtomicU64::new(0);
static PRODUCED: AtomicU64 = AtomicU64::new(0);
static LAST_PRODUCED: AtomicU64 = AtomicU64::new(0);
static LAST_DROPPED: AtomicU64 = AtomicU64::new(0);

/// This process's producer figures.
pub(crate) fn stats() -> Stats {
    Stats {
        opened: OPENED.load(Ordering::Relaxed),
        produced: PRODUCED.load(Ordering::Relaxed),
        last_produced_ns: LAST_PRODUCED.load(Ordering::Relaxed),
        last_dropped_ns: LAST_DROPPED.load(Ordering::Relaxed),
    }
}

/// Now, in ns since the Unix epoch (the clock every bench process shares).
pub(crate) fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Messages at least this large are counted and stamped one by one; smaller ones every
/// [`SMALL_STAMP_EVERY`] messages. Reading the wall clock per message costs about as much as
/// sending a 64 B message, and would be counted as the system's; the slow consumer, whose stop
/// time needs each message's stamp, streams 64 KiB messages.
const STAMP_EACH_FROM: usize = 4 * 1024;

/// How many small messages are produced between two stamps (and two updates of the count).
const SMALL_STAMP_EVERY: u64 = 256;

/// `count` payloads of `size` bytes, produced one at a time as they are pulled.
#[derive(Debug)]
pub(crate) struct Producer {
    payload: Bytes,
    left: u64,
    /// Messages produced since the count and the stamp were last updated.
    unrecorded: u64,
    /// How many messages go between two updates.
    record_every: u64,
}

impl Producer {
    /// A producer of `count` messages of `size` bytes (at most 16 MiB each).
    pub(crate) fn new(size: u32, count: u64) -> Producer {
        OPENED.fetch_add(1, Ordering::Relaxed);
        let size = (size as usize).min(super::MAX_MESSAGE);
        Producer {
            payload: Bytes::from(vec![0x5Au8; size]),
            left: count,
            unrecorded: 0,
            record_every: if size >= STAMP_EACH_FROM {
                1
            } else {
                SMALL_STAMP_EVERY
            },
        }
    }

    /// Adds the messages produced since the last update to the count.
    fn count_unrecorded(&mut self) {
        PRODUCED.fetch_add(self.unrecorded, Ordering::Relaxed);
        self.unrecorded = 0;
    }
}

impl Iterator for Producer {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        self.unrecorded += 1;
        if self.unrecorded == self.record_every {
            self.count_unrecorded();
            LAST_PRODUCED.store(unix_ns(), Ordering::Relaxed);
        }
        Some(self.payload.clone())
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        // The count is completed; the stamp stays that of the last update (for small messages,
        // at most `SMALL_STAMP_EVERY` messages before the last one).
        self.count_unrecorded();
        LAST_DROPPED.store(unix_ns(), Ordering::Relaxed);
    }
}
