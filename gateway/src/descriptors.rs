//! The service descriptors the gateway routes, validates and documents with.
//!
//! Every node answers `meshrpc.node/describe` with the JSON descriptors of the services it
//! publishes (format in `docs/MANIFEST.md`, "The service descriptor"), and gossips each
//! service's schema hash. The gateway keeps one descriptor per `(service, schema hash)`: a
//! background task fetches the descriptor of every hash that appears in the view, and a request
//! for a hash not fetched yet fetches it on the spot. Services the gateway binary mounts
//! extensions for ([`crate::Extension`]: the greeter in `mesh-api`) are known from the start,
//! so their routes answer 503, not 404, before any replica has joined. A request never waits
//! for a member to appear.
//!
//! A descriptor is compiled when it is learned ([`CompiledDescriptor`]): each method's request
//! schema (and client-stream line schema) is read once into the form the transcoder walks, so
//! a request only looks its method up by name.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshrpc::membership::{Liveness, MemberView, View};
use meshrpc::node_service::{DescribeReply, NODE_SPEC};
use meshrpc::{CallOptions, MethodKind, Node, ServiceSpec, Status};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::error::ApiError;
use crate::transcode::{CompiledSchema, Schema};

/// How long fetching a descriptor from one member may take.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One service's descriptor, and one of its methods: the model `meshrpc-build` writes.
pub use meshrpc::descriptor::{Descriptor, Method as MethodDescriptor};

/// What the gateway derives from a descriptor: its routes and the schemas to check against.
pub trait DescriptorExt {
    /// `POST /svc/a, POST /svc/b`, for messages (`GET` for a bidirectional method, a
    /// WebSocket).
    fn routes(&self) -> String;

    /// The schema to check `method`'s requests against.
    fn request_schema<'a>(&'a self, method: &'a MethodDescriptor) -> Schema<'a>;

    /// The schema to check `method`'s client-stream items against, if it has a client stream.
    fn request_item_schema<'a>(&'a self, method: &'a MethodDescriptor) -> Option<Schema<'a>>;
}

