//! Legacy HTTP handlers over the mesh: a service publishes any tower HTTP service (an axum
//! `Router`, say); other nodes send it HTTP/1.1 requests over a mesh stream that opens with an
//! `HTTP` frame naming the service. Bodies stream both ways; calls are balanced like RPCs.
//!
//! A member that refuses a tunnel (draining, or at its limit of calls) resets the stream
//! before reading the request, and a stopping member names the streams it never read when it
//! closes the connection. Either way the request never reached a handler: one without a body
//! is sent to another member, as a refused call is retried.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Either};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use quinn::{RecvStream, SendStream};
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};
use tracing::debug;

use crate::membership::Membership;
use crate::resilience::attempts::TailConfig;
use crate::resilience::balance::{BalanceState, Strategy, choose};
use crate::resilience::breaker::Guarded;
use crate::resilience::load::Measured;
use crate::resilience::retry::RetryPolicy;
use crate::server::Refusal;
use crate::status::{Code, Status};
use crate::transport::connections::Connections;
use crate::transport::goaway;
use crate::wire::{Frame, FrameKind, HttpHeader, encode_frame};

/// Errors of user HTTP services and bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type the tunnel hands back to HTTP services.
pub type HttpBody = UnsyncBoxBody<Bytes, BoxError>;

/// A published HTTP service, type-erased.
pub type HttpService = BoxCloneSyncService<Request<Incoming>, Response<HttpBody>, Infallible>;

/// Erases a user's HTTP service (an axum `Router`, any tower service over HTTP).
pub fn box_http_service<S, B>(service: S) -> HttpService
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let service = service
        .map_response(|response: Response<B>| {
            response.map(|body| body.map_err(Into::into).boxed_unsync())
        })
        .map_err(Into::<BoxError>::into);
    BoxCloneSyncService::new(tower::service_fn(move |request| {
        let service = service.clone();
        async move {
            Ok::<_, Infallible>(match service.oneshot(request).await {
                Ok(response) => response,
                Err(error) => text_response(500, &format!("handler failed: {error}")),
            })
        }
    }))
}

