//! What a newcomer's first service needs, on the complete example of `docs/MANIFEST.md`: ids
//! as newtypes (transparent in JSON, `Copy`, map keys), a tuple struct, a recursive type, the
//! trait as a `dyn` object, `use` types whose schema the gateway checks, and the documented
//! `Cargo.toml`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway::descriptors::{Descriptor, DescriptorExt};
use gateway::transcode::{RequestError, json_to_msgpack};
use meshrpc::bytes::Bytes;
use meshrpc::{Channel, Dispatch, Status};
use meshrpc_scenario_manifest_example::model::{Mood, Stamp, StampKind};
use meshrpc_scenario_manifest_example::{
    Address, DynGreeter, GREETER_SPEC, Greeter, GreeterClient, GreeterServer, Postcard, PostcardId,
    Topic, Weather, greeter_messages, greeter_methods,
};
use serde_json::{Value, json};

/// Keeps postcards by id.
#[derive(Default)]
struct PostOffice {
    cards: Mutex<HashMap<PostcardId, Postcard>>,
}

impl Greeter for PostOffice {
    async fn greet(&self, name: String) -> Result<String, Status> {
        Ok(format!("Hello, {name}"))
    }

    async fn send_postcard(&self, card: Postcard) -> Result<PostcardId, Status> {
        let mut cards = self
            .cards
            .lock()
            .map_err(|_| Status::internal("poisoned"))?;
        let id = PostcardId(cards.len() as u64 + 1);
        cards.insert(id, card);
        Ok(id)
    }

    async fn postcard(&self, id: PostcardId) -> Result<Option<Postcard>, Status> {
        let cards = self
            .cards
            .lock()
            .map_err(|_| Status::internal("poisoned"))?;
        Ok(cards.get(&id).cloned())
    }

    async fn mood(&self, of: String) -> Result<Option<Mood>, Status> {
        Ok(Some(Mood::Grumpy { reason: of }))
    }

    async fn delivery(&self, to: Address) -> Result<Duration, Status> {
        Ok(Duration::from_secs(u64::from(to.1)))
    }

    async fn topics(&self) -> Result<Topic, Status> {
        Ok(tree())
    }

    async fn resend(&self, copies: HashMap<PostcardId, u8>) -> Result<u32, Status> {
        let cards = self
            .cards
            .lock()
            .map_err(|_| Status::internal("poisoned"))?;
        let mut sent = 0;
        for (id, copies) in copies {
            if !cards.contains_key(&id) {
                return Err(Status::not_found(format!("no postcard {}", id.0)));
            }
            sent += u32::from(copies);
        }
        Ok(sent)
    }

    async fn ping(&self) -> Result<(), Status> {
        Ok(())
    }

    async fn forecast(&self, days: u8) -> Result<Vec<Weather>, Status> {
        Ok(vec![Weather::Wind(days, "north".into())])
    }
}

fn tree() -> Topic {
    let leaf = Topic {
        name: "stamps".into(),
        ..Topic::default()
    };
    Topic {
        name: "post".into(),
        children: vec![leaf.clone()],
        featured: Some(Box::new(leaf)),
    }
}

fn card() -> Postcard {
    Postcard {
        picture_url: "https://example.invalid/p.jpg".into(),
        address: Address("Main Street".into(), 7),
        recipient: "Max".into(),
        message: "Hi".into(),
        stamp: Some(Stamp {
            country: "CH".into(),
            value_cents: 120,
            kind: StampKind::Commemorative { year: 1999 },
        }),
    }
}

fn client_of(greeter: impl Greeter + Send + Sync + 'static) -> GreeterClient {
    GreeterClient::new(Channel::local(GreeterServer::new(greeter)))
}

#[test]
fn a_newtype_is_the_wrapped_value_in_json_and_a_tuple_struct_an_array() {
    assert_eq!(serde_json::to_value(PostcardId(2)).expect("json"), json!(2));
    let request = greeter_messages::PostcardRequest { id: PostcardId(2) };
    assert_eq!(
        serde_json::to_value(request).expect("json"),
        json!({ "id": 2 })
    );
    assert_eq!(
        serde_json::to_value(Address("Main Street".into(), 7)).expect("json"),
        json!(["Main Street", 7])
    );
}

