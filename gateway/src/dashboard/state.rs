//! The JSON of `GET /dashboard/state`: the members in the gateway's view with their state,
//! address and services, and per service its replicas and per method calls/s, error rate and
//! p50/p99 over the last minute. docs/OPERATIONS.md ("The dashboard") documents the shape.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use meshrpc::membership::{Liveness, MemberView, View};
use meshrpc::node_service::NODE_SERVICE;
use serde::Serialize;
use tokio::time::Instant;

use super::departed::Departed;
use super::history::{Answering, History, MethodRates, RECENT, WINDOW};

/// The whole state.
#[derive(Debug, Serialize)]
pub struct State {
    /// The gateway's node name.
    pub gateway: String,
    /// When this was computed, milliseconds since the Unix epoch.
    pub generated_at_ms: u64,
    /// How far back the method numbers reach, in seconds.
    pub window_s: u64,
    /// How far back `calls_per_s` reaches, in seconds.
    pub recent_s: u64,
    /// Every member in view and every member that left it in the last minute (`down`),
    /// sorted by name, then address.
    pub members: Vec<Member>,
    /// Every service some member publishes or served, sorted by name.
    pub services: Vec<Service>,
}

/// One member.
#[derive(Debug, Serialize)]
pub struct Member {
    /// Its node name.
    pub name: String,
    /// Its address, `ip:port`.
    pub addr: String,
    /// `alive`, `suspect`, `draining`, or `down` when it left the view.
    pub state: &'static str,
    /// Whether it is the gateway itself.
    pub local: bool,
    /// The RPC services it publishes.
    pub services: Vec<String>,
    /// The services whose legacy HTTP handlers it serves.
    pub http: Vec<String>,
    /// `ok`, `pending` (not asked yet), `failed`, or `gone` (it left the view): how asking it
    /// for stats went.
    pub stats: &'static str,
    /// Seconds since its last stats answer.
    pub stats_age_s: Option<f64>,
    /// Why its last stats ask failed.
    pub stats_error: Option<String>,
    /// Seconds since the gateway noticed it left the view (`down` members only).
    pub left_s_ago: Option<f64>,
}

/// One replica of a service.
#[derive(Debug, Serialize)]
pub struct Replica {
    /// Its node name.
    pub name: String,
    /// Its address.
    pub addr: String,
    /// `alive`, `suspect` or `draining`.
    pub state: &'static str,
}

/// One service.
#[derive(Debug, Serialize)]
pub struct Service {
    /// Its name.
    pub service: String,
    /// The members that publish it.
    pub replicas: Vec<Replica>,
    /// Its methods that were served, sorted by name.
    pub methods: Vec<Method>,
}

/// One method's numbers, totalled over the members that served it: its name beside the
/// [`MethodRates`] fields, in one JSON object.
#[derive(Debug, Serialize)]
pub struct Method {
    /// Its name.
    pub method: String,
    /// Its numbers.
    #[serde(flatten)]
    pub rates: MethodRates,
}

/// A member's state as the dashboard names it.
pub fn member_state(member: &MemberView) -> &'static str {
    if member.id.draining {
        "draining"
    } else if member.liveness == Liveness::Suspect {
        "suspect"
    } else {
        "alive"
    }
}

