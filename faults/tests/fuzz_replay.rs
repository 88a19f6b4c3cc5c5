//! The cargo-fuzz targets of `fuzz/` replayed on stable Rust: each target's check over its
//! seed corpus (`fuzz/seeds/<target>/`, taken from real files and real gossip) and over
//! deterministic mutations of it. `FAULTS_FUZZ_SECS=<n>` keeps mutating for `n` seconds per
//! target instead of a fixed count (`cargo xtask fuzz <target> --time <n>` sets it when
//! cargo-fuzz is not installed).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use faults::fuzzing::mutate::{XorShift, mutate};
use faults::fuzzing::{manifest, membership, transcoder};

/// Mutated inputs per target when no time is given.
const ITERATIONS: usize = 3_000;

fn seed_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target)
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = seed_dir(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
        .map(|entry| entry.expect("an entry").path())
        .collect();
    paths.sort();
    let seeds: Vec<Vec<u8>> = paths
        .iter()
        .map(|path| std::fs::read(path).expect("a seed"))
        .collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

/// Runs `check` over the seeds, then over mutations of them for a count or a time.
fn replay(target: &str, seeds: &[Vec<u8>], mut check: impl FnMut(&[u8])) -> usize {
    for seed in seeds {
        check(seed);
    }
    let budget = std::env::var("FAULTS_FUZZ_SECS")
        .ok()
        .and_then(|secs| secs.parse::<u64>().ok())
        .map(Duration::from_secs);
    let started = Instant::now();
    let mut rng = XorShift::new(0x6661_756c_7473);
    let mut iterations = 0;
    loop {
        match budget {
            Some(budget) if started.elapsed() >= budget => break,
            None if iterations >= ITERATIONS => break,
            _ => {}
        }
        let mut input = seeds[iterations % seeds.len()].clone();
        mutate(&mut rng, &mut input, seeds);
        // Printed only if the check panics, so the input can be replayed.
        let shown = format!("{target} iteration {iterations}: {input:02x?}");
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&input)));
        if let Err(panic) = result {
            eprintln!("{shown}");
            std::panic::resume_unwind(panic);
        }
        iterations += 1;
    }
    eprintln!(
        "{target}: {} seeds and {iterations} mutations checked in {:.1?}",
        seeds.len(),
        started.elapsed()
    );
    iterations
}

#[test]
fn membership_decoder_seeds_are_real_gossip_and_mutations_never_break_the_decoder() {
    let seeds = seeds("membership_decoder");
    let outcomes: Vec<membership::Outcome> =
        seeds.iter().map(|seed| membership::check(seed)).collect();
    assert!(
        outcomes.iter().any(|o| o.header && o.accepted),
        "a seed is a datagram foca takes"
    );
    assert!(
        outcomes.iter().any(|o| o.member_list),
        "a seed is a join exchange's member list"
    );
    let (mut headers, mut accepted) = (0, 0);
    replay("membership_decoder", &seeds, |input| {
        let outcome = membership::check(input);
        headers += usize::from(outcome.header);
        accepted += usize::from(outcome.accepted);
    });
    assert!(
        headers > 100 && accepted > 10,
        "mutations reach the decoders: {headers} {accepted}"
    );
}

#[test]
fn manifest_parser_seeds_are_the_repositorys_manifests_and_mutations_never_panic() {
    let seeds = seeds("manifest_parser");
    assert!(
        seeds
            .iter()
            .any(|seed| matches!(manifest::check(seed), manifest::Outcome::Generated(_))),
        "some seed generates code"
    );
    let (mut generated, mut refused) = (0, 0);
    replay("manifest_parser", &seeds, |input| {
        match manifest::check(input) {
            manifest::Outcome::Generated(_) => generated += 1,
            manifest::Outcome::Refused => refused += 1,
            manifest::Outcome::NotText => {}
        }
    });
    assert!(
        generated > 50 && refused > 50,
        "{generated} generated, {refused} refused"
    );
}

#[test]
fn json_transcoder_seeds_are_real_requests_and_mutations_never_break_the_transcoder() {
    let seeds = seeds("json_transcoder");
    let descriptor = transcoder::descriptor();
    assert!(
        seeds
            .iter()
            .any(|seed| transcoder::check(&descriptor, seed).request)
    );
    let (mut requests, mut responses) = (0, 0);
    replay("json_transcoder", &seeds, |input| {
        let outcome = transcoder::check(&descriptor, input);
        requests += usize::from(outcome.request);
        responses += usize::from(outcome.response);
    });
    assert!(requests > 20, "{requests} accepted requests");
    let _ = responses;
}

/// The manifests of this repository are the manifest seeds; rewrite them with
/// `FAULTS_WRITE_SEEDS=1` after adding one.
#[test]
fn the_manifest_seeds_are_the_repositorys_manifests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let sources = [
        ("greeter.toml", "services/greeter/services.toml"),
        ("concierge.toml", "services/concierge/services.toml"),
        ("bench.toml", "bench/services.toml"),
        (
            "shapes.toml",
            "meshrpc-build/scenarios/shapes/services.toml",
        ),
        ("split.toml", "meshrpc-build/scenarios/split/services.toml"),
        (
            "fixtures_sample.toml",
            "meshrpc-build/tests/fixtures_sample.toml",
        ),
    ];
    let write = std::env::var_os("FAULTS_WRITE_SEEDS").is_some();
    for (seed, source) in sources {
        let text = std::fs::read(root.join(source)).expect(source);
        let path = seed_dir("manifest_parser").join(seed);
        if write {
            std::fs::create_dir_all(seed_dir("manifest_parser")).expect("seed dir");
            std::fs::write(&path, &text).expect("seed written");
        }
        let stored = std::fs::read(&path).unwrap_or_default();
        assert!(
            stored == text,
            "{} differs from {source} (FAULTS_WRITE_SEEDS=1)",
            path.display()
        );
    }
}

