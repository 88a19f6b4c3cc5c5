//! The live dashboard at `/dashboard`: who is in the mesh and how its methods are doing.
//!
//! - [`departed`] remembers, for a minute, the members that left the view (shown `down`);
//! - [`history`] keeps the last minute of every member's `meshrpc.node/stats` answers and
//!   turns them into calls/s, error rate and p50/p99 per method (no I/O);
//! - [`poller`] asks every member in the gateway's view for its stats: every
//!   [`WATCHED_INTERVAL`] while someone has fetched the state in the last [`WATCH_LINGER`],
//!   every [`IDLE_INTERVAL`] otherwise (so a page opened later has a minute of history at
//!   once, at one small call per member every ten seconds);
//! - [`state`] is the JSON the page polls, `GET /dashboard/state`;
//! - [`PAGE`] is the page itself, one HTML file with its CSS and script inline (nothing is
//!   fetched from anywhere else: operators' networks are often closed).
//!
//! Members come from the gateway's own membership view; method numbers from the server side
//! of each callee (what the member that served the calls counted), summed over the members.

pub mod departed;
pub mod history;
pub mod poller;
pub mod state;

use std::sync::Mutex;
use std::time::Duration;

use meshrpc::membership::View;
use tokio::sync::Notify;
use tokio::time::Instant;

pub use departed::Departed;
pub use history::History;

/// The page served at `/dashboard`.
pub const PAGE: &str = include_str!("page.html");

/// Time between stats polls while someone watches.
pub const WATCHED_INTERVAL: Duration = Duration::from_secs(1);

/// Time between stats polls while nobody watches.
pub const IDLE_INTERVAL: Duration = Duration::from_secs(10);

/// How long after the last fetch of the state someone counts as watching.
pub const WATCH_LINGER: Duration = Duration::from_secs(30);

/// The dashboard's shared state: the history the poller fills and the routes read, and
/// whether anyone watches.
#[derive(Debug, Default)]
pub struct Dashboard {
    history: Mutex<History>,
    departed: Mutex<Departed>,
    watched: Mutex<Option<Instant>>,
    wake: Notify,
}

impl Dashboard {
    /// Notes that someone fetched the state now; wakes the poller if it was idling.
    pub fn watch(&self) {
        let now = Instant::now();
        let was = meshrpc::lock(&self.watched).replace(now);
        if was.is_none_or(|at| now.duration_since(at) > WATCH_LINGER) {
            self.wake.notify_one();
        }
    }

    /// The time until the next poll, as of `now`.
    pub fn interval(&self, now: Instant) -> Duration {
        let watched = *meshrpc::lock(&self.watched);
        match watched {
            Some(at) if now.saturating_duration_since(at) <= WATCH_LINGER => WATCHED_INTERVAL,
            _ => IDLE_INTERVAL,
        }
    }

    /// Runs `f` on the history.
    pub fn with_history<T>(&self, f: impl FnOnce(&mut History) -> T) -> T {
        f(&mut meshrpc::lock(&self.history))
    }

    /// Runs `f` on the departed members.
    pub fn with_departed<T>(&self, f: impl FnOnce(&mut Departed) -> T) -> T {
        f(&mut meshrpc::lock(&self.departed))
    }

    /// Takes `view` as the current one: forgets the stats of members no longer in it and
    /// notes them as departed.
    pub fn observe(&self, view: &View, now: Instant) {
        self.with_history(|history| history.retain(|addr| view.member_at(*addr).is_some()));
        self.with_departed(|departed| departed.observe(view, now));
    }

    /// Waits until [`Dashboard::watch`] wakes the poller.
    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }
}
