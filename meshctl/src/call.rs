//! `meshctl call <service>.<method> '<json>'`: JSON in, JSON out. The request is checked
//! against the method's request schema and transcoded to MessagePack by the gateway's own
//! transcoder, so meshctl accepts exactly what `POST /{service}/{method}` accepts; the reply
//! comes back as the JSON map `{<result field>: value}`.
//!
//! The replica is chosen by meshrpc's balancer over the seed's view (by rendezvous hash with
//! `--sticky`, so the key lands where other callers' calls with that key land); a call refused
//! before it ran, or an idempotent call that failed on its replica, is tried on another one.
//!
//! Streaming methods speak the gateway's lines: a client stream's items are read from stdin,
//! one `{"item": <value>}` per line (the end of stdin ends the stream; a line that does not
//! match the item's schema aborts it), and a server stream's items are printed as they come,
//! one `{"item": <value>}` per line; a stream that ends with an error exits non-zero after the
//! items it delivered, so a cut stream never looks complete.

use std::io::Read;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use gateway::descriptors::DescriptorExt;
use gateway::transcode::CompiledSchema;
use meshrpc::channel::OutgoingStream;
use meshrpc::resilience::balance::{BalanceState, pick};
use meshrpc::streaming::DEFAULT_STREAM_CAPACITY;
use meshrpc::{Body, Call, Code, Status, Strategy, Streaming};
use serde_json::Value;

use crate::connect::Mesh;
use crate::failure::Failure;

/// The deadline of a call when neither `--deadline` nor the manifest sets one.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// Replicas one call is tried on at most.
const MAX_ATTEMPTS: usize = 3;

/// Flags of `meshctl call`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct CallArgs {
    /// The method: `<service>.<method>` (`greeter.greet`).
    target: String,

    /// The request as JSON (`'{"name": "Max"}'`); `{}` when left out.
    body: Option<String>,

    /// The request from elsewhere: `@file`, `@-` for stdin, or the JSON itself.
    #[arg(
        short = 'd',
        long = "data",
        value_name = "JSON|@FILE|@-",
        conflicts_with = "body"
    )]
    data: Option<String>,

    /// Keep calls with the same key on the same replica.
    #[arg(long, value_name = "KEY")]
    sticky: Option<String>,

    /// How long to wait for the answer (`500ms`, `2s`); default: the manifest's timeout, else
    /// 10s.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    deadline: Option<Duration>,

    /// Metadata sent with the call, `key=value` (repeatable).
    #[arg(long = "metadata", short = 'H', value_name = "KEY=VALUE")]
    metadata: Vec<String>,
}

impl CallArgs {
    /// The request body's text, read from the argument, a file or stdin.
    pub(crate) fn read_body(&self) -> Result<String, Failure> {
        let given = self.data.as_deref().or(self.body.as_deref());
        match given {
            None => Ok("{}".to_owned()),
            Some("@-") => {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(|error| {
                        Failure::input(format!("cannot read the request from stdin: {error}"))
                    })?;
                Ok(text)
            }
            Some(text) => match text.strip_prefix('@') {
                Some(path) => std::fs::read_to_string(path).map_err(|error| {
                    Failure::input(format!("cannot read the request from `{path}`: {error}"))
                }),
                None => Ok(text.to_owned()),
            },
        }
    }
}

/// Splits `greeter.greet` (or `meshrpc.node.ping`) at its last dot.
pub(crate) fn split_target(target: &str) -> Result<(&str, &str), Failure> {
    match target.rsplit_once('.') {
        Some((service, method)) if !service.is_empty() && !method.is_empty() => {
            Ok((service, method))
        }
        _ => Err(Failure::input(format!(
            "`{target}` is not `<service>.<method>`; write e.g. `greeter.greet`"
        ))),
    }
}

/// Parses `key=value` metadata.
fn parse_metadata(entries: &[String]) -> Result<Vec<(String, String)>, Failure> {
    entries
        .iter()
        .map(|entry| match entry.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                Ok((key.trim().to_owned(), value.to_owned()))
            }
            _ => Err(Failure::input(format!(
                "--metadata `{entry}` is not `key=value`"
            ))),
        })
        .collect()
}

