//! Values of every shape cross a generated client and server intact; wrong requests get the
//! status codes callers rely on; a client stands in for a local implementation.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};

use meshrpc::bytes::Bytes;
use meshrpc::{
    Body, Call, Channel, Code, Dispatch, MethodKind, MethodSpec, ServiceClient, Status, Streaming,
};
use meshrpc_scenario_shapes::model::Mood;
use meshrpc_scenario_shapes::{
    Blob, COUNTER_SPEC, Card, Counter, CounterClient, CounterServer, Id, Integers, Pair, Parcel,
    SHAPES_SPEC, Shapes, ShapesClient, ShapesServer, Weather, shapes_messages, shapes_methods,
};

/// Answers each call from its arguments, so a test can tell what arrived.
struct Echo;

impl Shapes for Echo {
    #[allow(clippy::too_many_arguments)]
    async fn integers(
        &self,
        a: u8,
        b: u16,
        c: u32,
        d: u64,
        e: u128,
        f: usize,
        g: i8,
        h: i16,
        i: i32,
        j: i64,
        k: i128,
        l: isize,
    ) -> Result<Integers, Status> {
        Ok(Integers {
            a,
            b,
            c,
            d,
            e,
            f,
            g,
            h,
            i,
            j,
            k,
            l,
        })
    }

    async fn scalars(
        &self,
        x: f32,
        y: f64,
        flag: bool,
        letter: char,
    ) -> Result<(f32, f64, bool, char), Status> {
        Ok((x * 2.0, y / 2.0, !flag, letter.to_ascii_uppercase()))
    }

    async fn maybe(
        &self,
        name: Option<String>,
        count: Option<u32>,
    ) -> Result<Option<String>, Status> {
        Ok(name.map(|name| name.repeat(count.unwrap_or(1) as usize)))
    }

    async fn collections(
        &self,
        list: Vec<String>,
        scores: HashMap<String, u32>,
        ordered: BTreeMap<u64, Vec<bool>>,
    ) -> Result<BTreeMap<String, usize>, Status> {
        let mut sizes = BTreeMap::new();
        sizes.insert("list".to_owned(), list.len());
        sizes.insert(
            "scores".to_owned(),
            scores.values().map(|score| *score as usize).sum(),
        );
        sizes.insert("ordered".to_owned(), ordered.values().map(Vec::len).sum());
        Ok(sizes)
    }

    async fn bytes(&self, data: Vec<u8>, maybe: Option<Vec<u8>>) -> Result<Vec<u8>, Status> {
        Ok([data, maybe.unwrap_or_default()].concat())
    }

    async fn shared(&self, data: Bytes, tail: Option<Bytes>) -> Result<Parcel, Status> {
        let size = data.len() + tail.as_ref().map_or(0, Bytes::len);
        Ok(Parcel {
            contents: data,
            tail,
            size,
        })
    }

    async fn tuples(&self, pair: (String, u8), unit: ()) -> Result<((String, u8), ()), Status> {
        Ok(((pair.0.to_uppercase(), pair.1 + 1), unit))
    }

    async fn declared(&self, card: Card, weather: Weather) -> Result<Vec<Weather>, Status> {
        Ok(vec![
            weather,
            Weather::Photo(card.picture),
            Weather::Wind(card.stamp.unwrap_or(0) as u8, card.recipient),
        ])
    }

    async fn mood(&self, mood: Mood) -> Result<Mood, Status> {
        Ok(match mood {
            Mood::Happy => Mood::Grumpy {
                reason: "too happy".to_owned(),
            },
            Mood::Grumpy { .. } => Mood::Happy,
        })
    }

    async fn nested(&self, cards: Vec<Option<Card>>) -> Result<HashMap<String, Card>, Status> {
        Ok(cards
            .into_iter()
            .flatten()
            .map(|card| (card.recipient.clone(), card))
            .collect())
    }

