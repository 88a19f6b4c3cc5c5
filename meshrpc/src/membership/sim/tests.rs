//! The simulation in CI: small meshes, virtual time, exact figures.

use std::time::Duration;

use super::scenario::{Options, bootstrap, until_all_see};
use super::{Network, Seen, Simulation, node_addr};

fn mesh(nodes: usize, seed: u64) -> Simulation {
    let options = Options {
        seed,
        ..Options::default()
    };
    let (sim, took) = bootstrap(nodes, &options);
    assert!(took.is_some(), "{nodes} nodes did not converge");
    sim
}

/// Everything a run did that the seed could change: traffic and every notification.
fn fingerprint(seed: u64) -> (super::Traffic, Vec<super::Notice>) {
    let mut sim = mesh(12, seed);
    let mut log = sim.take_log();
    sim.crash(5);
    sim.network_mut().loss = 0.05;
    sim.run_for(Duration::from_secs(10));
    sim.restart(5);
    sim.run_for(Duration::from_secs(5));
    log.extend(sim.take_log());
    (sim.traffic(), log)
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let (traffic, log) = fingerprint(7);
    assert!(traffic.datagrams > 1000, "{traffic:?}");
    assert_eq!(fingerprint(7), (traffic, log.clone()));
    let (other, _) = fingerprint(8);
    assert_ne!(other, traffic, "another seed, another run");
}

#[test]
fn a_join_and_a_crash_are_seen_by_every_member_of_30_within_the_targets() {
    let mut sim = mesh(30, 1);
    sim.run_for(Duration::from_secs(10));
    sim.take_log();
    let newcomer = sim.add_node();
    let join = until_all_see(
        &mut sim,
        node_addr(newcomer),
        Seen::Up,
        Duration::from_secs(30),
    )
    .expect("every member sees the newcomer");
    assert!(
        join <= Duration::from_secs(3),
        "join seen by all in {join:?}"
    );
    sim.run_for(Duration::from_secs(5));
    sim.take_log();
    sim.crash(10);
    let crash = until_all_see(&mut sim, node_addr(10), Seen::Down, Duration::from_secs(30))
        .expect("every member sees the crash");
    assert!(
        crash <= Duration::from_secs(5),
        "crash seen by all in {crash:?}"
    );
    // And the views say so: every node's published view lists the 30 running nodes, alive.
    sim.run_for(Duration::from_secs(2));
    assert!(sim.converged());
    for node in 0..sim.len() {
        let Some(view) = sim.view(node) else {
            continue;
        };
        assert_eq!(view.members().len(), 30);
        assert!(view.member_at(node_addr(10)).is_none());
        assert!(view.member_at(node_addr(newcomer)).is_some());
    }
}

#[test]
fn five_percent_loss_kills_no_live_member_and_gossip_stays_under_10_kb_per_second() {
    let mut sim = mesh(20, 3);
    sim.run_for(Duration::from_secs(20));
    sim.take_log();
    let before = sim.traffic();
    sim.network_mut().loss = 0.05;
    sim.run_for(Duration::from_secs(30));
    let downs: Vec<_> = sim
        .take_log()
        .into_iter()
        .filter(|notice| notice.seen == Seen::Down)
        .collect();
    assert!(downs.is_empty(), "live members declared down: {downs:?}");
    let sent = sim.traffic().datagram_bytes - before.datagram_bytes;
    let per_node = sent as f64 / 20.0 / 30.0;
    assert!(per_node < 10_000.0, "{per_node} B/s per node");
}

#[test]
fn a_node_renewed_by_the_cluster_rejoins_after_a_partition() {
    // In this run a node (13) is declared down by the far side of a partition and learns it
    // after the heal; foca renews its identity and then waits, silent, for a message that
    // nobody sends. Announcing the renewal to known members brings it back.
    let mut sim = Simulation::new(1, Network::default(), Simulation::node_config());
    sim.set_seeds((0..3).map(node_addr).collect());
    for _ in 0..30 {
        sim.add_node();
        sim.run_for(Duration::from_millis(10));
    }
    sim.run_for(Duration::from_secs(10));
    sim.add_node();
    sim.run_for(Duration::from_secs(5));
    sim.crash(15);
    sim.run_for(Duration::from_secs(10));
    sim.partition(|node| node < 15);
    sim.run_for(Duration::from_secs(20));
    sim.heal();
    let healed = sim.run_until_true(Duration::from_secs(60), |sim| sim.converged());
    let renewed = sim.identity(13).map(|id| id.generation % 1000);
    assert!(
        healed.is_some(),
        "not healed; views: {:?}",
        (0..sim.len())
            .map(|node| sim.view_len(node))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        renewed,
        Some(14),
        "node 13 was renewed once (generation 13 + 1)"
    );
}

