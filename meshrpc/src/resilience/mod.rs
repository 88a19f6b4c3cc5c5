//! Client-side resilience, each concern in its own module: [`balance`] picks a replica per
//! call (round robin, sticky rendezvous hashing, or peak-EWMA power of two choices),
//! [`breaker`] ejects replicas that keep failing (never too many at once), [`retry`] retries
//! what is safe to retry under a budget.
//!
//! The deadline lives in [`Channel::call`](crate::Channel::call), outermost, so it bounds
//! every retry; the server-side limits (concurrency, load shedding) live in the server.

pub mod balance;
pub mod breaker;
pub mod retry;
