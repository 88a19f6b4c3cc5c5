//! A raw meshrpc peer for the hostile tests: it speaks QUIC and mutual TLS properly, but writes
//! whatever bytes a test gives it on a stream and hands back the frames the node answered with.
//! Also: the frame builders those tests use, the worked examples of `docs/PROTOCOL.md` and a
//! small `greeter` service that answers them.
#![allow(dead_code, unreachable_pub)]

pub mod frame_check;
pub mod item_check;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use meshrpc::bytes::{Bytes, BytesMut};
use meshrpc::codec::{decode_request, encode};
use meshrpc::transport::endpoint::build_endpoint;
use meshrpc::wire::{CallHeader, Frame, FrameDecoder, FrameKind, StatusBody, encode_frame};
use meshrpc::{
    BoxFuture, Code, Dispatch, FieldSpec, Limits, Metadata, MethodSpec, ServiceSpec, Status,
    TlsMaterial,
};
use serde::{Deserialize, Serialize};

/// The cluster every test node joins.
pub const CLUSTER: &str = "test";

/// The TLS server name of the test cluster's nodes.
pub const SERVER_NAME: &str = "test.meshrpc";

/// The longest a test waits for any one network event before it fails.
pub const WAIT: Duration = Duration::from_secs(5);

/// The most reply bytes a test reads from one stream.
const MAX_REPLY: usize = 1024 * 1024;

/// A peer with a valid certificate that writes raw bytes on its streams.
#[derive(Debug)]
pub struct RawPeer {
    pub endpoint: quinn::Endpoint,
    pub connection: quinn::Connection,
}

impl RawPeer {
    /// Connects to `server` with a certificate from the test cluster's dev CA under `state`.
    pub async fn connect(state: &Path, server: SocketAddr) -> RawPeer {
        let tls = TlsMaterial::dev(state, CLUSTER, "raw").expect("dev TLS material");
        RawPeer::connect_with(&tls, server)
            .await
            .expect("a peer with a valid certificate connects")
    }

    /// Connects to `server` presenting `tls`; the error says why the connection failed.
    pub async fn connect_with(tls: &TlsMaterial, server: SocketAddr) -> Result<RawPeer, String> {
        RawPeer::connect_from(raw_endpoint(tls), server).await
    }

    /// Connects to `server` from `endpoint` (with its default client configuration), waiting at
    /// most [`WAIT`] for the handshake; the error says why the connection failed.
    pub async fn connect_from(
        endpoint: quinn::Endpoint,
        server: SocketAddr,
    ) -> Result<RawPeer, String> {
        let connecting = endpoint
            .connect(server, SERVER_NAME)
            .map_err(|error| format!("connect: {error}"))?;
        let connection = tokio::time::timeout(WAIT, connecting)
            .await
            .map_err(|_| "no handshake within the wait".to_owned())?
            .map_err(|error| format!("handshake: {error}"))?;
        Ok(RawPeer {
            endpoint,
            connection,
        })
    }

    /// Opens a stream, writes `bytes`, ends the stream and reads the whole answer.
    pub async fn exchange(&self, bytes: &[u8]) -> Answer {
        let (mut send, recv) = tokio::time::timeout(WAIT, self.connection.open_bi())
            .await
            .expect("a stream opens within the wait")
            .expect("the connection is alive");
        // The node may stop our sending half as soon as it has seen enough; that is not an
        // error of the test, the answer says what happened.
        let _ = send.write_all(bytes).await;
        let _ = send.finish();
        read_answer(recv).await
    }

    /// A well-formed `probe.add` call on a new stream of this connection; panics unless it
    /// succeeds, proving the connection survived whatever came before.
    pub async fn assert_serves(&self) {
        let answer = self.exchange(&add_call(20, 22)).await;
        answer.assert_ok();
        let reply: crate::common::Reply =
            rmp_serde::from_slice(answer.payload().expect("payload")).expect("the reply decodes");
        assert_eq!(reply.result, 42);
    }
}

/// A client endpoint on loopback that presents `tls`.
pub fn raw_endpoint(tls: &TlsMaterial) -> quinn::Endpoint {
    build_endpoint(
        "127.0.0.1:0".parse().expect("address"),
        tls,
        CLUSTER,
        &Limits::default(),
    )
    .expect("endpoint")
}