fn text_response(status: u16, text: &str) -> Response<HttpBody> {
    let body = http_body_util::Full::new(Bytes::from(text.to_owned()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    response
}

/// Refuses a tunnel stream unread: the caller may send the request to another member.
/// The handler of streams that open with an `HTTP` frame: each tunnel takes a permit from
/// `admission` (tunnels count against the call limit and drain like calls) and is served by the
/// published handlers it names.
pub(crate) fn tunnel_handler(
    services: Arc<HashMap<String, HttpService>>,
    admission: crate::server::Admission,
) -> crate::server::StreamHandler {
    Arc::new(move |_connection, frame, send, recv, read_ahead| {
        let services = services.clone();
        let admission = admission.clone();
        Box::pin(async move {
            match admission.admit() {
                Ok(_permit) => serve_tunnel(&services, frame, send, recv, read_ahead).await,
                Err(refusal) => refuse_tunnel(send, recv, refusal),
            }
        })
    })
}

pub(crate) fn refuse_tunnel(mut send: SendStream, mut recv: RecvStream, refusal: Refusal) {
    debug!(?refusal, "refused an HTTP tunnel");
    let _ = recv.stop(refusal.error_code());
    let _ = send.reset(refusal.error_code());
}

/// Serves a tunnel stream opened with `frame` using the matching published HTTP service.
pub(crate) async fn serve_tunnel(
    services: &HashMap<String, HttpService>,
    frame: Frame,
    send: SendStream,
    recv: RecvStream,
    read_ahead: Bytes,
) {
    let service = match crate::codec::from_slice_bounded::<HttpHeader>(
        &frame.body,
        crate::codec::MAX_HEADER_DEPTH,
    ) {
        Ok(header) => services.get(&header.service).cloned().ok_or(header.service),
        Err(error) => Err(format!("<malformed HTTP header: {error}>")),
    };
    // Request bytes that arrived with the opening frame come first.
    let reader = tokio::io::AsyncReadExt::chain(std::io::Cursor::new(read_ahead), recv);
    let io = TokioIo::new(tokio::io::join(reader, send));
    let handler = hyper::service::service_fn(move |request: Request<Incoming>| {
        let service = service.clone();
        async move {
            match service {
                Ok(service) => service.oneshot(request).await,
                Err(name) => Ok(text_response(
                    404,
                    &format!("no HTTP handler for service `{name}` on this node"),
                )),
            }
        }
    });
    // One request per stream (docs/PROTOCOL.md, section 11): a client may end its half (FIN)
    // right after its request, and the node answers it all the same (`half_close`), then
    // ends its own half after the response whatever the request's `Connection` header says
    // (`keep_alive(false)`).
    if let Err(error) = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .keep_alive(false)
        .serve_connection(io, handler)
        .await
    {
        debug!(%error, "HTTP tunnel ended with an error");
    }
}

/// Sends HTTP requests to the legacy handlers of one service, balanced over its members by
/// the node's strategy, retried by the node's retry rule and budget, each member behind its
/// load and breaker layers (the same machinery as RPCs). A request without a body and with an
/// idempotent method has an attempt timeout, as idempotent RPCs do; requests are never hedged
/// (a request body streams as it is sent).
#[derive(Debug, Clone)]
pub struct HttpClient {
    service: Arc<str>,
    membership: Membership,
    connections: Connections,
    strategy: Strategy,
    retry: RetryPolicy,
    tail: TailConfig,
    state: Arc<BalanceState>,
}

impl HttpClient {
    pub(crate) fn new(
        service: &str,
        membership: Membership,
        connections: Connections,
        strategy: Strategy,
        retry: RetryPolicy,
        tail: TailConfig,
        state: Arc<BalanceState>,
    ) -> HttpClient {
        HttpClient {
            service: service.into(),
            membership,
            connections,
            strategy,
            retry,
            tail,
            state,
        }
    }

    /// The service whose handlers this client reaches.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The attempt timeout of a request that can be sent again: as for RPCs, the node's
    /// factor × the handlers' observed p99 (time to the response head), at least its floor;
    /// none until enough requests were answered, or when attempt timeouts are off.
    fn attempt_timeout(&self) -> Option<Duration> {
        if !self.tail.attempt_timeouts {
            return None;
        }
        let p99 = self.state.latencies().p99()?;
        Some(
            p99.saturating_mul(self.tail.attempt_timeout_factor)
                .max(self.tail.attempt_timeout_floor),
        )
    }

    /// Sends `request` to a member serving the service's HTTP handlers. Members that cannot
    /// be reached are skipped before anything is sent. A request whose body was not sent yet
    /// (a body is streamed as it is sent, so it cannot be sent twice) also goes to the next
    /// member when one refused it unread (draining, or at its limit), or, if its method is
    /// idempotent (RFC 9110: GET, HEAD, OPTIONS, PUT, DELETE, TRACE), when the member failed
    /// before answering (it crashed, say), within the node's retry budget. Any other failure
    /// is returned.
    pub async fn send<B>(&self, request: Request<B>) -> Result<Response<Incoming>, Status>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = request.into_parts();
        let empty = body.is_end_stream();
        let idempotent = parts.method.is_idempotent();
        let body = Arc::new(std::sync::Mutex::new(Some(body)));
        let mut tried = Vec::new();
        self.retry.deposit();
        let mut attempts = 0;
        let mut last: Option<Status> = None;
        loop {
            attempts += 1;
            let view = self.membership.view();
            let (member, replicas) =
                match pick_http(&view, &self.service, self.strategy, &self.state, &tried) {
                    Ok(chosen) => chosen,
                    Err(status) => return Err(last.unwrap_or(status)),
                };
            tried.push(member);
            let tunnel = Tunnel {
                service: self.service.clone(),
                connections: self.connections.clone(),
                addr: member,
            };
            let mut endpoint = Guarded::new(
                Measured::new(tunnel, self.state.load(member)),
                member,
                replicas,
                self.state.breakers().clone(),
            );
            let started = tokio::time::Instant::now();
            let attempt = endpoint.call((parts.clone(), body.clone()));
            // Only a request that can be sent again (idempotent, no body) is abandoned.
            let overdue = (empty && idempotent && attempts < self.retry.max_attempts())
                .then(|| self.attempt_timeout())
                .flatten();
            let outcome = match overdue {
                None => attempt.await,
                Some(timeout) => {
                    let mut attempt = attempt;
                    tokio::select! {
                        outcome = &mut attempt => outcome,
                        _ = tokio::time::sleep(timeout) => {
                            self.state.breakers().record_timeout(member, replicas);
                            if self.retry.withdraw() {
                                // Dropping the attempt resets its stream; the next goes elsewhere.
                                last = Some(Status::unavailable(format!(
                                    "{member} did not answer within {timeout:?}"
                                )));
                                continue;
                            }
                            attempt.await
                        }
                    }
                }
            };
            let status = match outcome {
                Ok(response) => {
                    self.state.latencies().record(started.elapsed());
                    return Ok(response);
                }
                Err(status) => status,
            };
            // A body not taken yet (the stream never opened) or an empty one can go again.
            let replayable = empty || crate::lock(&body).is_some();
            match self
                .retry
                .retry_after(attempts, idempotent, replayable, &status, None)
            {
                Some(pause) => {
                    last = Some(status);
                    tokio::time::sleep(pause).await;
                }
                None => return Err(status),
            }
        }
    }
}

/// The request of one tunnel attempt: the head, and the body, taken by the attempt that
/// sends it.
type TunnelRequest<B> = (http::request::Parts, Arc<std::sync::Mutex<Option<B>>>);

/// The per-endpoint service of HTTP tunnels: one request over a new stream to one member.
struct Tunnel {
    service: Arc<str>,
    connections: Connections,
    addr: std::net::SocketAddr,
}

impl<B> Service<TunnelRequest<B>> for Tunnel
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Incoming>;
    type Error = Status;
    type Future = crate::BoxFuture<'static, Result<Response<Incoming>, Status>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Status>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, (parts, body): TunnelRequest<B>) -> Self::Future {
        let (service, connections, addr) =
            (self.service.clone(), self.connections.clone(), self.addr);
        Box::pin(async move {
            let streams = open(&connections, &service, addr).await?;
            let body = match crate::lock(&body).take() {
                Some(body) => Either::Left(body),
                None => Either::Right(http_body_util::Empty::new()),
            };
            exchange(addr, streams, Request::from_parts(parts, body)).await
        })
    }
}