    async fn nothing(&self) -> Result<(), Status> {
        Ok(())
    }

    async fn wrapped(&self, blob: Blob, pair: Pair, id: Id) -> Result<(Blob, Pair, Id), Status> {
        Ok((blob, pair, Id(id.0 + 1)))
    }

    async fn chunks(
        &self,
        prefix: Vec<u8>,
        parts: Streaming<Bytes>,
    ) -> Result<Streaming<Vec<u8>>, Status> {
        Ok(parts.try_map(move |part| {
            let mut chunk = prefix.clone();
            chunk.extend_from_slice(&part);
            Ok(chunk)
        }))
    }

    async fn kept(&self, mut cards: Streaming<Option<Card>>) -> Result<Vec<Card>, Status> {
        let mut kept = Vec::new();
        while let Some(card) = cards.message().await? {
            kept.extend(card);
        }
        Ok(kept)
    }
}

fn client() -> ShapesClient {
    ShapesClient::new(Channel::local(ShapesServer::new(Echo)))
}

fn card(recipient: &str) -> Card {
    Card {
        recipient: recipient.to_owned(),
        picture: vec![0, 1, 2, 255],
        stamp: Some(7),
    }
}

#[tokio::test]
async fn integers_of_every_width_arrive_at_their_extremes() {
    let integers = client()
        .integers(
            u8::MAX,
            u16::MAX,
            u32::MAX,
            u64::MAX,
            u128::MAX,
            usize::MAX,
            i8::MIN,
            i16::MIN,
            i32::MIN,
            i64::MIN,
            i128::MIN,
            isize::MIN,
        )
        .await
        .expect("call succeeds");
    assert_eq!(
        integers,
        Integers {
            a: u8::MAX,
            b: u16::MAX,
            c: u32::MAX,
            d: u64::MAX,
            e: u128::MAX,
            f: usize::MAX,
            g: i8::MIN,
            h: i16::MIN,
            i: i32::MIN,
            j: i64::MIN,
            k: i128::MIN,
            l: isize::MIN,
        }
    );
}

#[tokio::test]
async fn floats_booleans_and_chars_arrive_intact() {
    let result = client()
        .scalars(1.5, 5.0, false, 'ß')
        .await
        .expect("call succeeds");
    assert_eq!(result, (3.0, 2.5, true, 'ß'.to_ascii_uppercase()));
    let result = client()
        .scalars(f32::MIN_POSITIVE, -0.1, true, 'é')
        .await
        .expect("call succeeds");
    assert_eq!(result, (f32::MIN_POSITIVE * 2.0, -0.05, false, 'é'));
}

#[tokio::test]
async fn options_arrive_as_some_and_none() {
    let client = client();
    assert_eq!(
        client
            .maybe(Some("ab".into()), Some(3))
            .await
            .expect("call"),
        Some("ababab".into())
    );
    assert_eq!(
        client.maybe(Some("ab".into()), None).await.expect("call"),
        Some("ab".into())
    );
    assert_eq!(client.maybe(None, Some(3)).await.expect("call"), None);
}

#[tokio::test]
async fn vectors_and_maps_arrive_with_every_element() {
    let scores = HashMap::from([("a".to_owned(), 2), ("b".to_owned(), 3)]);
    let ordered = BTreeMap::from([(1, vec![true, false]), (u64::MAX, vec![true])]);
    let sizes = client()
        .collections(vec!["x".into(), "y".into(), "z".into()], scores, ordered)
        .await
        .expect("call succeeds");
    let expected = BTreeMap::from([
        ("list".to_owned(), 3),
        ("scores".to_owned(), 5),
        ("ordered".to_owned(), 3),
    ]);
    assert_eq!(sizes, expected);
}