#[test]
fn a_declared_id_is_copy_and_keys_maps_and_sets() {
    let id = PostcardId(7);
    let copy = id; // `Copy`: `id` stays usable.
    let mut by_id = HashMap::new();
    by_id.insert(id, "seven");
    assert_eq!(by_id[&copy], "seven");
    let mut ordered = vec![PostcardId(3), id, PostcardId(1)];
    ordered.sort();
    assert_eq!(ordered, [PostcardId(1), PostcardId(3), PostcardId(7)]);
    let mut addresses = std::collections::HashSet::new();
    assert!(addresses.insert(Address("Main Street".into(), 7)));
    assert!(!addresses.insert(Address("Main Street".into(), 7)));
}

#[meshrpc::tokio::test(crate = "meshrpc::tokio")]
async fn ids_recursive_types_and_schema_types_cross_a_client_and_server() {
    let client = client_of(PostOffice::default());
    let id = client.send_postcard(card()).await.expect("sent");
    assert_eq!(id, PostcardId(1));
    assert_eq!(client.postcard(id).await.expect("found"), Some(card()));
    assert_eq!(client.postcard(PostcardId(9)).await.expect("asked"), None);
    assert_eq!(client.topics().await.expect("topics"), tree());
    assert_eq!(
        client
            .delivery(Address("Main Street".into(), 7))
            .await
            .expect("delivery"),
        Duration::from_secs(7)
    );
}

/// Code that takes any greeter, as a trait object.
async fn greet_all(greeters: &[Arc<DynGreeter>]) -> Vec<String> {
    let mut all = Vec::new();
    for greeter in greeters {
        all.push(greeter.greet("Max".into()).await.expect("greets"));
    }
    all
}

#[meshrpc::tokio::test(crate = "meshrpc::tokio")]
async fn local_and_remote_greeters_are_one_dyn_type() {
    let local: Arc<DynGreeter> = Arc::new(PostOffice::default());
    let remote: Arc<DynGreeter> = Arc::new(client_of(PostOffice::default()));
    assert_eq!(
        greet_all(&[local.clone(), remote.clone()]).await,
        ["Hello, Max", "Hello, Max"]
    );
    // `Arc<DynGreeter>` is a `Greeter` again: served, and called through the trait.
    let served = client_of(remote);
    assert_eq!(
        served.greet("Ada".into()).await.expect("greets"),
        "Hello, Ada"
    );
    let boxed: Box<DynGreeter> = Box::<PostOffice>::default();
    assert_eq!(
        Greeter::greet(&boxed, "Bo".into()).await.expect("greets"),
        "Hello, Bo"
    );
    assert_eq!(Greeter::topics(&local).await.expect("topics"), tree());
}

fn descriptor() -> Descriptor {
    Descriptor::parse(&GREETER_SPEC.full_descriptor()).expect("the full descriptor parses")
}

fn transcode(method: &str, body: &Value) -> Result<Vec<u8>, RequestError> {
    let descriptor = descriptor();
    let method = descriptor.method(method).expect("method");
    json_to_msgpack(
        body.to_string().as_bytes(),
        descriptor.request_schema(method),
    )
}

#[test]
fn the_descriptor_holds_the_schema_of_a_use_type_and_the_types_it_refers_to() {
    let full: Value = serde_json::from_str(&GREETER_SPEC.full_descriptor()).expect("json");
    let types = &full["types"];
    assert_eq!(
        types["greeter.Stamp"]["properties"]["value_cents"]["type"],
        "integer"
    );
    assert_eq!(
        types["greeter.Stamp"]["properties"]["kind"]["allOf"][0]["$ref"],
        "#/components/schemas/greeter.Stamp.StampKind"
    );
    // In the OpenAPI 3.0 dialect in definitions too: a unit variant is an `enum`, not a `const`.
    assert_eq!(
        types["greeter.Stamp.StampKind"]["oneOf"][0]["enum"],
        json!(["Plain"])
    );
    // A type without a schema stays a description.
    let mood = &full["methods"][3]["response"]["properties"]["result"];
    assert_eq!(mood["description"], "Rust type crate::model::Mood");
    // The static descriptor points at the schema; only the full one holds it.
    let bare: Value = serde_json::from_str(GREETER_SPEC.descriptor).expect("json");
    assert!(bare["types"].get("greeter.Stamp").is_none());
    // Newtypes describe the wrapped value, and the recursive type refers to itself.
    assert_eq!(types["greeter.PostcardId"]["type"], "integer");
    assert_eq!(
        types["greeter.Topic"]["properties"]["children"]["items"]["$ref"],
        "#/components/schemas/greeter.Topic"
    );
}