/// Reads a stream to its end (bounded by [`WAIT`]) and decodes the frames on it.
pub async fn read_answer(mut recv: quinn::RecvStream) -> Answer {
    let bytes = match tokio::time::timeout(WAIT, recv.read_to_end(MAX_REPLY)).await {
        Err(_) => panic!("the node did not end the reply within {WAIT:?}"),
        Ok(Err(error)) => {
            return Answer {
                bytes: Vec::new(),
                frames: Vec::new(),
                error: Some(format!("{error} ({error:?})")),
            };
        }
        Ok(Ok(bytes)) => bytes,
    };
    let decoder = FrameDecoder::new(Limits::default().max_message_size);
    let mut buffer = BytesMut::from(&bytes[..]);
    let mut frames = Vec::new();
    let error = loop {
        match decoder.decode(&mut buffer) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => {
                break decoder
                    .finish(&buffer)
                    .err()
                    .map(|e| format!("undecodable reply: {e}"));
            }
            Err(error) => break Some(format!("undecodable reply: {error}")),
        }
    };
    Answer {
        bytes,
        frames,
        error,
    }
}

/// What came back on one stream.
#[derive(Debug)]
pub struct Answer {
    /// The raw bytes of the reply.
    pub bytes: Vec<u8>,
    /// The reply, decoded.
    pub frames: Vec<Frame>,
    /// Why reading or decoding failed, if it did (stream reset, connection lost, not frames).
    pub error: Option<String>,
}

impl Answer {
    /// The final `STATUS` frame, decoded; panics with the whole answer if there is none.
    pub fn status(&self) -> StatusBody {
        let last = self
            .frames
            .last()
            .unwrap_or_else(|| panic!("no frames in the answer: {self:?}"));
        assert_eq!(
            last.kind,
            FrameKind::Status,
            "the reply ends with STATUS: {self:?}"
        );
        rmp_serde::from_slice(&last.body).expect("the STATUS body decodes")
    }

    /// The payload of the reply's `DATA` frame, if it has one.
    pub fn payload(&self) -> Option<&Bytes> {
        self.frames
            .iter()
            .find(|frame| frame.kind == FrameKind::Data)
            .map(|frame| &frame.body)
    }

    /// Asserts the call failed with `code`, no payload, and a message containing `needle`.
    pub fn assert_status(&self, code: Code, needle: &str) {
        let status = self.status();
        assert_eq!(
            Code::from_u32(status.code),
            code,
            "status code (message: {:?})",
            status.message
        );
        assert!(
            status.message.contains(needle),
            "the message {:?} should mention {needle:?}",
            status.message
        );
        assert_eq!(
            self.frames.len(),
            1,
            "an error reply is a lone STATUS: {self:?}"
        );
        assert!(!status.refused, "not a refusal: {status:?}");
    }

    /// Asserts the call succeeded: one `DATA` frame, then `STATUS` ok.
    pub fn assert_ok(&self) {
        let status = self.status();
        assert!(status.is_ok(), "the call should succeed: {status:?}");
        assert_eq!(self.frames.len(), 2, "DATA then STATUS: {self:?}");
        assert_eq!(self.frames[0].kind, FrameKind::Data);
    }
}

/// One frame: `kind`, the body's length as a big-endian u32, the body.
pub fn frame(kind: FrameKind, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(kind, body, &mut out);
    out.to_vec()
}

/// A frame prefix alone: the kind byte and a length, with no body behind it.
pub fn prefix(kind: u8, len: u32) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&len.to_be_bytes());
    out
}

/// A `CALL` frame for `service.method` with an optional deadline.
pub fn call_frame(service: &str, method: &str, deadline_ms: Option<u64>) -> Vec<u8> {
    header_frame(&CallHeader {
        service: service.to_owned().into(),
        method: method.to_owned().into(),
        deadline_ms,
        metadata: Metadata::new(),
        sticky_key: None,
    })
}

/// A `CALL` frame carrying `header`.
pub fn header_frame(header: &CallHeader) -> Vec<u8> {
    frame(
        FrameKind::Call,
        &rmp_serde::to_vec_named(header).expect("the header encodes"),
    )
}

