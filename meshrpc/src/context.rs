//! The context of the call a handler is serving: its deadline and metadata.
//!
//! The server runs every handler inside [`CallContext::scope`], so code anywhere below a
//! handler can read [`CallContext::current`]. Calls made from inside a handler inherit its
//! deadline and trace automatically: a nested call never outlives the call that caused it.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::metadata::Metadata;
use crate::spec::MethodSpec;

tokio::task_local! {
    static CURRENT: CallContext;
}

/// What a handler knows about the call it serves.
#[derive(Clone, Default)]
pub struct CallContext {
    deadline: Option<Instant>,
    metadata: Metadata,
    names: CallNames,
}

/// The service and method a context is for. Every call the node serves or makes has its
/// method's spec, a pointer: a held call's state carries this, not two strings.
#[derive(Clone, Default)]
enum CallNames {
    /// No call (an empty context).
    #[default]
    None,
    /// A method of a published or called service.
    Method(&'static MethodSpec),
    /// Names given as strings ([`CallContext::new`]).
    Named(Arc<(Cow<'static, str>, Cow<'static, str>)>),
}

impl fmt::Debug for CallContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallContext")
            .field("deadline", &self.deadline)
            .field("metadata", &self.metadata)
            .field("service", &self.service())
            .field("method", &self.method())
            .finish()
    }
}

impl CallContext {
    /// A context for a call to `service.method` with this deadline and metadata.
    pub fn new(
        service: impl Into<Cow<'static, str>>,
        method: impl Into<Cow<'static, str>>,
        deadline: Option<Instant>,
        metadata: Metadata,
    ) -> CallContext {
        let names = CallNames::Named(Arc::new((service.into(), method.into())));
        CallContext {
            names,
            ..CallContext::for_call(deadline, metadata)
        }
    }

    /// A context for a call to `method` with this deadline and metadata.
    pub(crate) fn for_method(
        method: &'static MethodSpec,
        deadline: Option<Instant>,
        metadata: Metadata,
    ) -> CallContext {
        CallContext {
            names: CallNames::Method(method),
            ..CallContext::for_call(deadline, metadata)
        }
    }

    /// A context with this deadline and metadata, not yet naming its call.
    fn for_call(deadline: Option<Instant>, metadata: Metadata) -> CallContext {
        CallContext {
            deadline,
            metadata,
            names: CallNames::None,
        }
    }

    /// The context of the call being served by the current task, if any.
    pub fn current() -> Option<CallContext> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `f` on the context of the call being served by the current task, if any, without
    /// cloning it.
    pub fn with_current(f: impl FnOnce(&CallContext)) {
        let _ = CURRENT.try_with(f);
    }

    /// The deadline of the call being served by the current task, if any.
    pub fn current_deadline() -> Option<Instant> {
        CURRENT.try_with(|context| context.deadline).ok().flatten()
    }

    /// Runs `future` with this context as the current one.
    pub fn scope<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, future)
    }

    /// [`CallContext::scope`] as a type the server can hold without boxing it.
    pub(crate) fn scope_inline<F: Future>(
        self,
        future: F,
    ) -> tokio::task::futures::TaskLocalFuture<CallContext, F> {
        CURRENT.scope(self, future)
    }

    /// `stream` with this context as the current one while it is polled: a server stream's
    /// items are produced after the handler returned, and calls made while producing them
    /// inherit the call's deadline and trace like calls made by the handler.
    pub fn scope_stream<T: Send + 'static>(
        self,
        stream: crate::streaming::Streaming<T>,
    ) -> crate::streaming::Streaming<T> {
        stream.in_context(self)
    }

    /// Runs `f` with (a copy of) this context as the current one.
    pub(crate) fn sync_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self.clone(), f)
    }

    /// The same context with another deadline (a layer may shorten a call's deadline).
    pub fn with_deadline(mut self, deadline: Option<Instant>) -> CallContext {
        self.deadline = deadline;
        self
    }

    /// When the call must be answered by.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left until the deadline (zero once it has passed), if there is one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|deadline| deadline.saturating_duration_since(Instant::now()))
    }

    /// The metadata the caller sent.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The metadata, for the server to put its own trace context in before the handler runs.
    #[cfg_attr(not(feature = "otel"), allow(dead_code))]
    pub(crate) fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }

    /// The service being called.
    pub fn service(&self) -> &str {
        match &self.names {
            CallNames::None => "",
            CallNames::Method(method) => method.service,
            CallNames::Named(names) => &names.0,
        }
    }

    /// The method being called.
    pub fn method(&self) -> &str {
        match &self.names {
            CallNames::None => "",
            CallNames::Method(method) => method.name,
            CallNames::Named(names) => &names.1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_current_context_is_visible_inside_its_scope_only() {
        assert!(CallContext::current().is_none());
        let deadline = Instant::now() + Duration::from_secs(5);
        let context = CallContext::new("greeter", "greet", Some(deadline), Metadata::new());
        let seen = context
            .scope(async { CallContext::current_deadline() })
            .await;
        assert_eq!(seen, Some(deadline));
        assert!(CallContext::current().is_none());
    }

    #[test]
    fn a_context_names_its_call_however_it_was_made() {
        let named = CallContext::new("greeter", "greet", None, Metadata::new());
        assert_eq!((named.service(), named.method()), ("greeter", "greet"));
        let owned = CallContext::new(
            String::from("billing"),
            String::from("charge"),
            None,
            Metadata::new(),
        );
        assert_eq!((owned.service(), owned.method()), ("billing", "charge"));
        let spec = crate::node_service::NODE_SPEC
            .methods
            .first()
            .expect("the node service has methods");
        let for_method = CallContext::for_method(spec, None, Metadata::new());
        assert_eq!(
            (for_method.service(), for_method.method()),
            (spec.service, spec.name)
        );
        let empty = CallContext::default();
        assert_eq!((empty.service(), empty.method()), ("", ""));
        assert!(format!("{for_method:?}").contains(spec.name));
    }
}
