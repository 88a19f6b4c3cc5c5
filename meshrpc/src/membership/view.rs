//! A snapshot of the mesh as one node sees it: which members are alive and what they publish.

use std::net::SocketAddr;

use super::identity::MemberId;

/// How sure a node is that a member is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Liveness {
    /// Answering probes.
    Alive,
    /// Missed a probe; declared down unless it refutes in time. Used only when no alive
    /// member can serve.
    Suspect,
}

/// One member in a [`View`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// Its identity (address, name, services, draining flag).
    pub id: MemberId,
    /// Whether it is alive or suspected.
    pub liveness: Liveness,
    /// Whether this member is the local node.
    pub local: bool,
}

impl MemberView {
    /// Whether calls may be sent to it: alive or suspected, and not draining.
    pub fn accepts_calls(&self) -> bool {
        !self.id.draining
    }
}

/// The members one node knows, sorted by address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    members: Vec<MemberView>,
}

impl View {
    /// A view of these members.
    pub fn new(mut members: Vec<MemberView>) -> View {
        members.sort_by(|a, b| a.id.addr.cmp(&b.id.addr).then(a.id.name.cmp(&b.id.name)));
        View { members }
    }

    /// Every member, the local node included.
    pub fn members(&self) -> &[MemberView] {
        &self.members
    }

    /// The member listening at `addr`, if any.
    pub fn member_at(&self, addr: SocketAddr) -> Option<&MemberView> {
        self.members.iter().find(|member| member.id.addr == addr)
    }

    /// Members that publish the RPC service `service`, draining ones included.
    pub fn publishing<'a, 's>(
        &'a self,
        service: &'s str,
    ) -> impl Iterator<Item = &'a MemberView> + use<'a, 's> {
        self.members
            .iter()
            .filter(move |member| member.id.publishes(service))
    }

    /// Members that serve legacy HTTP for `service`, draining ones included.
    pub fn serving_http<'a, 's>(
        &'a self,
        service: &'s str,
    ) -> impl Iterator<Item = &'a MemberView> + use<'a, 's> {
        self.members
            .iter()
            .filter(move |member| member.id.serves_http(service))
    }

    /// Whether some alive, non-draining member publishes `service` with this schema hash
    /// (any schema when `schema_hash` is `None`).
    pub fn has_live(&self, service: &str, schema_hash: Option<u64>) -> bool {
        self.members.iter().any(|member| {
            member.liveness == Liveness::Alive
                && member.accepts_calls()
                && match schema_hash {
                    Some(hash) => member.id.schema_hash(service) == Some(hash),
                    None => member.id.publishes(service) || member.id.serves_http(service),
                }
        })
    }

    /// Names of every service published by some member, sorted and deduplicated.
    pub fn services(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .members
            .iter()
            .flat_map(|member| member.id.services.iter().map(|s| s.name.clone()))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}