#[tokio::test]
async fn shared_binaries_arrive_intact_as_bytes() {
    let client = client();
    let all_bytes = Bytes::from((0..=255).collect::<Vec<u8>>());
    let parcel = client
        .shared(all_bytes.clone(), Some(Bytes::from_static(b"tail")))
        .await
        .expect("call");
    assert_eq!(
        parcel,
        Parcel {
            contents: all_bytes,
            tail: Some(Bytes::from_static(b"tail")),
            size: 260,
        }
    );
    let empty = client.shared(Bytes::new(), None).await.expect("call");
    assert_eq!((empty.contents.len(), empty.tail, empty.size), (0, None, 0));
}

#[tokio::test]
async fn bytes_and_byte_vectors_are_the_same_binary_on_the_wire() {
    let as_bytes = meshrpc::codec::encode(&shapes_messages::SharedRequest {
        data: Bytes::from_static(b"abc"),
        tail: None,
    })
    .expect("encodes");
    let as_vec = meshrpc::codec::encode(&shapes_messages::BytesRequest {
        data: b"abc".to_vec(),
        maybe: None,
    })
    .expect("encodes");
    // Field names differ (`tail` / `maybe`); the `data` binaries are byte for byte the same.
    let data_field = |payload: &[u8]| payload.windows(9).position(|w| w == b"data\xc4\x03abc");
    assert!(data_field(&as_bytes).is_some(), "{as_bytes:?}");
    assert!(data_field(&as_vec).is_some(), "{as_vec:?}");
}

#[tokio::test]
async fn byte_vectors_arrive_intact() {
    let client = client();
    let all_bytes: Vec<u8> = (0..=255).collect();
    assert_eq!(
        client.bytes(all_bytes.clone(), None).await.expect("call"),
        all_bytes
    );
    assert_eq!(
        client.bytes(vec![1], Some(vec![2, 3])).await.expect("call"),
        vec![1, 2, 3]
    );
    assert_eq!(
        client
            .bytes(Vec::new(), Some(Vec::new()))
            .await
            .expect("call"),
        Vec::<u8>::new()
    );
}

#[tokio::test]
async fn tuples_and_unit_arrive_intact() {
    let result = client()
        .tuples(("abc".into(), 41), ())
        .await
        .expect("call succeeds");
    assert_eq!(result, (("ABC".into(), 42), ()));
}

#[tokio::test]
async fn declared_structs_and_every_kind_of_enum_variant_arrive_intact() {
    let forecast = client()
        .declared(card("Ada"), Weather::Rain { millimetres: 2.5 })
        .await
        .expect("call succeeds");
    assert_eq!(
        forecast,
        vec![
            Weather::Rain { millimetres: 2.5 },
            Weather::Photo(vec![0, 1, 2, 255]),
            Weather::Wind(7, "Ada".into())
        ]
    );
    let forecast = client()
        .declared(Card::default(), Weather::Sunny)
        .await
        .expect("call succeeds");
    assert_eq!(forecast[0], Weather::Sunny);
}

#[tokio::test]
async fn types_of_the_crate_listed_in_use_arrive_intact() {
    let client = client();
    assert_eq!(
        client.mood(Mood::Happy).await.expect("call"),
        Mood::Grumpy {
            reason: "too happy".into()
        }
    );
    assert_eq!(
        client
            .mood(Mood::Grumpy { reason: "x".into() })
            .await
            .expect("call"),
        Mood::Happy
    );
}

#[tokio::test]
async fn nested_options_of_declared_types_arrive_intact() {
    let by_recipient = client()
        .nested(vec![Some(card("Ada")), None, Some(card("Bob"))])
        .await
        .expect("call succeeds");
    assert_eq!(by_recipient.len(), 2);
    assert_eq!(by_recipient["Bob"], card("Bob"));
}

#[tokio::test]
async fn a_method_without_parameters_or_result_round_trips() {
    client().nothing().await.expect("call succeeds");
}

