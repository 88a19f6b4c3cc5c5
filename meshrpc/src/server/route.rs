//! The bottom of the server stack: [`Route`] hands a call to the published service its method
//! belongs to, inside the call's [`CallContext`], and [`Handlers`] puts the
//! layers a user added (`NodeBuilder::layer`) above it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::task::futures::TaskLocalFuture;
use tower::Service;
use tower::util::BoxCloneSyncService;

use super::IncomingCall;
use crate::context::CallContext;
use crate::service::{BoxFuture, Dispatch};
use crate::status::{Code, Status};
use crate::streaming::Body;

/// The server stack below the layers a user added, boxed: what `NodeBuilder::layer` wraps.
pub type BoxServerService = BoxCloneSyncService<IncomingCall, Body, Status>;

/// The services a node publishes, by name. A node publishes a handful, so a scan of their
/// names is faster than hashing the name of every call.
#[derive(Clone)]
pub(crate) struct Published(Arc<[(&'static str, Arc<dyn Dispatch>)]>);

impl Published {
    /// `services` by name; of two with the same name, the later is published.
    pub(crate) fn new(services: &[Arc<dyn Dispatch>]) -> Published {
        let mut published: Vec<(&'static str, Arc<dyn Dispatch>)> = Vec::new();
        for service in services {
            let name = service.spec().name;
            published.retain(|(published, _)| *published != name);
            published.push((name, service.clone()));
        }
        published.sort_by_key(|(name, _)| *name);
        Published(published.into())
    }

    /// The service named `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&Arc<dyn Dispatch>> {
        self.0
            .iter()
            .find(|(published, _)| *published == name)
            .map(|(_, service)| service)
    }

    /// The names of the services, in order.
    pub(crate) fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.iter().map(|(name, _)| *name)
    }

    /// The services, in the order of their names.
    pub(crate) fn services(&self) -> impl Iterator<Item = &Arc<dyn Dispatch>> {
        self.0.iter().map(|(_, service)| service)
    }
}

/// Runs each call on the published service its method belongs to.
#[derive(Clone)]
pub struct Route {
    services: Published,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("services", &self.services.names().collect::<Vec<_>>())
            .finish()
    }
}

impl Route {
    /// Routes to `services`.
    pub fn new(services: &[Arc<dyn Dispatch>]) -> Route {
        Route {
            services: Published::new(services),
        }
    }
}

impl Service<IncomingCall> for Route {
    type Response = Body;
    type Error = Status;
    type Future = Routed;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: IncomingCall) -> Routed {
        let method = call.method;
        // The connection resolved the method against these services; a layer may have
        // changed it since, to a method of a service this node does not publish.
        let Some(service) = self.services.get(method.service) else {
            return Routed {
                state: RoutedState::Refused {
                    status: Some(Box::new(Status::refused(
                        Code::Unimplemented,
                        format!("no service `{}` on this node", method.service),
                    ))),
                },
            };
        };
        let dispatch = service.dispatch(method, call.request, call.stream);
        Routed {
            state: RoutedState::Running {
                handler: call.context.scope_inline(dispatch),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of a [`Route`]d call.
    pub struct Routed {
        #[pin]
        state: RoutedState,
    }
}

pin_project_lite::pin_project! {
    #[project = RoutedProj]
    enum RoutedState {
        // The handler runs, inside the call's context (held here, not boxed again; a server
        // stream's items get it back once the handler is done).
        Running {
            #[pin]
            handler: TaskLocalFuture<CallContext, BoxFuture<'static, Result<Body, Status>>>,
        },
        // The call was refused before a handler ran (`None` once answered).
        Refused {
            status: Option<Box<Status>>,
        },
    }
}

impl std::fmt::Debug for Routed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routed")
            .field(
                "running",
                &matches!(self.state, RoutedState::Running { .. }),
            )
            .finish_non_exhaustive()
    }
}

impl Future for Routed {
    type Output = Result<Body, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            RoutedProj::Refused { status } => Poll::Ready(Err(status.take().map_or_else(
                || Status::internal("a routed call was polled twice"),
                |status| *status,
            ))),
            RoutedProj::Running { mut handler } => {
                let outcome = std::task::ready!(handler.as_mut().poll(cx));
                Poll::Ready(match outcome {
                    // Items are produced after the handler returned: they see the call's
                    // context too, which the handler is done with.
                    Ok(Body::Stream(stream)) => Ok(match handler.take_value() {
                        Some(context) => Body::Stream(stream.in_context(context)),
                        None => Body::Stream(stream),
                    }),
                    outcome => outcome,
                })
            }
        }
    }
}

/// The services below the node's own layers: the routes alone, or the routes under the
/// layers a user added.
#[derive(Clone)]
pub enum Handlers {
    /// No user layer: calls go straight to their route (nothing boxed per call).
    Direct(Route),
    /// The routes under the user's layers.
    Layered(BoxServerService),
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Handlers::Direct(route) => f.debug_tuple("Direct").field(route).finish(),
            Handlers::Layered(_) => f.debug_tuple("Layered").finish_non_exhaustive(),
        }
    }
}

impl Service<IncomingCall> for Handlers {
    type Response = Body;
    type Error = Status;
    type Future =
        futures_util::future::Either<Routed, <BoxServerService as Service<IncomingCall>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        match self {
            Handlers::Direct(route) => route.poll_ready(cx),
            Handlers::Layered(service) => service.poll_ready(cx),
        }
    }

    fn call(&mut self, call: IncomingCall) -> Self::Future {
        match self {
            Handlers::Direct(route) => futures_util::future::Either::Left(route.call(call)),
            Handlers::Layered(service) => futures_util::future::Either::Right(service.call(call)),
        }
    }
}