#[test]
fn a_partition_of_two_halves_heals() {
    let mut sim = mesh(16, 4);
    sim.run_for(Duration::from_secs(5));
    sim.partition(|node| node % 2 == 0);
    sim.run_for(Duration::from_secs(20));
    assert!(!sim.converged(), "each side declared the other down");
    assert!(sim.view_len(0) <= 9, "node 0 sees {}", sim.view_len(0));
    sim.heal();
    let healed = sim.run_until_true(Duration::from_secs(60), |sim| sim.converged());
    assert!(
        healed.is_some(),
        "the halves did not reconverge within 60 s"
    );
}

#[test]
fn a_lossless_quiet_mesh_gossips_only_its_probes() {
    let mut sim = Simulation::new(1, Network::default(), Simulation::node_config());
    sim.set_seeds(vec![node_addr(0)]);
    sim.add_converged(10);
    sim.run_for(Duration::from_secs(10));
    let before = sim.traffic();
    sim.run_for(Duration::from_secs(10));
    let after = sim.traffic();
    // Two probes a second, each a ping and an ack, and every 10 s an announcement to one
    // member and its feed back; nothing else once the news is out.
    let datagrams = after.datagrams - before.datagrams;
    assert_eq!(datagrams, 10 * 10 * 4 + 10 * 2, "{after:?}");
}

mod reports {
    //! Callers' reports of unresponsive members, on the core directly and in a mesh.

    use std::time::Duration;

    use foca::Member;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::super::{Seen, node_addr};
    use super::mesh;
    use crate::membership::core::{Core, CoreTimer, swim_config};
    use crate::membership::identity::MemberId;

    fn core(index: usize) -> Core {
        let id = MemberId {
            name: format!("node-{index}"),
            generation: 1 + index as u64,
            ..MemberId::seed(node_addr(index), "sim")
        };
        Core::new(id, swim_config(), StdRng::seed_from_u64(index as u64))
    }

    fn alive(core: &Core, addr: std::net::SocketAddr) -> Option<bool> {
        core.active_members()
            .find(|(id, _)| id.addr == addr)
            .map(|(_, alive)| alive)
    }

    /// Two cores that know each other.
    fn pair() -> (Core, Core) {
        let (mut a, mut b) = (core(0), core(1));
        a.know(vec![Member::alive(b.identity().clone())]);
        b.know(vec![Member::alive(a.identity().clone())]);
        (a, b)
    }

    #[test]
    fn a_report_pings_the_member_once_per_cool_down_and_ignores_strangers() {
        let (mut a, _) = pair();
        let member = node_addr(1);
        let effects = a.report_unresponsive(member);
        assert_eq!(effects.sends.len(), 1, "one ping");
        assert_eq!(effects.sends[0].0, member);
        assert!(effects.downs.is_empty());
        assert!(
            effects
                .timers
                .iter()
                .any(|(timer, after)| *timer == CoreTimer::ReportProbe(member)
                    && *after == Duration::from_millis(400))
        );
        for _ in 0..1000 {
            let effects = a.report_unresponsive(member);
            assert!(effects.sends.is_empty() && effects.timers.is_empty());
        }
        assert!(
            a.report_unresponsive(node_addr(9)).sends.is_empty(),
            "not a member"
        );
        assert_eq!(a.reports_pending(), 1);
        let _ = a.timer(CoreTimer::ReportCooled(member), Duration::ZERO);
        assert_eq!(a.reports_pending(), 0);
        assert_eq!(
            a.report_unresponsive(member).sends.len(),
            1,
            "after the cool-down"
        );
    }

    #[test]
    fn a_member_that_answers_the_ping_stays_alive() {
        let (mut a, mut b) = pair();
        let member = node_addr(1);
        let ping = a.report_unresponsive(member).sends.remove(0).1;
        let answer = b.datagram(&ping);
        let ack = &answer
            .sends
            .iter()
            .find(|(to, _)| *to == node_addr(0))
            .expect("an ack")
            .1;
        let _ = a.datagram(ack);
        let effects = a.timer(CoreTimer::ReportProbe(member), Duration::ZERO);
        assert!(effects.sends.is_empty() && effects.downs.is_empty());
        assert_eq!(alive(&a, member), Some(true));
    }

