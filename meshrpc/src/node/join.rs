//! Joining the mesh: the address to advertise, and the loop that joins through the seeds.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::membership::Membership;
use crate::seeds;
use crate::transport::connections::Connections;

/// How often seeds are resolved again once the node has joined.
const RESEED_INTERVAL: Duration = Duration::from_secs(10);

/// A fresh generation: later starts at the same address win over earlier ones.
pub(crate) fn initial_generation() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |elapsed| elapsed.as_micros() as u64)
}

/// The address to advertise when none was given.
pub(crate) async fn advertised_addr(local: SocketAddr, seed_entries: &[String]) -> SocketAddr {
    if !local.ip().is_unspecified() {
        return local;
    }
    let seeds = seeds::resolve(seed_entries).await;
    let ip = seeds
        .iter()
        .find_map(|seed| route_ip(*seed))
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    SocketAddr::new(ip, local.port())
}

/// The local IP on the route to `peer` (a connected UDP socket sends nothing).
fn route_ip(peer: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if peer.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(bind).ok()?;
    socket.connect(peer).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// Joins through the seeds: quickly until some member is known, then every
/// [`RESEED_INTERVAL`] to pick up new seed addresses and heal partitions.
pub(crate) async fn join_loop(
    membership: Membership,
    connections: Connections,
    entries: Vec<String>,
    advertised: SocketAddr,
) {
    if entries.is_empty() {
        return;
    }
    let mut pause = Duration::from_millis(200);
    loop {
        let view = membership.view();
        let addrs = seeds::resolve(&entries).await;
        let unknown: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|addr| *addr != advertised && view.member_at(*addr).is_none())
            .collect();
        let joins = unknown
            .iter()
            .map(|addr| membership.join(&connections, *addr));
        futures_util::future::join_all(joins).await;
        let joined = membership.view().members().len() > 1;
        pause = if joined {
            RESEED_INTERVAL
        } else {
            (pause * 2).min(Duration::from_secs(2))
        };
        tokio::time::sleep(pause).await;
    }
}
