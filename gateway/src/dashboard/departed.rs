//! Members that left the gateway's view in the last minute, so the dashboard can show a killed
//! replica as `down` for a while instead of letting it vanish. Bounded: at most
//! [`MAX_DEPARTED`] entries, none older than [`WINDOW`]. No I/O.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use meshrpc::membership::View;
use tokio::time::Instant;

use super::history::WINDOW;

/// Departed members remembered at most.
pub const MAX_DEPARTED: usize = 64;

/// One member that left.
#[derive(Debug, Clone, PartialEq)]
pub struct Gone {
    /// Its node name.
    pub name: String,
    /// Its address.
    pub addr: SocketAddr,
    /// The services it published.
    pub services: Vec<String>,
    /// When the gateway noticed it had left.
    pub left: Instant,
}

/// The members of the last view seen, and those that left since, newest last.
#[derive(Debug, Default)]
pub struct Departed {
    previous: Vec<(SocketAddr, String, Vec<String>)>,
    gone: VecDeque<Gone>,
}

impl Departed {
    /// Compares `view` with the previous one seen: members no longer in it are gone as of
    /// `now`; members back at an address are no longer.
    pub fn observe(&mut self, view: &View, now: Instant) {
        for (addr, name, services) in self.previous.drain(..) {
            if view.member_at(addr).is_none() {
                self.gone.retain(|gone| gone.addr != addr);
                self.gone.push_back(Gone {
                    name,
                    addr,
                    services,
                    left: now,
                });
            }
        }
        self.gone.retain(|gone| view.member_at(gone.addr).is_none());
        while self.gone.len() > MAX_DEPARTED
            || self
                .gone
                .front()
                .is_some_and(|gone| now.saturating_duration_since(gone.left) > WINDOW)
        {
            self.gone.pop_front();
        }
        self.previous = view
            .members()
            .iter()
            .map(|member| {
                let services = member.id.services.iter().map(|s| s.name.clone()).collect();
                (member.id.addr, member.id.name.clone(), services)
            })
            .collect();
    }

    /// The members that left in the last minute as of `now`, with how long ago.
    pub fn recent(&self, now: Instant) -> impl Iterator<Item = (&Gone, Duration)> {
        self.gone.iter().filter_map(move |gone| {
            let ago = now.saturating_duration_since(gone.left);
            (ago <= WINDOW).then_some((gone, ago))
        })
    }
}

#[cfg(test)]
mod tests {
    use meshrpc::membership::{Liveness, MemberId, MemberView};

    use super::*;

    fn view(ports: &[u16]) -> View {
        View::new(
            ports
                .iter()
                .map(|port| MemberView {
                    id: MemberId {
                        addr: SocketAddr::from(([127, 0, 0, 1], *port)),
                        name: format!("node{port}"),
                        cluster: "test".to_owned(),
                        generation: 1,
                        draining: false,
                        services: Vec::new(),
                        http: Vec::new(),
                        tags: Vec::new(),
                    },
                    liveness: Liveness::Alive,
                    local: false,
                })
                .collect(),
        )
    }

    fn recent(departed: &Departed, now: Instant) -> Vec<String> {
        departed
            .recent(now)
            .map(|(gone, _)| gone.name.clone())
            .collect()
    }

    #[test]
    fn a_member_that_leaves_is_down_for_a_minute_then_forgotten() {
        let start = Instant::now();
        let mut departed = Departed::default();
        departed.observe(&view(&[1, 2, 3]), start);
        assert!(recent(&departed, start).is_empty());
        let later = start + Duration::from_secs(1);
        departed.observe(&view(&[1, 3]), later);
        assert_eq!(recent(&departed, later), ["node2"]);
        // Back at its address: no longer down.
        departed.observe(&view(&[1, 2, 3]), later);
        assert!(recent(&departed, later).is_empty());
        departed.observe(&view(&[1, 3]), later);
        let much_later = later + WINDOW + Duration::from_secs(1);
        assert!(recent(&departed, much_later).is_empty());
        departed.observe(&view(&[1, 3]), much_later);
        assert!(departed.gone.is_empty());
    }

    #[test]
    fn however_many_leave_at_most_max_departed_are_remembered() {
        let start = Instant::now();
        let mut departed = Departed::default();
        let ports: Vec<u16> = (1..=1_000).collect();
        departed.observe(&view(&ports), start);
        departed.observe(&view(&[]), start);
        assert_eq!(departed.recent(start).count(), MAX_DEPARTED);
        assert!(departed.previous.is_empty());
    }
}