    #[test]
    fn a_member_that_does_not_answer_is_suspected_never_declared_down() {
        let (mut a, _) = pair();
        let member = node_addr(1);
        let _ = a.report_unresponsive(member);
        let effects = a.timer(CoreTimer::ReportProbe(member), Duration::ZERO);
        assert!(effects.downs.is_empty(), "a report never kills");
        assert_eq!(alive(&a, member), Some(false), "suspect");
        // foca's suspicion timer, which the member's refutation defuses.
        assert!(effects.timers.iter().any(|(timer, _)| matches!(
            timer,
            CoreTimer::Swim(foca::Timer::ChangeSuspectToDown { .. })
        )));
    }

    #[test]
    fn a_frozen_member_is_suspected_by_its_caller_within_two_round_trips_of_the_report() {
        let mut sim = mesh(30, 5);
        sim.run_for(Duration::from_secs(5));
        sim.take_log();
        let frozen = node_addr(7);
        sim.crash(7);
        sim.report_unresponsive(0, frozen);
        let suspected = sim
            .run_until_true(Duration::from_secs(10), |sim| sim.suspects(0, frozen))
            .expect("suspected");
        // foca's own probing takes a whole probe period (500 ms) to suspect a member.
        assert!(
            suspected <= Duration::from_millis(401),
            "suspected {suspected:?} after the report"
        );
        let down = super::until_all_see(&mut sim, frozen, Seen::Down, Duration::from_secs(10));
        assert!(
            down.is_some(),
            "the suspicion runs out and every member sees it down"
        );
    }

    #[test]
    fn reporting_a_live_member_kills_nobody() {
        let mut sim = mesh(20, 6);
        sim.run_for(Duration::from_secs(5));
        sim.take_log();
        for round in 0..20 {
            for observer in 0..20 {
                sim.report_unresponsive(observer, node_addr((observer + round + 1) % 20));
            }
            sim.run_for(Duration::from_millis(500));
        }
        sim.run_for(Duration::from_secs(5));
        let downs: Vec<_> = sim
            .take_log()
            .into_iter()
            .filter(|notice| notice.seen == Seen::Down)
            .collect();
        assert!(downs.is_empty(), "{downs:?}");
        assert!(sim.converged());
    }
}

mod starvation {
    //! Nodes starved of CPU: their timers fire late and what they receive waits.

    use std::time::Duration;

    use super::super::{Network, Seen, Simulation, node_addr};

    /// Runs a converged mesh of 20 in which nodes 3, 8 and 13 run only every `every` for 30 s,
    /// then 10 s more normally; returns how many times a member was declared down (every member
    /// runs throughout), and the starved nodes' highest local health score.
    pub(crate) fn starve(every: Duration, lifeguard: bool, seed: u64) -> (usize, u32) {
        let mut sim = Simulation::new(seed, Network::default(), Simulation::node_config());
        sim.set_lifeguard(lifeguard);
        sim.set_seeds(vec![node_addr(0)]);
        sim.add_converged(20);
        sim.run_for(Duration::from_secs(5));
        sim.take_log();
        let starved = [3, 8, 13];
        for node in starved {
            sim.stall(node, Some(every));
        }
        let mut score = 0;
        for _ in 0..30 {
            sim.run_for(Duration::from_secs(1));
            let now = starved.iter().map(|&node| sim.health(node)).max();
            score = score.max(now.unwrap_or(0));
        }
        for node in starved {
            sim.stall(node, None);
        }
        sim.run_for(Duration::from_secs(10));
        let downs = sim
            .take_log()
            .into_iter()
            .filter(|notice| notice.seen == Seen::Down)
            .count();
        assert!(sim.converged(), "every view holds the 20 members again");
        (downs, score)
    }

    #[test]
    fn starved_nodes_that_run_every_750_ms_are_declared_down_by_foca_alone() {
        // The scenario bites: without Lifeguard's additions a member is declared down.
        let (downs, score) = starve(Duration::from_millis(750), false, 1);
        assert!(downs > 0, "no false death to prevent");
        assert_eq!(score, 0);
    }

    #[test]
    fn starved_nodes_that_run_every_750_ms_to_1_2_s_kill_nobody() {
        for (every, seed) in [(750, 1), (750, 4), (1000, 2), (1200, 5)] {
            let (downs, score) = starve(Duration::from_millis(every), true, seed);
            assert_eq!(
                downs, 0,
                "every {every} ms, seed {seed}: members declared down"
            );
            assert!(
                score >= 4,
                "every {every} ms: the starved nodes noticed ({score})"
            );
        }
    }
}