impl DescriptorExt for Descriptor {
    fn routes(&self) -> String {
        self.methods
            .iter()
            .map(|method| {
                let verb = if method.kind == MethodKind::Bidirectional {
                    "GET"
                } else {
                    "POST"
                };
                format!("{verb} /{}/{}", self.service, method.name)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn request_schema<'a>(&'a self, method: &'a MethodDescriptor) -> Schema<'a> {
        Schema {
            root: &method.request,
            types: &self.types,
        }
    }

    fn request_item_schema<'a>(&'a self, method: &'a MethodDescriptor) -> Option<Schema<'a>> {
        method.request_stream.as_ref().map(|root| Schema {
            root,
            types: &self.types,
        })
    }
}

/// A descriptor with each method's schemas compiled: what the gateway keeps and serves with.
/// It derefs to the [`Descriptor`] it was compiled from.
#[derive(Debug)]
pub struct CompiledDescriptor {
    descriptor: Descriptor,
    /// One per method, in the order of `descriptor.methods`.
    methods: Box<[MethodSchemas]>,
}

/// The compiled schemas of one method.
#[derive(Debug)]
pub struct MethodSchemas {
    request: Arc<CompiledSchema>,
    request_line: Option<Arc<CompiledSchema>>,
}

impl MethodSchemas {
    /// The schema requests are checked against.
    pub fn request(&self) -> &Arc<CompiledSchema> {
        &self.request
    }

    /// The schema client-stream lines (`{"item": <value>}`) are checked against, if the method
    /// has a client stream.
    pub fn request_line(&self) -> Option<&Arc<CompiledSchema>> {
        self.request_line.as_ref()
    }
}

impl CompiledDescriptor {
    /// Compiles the schemas of every method of `descriptor`.
    pub fn compile(descriptor: Descriptor) -> CompiledDescriptor {
        let methods = descriptor
            .methods
            .iter()
            .map(|method| MethodSchemas {
                request: Arc::new(CompiledSchema::compile(descriptor.request_schema(method))),
                request_line: method
                    .request_stream
                    .as_ref()
                    .map(|item| Arc::new(CompiledSchema::stream_line(item, &descriptor.types))),
            })
            .collect();
        CompiledDescriptor {
            descriptor,
            methods,
        }
    }

    /// The descriptor the schemas were compiled from.
    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    /// The compiled schemas of the method called `method`.
    pub fn schemas(&self, method: &str) -> Option<&MethodSchemas> {
        let index = self
            .descriptor
            .methods
            .iter()
            .position(|known| known.name == method)?;
        self.methods.get(index)
    }
}

impl std::ops::Deref for CompiledDescriptor {
    type Target = Descriptor;

    fn deref(&self) -> &Descriptor {
        &self.descriptor
    }
}

impl AsRef<Descriptor> for CompiledDescriptor {
    fn as_ref(&self) -> &Descriptor {
        &self.descriptor
    }
}

/// Members that can take calls for `service` right now.
fn live_publishers<'a>(view: &'a View, service: &'a str) -> impl Iterator<Item = &'a MemberView> {
    view.publishing(service)
        .filter(|member| member.liveness == Liveness::Alive && member.accepts_calls())
}

/// Whether some member that can take calls serves legacy HTTP for `service`.
pub fn serves_http_live(view: &View, service: &str) -> bool {
    view.serving_http(service)
        .any(|member| member.liveness == Liveness::Alive && member.accepts_calls())
}

/// The descriptors the gateway knows, and the services it has seen.
#[derive(Debug)]
pub struct Descriptors {
    node: Node,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Per service, its descriptors, the most recently learned last.
    by_service: HashMap<String, Vec<Arc<CompiledDescriptor>>>,
    /// Services that published RPCs at some point (or are compiled in).
    seen_rpc: BTreeSet<String>,
    /// Services that served legacy HTTP at some point.
    seen_http: BTreeSet<String>,
    /// The view last recorded by [`Descriptors::observe`]: the same view again adds nothing.
    observed: Option<Arc<View>>,
    /// What [`Descriptors::for_service`] chose per service in the view `chosen_in`: the same
    /// answer until the view changes or a descriptor is learned.
    chosen: HashMap<String, Arc<CompiledDescriptor>>,
    chosen_in: Option<Arc<View>>,
    /// Counts the descriptors learned, so that a choice made before one was learned is not
    /// remembered after.
    generation: u64,
}

impl State {
    fn get(&self, service: &str, hash: u64) -> Option<Arc<CompiledDescriptor>> {
        self.by_service
            .get(service)?
            .iter()
            .find(|descriptor| descriptor.hash() == hash)
            .cloned()
    }

    /// What `for_service` chose for `service` in `view`, if it still holds.
    fn chosen(&self, service: &str, view: &Arc<View>) -> Option<Arc<CompiledDescriptor>> {
        let chosen_in = self.chosen_in.as_ref()?;
        if !Arc::ptr_eq(chosen_in, view) {
            return None;
        }
        self.chosen.get(service).cloned()
    }

    /// Remembers `descriptor` as the choice for `service` in `view`, made when `generation`
    /// descriptors had been learned.
    fn remember(
        &mut self,
        service: &str,
        view: &Arc<View>,
        generation: u64,
        descriptor: &Arc<CompiledDescriptor>,
    ) {
        if generation != self.generation {
            return;
        }
        if !self
            .chosen_in
            .as_ref()
            .is_some_and(|chosen_in| Arc::ptr_eq(chosen_in, view))
        {
            self.chosen.clear();
            self.chosen_in = Some(view.clone());
        }
        self.chosen.insert(service.to_owned(), descriptor.clone());
    }

    /// Keeps `descriptor`, compiled, unless the same one (by hash) is kept already.
    fn insert(&mut self, descriptor: Descriptor) {
        self.generation += 1;
        self.chosen.clear();
        let hash = descriptor.hash();
        self.seen_rpc.insert(descriptor.service.clone());
        let list = self
            .by_service
            .entry(descriptor.service.clone())
            .or_default();
        // The most recently learned last. The same descriptor learned again (from another
        // member, or fetched again) moves, compiled as it was.
        let same = list.iter().position(|known| known.hash() == hash);
        let known = match same.map(|index| list.remove(index)) {
            Some(known) if known.descriptor == descriptor => known,
            _ => Arc::new(CompiledDescriptor::compile(descriptor)),
        };
        list.push(known);
    }
}

impl Descriptors {
    /// A cache for `node`'s view that knows `builtin` services from the start.
    pub fn new(node: Node, builtin: &[&ServiceSpec]) -> Arc<Descriptors> {
        let mut state = State::default();
        for spec in builtin {
            match Descriptor::parse(&spec.full_descriptor()) {
                Ok(descriptor) => state.insert(descriptor),
                Err(error) => warn!(service = spec.name, %error, "built-in descriptor skipped"),
            }
        }
        Arc::new(Descriptors {
            node,
            state: Mutex::new(state),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        meshrpc::lock(&self.state)
    }

    /// Records the services of `view` as seen. Every request observes the current view; only
    /// a view not observed yet is read.
    pub fn observe(&self, view: &Arc<View>) {
        let mut state = self.state();
        if state
            .observed
            .as_ref()
            .is_some_and(|observed| Arc::ptr_eq(observed, view))
        {
            return;
        }
        state.observed = Some(view.clone());
        for member in view.members() {
            for published in &member.id.services {
                if !state.seen_rpc.contains(&published.name) {
                    state.seen_rpc.insert(published.name.clone());
                }
            }
            for http in &member.id.http {
                if !state.seen_http.contains(http) {
                    state.seen_http.insert(http.clone());
                }
            }
        }
    }

    /// Whether `service` published RPCs or served legacy HTTP at some point (or is compiled
    /// in).
    pub fn knows(&self, service: &str) -> bool {
        let state = self.state();
        state.seen_rpc.contains(service) || state.seen_http.contains(service)
    }

    /// Whether `service` published RPCs at some point (or is compiled in).
    pub fn knows_rpc(&self, service: &str) -> bool {
        self.state().seen_rpc.contains(service)
    }

    /// Whether `service` served legacy HTTP at some point.
    pub fn knows_http(&self, service: &str) -> bool {
        self.state().seen_http.contains(service)
    }

    /// Every service known, RPC or HTTP, sorted.
    pub fn known_services(&self) -> Vec<String> {
        let state = self.state();
        state.seen_rpc.union(&state.seen_http).cloned().collect()
    }

    /// The descriptor to serve `service` with: the one of the schema most live members
    /// publish, fetched if need be; without live members, the last one known. `Ok(None)` when
    /// the gateway has never had one.
    pub async fn for_service(
        &self,
        service: &str,
    ) -> Result<Option<Arc<CompiledDescriptor>>, ApiError> {
        let view = self.node.view();
        self.observe(&view);
        let generation = {
            let state = self.state();
            if let Some(chosen) = state.chosen(service, &view) {
                return Ok(Some(chosen));
            }
            state.generation
        };
        let mut counts: Vec<(u64, usize)> = Vec::new();
        for member in live_publishers(&view, service) {
            let Some(hash) = member.id.schema_hash(service) else {
                continue;
            };
            match counts.iter_mut().find(|(known, _)| *known == hash) {
                Some((_, count)) => *count += 1,
                None => counts.push((hash, 1)),
            }
        }
        counts.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
        for (hash, _) in &counts {
            let mut state = self.state();
            if let Some(descriptor) = state.get(service, *hash) {
                state.remember(service, &view, generation, &descriptor);
                return Ok(Some(descriptor));
            }
        }
        if let Some((hash, _)) = counts.first() {
            let members: Vec<SocketAddr> = live_publishers(&view, service)
                .filter(|member| member.id.schema_hash(service) == Some(*hash))
                .map(|member| member.id.addr)
                .collect();
            let mut last = None;
            for addr in members {
                match self.fetch(addr).await {
                    Ok(()) => {
                        if let Some(descriptor) = self.state().get(service, *hash) {
                            return Ok(Some(descriptor));
                        }
                    }
                    Err(status) => last = Some(format!("{addr}: {status}")),
                }
            }
            return Err(ApiError::unavailable(format!(
                "could not learn the methods of `{service}` from its members{}",
                last.map(|last| format!(" ({last})")).unwrap_or_default()
            )));
        }
        let mut state = self.state();
        let last = state
            .by_service
            .get(service)
            .and_then(|list| list.last().cloned());
        if let Some(last) = &last {
            state.remember(service, &view, generation, last);
        }
        Ok(last)
    }

    /// One descriptor per known service (see [`Descriptors::for_service`]), sorted by name;
    /// services whose descriptor cannot be fetched are left out.
    pub async fn all(&self) -> Vec<Arc<CompiledDescriptor>> {
        let names: Vec<String> = {
            let view = self.node.view();
            self.observe(&view);
            self.state().seen_rpc.iter().cloned().collect()
        };
        let mut all = Vec::new();
        for name in names {
            match self.for_service(&name).await {
                Ok(Some(descriptor)) => all.push(descriptor),
                Ok(None) => {}
                Err(error) => debug!(service = %name, %error, "left out of the document"),
            }
        }
        all
    }

    /// Asks the member at `addr` for its descriptors and keeps them.
    async fn fetch(&self, addr: SocketAddr) -> Result<(), Status> {
        let reply: DescribeReply = self
            .node
            .channel_to(addr)
            .unary(
                &NODE_SPEC.methods[1],
                &(),
                &CallOptions::new().timeout(DESCRIBE_TIMEOUT),
            )
            .await?;
        let mut state = self.state();
        for text in reply.descriptors {
            match Descriptor::parse(&text) {
                Ok(descriptor) => state.insert(descriptor),
                Err(error) => warn!(%addr, %error, "member sent an unreadable descriptor"),
            }
        }
        Ok(())
    }

    /// Fetches the descriptors of every `(service, hash)` in `view` not known yet.
    async fn refresh(&self, view: &Arc<View>) {
        self.observe(view);
        let mut wanted: Vec<SocketAddr> = Vec::new();
        for member in view.members() {
            if member.local || member.liveness != Liveness::Alive {
                continue;
            }
            let missing = member.id.services.iter().any(|published| {
                self.state()
                    .get(&published.name, published.schema_hash)
                    .is_none()
            });
            if missing {
                wanted.push(member.id.addr);
            }
        }
        for addr in wanted {
            if let Err(status) = self.fetch(addr).await {
                debug!(%addr, %status, "could not fetch descriptors yet");
            }
        }
    }

    /// Keeps the cache up to date with the view until the returned task is aborted.
    pub fn spawn_refresher(self: &Arc<Descriptors>) -> JoinHandle<()> {
        let descriptors = self.clone();
        tokio::spawn(async move {
            let mut watch = descriptors.node.watch_view();
            loop {
                let view = watch.borrow_and_update().clone();
                descriptors.refresh(&view).await;
                if watch.changed().await.is_err() {
                    return;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_greeter_descriptor_parses_with_its_methods_and_types() {
        let descriptor = Descriptor::parse(greeter::GREETER_SPEC.descriptor).expect("parses");
        assert_eq!(descriptor.service, "greeter");
        assert_eq!(descriptor.hash(), greeter::GREETER_SPEC.schema_hash);
        let greet = descriptor.method("greet").expect("greet");
        assert_eq!(greet.result_field, "message");
        assert!(greet.idempotent);
        assert!(descriptor.types.contains_key("greeter.Postcard"));
        assert_eq!(
            descriptor.routes(),
            "POST /greeter/greet, POST /greeter/send_postcard"
        );
        assert_eq!(greet.kind, MethodKind::Unary);
    }

    #[test]
    fn a_descriptor_is_compiled_once_and_shared_by_every_lookup() {
        let greeter = Descriptor::parse(greeter::GREETER_SPEC.descriptor).expect("parses");
        let hash = greeter.hash();
        let mut state = State::default();
        state.insert(greeter.clone());
        let first = state.get("greeter", hash).expect("known");
        let second = state.get("greeter", hash).expect("known");
        assert!(Arc::ptr_eq(&first, &second));
        let request = |descriptor: &CompiledDescriptor| {
            descriptor
                .schemas("greet")
                .expect("greet")
                .request()
                .clone()
        };
        assert!(Arc::ptr_eq(&request(&first), &request(&second)));
        // Learned again, from another member or fetched anew: kept as it was compiled.
        state.insert(greeter);
        let again = state.get("greeter", hash).expect("known");
        assert!(Arc::ptr_eq(&first, &again));
        assert!(Arc::ptr_eq(&request(&first), &request(&again)));
        assert!(first.schemas("nope").is_none());
    }

    #[test]
    fn a_choice_holds_until_the_view_changes_or_a_descriptor_is_learned() {
        let greeter = Descriptor::parse(greeter::GREETER_SPEC.descriptor).expect("parses");
        let hash = greeter.hash();
        let mut state = State::default();
        state.insert(greeter.clone());
        let found = state.get("greeter", hash).expect("known");
        let view = Arc::new(View::default());
        state.remember("greeter", &view, state.generation, &found);
        let chosen = state.chosen("greeter", &view).expect("remembered");
        assert!(Arc::ptr_eq(&chosen, &found));
        assert!(state.chosen("other", &view).is_none());
        assert!(
            state
                .chosen("greeter", &Arc::new(View::default()))
                .is_none(),
            "another view, even an equal one"
        );
        let before = state.generation;
        state.insert(greeter);
        assert!(
            state.chosen("greeter", &view).is_none(),
            "a descriptor was learned"
        );
        state.remember("greeter", &view, before, &found);
        assert!(
            state.chosen("greeter", &view).is_none(),
            "chosen before the descriptor was learned"
        );
    }

    /// A service with a server-streaming `count` and a bidirectional `echo`.
    fn streaming_descriptor() -> Descriptor {
        Descriptor::parse(
            r#"{"service": "numbers", "schema_hash": "0000000000000001", "methods": [
                {"name": "count", "kind": "server_streaming", "result_field": "result",
                 "request": {"type": "object", "properties": {}},
                 "response_stream": {"type": "integer"}},
                {"name": "echo", "kind": "bidirectional", "result_field": "result",
                 "request": {"type": "object", "properties": {}},
                 "request_stream": {"type": "string"}, "response_stream": {"type": "string"}}
            ]}"#,
        )
        .expect("parses")
    }

    #[test]
    fn a_client_streaming_method_has_a_compiled_line_schema() {
        let descriptor = streaming_descriptor();
        let compiled = CompiledDescriptor::compile(descriptor);
        assert!(
            compiled
                .schemas("count")
                .expect("count")
                .request_line()
                .is_none()
        );
        let line = compiled
            .schemas("echo")
            .expect("echo")
            .request_line()
            .expect("a line schema");
        assert_eq!(
            line.json_item_to_msgpack(br#"{"item": "hi"}"#),
            Ok(rmp_serde::to_vec("hi").expect("encodes"))
        );
        assert_eq!(
            line.json_item_to_msgpack(br#"{"item": 1}"#),
            Err(crate::transcode::RequestError::Invalid(
                "field `item`: expected a string, found the number 1".to_owned()
            ))
        );
    }

    #[test]
    fn streaming_methods_parse_with_their_kind_and_item_schemas() {
        let descriptor = streaming_descriptor();
        let count = descriptor.method("count").expect("count");
        assert_eq!(count.kind, MethodKind::ServerStreaming);
        assert_eq!(count.response, None);
        assert_eq!(
            count.response_stream,
            Some(serde_json::json!({"type": "integer"}))
        );
        assert!(descriptor.request_item_schema(count).is_none());
        let echo = descriptor.method("echo").expect("echo");
        assert!(descriptor.request_item_schema(echo).is_some());
        assert_eq!(
            descriptor.routes(),
            "POST /numbers/count, GET /numbers/echo"
        );
        let unknown = Descriptor::parse(
            r#"{"service": "x", "schema_hash": "1", "methods": [{"name": "m", "kind": "sideways",
                "result_field": "r", "request": {}}]}"#,
        )
        .expect_err("an unknown kind");
        assert!(unknown.contains("sideways"), "{unknown}");
    }
}
