//! A member's identity as gossiped: where it listens, what it publishes, whether it drains.
//!
//! Everything a caller needs to route to a member travels in its identity, so a member's
//! services reach every node together with the news that it is alive. Changing any of it (a
//! node starting to drain) is a foca identity change: a new `generation` that wins over the old.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A service a member publishes, with the fingerprint of its schema.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Published {
    /// The service's name.
    #[serde(rename = "n")]
    pub name: String,
    /// The service's schema hash ([`ServiceSpec::schema_hash`](crate::ServiceSpec)).
    #[serde(rename = "h")]
    pub schema_hash: u64,
}

/// The identity of one member of the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberId {
    /// The address other members reach it at.
    #[serde(rename = "a")]
    pub addr: SocketAddr,
    /// The node's name.
    #[serde(rename = "n")]
    pub name: String,
    /// The cluster it belongs to; messages naming another cluster are dropped.
    #[serde(rename = "c")]
    pub cluster: String,
    /// Bumped on every change (and chosen fresh at start), so the newest identity wins.
    #[serde(rename = "g")]
    pub generation: u64,
    /// Whether the member is draining: alive, but taking no new calls.
    #[serde(rename = "d", default)]
    pub draining: bool,
    /// The RPC services it publishes.
    #[serde(rename = "s", default)]
    pub services: Vec<Published>,
    /// The services whose legacy HTTP handlers it serves.
    #[serde(rename = "w", default)]
    pub http: Vec<String>,
    /// Free-form tags.
    #[serde(rename = "t", default)]
    pub tags: Vec<String>,
}

impl MemberId {
    /// Whether the member publishes `service` (any schema).
    pub fn publishes(&self, service: &str) -> bool {
        self.services
            .iter()
            .any(|published| published.name == service)
    }

    /// The schema hash of `service` on this member, if it publishes it.
    pub fn schema_hash(&self, service: &str) -> Option<u64> {
        self.services
            .iter()
            .find(|published| published.name == service)
            .map(|published| published.schema_hash)
    }

    /// Whether the member serves legacy HTTP for `service`.
    pub fn serves_http(&self, service: &str) -> bool {
        self.http.iter().any(|name| name == service)
    }

    /// A placeholder identity for a seed known only by address: foca accepts announcements
    /// addressed to any identity with the receiver's address.
    pub(crate) fn seed(addr: SocketAddr, cluster: &str) -> MemberId {
        MemberId {
            addr,
            name: String::new(),
            cluster: cluster.to_owned(),
            generation: 0,
            draining: false,
            services: Vec::new(),
            http: Vec::new(),
            tags: Vec::new(),
        }
    }
}

impl foca::Identity for MemberId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(MemberId {
            generation: self.generation.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

#[cfg(test)]
mod tests {
    use foca::Identity;

    use super::*;

    fn member(generation: u64) -> MemberId {
        MemberId {
            generation,
            name: "greeter-1".into(),
            ..MemberId::seed("127.0.0.1:11999".parse().expect("addr"), "default")
        }
    }

    #[test]
    fn a_renewed_identity_wins_over_the_old_one() {
        let old = member(7);
        let new = old.renew().expect("renewable");
        assert_eq!(new.addr(), old.addr());
        assert!(new.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&new));
    }
}