/// A `DATA` frame carrying `value` as a MessagePack map.
pub fn data_frame<T: Serialize>(value: &T) -> Vec<u8> {
    frame(
        FrameKind::Data,
        &encode(value).expect("the payload encodes"),
    )
}

/// A complete, well-formed `probe.add` request.
pub fn add_call(a: i64, b: i64) -> Vec<u8> {
    [
        call_frame("probe", "add", Some(5_000)),
        data_frame(&crate::common::AddRequest { a, b }),
    ]
    .concat()
}

/// The bytes of the hex block labelled `name` in `docs/PROTOCOL.md`: a fenced block opened by
/// the line "```hex <name>", hex byte pairs separated by white space, `#` starting a comment.
pub fn documented_example(name: &str) -> Vec<u8> {
    const PROTOCOL: &str = include_str!("../../../docs/PROTOCOL.md");
    let opening = format!("```hex {name}");
    let mut lines = PROTOCOL.lines().skip_while(|line| line.trim() != opening);
    assert!(
        lines.next().is_some(),
        "docs/PROTOCOL.md has no block opened by {opening:?}"
    );
    let mut bytes = Vec::new();
    for line in lines.take_while(|line| line.trim() != "```") {
        let data = line.split('#').next().unwrap_or_default();
        for pair in data.split_whitespace() {
            let byte = u8::from_str_radix(pair, 16)
                .unwrap_or_else(|_| panic!("{pair:?} in block {name:?} is not a hex byte"));
            bytes.push(byte);
        }
    }
    bytes
}

/// The documented examples of `meshrpc.node` (docs/PROTOCOL.md, section 14).
pub const NODE_EXAMPLES: [&str; 2] = ["ping-request", "ping-reply"];

/// The names of the documented examples, which are also the fuzzing seeds.
pub const EXAMPLES: [&str; 5] = [
    "greet-request",
    "greet-reply",
    "error-reply",
    "refusal-reply",
    "traced-request",
];

macro_rules! greeter_method {
    ($name:literal, $param:literal, $param_type:literal, $field:literal, $result:literal, $index:literal) => {
        MethodSpec {
            service: "greeter",
            name: $name,
            doc: "",
            idempotent: true,
            timeout: None,
            attempt_timeout: None,
            hedge_after: None,
            params: &[FieldSpec {
                name: $param,
                rust_type: $param_type,
            }],
            result_field: $field,
            result_type: $result,
            kind: meshrpc::MethodKind::Unary,
            index: $index,
        }
    };
}

/// The `greeter` of `docs/PROTOCOL.md`'s examples, as `services.toml` would describe it:
/// `greet(name: String) -> String` (returns `message`) and `send_postcard(card: Postcard)`.
pub static GREETER_SPEC: ServiceSpec = ServiceSpec {
    name: "greeter",
    doc: "Greets people and sends postcards.",
    methods: &[
        greeter_method!("greet", "name", "String", "message", "String", 0),
        greeter_method!("send_postcard", "card", "Postcard", "result", "Postcard", 1),
    ],
    schema_hash: 2,
    manifest: "",
    descriptor: "{}",
    use_schemas: &[],
};

/// The request map of `greeter.greet`.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct GreetRequest {
    pub name: String,
}

/// The response map of `greeter.greet`: one field named by the manifest's `returns`.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct GreetResponse {
    pub message: String,
}

/// A greeter that answers `greet` with "Hello, <name>", as the original README shows.
#[derive(Debug, Clone, Copy)]
pub struct Greeter;

impl Dispatch for Greeter {
    fn spec(&self) -> &'static ServiceSpec {
        &GREETER_SPEC
    }

    fn dispatch(
        &self,
        method: &'static meshrpc::MethodSpec,
        request: Bytes,
        _stream: Option<meshrpc::Streaming<Bytes>>,
    ) -> BoxFuture<'static, Result<meshrpc::Body, Status>> {
        let method = method.name;
        Box::pin(async move {
            match method {
                "greet" => {
                    let request: GreetRequest = decode_request("greet", &request)?;
                    encode(&GreetResponse {
                        message: format!("Hello, {}", request.name),
                    })
                    .map(meshrpc::Body::Message)
                }
                other => Err(meshrpc::service::unknown_method(&GREETER_SPEC, other)),
            }
        })
    }
}
