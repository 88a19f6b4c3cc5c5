//! `meshctl ping <member>`: round-trip times of `meshrpc.node/ping` to one member, found by
//! name or address. The first sample includes opening the QUIC connection; it is reported but
//! left out of the summary.

use std::net::SocketAddr;
use std::time::Duration;

use meshrpc::node_service::{MemberSummary, PingReply};
use meshrpc::tokio::time::Instant;
use serde_json::json;

use crate::connect::Mesh;
use crate::failure::{Failure, print_json};

/// Flags of `meshctl ping`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct PingArgs {
    /// The member's name or address (`greeter-1`, `127.0.0.1:40123`).
    member: String,

    /// How many pings to send after the first (which opens the connection).
    #[arg(short = 'c', long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    count: u32,

    /// Time between pings.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration, value_name = "DURATION")]
    interval: Duration,
}

/// The members `wanted` names: by address, else by name.
pub(crate) fn find<'a>(members: &'a [MemberSummary], wanted: &str) -> Vec<&'a MemberSummary> {
    let by_addr: Vec<&MemberSummary> = members.iter().filter(|m| m.addr == wanted).collect();
    if !by_addr.is_empty() {
        return by_addr;
    }
    members.iter().filter(|m| m.name == wanted).collect()
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000.0
}

/// Pings the member and prints the round-trip times.
pub(crate) async fn run(mesh: &Mesh, args: PingArgs, json: bool) -> Result<(), Failure> {
    let found = find(&mesh.members, &args.member);
    let member = match found.as_slice() {
        [one] => *one,
        [] => {
            // An address not in the view is still worth a ping.
            if let Ok(addr) = args.member.parse::<SocketAddr>() {
                return ping(mesh, &args, addr, &args.member, json).await;
            }
            let known: Vec<String> = mesh
                .members
                .iter()
                .map(|m| format!("{} ({})", m.name, m.addr))
                .collect();
            return Err(Failure::input(format!(
                "no member is called or listens at `{}`; members: {}",
                args.member,
                known.join(", ")
            )));
        }
        several => {
            let addrs: Vec<&str> = several.iter().map(|m| m.addr.as_str()).collect();
            return Err(Failure::input(format!(
                "{} members are called `{}`; ping one by address: {}",
                several.len(),
                args.member,
                addrs.join(", ")
            )));
        }
    };
    let addr: SocketAddr = member.addr.parse().map_err(|_| {
        Failure::mesh(format!(
            "member `{}` has an unreadable address `{}`",
            member.name, member.addr
        ))
    })?;
    ping(mesh, &args, addr, &member.name, json).await
}

async fn ping(
    mesh: &Mesh,
    args: &PingArgs,
    addr: SocketAddr,
    label: &str,
    json: bool,
) -> Result<(), Failure> {
    let mut first = None;
    let mut samples: Vec<Duration> = Vec::new();
    let mut name = label.to_owned();
    for round in 0..=args.count {
        if round > 1 {
            meshrpc::tokio::time::sleep(args.interval).await;
        }
        let sent = Instant::now();
        let reply: PingReply = mesh.ask(addr, "ping").await.map_err(|status| {
            Failure::status(format!(
                "{label} ({addr}) did not answer meshrpc.node/ping: {status}"
            ))
        })?;
        let elapsed = sent.elapsed();
        name = reply.name;
        if round == 0 {
            first = Some(elapsed);
            if !json {
                crate::failure::outln!(
                    "meshrpc.node/ping {name} ({addr}): connect + first ping {:.3} ms",
                    millis(elapsed)
                );
            }
            continue;
        }
        samples.push(elapsed);
        if !json {
            crate::failure::outln!(
                "meshrpc.node/ping {name} ({addr}): seq={round} time={:.3} ms",
                millis(elapsed)
            );
        }
    }
    let min = samples.iter().min().copied().unwrap_or_default();
    let max = samples.iter().max().copied().unwrap_or_default();
    let avg = samples.iter().sum::<Duration>() / u32::try_from(samples.len().max(1)).unwrap_or(1);
    if json {
        return print_json(&json!({
            "name": name,
            "addr": addr.to_string(),
            "first_ms": first.map(millis),
            "samples_ms": samples.iter().copied().map(millis).collect::<Vec<_>>(),
            "min_ms": millis(min),
            "avg_ms": millis(avg),
            "max_ms": millis(max),
        }));
    }
    crate::failure::outln!(
        "{} pings: min {:.3} ms, avg {:.3} ms, max {:.3} ms",
        samples.len(),
        millis(min),
        millis(avg),
        millis(max)
    );
    Ok(())
}