mod identities {
    //! Identities of a real deployment's size: twenty long service names and ten tags.

    use std::time::Duration;

    use super::super::scenario::until_all_see;
    use super::super::{Network, Seen, Simulation, node_addr};

    #[test]
    fn members_with_twenty_services_and_ten_tags_join_gossip_and_detect_a_crash() {
        let mut sim = Simulation::new(9, Network::default(), Simulation::node_config());
        sim.set_services(20);
        sim.set_large_identities(10);
        sim.set_seeds((0..3).map(node_addr).collect());
        for _ in 0..20 {
            sim.add_node();
            sim.run_for(Duration::from_millis(10));
        }
        let converged = sim.run_until_true(Duration::from_secs(60), |sim| sim.converged());
        assert!(converged.is_some(), "20 large members did not converge");
        let limit = sim.packet_limit(0);
        assert!(limit > 4_000, "packets sized for the identities: {limit}");
        sim.network_mut().loss = 0.01;
        sim.run_for(Duration::from_secs(20));
        let downs = sim
            .take_log()
            .into_iter()
            .filter(|notice| notice.seen == Seen::Down)
            .count();
        assert_eq!(downs, 0, "live members declared down");
        sim.network_mut().loss = 0.0;
        sim.crash(11);
        let crash = until_all_see(&mut sim, node_addr(11), Seen::Down, Duration::from_secs(30));
        assert!(
            crash.is_some_and(|took| took <= Duration::from_secs(5)),
            "crash seen by all in {crash:?}"
        );
        let traffic = sim.traffic();
        assert!(traffic.large_packets > 0, "{traffic:?}");
        assert!(traffic.largest_packet as usize <= limit, "{traffic:?}");
    }
}

mod heard_suspicions {
    //! Suspicions a node only heard of are timed out too.

    use std::time::Duration;

    use foca::{Member, State};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::super::node_addr;
    use crate::membership::core::{Core, CoreTimer, swim_config};
    use crate::membership::identity::MemberId;

    fn core(index: usize) -> Core {
        let id = MemberId {
            name: format!("node-{index}"),
            generation: 1 + index as u64,
            ..MemberId::seed(node_addr(index), "sim")
        };
        Core::new(id, swim_config(), StdRng::seed_from_u64(index as u64))
    }

    #[test]
    fn a_suspicion_heard_from_others_and_never_refuted_ends_in_a_death() {
        let (mut a, b, c) = (core(0), core(1), core(2));
        let _ = a.know(vec![
            Member::alive(b.identity().clone()),
            Member::alive(c.identity().clone()),
        ]);
        // Another node suspected b and gossiped it; a's own probes did not.
        let effects = a.apply(vec![Member::new(b.identity().clone(), 0, State::Suspect)]);
        let timers: Vec<_> = effects
            .timers
            .iter()
            .filter(|(timer, _)| {
                matches!(
                    timer,
                    CoreTimer::Swim(foca::Timer::ChangeSuspectToDown { .. })
                )
            })
            .collect();
        assert_eq!(timers.len(), 1, "{:?}", effects.timers);
        assert_eq!(
            timers[0].1,
            Duration::from_secs(15),
            "ten suspicion timeouts"
        );
        assert!(
            effects.sends.iter().all(|(to, _)| *to != node_addr(1)),
            "no buddy ping"
        );
        // Heard again: no second timer.
        let again = a.apply(vec![Member::new(b.identity().clone(), 0, State::Suspect)]);
        assert!(again.timers.iter().all(|(timer, _)| !matches!(
            timer,
            CoreTimer::Swim(foca::Timer::ChangeSuspectToDown { .. })
        )));
        let timer = timers[0].0.clone();
        let effects = a.timer(timer, Duration::ZERO);
        assert_eq!(effects.downs.len(), 1);
        assert_eq!(effects.downs[0].addr, node_addr(1));
    }

