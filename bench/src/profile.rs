//! `bench profile`: one system's server and client in one process on one thread, a fixed
//! number of calls, for a profiler.
//!
//! Under `valgrind --tool=callgrind` (or `perf record`) it shows where each call's
//! instructions go on both sides at once. Instruction counts do not depend on what else the
//! machine is doing, so two builds, or two systems, can be compared on a busy machine, which
//! timings cannot: bench/README.md ("Where a call's instructions go") says how. The figures it
//! prints itself (calls/s) are timings and only as good as the machine is quiet.
//!
//! Besides the systems' echo calls it profiles the gateway scenario's two sides: `gateway`
//! (HTTP GETs of the greet route through the gateway to a greeter, three parts in one process)
//! and `greet-axum` (the same GETs answered directly by axum); with `--stream`, one server
//! stream read to its end instead of calls.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;

use crate::systems::{self, BenchClient, Result, System, Target, Tls, greet};

/// What `bench profile` runs.
#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// A system, or `gateway` / `greet-axum` (GETs of the greet route).
    #[arg(default_value = "meshrpc")]
    target: Target,
    /// Calls measured, after as many again to warm up.
    #[arg(long, default_value_t = 20_000)]
    calls: u64,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
    /// Payload size in bytes (echo calls, stream messages).
    #[arg(long, default_value_t = 16)]
    payload: usize,
    /// Instead of calls: one server stream of `--calls` messages of `--payload` bytes, read to
    /// its end (after one such stream to warm up); with `--in-flight K`, K streams at once on
    /// the connection, each of an equal share. Systems with server streaming only.
    #[arg(long)]
    stream: bool,
}

/// Serves `options.target` and calls it, all on this thread.
pub(crate) fn run(options: &Options) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("meshrpc-bench-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let tls = Tls::create(&dir)?;
    let runtime = crate::runtime()?;
    let result = runtime.block_on(profile(options, &tls));
    drop(runtime);
    let _ = std::fs::remove_dir_all(&dir);
    let elapsed = result?;
    let rate = options.calls as f64 / elapsed.as_secs_f64();
    let micros = elapsed.as_secs_f64() * 1e6 / options.calls.max(1) as f64;
    if options.stream {
        println!(
            "{}: {} messages of {} B on {} stream(s) at once: {rate:.0} messages/s, {micros:.2} µs per message (every side, one thread)",
            options.target,
            options.calls,
            options.payload,
            options.in_flight.max(1),
        );
    } else {
        println!(
            "{}: {} calls, {} in flight: {rate:.0} calls/s, {micros:.1} µs per call (every side, one thread)",
            options.target, options.calls, options.in_flight,
        );
    }
    Ok(())
}

async fn profile(options: &Options, tls: &Tls) -> Result<Duration> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let system = match options.target {
        Target::System(system) => system,
        Target::Gateway => {
            let (node, gateway) = greet::start_gateway(loopback, tls).await?;
            let _greeter = greet::start_greeter(loopback, node.local_addr(), tls).await?;
            let client = greet::Client::connect(gateway.local_addr()).await?;
            return timed(options, || client.get()).await;
        }
        Target::Direct => {
            let addr = serve(Target::Direct, tls).await?;
            let client = greet::Client::connect(addr).await?;
            return timed(options, || client.get()).await;
        }
        Target::Greeter => return Err("profile the greeter through `gateway`".into()),
    };
    let addr = serve(system.into(), tls).await?;
    match system {
        System::Meshrpc => echo::<systems::meshrpc_node::Client>(addr, tls, options).await,
        System::Quinn => echo::<systems::quinn_raw::Client>(addr, tls, options).await,
        System::TonicTls => echo::<systems::tonic_grpc::Client<true>>(addr, tls, options).await,
        System::TonicH2c => echo::<systems::tonic_grpc::Client<false>>(addr, tls, options).await,
        System::Tarpc => echo::<systems::tarpc_tcp::Client>(addr, tls, options).await,
        System::HttpJson => echo::<systems::http_json::Client>(addr, tls, options).await,
    }
}

/// Starts `target`'s server on a task of this runtime; its address once it listens.
async fn serve(target: Target, tls: &Tls) -> Result<SocketAddr> {
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let rendezvous: systems::Rendezvous = Box::new(move |addr| {
        let _ = addr_tx.send(addr);
        Ok(None)
    });
    let listen = SocketAddr::from(([127, 0, 0, 1], 0));
    tokio::spawn(systems::serve(
        target,
        listen,
        None,
        tls.clone(),
        rendezvous,
    ));
    Ok(addr_rx
        .await
        .map_err(|_| "the server stopped before it listened")?)
}

async fn echo<C: BenchClient>(addr: SocketAddr, tls: &Tls, options: &Options) -> Result<Duration> {
    let client = C::connect(addr, tls).await?;
    if options.stream {
        drain(&client, options).await?;
        let started = Instant::now();
        drain(&client, options).await?;
        return Ok(started.elapsed());
    }
    let payload = Bytes::from(vec![7u8; options.payload]);
    timed(options, || async {
        let echoed = client.echo(payload.clone(), 0).await?;
        if echoed.len() != payload.len() {
            return Err(
                format!("echo returned {} of {} bytes", echoed.len(), payload.len()).into(),
            );
        }
        Ok(())
    })
    .await
}

/// Reads `options.calls` messages to their end: one server stream, or `--in-flight` streams at
/// once on the connection, each of an equal share.
async fn drain<C: BenchClient>(client: &C, options: &Options) -> Result<()> {
    let size = u32::try_from(options.payload)?;
    let streams = options.in_flight.max(1) as u64;
    let share = options.calls / streams;
    futures::future::try_join_all((0..streams).map(|_| drain_one(client, size, share))).await?;
    Ok(())
}

/// Reads one server stream of `count` messages of `size` bytes to its end.
async fn drain_one<C: BenchClient>(client: &C, size: u32, count: u64) -> Result<()> {
    let mut stream = client.server_stream(size, count).await?;
    let mut messages = 0;
    while let Some(received) = stream.next().await {
        messages += received?.messages;
    }
    if messages != count {
        return Err(format!("the stream ended after {messages} of {count} messages").into());
    }
    Ok(())
}

/// Warms up with `options.calls` calls of `call`, then times as many.
async fn timed<F, Fut>(options: &Options, call: F) -> Result<Duration>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    batch(options, &call).await?;
    let started = Instant::now();
    batch(options, &call).await?;
    Ok(started.elapsed())
}

async fn batch<F, Fut>(options: &Options, call: &F) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut calls = futures::stream::iter(0..options.calls)
        .map(|_| call())
        .buffer_unordered(options.in_flight.max(1));
    while let Some(result) = calls.next().await {
        result?;
    }
    Ok(())
}