/// Makes the call and prints the answer.
pub(crate) async fn run(
    mesh: &Mesh,
    args: CallArgs,
    body: String,
    json: bool,
) -> Result<(), Failure> {
    let (service, method_name) = split_target(&args.target)?;
    let metadata = parse_metadata(&args.metadata)?;
    let described = mesh.describe(service, None).await?;
    let descriptor = &described.descriptor;
    let Some(method) = descriptor.method(method_name) else {
        let names: Vec<&str> = descriptor.methods.iter().map(|m| m.name.as_str()).collect();
        return Err(Failure::input(format!(
            "service `{service}` has no method `{method_name}`; its methods are: {}",
            names.join(", ")
        )));
    };
    let payload =
        gateway::transcode::json_to_msgpack(body.as_bytes(), descriptor.request_schema(method))
            .map_err(|error| {
                Failure::input(format!("bad request for {service}.{method_name}: {error}"))
            })?;
    let deadline = args
        .deadline
        .or(method.timeout_ms.map(Duration::from_millis))
        .unwrap_or(DEFAULT_DEADLINE);

    let mut call = Call::new(
        service.to_owned(),
        method_name.to_owned(),
        Bytes::from(payload),
    );
    call.kind = method.kind;
    if method.kind.client_streams() {
        if args.data.as_deref() == Some("@-") {
            return Err(Failure::input(format!(
                "{service}.{method_name} takes a stream: its items come on stdin, one \
                 `{{\"item\": <value>}}` per line, so the request's other fields must be given \
                 as an argument or with --data @FILE"
            )));
        }
        let Some(item) = method.request_stream.as_ref() else {
            return Err(Failure::mesh(format!(
                "the descriptor of {service}.{method_name} has no request_stream schema"
            )));
        };
        let lines = CompiledSchema::stream_line(item, &descriptor.types);
        call.stream = Some(OutgoingStream::new(stdin_items(lines)));
    }
    call.idempotent = method.idempotent;
    call.sticky_key = args.sticky.clone();
    for (key, value) in metadata {
        call.metadata.insert(key, value);
    }
    let started = meshrpc::tokio::time::Instant::now();
    call.deadline = Some(started + deadline);

    let view = mesh.view();
    let state = BalanceState::default();
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut last: Option<Status> = None;
    for _ in 0..MAX_ATTEMPTS {
        let member = match pick(
            &view,
            service,
            Some(descriptor.hash()),
            args.sticky.as_deref(),
            Strategy::PeakEwma,
            &state,
            &|addr| tried.contains(&addr),
        ) {
            Ok(member) => member,
            Err(status) => {
                last.get_or_insert(status);
                break;
            }
        };
        let addr = member.id.addr;
        if tried.contains(&addr) {
            break;
        }
        tried.push(addr);
        let outcome = if method.kind == meshrpc::MethodKind::Unary {
            mesh.channel_to(addr)
                .call(call.clone())
                .await
                .map(Body::Message)
        } else {
            mesh.channel_to(addr).send(call.clone()).await
        };
        match outcome {
            Ok(Body::Message(reply)) => return print_reply(&reply, json),
            Ok(Body::Stream(items)) => return print_items(items, service, method_name).await,
            Err(status) => {
                // A client stream already being sent cannot be replayed.
                let replayable = call.stream.as_ref().is_none_or(|stream| !stream.is_taken());
                let again = (status.is_refused() && replayable)
                    || (call.idempotent
                        && replayable
                        && matches!(status.code(), Code::Unavailable)
                        && meshrpc::tokio::time::Instant::now() < started + deadline);
                last = Some(status);
                if !again {
                    break;
                }
            }
        }
    }
    let status = last.unwrap_or_else(|| Status::new(Code::Unavailable, "no replica was tried"));
    Err(Failure::status(status_message(
        service,
        method_name,
        &status,
    )))
}

/// `greeter.send_postcard answered invalid_argument: ...`, with details when they decode.
pub(crate) fn status_message(service: &str, method: &str, status: &Status) -> String {
    let mut message = format!(
        "{service}.{method} answered {}: {}",
        status.code().as_str(),
        status.message()
    );
    if let Some(details) = status.details() {
        match rmp_serde::from_slice::<Value>(details) {
            Ok(value) => message.push_str(&format!("\ndetails: {value}")),
            Err(_) => message.push_str(&format!("\ndetails: {} bytes", details.len())),
        }
    }
    message
}