    #[test]
    fn a_refuted_suspicion_heard_from_others_kills_nobody() {
        let (mut a, b) = (core(0), core(1));
        let _ = a.know(vec![Member::alive(b.identity().clone())]);
        let effects = a.apply(vec![Member::new(b.identity().clone(), 0, State::Suspect)]);
        let (timer, _) = effects
            .timers
            .into_iter()
            .find(|(timer, _)| {
                matches!(
                    timer,
                    CoreTimer::Swim(foca::Timer::ChangeSuspectToDown { .. })
                )
            })
            .expect("a timeout");
        // b refutes: alive at a newer incarnation.
        let _ = a.apply(vec![Member::new(b.identity().clone(), 1, State::Alive)]);
        let effects = a.timer(timer, Duration::ZERO);
        assert!(effects.downs.is_empty());
    }
}

mod joiner {
    //! What a joining node gossips of the seed's answer.

    use std::time::Duration;

    use foca::Member;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::super::scenario::until_all_see;
    use super::super::{Network, Seen, Simulation, node_addr};
    use crate::membership::core::{Core, swim_config};
    use crate::membership::identity::MemberId;

    /// When the joiner (node 0) started, since the epoch.
    const JOINER_START: Duration = Duration::from_secs(86_400);

    /// A member at `index` that started `ago` before the joiner.
    fn started(index: usize, ago: Duration) -> MemberId {
        let start = JOINER_START - ago;
        MemberId {
            name: format!("node-{index}"),
            generation: start.as_micros() as u64,
            ..MemberId::seed(node_addr(index), "sim")
        }
    }

    #[test]
    fn a_joiner_gossips_on_only_the_members_that_started_shortly_before_it() {
        let mut joiner = Core::new(
            started(0, Duration::ZERO),
            swim_config(),
            StdRng::seed_from_u64(1),
        );
        // 20 members up for ten minutes or more, 5 started in the last 30 s (a mesh starting
        // together), and 2 that started after the joiner.
        let mut answer: Vec<Member<MemberId>> = (1..=20)
            .map(|index| Member::alive(started(index, Duration::from_secs(600 + index as u64))))
            .collect();
        answer.extend((21..=25).map(|index| {
            Member::alive(started(index, Duration::from_secs(index as u64 - 20) * 5))
        }));
        answer.extend((26..=27).map(|index| {
            Member::alive(MemberId {
                generation: (JOINER_START + Duration::from_secs(1)).as_micros() as u64,
                ..started(index, Duration::ZERO)
            })
        }));
        let effects = joiner.apply(answer);
        assert_eq!(joiner.member_count(), 28, "every member is learnt");
        assert_eq!(effects.ups.len(), 27);
        assert_eq!(joiner.backlog(), 7, "only the recent ones are gossiped on");

        // A node that already knows members gossips what a peer's list teaches it, however
        // old: the peer's side of the mesh knew it, its own side may not (a healed partition).
        let older = Member::alive(started(30, Duration::from_secs(7200)));
        let _ = joiner.apply(vec![older]);
        assert_eq!(joiner.member_count(), 29);
        assert_eq!(joiner.backlog(), 8);
    }

    #[test]
    fn a_joiner_into_a_mesh_of_100_sends_little_and_is_seen_by_all_within_a_second() {
        let mut sim = Simulation::new(1, Network::default(), Simulation::node_config());
        sim.set_seeds((0..3).map(node_addr).collect());
        sim.add_converged(100);
        sim.run_for(Duration::from_secs(5));
        sim.take_log();
        let joiner = sim.add_node();
        let start = sim.now();
        let join = until_all_see(
            &mut sim,
            node_addr(joiner),
            Seen::Up,
            Duration::from_secs(10),
        )
        .expect("every member sees the joiner");
        assert!(
            join <= Duration::from_secs(1),
            "join seen by all in {join:?}"
        );
        sim.run_until(start + Duration::from_secs(10));
        // Its probes and the answers to others': 1.7 KB/s. Gossiping on the seed's 100 members
        // 12 times each, it sent 13.4 KB/s over these 10 s.
        let per_second = sim.sent_bytes(joiner) as f64 / 10.0;
        assert!(per_second < 4_000.0, "the joiner sent {per_second} B/s");
        assert!(sim.converged());
    }

    #[test]
    fn a_mesh_of_50_started_at_once_converges_within_10_s() {
        // Joiners gossip on the members of the seed's answer that started in the last 30 s:
        // the news of nodes that join during the bootstrap still spreads. Gossiping none of
        // the answer, the same mesh took 19.1 s (and 100 nodes 47 s instead of 12.4 s).
        let (_, took) = super::super::scenario::bootstrap(50, &Default::default());
        let took = took.expect("converged");
        assert!(took <= Duration::from_secs(10), "converged in {took:?}");
    }
}
