//! Client-side resilience, each concern in its own module. A node's client stack, top to
//! bottom:
//!
//! - [`attempts`]: each call as one or more attempts — retries under one rule and budget
//!   ([`retry`]), per-attempt timeouts and hedges for idempotent unary calls, timed by the
//!   service's observed [`latency`];
//! - [`balance`]: picks a replica per attempt (round robin, sticky rendezvous hashing, or
//!   peak-EWMA power of two choices) among the members of the view, and sends the attempt to
//!   that member's endpoint;
//! - per endpoint: the [`breaker`] layer (failure accrual and outlier ejection, never too many
//!   replicas at once) over the [`load`] layer (peak-EWMA latency that counts failures) over
//!   the member's `PeerService`.
//!
//! The deadline lives in [`Channel::call`](crate::Channel::call), outermost, so it bounds
//! every retry; the server-side limits (concurrency, load shedding) live in the server.

/// Builder-style setters for the fields of a `#[non_exhaustive]` configuration type, so
/// callers outside the crate can change any field while new fields stay a compatible change.
macro_rules! setters {
    ($ty:ident { $($field:ident: $fty:ty),* $(,)? }) => {
        impl $ty {
            $(
                #[doc = concat!("Sets [`", stringify!($ty), "::", stringify!($field), "`].")]
                pub fn $field(mut self, value: $fty) -> $ty {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}

pub mod attempts;
pub mod balance;
pub mod breaker;
pub mod latency;
pub mod load;
pub mod retry;
