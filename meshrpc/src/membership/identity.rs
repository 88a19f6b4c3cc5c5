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
    /// The address other members reach it at; on the wire the string `ip:port` (`[v6]:port`).
    #[serde(rename = "a", with = "addr_string")]
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

/// A socket address as the string `ip:port` (`[v6]:port`), as docs/PROTOCOL.md (section 10.1)
/// writes it, rather than serde's compact form for binary formats (`{"V4": [[a, b, c, d], port]}`),
/// which a client in another language would have to learn from Rust's source.
mod addr_string {
    use std::fmt;
    use std::net::SocketAddr;

    use serde::de::{Deserializer, Error, Visitor};
    use serde::ser::Serializer;

    pub(super) fn serialize<S: Serializer>(
        addr: &SocketAddr,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_str(addr)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<SocketAddr, D::Error> {
        deserializer.deserialize_str(AddrString)
    }

    struct AddrString;

    impl Visitor<'_> for AddrString {
        type Value = SocketAddr;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("an address `ip:port` or `[v6]:port`")
        }

        fn visit_str<E: Error>(self, text: &str) -> Result<SocketAddr, E> {
            text.parse()
                .map_err(|_| E::custom(format_args!("`{text}` is not an address `ip:port`")))
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
    fn the_address_travels_as_the_string_ip_port() {
        let id = member(7);
        let bytes = rmp_serde::to_vec_named(&id).expect("encodes");
        // "a": "127.0.0.1:11999", first in the map.
        assert!(
            bytes.starts_with(b"\x88\xa1a\xaf127.0.0.1:11999"),
            "{bytes:02x?}"
        );
        let back: MemberId = crate::codec::from_slice_bounded(&bytes, 16).expect("decodes");
        assert_eq!(back, id);
        let v6 = MemberId {
            addr: "[::1]:7".parse().expect("addr"),
            ..id
        };
        let bytes = rmp_serde::to_vec_named(&v6).expect("encodes");
        assert!(bytes.starts_with(b"\x88\xa1a\xa7[::1]:7"), "{bytes:02x?}");
        let back: MemberId = crate::codec::from_slice_bounded(&bytes, 16).expect("decodes");
        assert_eq!(back, v6);
    }

    #[test]
    fn an_address_that_is_not_ip_port_is_refused() {
        let bytes = b"\x84\xa1a\xa9localhost\xa1n\xa0\xa1c\xa0\xa1g\x00";
        let error = crate::codec::from_slice_bounded::<MemberId>(bytes, 16).expect_err("no port");
        assert!(
            error.to_string().contains("`localhost` is not an address"),
            "{error}"
        );
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