/// The items of a client stream, read from stdin as lines `{"item": <value>}` checked against
/// `lines`; stdin's end finishes the stream, a bad line (or an unreadable stdin) aborts it with
/// `invalid_argument` naming the line.
fn stdin_items(lines: CompiledSchema) -> Streaming<Bytes> {
    let (sender, items) = Streaming::channel(DEFAULT_STREAM_CAPACITY);
    let (line_sender, mut line_receiver) =
        meshrpc::tokio::sync::mpsc::channel::<Result<String, String>>(DEFAULT_STREAM_CAPACITY);
    // A thread of its own: stdin is read with blocking calls.
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let line = line.map_err(|error| format!("cannot read stdin: {error}"));
            let failed = line.is_err();
            if line_sender.blocking_send(line).is_err() || failed {
                return;
            }
        }
    });
    meshrpc::tokio::spawn(async move {
        let mut number = 0usize;
        while let Some(line) = line_receiver.recv().await {
            number += 1;
            let item = line.and_then(|line| {
                if line.trim().is_empty() {
                    return Ok(None);
                }
                lines
                    .json_item_to_msgpack(line.as_bytes())
                    .map(|item| Some(Bytes::from(item)))
                    .map_err(|error| format!("stdin line {number}: {error}"))
            });
            match item {
                Ok(None) => {}
                Ok(Some(item)) => {
                    if sender.send(item).await.is_err() {
                        return;
                    }
                }
                Err(message) => {
                    sender.abort(Status::invalid_argument(message)).await;
                    return;
                }
            }
        }
        sender.finish();
    });
    items
}

/// Prints a server stream's items as they come, one `{"item": <value>}` per line; an error at
/// its end is the call's failure (after the items it delivered).
async fn print_items(
    mut items: Streaming<Bytes>,
    service: &str,
    method: &str,
) -> Result<(), Failure> {
    let mut count = 0usize;
    loop {
        match items.message().await {
            Ok(Some(item)) => {
                let line = gateway::transcode::msgpack_item_to_json(&item)
                    .map_err(|error| Failure::mesh(format!("unreadable item: {error}")))?;
                crate::failure::outln!("{}", String::from_utf8_lossy(&line));
                count += 1;
            }
            Ok(None) => return Ok(()),
            Err(status) => {
                return Err(Failure::status(format!(
                    "{} (after {count} items)",
                    status_message(service, method, &status)
                )));
            }
        }
    }
}

/// Prints the reply map as JSON (pretty, or one line with `--json`).
fn print_reply(reply: &[u8], json: bool) -> Result<(), Failure> {
    let envelope = gateway::transcode::msgpack_to_json_envelope(reply)
        .map_err(|error| Failure::mesh(error.to_string()))?;
    let mut value: Value = serde_json::from_slice(&envelope)
        .map_err(|error| Failure::mesh(format!("unreadable answer: {error}")))?;
    if let Some(map) = value.as_object_mut() {
        // The gateway's envelope has `error` first; a caller of the CLI only wants the answer.
        map.remove("error");
    }
    let text = if json {
        serde_json::to_string(&value)
    } else {
        serde_json::to_string_pretty(&value)
    }
    .map_err(|error| Failure::mesh(format!("cannot print the answer: {error}")))?;
    crate::failure::outln!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_at_the_last_dot() {
        assert_eq!(split_target("greeter.greet"), Ok(("greeter", "greet")));
        assert_eq!(
            split_target("meshrpc.node.ping"),
            Ok(("meshrpc.node", "ping"))
        );
        assert!(split_target("greeter").is_err());
        assert!(split_target("greeter.").is_err());
    }

    #[test]
    fn metadata_is_key_equals_value() {
        assert_eq!(
            parse_metadata(&["tenant=a=b".to_owned()]),
            Ok(vec![("tenant".to_owned(), "a=b".to_owned())])
        );
        assert!(parse_metadata(&["tenant".to_owned()]).is_err());
    }
}