#[tokio::test]
async fn a_request_of_the_wrong_shape_is_an_invalid_argument() {
    let channel = Channel::local(ShapesServer::new(Echo));
    let payload = meshrpc::codec::encode(&("not", "a", "map")).expect("encodes");
    let error = channel
        .call(Call::new("shapes", "bytes", payload))
        .await
        .expect_err("wrong shape");
    assert_eq!(error.code(), Code::InvalidArgument, "{error}");

    // A map that lacks a required parameter is wrong too.
    let payload = meshrpc::codec::encode(&HashMap::from([("maybe", ())])).expect("encodes");
    let error = channel
        .call(Call::new("shapes", "bytes", payload))
        .await
        .expect_err("missing field");
    assert_eq!(error.code(), Code::InvalidArgument, "{error}");
}

#[tokio::test]
async fn an_unknown_method_is_unimplemented() {
    let channel = Channel::local(ShapesServer::new(Echo));
    let payload = meshrpc::codec::encode(&HashMap::<String, u8>::new()).expect("encodes");
    let error = channel
        .call(Call::new("shapes", "shout", payload.clone()))
        .await
        .expect_err("unknown");
    assert_eq!(error.code(), Code::Unimplemented, "{error}");

    // The generated dispatcher says the same when handed a method that is not one of its own.
    static SHOUT: MethodSpec = MethodSpec {
        service: "shapes",
        name: "shout",
        doc: "",
        idempotent: false,
        timeout: None,
        attempt_timeout: None,
        hedge_after: None,
        params: &[],
        result_field: "result",
        result_type: "()",
        kind: MethodKind::Unary,
        index: 99,
    };
    let error = ShapesServer::new(Echo)
        .dispatch(&SHOUT, payload, None)
        .await
        .expect_err("unknown");
    assert_eq!(error.code(), Code::Unimplemented, "{error}");
    assert!(
        error.message().contains("nothing"),
        "lists the methods: {error}"
    );
}

/// Code written against the trait, not against a transport.
async fn describe(shapes: &impl Shapes) -> Result<String, Status> {
    let scalars = shapes.scalars(0.5, 8.0, true, 'q').await?;
    let mood = shapes.mood(Mood::Happy).await?;
    let forecast = shapes
        .declared(card("Cy"), Weather::Wind(3, "north".into()))
        .await?;
    let option = shapes.maybe(None, None).await?;
    Ok(format!("{scalars:?} {mood:?} {forecast:?} {option:?}"))
}

#[tokio::test]
async fn the_client_can_stand_in_for_the_local_implementation() {
    let local = describe(&Echo).await.expect("local calls succeed");
    let remote = describe(&client()).await.expect("client calls succeed");
    assert_eq!(local, remote);
    assert!(local.contains("Wind(3, \"north\")"), "{local}");
}

#[derive(Default)]
struct Tally(AtomicI64);

impl Counter for Tally {
    async fn add(&self, amount: i64) -> Result<i64, Status> {
        Ok(self.0.fetch_add(amount, Ordering::SeqCst) + amount)
    }

    async fn total(&self) -> Result<i64, Status> {
        Ok(self.0.load(Ordering::SeqCst))
    }