#[test]
fn the_gateway_checks_a_use_type_with_a_schema_and_names_the_field() {
    let mut body = json!({ "card": serde_json::to_value(card()).expect("json") });
    transcode("send_postcard", &body).expect("a good card transcodes");
    body["card"]["stamp"]["kind"] = json!({ "Commemorative": { "year": "MCMXCIX" } });
    let error = transcode("send_postcard", &body).expect_err("a bad year is refused");
    assert_eq!(
        error.to_string(),
        "field `card.stamp.kind.Commemorative.year`: expected an integer from 0 to 65535, found \
         a string"
    );
    body["card"]["stamp"]["kind"] = json!("Rare");
    let error = transcode("send_postcard", &body).expect_err("an unknown variant is refused");
    assert!(
        error.to_string().starts_with("field `card.stamp.kind`"),
        "{error}"
    );
}

#[meshrpc::tokio::test(crate = "meshrpc::tokio")]
async fn a_transcoded_json_body_with_a_newtype_id_reaches_the_handler() {
    let server = GreeterServer::new(PostOffice::default());
    let body = json!({ "card": serde_json::to_value(card()).expect("json") });
    let request = transcode("send_postcard", &body).expect("transcodes");
    server
        .dispatch(greeter_methods::SEND_POSTCARD, Bytes::from(request), None)
        .await
        .expect("sent");
    let request = transcode("postcard", &json!({ "id": 1 })).expect("an id is a number");
    let reply = server
        .dispatch(greeter_methods::POSTCARD, Bytes::from(request), None)
        .await
        .expect("found")
        .into_message("reply")
        .expect("one message");
    let reply: greeter_messages::PostcardResponse =
        meshrpc::codec::decode_response("postcard", &reply).expect("decodes");
    assert_eq!(reply.card, Some(card()));
    let error = transcode("postcard", &json!({ "id": { "value": 1 } })).expect_err("not a map");
    assert!(
        error
            .to_string()
            .starts_with("field `id`: expected an integer"),
        "{error}"
    );
}

#[meshrpc::tokio::test(crate = "meshrpc::tokio")]
async fn a_map_keyed_by_a_declared_id_crosses_the_gateway_and_the_wire() {
    let server = GreeterServer::new(PostOffice::default());
    let body = json!({ "card": serde_json::to_value(card()).expect("json") });
    let request = transcode("send_postcard", &body).expect("transcodes");
    server
        .dispatch(greeter_methods::SEND_POSTCARD, Bytes::from(request), None)
        .await
        .expect("sent");
    // JSON object keys are strings; the gateway turns them into the id's integer.
    let request = transcode("resend", &json!({ "copies": { "1": 3 } })).expect("transcodes");
    let reply = server
        .dispatch(greeter_methods::RESEND, Bytes::from(request), None)
        .await
        .expect("resent")
        .into_message("reply")
        .expect("one message");
    let reply: greeter_messages::ResendResponse =
        meshrpc::codec::decode_response("resend", &reply).expect("decodes");
    assert_eq!(reply.sent, 3);
    let error = transcode("resend", &json!({ "copies": { "first": 3 } })).expect_err("not an id");
    assert!(
        error
            .to_string()
            .contains("the key `first` is not an unsigned integer"),
        "{error}"
    );
    let client = client_of(PostOffice::default());
    let missing = client
        .resend(HashMap::from([(PostcardId(9), 1)]))
        .await
        .expect_err("no such postcard");
    assert_eq!(missing.message(), "no postcard 9");
}

/// The dependency tables of a `Cargo.toml`: name -> features.
fn dependencies(manifest: &str, table: &str) -> Vec<(String, Vec<String>)> {
    let manifest: toml::Table = toml::from_str(manifest).expect("valid TOML");
    let mut found: Vec<(String, Vec<String>)> = manifest
        .get(table)
        .and_then(toml::Value::as_table)
        .map(|table| {
            table
                .iter()
                .map(|(name, spec)| {
                    let features = spec
                        .get("features")
                        .and_then(toml::Value::as_array)
                        .map(|features| {
                            features
                                .iter()
                                .filter_map(|feature| feature.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    (name.clone(), features)
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

#[test]
fn this_crate_depends_on_what_the_manifest_reference_documents() {
    let reference = include_str!("../../../../docs/MANIFEST.md");
    let documented = reference
        .split("## Setup")
        .nth(1)
        .and_then(|section| section.split("```toml\n").nth(1))
        .and_then(|block| block.split("```").next())
        .expect("the setup shows a Cargo.toml");
    let ours = include_str!("../Cargo.toml");
    for table in ["dependencies", "build-dependencies"] {
        assert_eq!(
            dependencies(documented, table),
            dependencies(ours, table),
            "[{table}]"
        );
    }
}