/// Opens a tunnel stream to `addr` for `service`'s handlers.
async fn open(
    connections: &Connections,
    service: &str,
    addr: std::net::SocketAddr,
) -> Result<(SendStream, RecvStream), Status> {
    let connection = connections.get(addr).await?;
    let (mut send, recv) = connection.open_bi().await.map_err(|error| {
        Status::refused(
            Code::Unavailable,
            format!("cannot open a stream to {addr}: {error}"),
        )
    })?;
    let header = rmp_serde::to_vec_named(&HttpHeader {
        service: service.to_owned(),
    })
    .map_err(|error| Status::internal(error.to_string()))?;
    let mut frame = bytes::BytesMut::new();
    encode_frame(FrameKind::Http, &header, &mut frame);
    send.write_chunk(frame.freeze()).await.map_err(|error| {
        Status::refused(
            Code::Unavailable,
            format!("cannot write to {addr}: {error}"),
        )
    })?;
    Ok((send, recv))
}

/// One HTTP/1.1 request over an open tunnel stream.
async fn exchange<B>(
    addr: std::net::SocketAddr,
    (send, recv): (SendStream, RecvStream),
    request: Request<B>,
) -> Result<Response<Incoming>, Status>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let stream = send.id();
    let io = TokioIo::new(tokio::io::join(recv, send));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|error| Status::unavailable(format!("HTTP tunnel failed: {error}")))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            debug!(%error, "HTTP tunnel connection ended with an error");
        }
    });
    sender.send_request(request).await.map_err(|error| {
        if refused_unread(&error, stream) {
            Status::refused(
                Code::Unavailable,
                format!("{addr} refused the HTTP request unread (draining or at its limit)"),
            )
        } else {
            Status::unavailable(format!("HTTP request over the mesh failed: {error}"))
        }
    })
}

/// Whether `error`, from the HTTP exchange on tunnel `stream`, says that the member never read
/// the request: it refused the stream (see [`refuse_tunnel`]) or closed the connection
/// naming the stream unread.
fn refused_unread(error: &(dyn std::error::Error + 'static), stream: quinn::StreamId) -> bool {
    let refusal = |code: quinn::VarInt| {
        code == Refusal::Draining.error_code() || code == Refusal::Overloaded.error_code()
    };
    let mut next = Some(error);
    while let Some(error) = next {
        // quinn's stream errors reach hyper inside `io::Error`s, which hide them from `source`.
        if let Some(inner) = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if refused_unread(inner, stream) {
                return true;
            }
        }
        let refused = match error.downcast_ref::<quinn::ReadError>() {
            Some(quinn::ReadError::Reset(code)) => refusal(*code),
            Some(quinn::ReadError::ConnectionLost(lost)) => goaway::never_read(lost, stream),
            _ => match error.downcast_ref::<quinn::WriteError>() {
                Some(quinn::WriteError::Stopped(code)) => refusal(*code),
                Some(quinn::WriteError::ConnectionLost(lost)) => goaway::never_read(lost, stream),
                _ => false,
            },
        };
        if refused {
            return true;
        }
        next = error.source();
    }
    false
}

/// Chooses the member for one attempt at a request to `service`'s handlers by `strategy`,
/// skipping draining, ejected and already `tried` members as RPCs do; returns it and how many
/// members serve the handlers.
fn pick_http(
    view: &crate::membership::View,
    service: &str,
    strategy: Strategy,
    state: &BalanceState,
    tried: &[std::net::SocketAddr],
) -> Result<(std::net::SocketAddr, usize), Status> {
    state.forget_departed(view);
    let members: Vec<_> = view.serving_http(service).collect();
    if members.is_empty() {
        return Err(Status::refused(
            Code::Unavailable,
            format!("no live member serves HTTP for `{service}`"),
        ));
    }
    let replicas = members.len();
    let serving: Vec<_> = members.into_iter().filter(|m| m.accepts_calls()).collect();
    if serving.is_empty() {
        return Err(Status::refused(
            Code::Unavailable,
            format!("every member serving HTTP for `{service}` is draining; try again shortly"),
        ));
    }
    let chosen = choose(&serving, None, strategy, state, &|addr| {
        tried.contains(&addr)
    });
    Ok((chosen.id.addr, replicas))
}
