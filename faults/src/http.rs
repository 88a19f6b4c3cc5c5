//! HTTP for the gateway tests: a small client with a bounded wait, and raw TCP for clients
//! that misbehave (slow headers, slow bodies, oversized headers).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// An HTTP answer with its body as text.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: String,
}

/// A client that keeps connections alive between requests.
pub type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// A pooled HTTP/1.1 client.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends one request; an error (or no answer within `wait`) comes back as `Err`.
pub async fn request(
    client: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
    wait: Duration,
) -> Result<Answer, String> {
    let mut request = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(body.into()))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(Answer {
            status,
            body: String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        })
    };
    tokio::time::timeout(wait, exchange)
        .await
        .map_err(|_| format!("{method} {url}: no answer within {wait:?}"))?
}

/// `GET http://addr/path` with a fresh client, waiting at most 10 s.
pub async fn get(addr: SocketAddr, path: &str) -> Result<Answer, String> {
    request(
        &client(),
        "GET",
        &format!("http://{addr}{path}"),
        &[],
        Bytes::new(),
        Duration::from_secs(10),
    )
    .await
}

/// The value of the Prometheus sample whose line starts with `prefix` (name and labels).
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// GETs the gateway's greet route for `name` and judges the answer as
/// [`crate::load::greeting`] judges an RPC greeting: a 200 with the JSON string
/// `"Hello, <name>"` is right, another 200 is wrong, anything else failed.
pub async fn greet_through_gateway(
    client: &HttpClient,
    gateway: SocketAddr,
    name: &str,
    wait: Duration,
) -> crate::load::Outcome {
    use crate::load::Outcome;
    let url = format!("http://{gateway}/greeter/greet/{name}");
    match request(client, "GET", &url, &[], Bytes::new(), wait).await {
        Ok(answer) if answer.status == 200 && answer.body == format!("\"Hello, {name}\"") => {
            Outcome::Ok
        }
        Ok(answer) if answer.status == 200 => Outcome::Wrong(answer.body),
        Ok(answer) => Outcome::Failed(format!("{}: {}", answer.status, answer.body)),
        Err(error) => Outcome::Failed(error),
    }
}

/// GETs the greeter's legacy `/check` handler through the gateway (an HTTP tunnel over the
/// mesh): a 200 whose body starts with `All ok!` is right, another 200 is wrong, anything else
/// failed.
pub async fn check_through_gateway(
    client: &HttpClient,
    gateway: SocketAddr,
    wait: Duration,
) -> crate::load::Outcome {
    use crate::load::Outcome;
    let url = format!("http://{gateway}/greeter/check");
    match request(client, "GET", &url, &[], Bytes::new(), wait).await {
        Ok(answer) if answer.status == 200 && answer.body.starts_with("All ok!") => Outcome::Ok,
        Ok(answer) if answer.status == 200 => Outcome::Wrong(answer.body),
        Ok(answer) => Outcome::Failed(format!("{}: {}", answer.status, answer.body)),
        Err(error) => Outcome::Failed(error),
    }
}
