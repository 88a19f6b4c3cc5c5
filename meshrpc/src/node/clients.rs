//! The client side of a node: [`ClientFactory`] builds the client stack of each service
//! (retries over a balancer over the members that publish it), and [`LateChannel`] binds a
//! client made from a builder to its node once the node started.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tower::retry::Retry;

use crate::channel::Channel;
use crate::membership::Membership;
use crate::resilience::balance::{Balance, BalanceState, Strategy};
use crate::resilience::breaker::BreakerConfig;
use crate::resilience::retry::RetryPolicy;
use crate::transport::connections::Connections;

/// Builds balanced, retried channels; shared by a node and the clients made from its builder.
#[derive(Debug)]
pub(crate) struct ClientFactory {
    pub(crate) membership: Membership,
    pub(crate) connections: Connections,
    pub(crate) strategy: Strategy,
    pub(crate) breaker: BreakerConfig,
    pub(crate) retry: RetryPolicy,
    pub(crate) max_message_size: usize,
    pub(crate) states: Mutex<HashMap<String, Arc<BalanceState>>>,
}

impl ClientFactory {
    /// The balancing state shared by every client of `key` (a service, or its HTTP handlers).
    pub(crate) fn state(&self, key: &str) -> Arc<BalanceState> {
        crate::lock(&self.states)
            .entry(key.to_owned())
            .or_insert_with(|| Arc::new(BalanceState::new(self.breaker)))
            .clone()
    }

    pub(crate) fn channel(&self, service: &str, schema_hash: Option<u64>) -> Channel {
        let state = self.state(service);
        let balance = Balance::new(
            self.membership.clone(),
            self.connections.clone(),
            self.strategy,
            schema_hash,
            self.max_message_size,
            state,
        );
        Channel::new(Retry::new(self.retry.clone(), balance))
    }
}

/// The channel of a client made before its node started: bound on first use after start.
#[derive(Clone)]
pub(crate) struct LateChannel {
    pub(crate) clients: Arc<OnceLock<Arc<ClientFactory>>>,
    pub(crate) service: &'static str,
    pub(crate) schema_hash: u64,
    pub(crate) channel: Arc<OnceLock<Channel>>,
}

impl tower::Service<crate::channel::Call> for LateChannel {
    type Response = crate::Body;
    type Error = crate::Status;
    type Future = crate::BoxFuture<'static, Result<crate::Body, crate::Status>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), crate::Status>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: crate::channel::Call) -> Self::Future {
        let Some(clients) = self.clients.get() else {
            let status = crate::Status::refused(
                crate::Code::Unavailable,
                format!(
                    "the node of this `{}` client has not started yet",
                    self.service
                ),
            );
            return Box::pin(std::future::ready(Err(status)));
        };
        let channel = self
            .channel
            .get_or_init(|| clients.channel(self.service, Some(self.schema_hash)))
            .service();
        Box::pin(tower::ServiceExt::oneshot(channel, call))
    }
}
