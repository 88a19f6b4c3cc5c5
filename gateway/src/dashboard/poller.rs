//! Asks every member in the gateway's view for its `meshrpc.node/stats`, at most
//! [`CONCURRENCY`] at a time with a [`DEADLINE`] each, records the answers in the
//! dashboard's history and forgets the members that left the view.

use std::sync::Arc;
use std::time::Duration;

use meshrpc::node_service::{NODE_SPEC, StatsReply};
use meshrpc::{CallOptions, MethodSpec, Node};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::Dashboard;

/// Stats asks in flight at once.
pub const CONCURRENCY: usize = 16;

/// How long one member may take to answer.
pub const DEADLINE: Duration = Duration::from_millis(800);

fn stats_method() -> &'static MethodSpec {
    NODE_SPEC
        .methods
        .iter()
        .find(|method| method.name == "stats")
        .unwrap_or(&NODE_SPEC.methods[0])
}

/// Polls once: every member in view (the gateway's own node from its registry, without a
/// call), then drops the members no longer in view (and notes them as departed).
pub async fn poll_once(node: &Node, dashboard: &Dashboard) {
    let view = node.view();
    let limit = Arc::new(Semaphore::new(CONCURRENCY));
    let mut asks = JoinSet::new();
    for member in view.members() {
        let addr = member.id.addr;
        if member.local {
            let methods = node.stats();
            dashboard.with_history(|history| history.record(addr, Instant::now(), methods));
            continue;
        }
        let channel = node.channel_to(addr);
        let limit = limit.clone();
        asks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let reply: Result<StatsReply, meshrpc::Status> = channel
                .unary(stats_method(), &(), &CallOptions::new().timeout(DEADLINE))
                .await;
            (addr, Instant::now(), reply)
        });
    }
    while let Some(joined) = asks.join_next().await {
        let Ok((addr, at, reply)) = joined else {
            continue;
        };
        dashboard.with_history(|history| match reply {
            Ok(reply) => history.record(addr, at, reply.methods),
            Err(status) => history.record_failure(addr, &status.to_string()),
        });
    }
    dashboard.observe(&node.view(), Instant::now());
}

/// Polls in the background until the handle is aborted: every
/// [`WATCHED_INTERVAL`](super::WATCHED_INTERVAL) while watched, else every
/// [`IDLE_INTERVAL`](super::IDLE_INTERVAL) or as soon as someone starts watching.
pub fn spawn(node: Node, dashboard: Arc<Dashboard>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let started = Instant::now();
            poll_once(&node, &dashboard).await;
            let next = started + dashboard.interval(Instant::now());
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = dashboard.woken() => {}
            }
        }
    })
}