/// Gossip seeds: datagrams real foca instances send each other with the node's codec, all
/// addressed to the fuzzed node's identity, and a join exchange's member list. Rewritten with
/// `FAULTS_WRITE_SEEDS=1`; checked to decode otherwise.
#[test]
fn the_membership_seeds_are_gossip_of_real_foca_instances() {
    use foca::AccumulatingRuntime;
    let local = membership::local();
    let peers = [
        membership::member(
            "10.77.0.2:11999",
            "greeter",
            1_700_000_000_000_001,
            &[("greeter", 0x1234_5678_9abc_def0)],
        ),
        membership::member(
            "10.77.0.3:11999",
            "concierge",
            1_700_000_000_000_002,
            &[("concierge", 7), ("greeter", 9)],
        ),
    ];
    let mut nodes = vec![membership::swim(local.clone(), 11)];
    nodes.extend(
        peers
            .iter()
            .enumerate()
            .map(|(i, id)| membership::swim(id.clone(), 12 + i as u64)),
    );
    let mut to_local: Vec<Vec<u8>> = Vec::new();
    let mut runtime = AccumulatingRuntime::new();
    // Both peers announce themselves to the local node; everyone answers for a few rounds.
    for peer in nodes.iter_mut().skip(1) {
        peer.announce(local.clone(), &mut runtime)
            .expect("announce");
    }
    for _round in 0..4 {
        let mut outgoing = Vec::new();
        while let Some((to, data)) = runtime.to_send() {
            outgoing.push((to, data));
        }
        while runtime.to_schedule().is_some() {}
        while runtime.to_notify().is_some() {}
        for (to, data) in outgoing {
            if to.addr == local.addr {
                to_local.push(data.to_vec());
            }
            if let Some(node) = nodes
                .iter_mut()
                .find(|node| node.identity().addr == to.addr)
            {
                let _ = node.handle_data(&data, &mut runtime);
            }
        }
        for node in &mut nodes {
            let _ = node.gossip(&mut runtime);
        }
    }
    assert!(
        to_local.len() >= 3,
        "only {} datagrams reached the local node",
        to_local.len()
    );
    let members: Vec<foca::Member<meshrpc::membership::MemberId>> =
        nodes[0].iter_membership_state().cloned().collect();
    assert_eq!(members.len(), 2);
    let mut generated: Vec<Vec<u8>> = to_local;
    generated.push(rmp_serde::to_vec_named(&members).expect("members encode"));
    let dir = seed_dir("membership_decoder");
    if std::env::var_os("FAULTS_WRITE_SEEDS").is_some() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("seed dir");
        for (index, seed) in generated.iter().enumerate() {
            std::fs::write(dir.join(format!("gossip-{index:02}")), seed).expect("seed written");
        }
    }
    for seed in seeds("membership_decoder") {
        membership::check(&seed);
    }
}

/// JSON seeds: the generic route's requests from the README and the gateway's tests, each
/// preceded by the byte that picks the method (0: greet, 1: send_postcard).
#[test]
fn the_json_seeds_are_the_generic_routes_requests() {
    let requests: [(&str, u8, &str); 6] = [
        ("greet", 0, r#"{"name": "Max"}"#),
        ("greet-empty", 0, ""),
        ("greet-wrong-type", 0, r#"{"name": ["Max"]}"#),
        ("greet-unicode", 0, r#"{"name": "Zoë \u00e9 \ud83d\ude00"}"#),
        (
            "postcard",
            1,
            r#"{"card": {"picture_url": "", "address": "World", "recipient": "Max", "message": "Hello"}}"#,
        ),
        (
            "postcard-extra-field",
            1,
            r#"{"card": {"recipient": "Max", "stamp": 1}}"#,
        ),
    ];
    let dir = seed_dir("json_transcoder");
    let write = std::env::var_os("FAULTS_WRITE_SEEDS").is_some();
    for (name, selector, body) in requests {
        let mut seed = vec![selector];
        seed.extend_from_slice(body.as_bytes());
        if write {
            std::fs::create_dir_all(&dir).expect("seed dir");
            std::fs::write(dir.join(name), &seed).expect("seed written");
        }
        assert_eq!(
            std::fs::read(dir.join(name)).unwrap_or_default(),
            seed,
            "{name}"
        );
    }
    // A MessagePack response, for the response direction.
    let reply = [
        vec![0u8],
        rmp_serde::to_vec_named(&serde_json::json!({"message": "Hello, Max"})).expect("encodes"),
    ]
    .concat();
    if write {
        std::fs::write(dir.join("greet-reply-msgpack"), &reply).expect("seed written");
    }
    assert_eq!(
        std::fs::read(dir.join("greet-reply-msgpack")).unwrap_or_default(),
        reply
    );
}
