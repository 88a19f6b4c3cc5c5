//! Membership: who is in the mesh and what they publish, learned by SWIM gossip (the `foca`
//! crate) carried on the node's own QUIC endpoint.
//!
//! Probes and gossip travel as QUIC datagrams on the connections nodes already keep; joining a
//! seed also exchanges the full member list over a stream (`GOSSIP` frame), so a new node knows
//! the whole mesh after one round trip. Each member's identity ([`MemberId`]) carries its
//! address, published services with their schema hashes, and whether it is draining; the
//! [`View`] built from them is what balancers route on.

pub(crate) mod agent;
pub(crate) mod codec;
pub(crate) mod core;
pub(crate) mod exchange_error;
pub(crate) mod health;
pub mod identity;
pub(crate) mod reports;
#[doc(hidden)]
pub mod sim;
pub mod view;

pub use agent::Membership;
pub use core::{IdentityTooLarge, check_identity};
pub use identity::{MemberId, Published};
pub use view::{Liveness, MemberView, View};