/// The state of `view`, `history` and `departed` as of `now`; `meshrpc.node` (the mesh's own
/// calls, the dashboard's polls among them) only when `all`.
pub fn build(
    gateway: &str,
    view: &View,
    history: &History,
    departed: &Departed,
    now: Instant,
    all: bool,
) -> State {
    let mut members: Vec<Member> = view
        .members()
        .iter()
        .map(|member| {
            let (stats, stats_age_s, stats_error) = match history.answering(member.id.addr, now) {
                Answering::Pending => ("pending", None, None),
                Answering::Answered(age) => ("ok", Some(age.as_secs_f64()), None),
                Answering::Failed(why) => ("failed", None, Some(why)),
            };
            Member {
                name: member.id.name.clone(),
                addr: member.id.addr.to_string(),
                state: member_state(member),
                local: member.local,
                services: member.id.services.iter().map(|s| s.name.clone()).collect(),
                http: member.id.http.clone(),
                stats,
                stats_age_s,
                stats_error,
                left_s_ago: None,
            }
        })
        .collect();
    members.extend(departed.recent(now).map(|(gone, ago)| Member {
        name: gone.name.clone(),
        addr: gone.addr.to_string(),
        state: "down",
        local: false,
        services: gone.services.clone(),
        http: Vec::new(),
        stats: "gone",
        stats_age_s: None,
        stats_error: None,
        left_s_ago: Some(ago.as_secs_f64()),
    }));
    members.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.addr.cmp(&b.addr)));
    let rates = history
        .rates(|addr, service| (all || service != NODE_SERVICE) && view.member_at(*addr).is_some());
    let mut by_service: BTreeMap<String, Vec<(String, MethodRates)>> = view
        .services()
        .into_iter()
        .map(|service| (service, Vec::new()))
        .collect();
    for ((service, method), rates) in rates {
        by_service.entry(service).or_default().push((method, rates));
    }
    let services = by_service
        .into_iter()
        .map(|(service, methods)| Service {
            replicas: view
                .publishing(&service)
                .map(|member| Replica {
                    name: member.id.name.clone(),
                    addr: member.id.addr.to_string(),
                    state: member_state(member),
                })
                .collect(),
            methods: methods
                .into_iter()
                .map(|(method, rates)| Method { method, rates })
                .collect(),
            service,
        })
        .collect();
    State {
        gateway: gateway.to_owned(),
        generated_at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            }),
        window_s: WINDOW.as_secs(),
        recent_s: RECENT.as_secs(),
        members,
        services,
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use meshrpc::membership::{MemberId, Published};
    use meshrpc::metrics::MethodStats;

    use super::*;

    fn member(port: u16, name: &str, liveness: Liveness, draining: bool) -> MemberView {
        MemberView {
            id: MemberId {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                name: name.to_owned(),
                cluster: "test".to_owned(),
                generation: 1,
                draining,
                services: vec![Published {
                    name: "greeter".to_owned(),
                    schema_hash: 7,
                }],
                http: Vec::new(),
                tags: Vec::new(),
            },
            liveness,
            local: false,
        }
    }

    fn greet(calls: u64) -> Vec<MethodStats> {
        vec![MethodStats {
            side: "server".to_owned(),
            service: "greeter".to_owned(),
            method: "greet".to_owned(),
            codes: BTreeMap::from([("ok".to_owned(), calls)]),
            count: calls,
            ..MethodStats::default()
        }]
    }

    #[test]
    fn members_carry_their_state_and_only_members_in_view_are_counted() {
        let view = View::new(vec![
            member(3, "greeter", Liveness::Alive, false),
            member(1, "greeter", Liveness::Suspect, false),
            member(2, "greeter", Liveness::Alive, true),
        ]);
        let start = Instant::now();
        let later = start + Duration::from_secs(2);
        let mut history = History::default();
        for port in [1, 3, 9] {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            history.record(addr, start, greet(0));
            history.record(addr, later, greet(10));
        }
        let mut departed = Departed::default();
        departed.observe(&view, start);
        let state = build("mesh-api", &view, &history, &departed, later, false);
        let states: Vec<(&str, &str)> = state
            .members
            .iter()
            .map(|member| (member.addr.as_str(), member.state))
            .collect();
        assert_eq!(
            states,
            [
                ("127.0.0.1:1", "suspect"),
                ("127.0.0.1:2", "draining"),
                ("127.0.0.1:3", "alive")
            ]
        );
        assert_eq!(state.members[1].stats, "pending");
        assert_eq!(state.members[2].stats, "ok");
        let greeter = &state.services[0];
        assert_eq!(greeter.replicas.len(), 3);
        // 127.0.0.1:9 is not in view: its calls are not counted.
        assert_eq!(greeter.methods[0].rates.calls, 20);
        assert!((greeter.methods[0].rates.calls_per_s_minute - 10.0).abs() < 1e-9);
    }
}
