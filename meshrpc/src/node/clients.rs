//! The client side of a node: [`ClientFactory`] builds the client stack of each service
//! ([`Attempts`] over a [`Balance`] over per-endpoint services; see
//! [`resilience`](crate::resilience)) and the `HttpClient` of its legacy HTTP handlers, and
//! [`LateChannel`] binds a client made from a builder to its node once the node started.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use crate::channel::Channel;
#[cfg(feature = "http-tunnel")]
use crate::http_tunnel::HttpClient;
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::resilience::attempts::{Attempts, Tail, TailConfig};
use crate::resilience::balance::{Balance, BalanceState, Strategy};
use crate::resilience::breaker::{BreakerConfig, Ejection};
use crate::resilience::retry::RetryPolicy;
use crate::transport::connections::Connections;

/// What a client stack's shared state belongs to: a service's RPCs or its HTTP handlers (the
/// two may have different members, so they are balanced apart).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum ClientKey {
    /// The RPCs of a service.
    Rpc(String),
    /// The legacy HTTP handlers published under a service's name.
    #[cfg_attr(not(feature = "http-tunnel"), allow(dead_code))]
    Http(String),
}

impl ClientKey {
    fn service(&self) -> &str {
        match self {
            ClientKey::Rpc(service) | ClientKey::Http(service) => service,
        }
    }
}

/// The state shared by every client of one [`ClientKey`].
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) balance: Arc<BalanceState>,
    pub(crate) tail: Arc<Tail>,
}

/// Builds balanced, retried channels; shared by a node and the clients made from its builder.
#[derive(Debug)]
pub(crate) struct ClientFactory {
    pub(crate) membership: Membership,
    pub(crate) connections: Connections,
    pub(crate) strategy: Strategy,
    pub(crate) breaker: BreakerConfig,
    pub(crate) retry: RetryPolicy,
    pub(crate) tail: TailConfig,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) max_message_size: usize,
    pub(crate) states: Mutex<HashMap<ClientKey, Arc<Shared>>>,
}

impl ClientFactory {
    /// The state shared by every client of `key`: made on first use, its breakers counting
    /// ejections and reporting replicas ejected for timeouts to the membership.
    pub(crate) fn shared(&self, key: ClientKey) -> Arc<Shared> {
        let mut states = crate::lock(&self.states);
        if let Some(shared) = states.get(&key) {
            return shared.clone();
        }
        let balance = Arc::new(BalanceState::new(self.breaker));
        let service = key.service().to_owned();
        let metrics = self.metrics.clone();
        let membership = self.membership.clone();
        balance.breakers().on_eject(Arc::new(move |addr, ejection| {
            let timeouts = ejection == Ejection::Timeouts;
            metrics.client_tail().ejection(&service, timeouts);
            tracing::warn!(%addr, service = %service, ?ejection, "replica ejected");
            if timeouts {
                report_unresponsive(&membership, addr);
            }
        }));
        let tail = Arc::new(Tail::new(self.tail, self.metrics.client_tail().clone()));
        let shared = Arc::new(Shared { balance, tail });
        states.insert(key, shared.clone());
        shared
    }

    /// A channel to the members publishing `service` (with exactly `schema_hash`, if given).
    pub(crate) fn channel(&self, service: &str, schema_hash: Option<u64>) -> Channel {
        let shared = self.shared(ClientKey::Rpc(service.to_owned()));
        let balance = Balance::new(
            self.membership.clone(),
            self.connections.clone(),
            self.strategy,
            schema_hash,
            self.max_message_size,
            shared.balance.clone(),
        );
        Channel::new(Attempts::new(
            balance,
            self.retry.clone(),
            shared.tail.clone(),
        ))
    }

    /// A client of the legacy HTTP handlers published under `service`.
    #[cfg(feature = "http-tunnel")]
    pub(crate) fn http_client(&self, service: &str) -> HttpClient {
        let shared = self.shared(ClientKey::Http(service.to_owned()));
        HttpClient::new(
            service,
            self.membership.clone(),
            self.connections.clone(),
            self.strategy,
            self.retry.clone(),
            self.tail,
            shared.balance.clone(),
        )
    }
}

/// Tells the membership that the member at `addr` stopped answering calls (its attempts
/// timed out several times in a row), so that it probes and suspects that member at once
/// rather than at its next round (at most once per member per cool-down).
fn report_unresponsive(membership: &Membership, addr: SocketAddr) {
    membership.report_unresponsive(addr);
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