    async fn reset(&self) -> Result<(), Status> {
        self.0.store(0, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn a_second_service_of_the_same_manifest_works_alongside_the_first() {
    let counter = CounterClient::new(Channel::local(CounterServer::new(Tally::default())));
    assert_eq!(counter.add(5).await.expect("call"), 5);
    assert_eq!(counter.add(-2).await.expect("call"), 3);
    assert_eq!(counter.total().await.expect("call"), 3);
    counter.reset().await.expect("call");
    assert_eq!(counter.total().await.expect("call"), 0);
}

#[tokio::test]
async fn a_handler_error_reaches_the_caller_unchanged() {
    struct Refuses;
    impl Counter for Refuses {
        async fn add(&self, _: i64) -> Result<i64, Status> {
            Err(Status::failed_precondition("closed for the day"))
        }
        async fn total(&self) -> Result<i64, Status> {
            Ok(0)
        }
        async fn reset(&self) -> Result<(), Status> {
            Ok(())
        }
    }
    let counter = CounterClient::new(Channel::local(CounterServer::new(Refuses)));
    let error = counter.add(1).await.expect_err("refused");
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert_eq!(error.message(), "closed for the day");
}

#[test]
fn specs_describe_the_manifest() {
    assert_eq!(<ShapesClient as ServiceClient>::SPEC, &SHAPES_SPEC);
    assert_eq!(SHAPES_SPEC.name, "shapes");
    let names: Vec<&str> = SHAPES_SPEC.method_names().collect();
    assert_eq!(
        names,
        [
            "integers",
            "scalars",
            "maybe",
            "collections",
            "bytes",
            "shared",
            "tuples",
            "declared",
            "mood",
            "nested",
            "nothing",
            "wrapped",
            "chunks",
            "kept"
        ]
    );
    // Each method's constant is its spec, with the kind its signature gives it.
    assert_eq!(shapes_methods::WRAPPED, &SHAPES_SPEC.methods[11]);
    assert_eq!(shapes_methods::SCALARS.kind, MethodKind::Unary);
    assert_eq!(shapes_methods::CHUNKS.kind, MethodKind::Bidirectional);
    assert_eq!(
        shapes_methods::CHUNKS.params.len(),
        1,
        "the stream is no field"
    );
    assert_eq!(shapes_methods::CHUNKS.result_type, "Vec<u8>");
    assert_eq!(shapes_methods::KEPT.kind, MethodKind::ClientStreaming);
    assert_eq!(shapes_methods::KEPT.result_field, "cards");
    let scalars = SHAPES_SPEC.method("scalars").expect("exists");
    assert!(scalars.idempotent);
    assert_eq!(scalars.result_type, "(f32, f64, bool, char)");
    let maybe = SHAPES_SPEC.method("maybe").expect("exists");
    assert_eq!(maybe.timeout, Some(std::time::Duration::from_millis(250)));
    assert_eq!(maybe.params[1].rust_type, "Option<u32>");
    assert_eq!(
        SHAPES_SPEC.method("mood").expect("exists").doc,
        "Turns a mood around."
    );
    assert_eq!(
        SHAPES_SPEC.method("bytes").expect("exists").result_field,
        "data"
    );
    assert_ne!(SHAPES_SPEC.schema_hash, COUNTER_SPEC.schema_hash);
    assert!(SHAPES_SPEC.manifest.contains("[shapes.types.Weather]"));
    assert!(
        !SHAPES_SPEC.manifest.contains("[counter"),
        "only the service's own sections"
    );
    assert!(
        COUNTER_SPEC.manifest.starts_with("[counter]"),
        "{}",
        COUNTER_SPEC.manifest
    );
}

#[test]
fn the_descriptor_is_json_of_the_documented_shape() {
    let descriptor: serde_json::Value =
        serde_json::from_str(SHAPES_SPEC.descriptor).expect("valid JSON");
    assert_eq!(descriptor["service"], "shapes");
    assert_eq!(
        descriptor["schema_hash"],
        format!("{:016x}", SHAPES_SPEC.schema_hash)
    );
    let bytes = &descriptor["methods"][4];
    assert_eq!(bytes["name"], "bytes");
    assert_eq!(
        bytes["request"]["properties"]["data"],
        serde_json::json!({ "type": "string", "format": "byte" })
    );
    assert_eq!(bytes["request"]["required"], serde_json::json!(["data"]));
    let shared = &descriptor["methods"][5];
    assert_eq!(shared["name"], "shared");
    assert_eq!(
        shared["request"]["properties"]["data"], bytes["request"]["properties"]["data"],
        "Bytes and Vec<u8> look the same to JSON callers"
    );
    assert_eq!(
        descriptor["types"]["shapes.Parcel"]["properties"]["contents"],
        serde_json::json!({ "type": "string", "format": "byte" })
    );
    assert_eq!(descriptor["methods"][2]["timeout_ms"], 250);
    assert_eq!(
        descriptor["types"]["shapes.Card"]["properties"]["recipient"]["description"],
        "Who receives it."
    );
    assert_eq!(
        descriptor["methods"][8]["request"]["properties"]["mood"],
        serde_json::json!({ "description": "Rust type crate::model::Mood" })
    );
}

#[tokio::test]
async fn newtypes_and_tuple_structs_keep_their_binaries() {
    let blob = Blob(Bytes::from_static(b"\x00\xff"));
    let pair = Pair(vec![1, 2, 3], Some(Bytes::from_static(b"tail")));
    let (blob_back, pair_back, id) = client()
        .wrapped(blob.clone(), pair.clone(), Id(41))
        .await
        .expect("echoed");
    assert_eq!(
        (blob_back, pair_back, id),
        (blob.clone(), pair.clone(), Id(42))
    );
    // On the wire: the newtype is the binary itself, the tuple struct an array of a binary and
    // an optional binary.
    let request = meshrpc::codec::encode(&shapes_messages::WrappedRequest {
        blob,
        pair,
        id: Id(1),
    })
    .expect("encodes");
    let mut expected = vec![0x83, 0xa4];
    expected.extend_from_slice(b"blob");
    expected.extend_from_slice(&[0xc4, 0x02, 0x00, 0xff, 0xa4]);
    expected.extend_from_slice(b"pair");
    expected.extend_from_slice(&[0x92, 0xc4, 0x03, 1, 2, 3, 0xc4, 0x04]);
    expected.extend_from_slice(b"tail");
    expected.push(0xa2);
    expected.extend_from_slice(b"id");
    expected.push(0x01);
    assert_eq!(request.as_ref(), expected.as_slice());
}

#[tokio::test]
async fn streams_of_binaries_and_declared_types_cross_intact() {
    let client = client();
    let parts = Streaming::iter([
        Bytes::from_static(b"ab"),
        Bytes::new(),
        Bytes::from(vec![0, 255]),
    ]);
    let mut chunks = client.chunks(vec![7], parts).await.expect("call");
    let mut received = Vec::new();
    while let Some(chunk) = chunks.message().await.expect("an item or the end") {
        received.push(chunk);
    }
    assert_eq!(received, [vec![7, b'a', b'b'], vec![7], vec![7, 0, 255]]);

    let cards = Streaming::iter([Some(card("Ada")), None, Some(card("Max"))]);
    let kept = client.kept(cards).await.expect("call");
    assert_eq!(kept, [card("Ada"), card("Max")]);
}

#[tokio::test]
async fn binary_stream_items_travel_as_messagepack_binaries() {
    let channel = Channel::local(ShapesServer::new(Echo));
    let binary = |bytes: &[u8]| {
        meshrpc::codec::encode(&meshrpc::serde_bytes::Bytes::new(bytes)).expect("encodes")
    };
    let request = shapes_messages::ChunksRequest { prefix: vec![1] };
    let mut call = Call::new(
        SHAPES_SPEC.name,
        shapes_methods::CHUNKS.name,
        meshrpc::codec::encode(&request).expect("encodes"),
    );
    call.kind = shapes_methods::CHUNKS.kind;
    call.stream = Some(meshrpc::channel::OutgoingStream::new(Streaming::iter([
        binary(b"xy"),
    ])));
    let Body::Stream(mut items) = channel.send(call).await.expect("call") else {
        panic!("a server stream answers a stream");
    };
    let item = items.message().await.expect("an item").expect("one item");
    assert_eq!(item, binary(&[1, b'x', b'y']));
    assert_eq!(items.message().await.expect("a clean end"), None);
}
