//! The original gateway's hand-written REST routes for the greeter, answering exactly as its
//! README shows:
//!
//! ```text
//! $ curl http://localhost:8282/greeter/greet/Max
//! "Hello, Max"
//! $ curl -X POST http://localhost:8282/greeter/sendPostcard/Max/World/Hello
//! {"PictureURL":"","Address":"World","Recipient":"Max","Message":"Hello"}
//! ```
//!
//! [`router`] builds them over a [`GreeterClient`]; the `mesh-api` gateway mounts them as an
//! extension (`gateway::Extension`). `POST /greeter/greet` and `GET /greeter/check` need no
//! route of their own: the gateway's generic call and legacy proxy answer them.
//!
//! A failed call is answered with [`CallFailed`]: the status's HTTP code and
//! `{"error":"<message>","code":"<status name>"}`, with the [`Status`] itself in the response's
//! extensions, so a gateway can render it in its own error shape (and keep mesh addresses out
//! of what callers see).

use axum::Json;
use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use meshrpc::Status;
use serde::Serialize;

use crate::{Greeter, GreeterClient, Postcard};

/// The REST routes, calling the greeter through `client`:
///
/// - `GET /greeter/greet/{name}` → `"Hello, <name>"`;
/// - `GET /greeter/greet/` → `"Hello, "` (the empty name, as `POST /greeter/greet` takes it);
/// - `POST /greeter/sendPostcard/{recipient}/{address}/{message}` → the postcard as sent, with
///   the Go service's field names ([`GoPostcard`]).
pub fn router(client: GreeterClient) -> Router {
    Router::new()
        .route("/greeter/greet/{name}", get(greet))
        .route("/greeter/greet/", get(greet_nobody))
        .route(
            "/greeter/sendPostcard/{recipient}/{address}/{message}",
            post(send_postcard),
        )
        .with_state(client)
}

/// A failed request: the call's (or the path's) [`Status`], answered with its HTTP code and
/// `{"error":"<message>","code":"<status name>"}`; the status rides along in the response's
/// extensions.
#[derive(Debug, Clone)]
pub struct CallFailed(pub Status);

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    code: &'a str,
}

impl IntoResponse for CallFailed {
    fn into_response(self) -> Response {
        let code = self.0.code();
        let status =
            StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = Json(ErrorBody {
            error: self.0.message(),
            code: code.as_str(),
        });
        let mut response = (status, body).into_response();
        response.extensions_mut().insert(self.0);
        response
    }
}

/// A postcard as the original Go service encoded it: Go field names, in Go field order.
#[derive(Debug, Serialize)]
pub struct GoPostcard {
    /// `picture_url`.
    #[serde(rename = "PictureURL")]
    pub picture_url: String,
    /// `address`.
    #[serde(rename = "Address")]
    pub address: String,
    /// `recipient`.
    #[serde(rename = "Recipient")]
    pub recipient: String,
    /// `message`.
    #[serde(rename = "Message")]
    pub message: String,
}

impl From<Postcard> for GoPostcard {
    fn from(card: Postcard) -> GoPostcard {
        GoPostcard {
            picture_url: card.picture_url,
            address: card.address,
            recipient: card.recipient,
            message: card.message,
        }
    }
}

/// A path the router matched but whose segments are not UTF-8 text once decoded (`%FF`): a
/// 400 `invalid_argument`.
fn bad_path(rejection: PathRejection) -> CallFailed {
    CallFailed(Status::invalid_argument(format!(
        "bad path: {}",
        rejection.body_text()
    )))
}

/// `GET /greeter/greet/{name}` → `"Hello, <name>"`.
async fn greet(
    State(client): State<GreeterClient>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<String>, CallFailed> {
    let Path(name) = name.map_err(bad_path)?;
    Ok(Json(client.greet(name).await.map_err(CallFailed)?))
}

/// `GET /greeter/greet/` → `"Hello, "`.
async fn greet_nobody(State(client): State<GreeterClient>) -> Result<Json<String>, CallFailed> {
    Ok(Json(client.greet(String::new()).await.map_err(CallFailed)?))
}

/// `POST /greeter/sendPostcard/{recipient}/{address}/{message}` → the postcard as sent.
async fn send_postcard(
    State(client): State<GreeterClient>,
    segments: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Json<GoPostcard>, CallFailed> {
    let Path((recipient, address, message)) = segments.map_err(bad_path)?;
    let card = Postcard {
        picture_url: String::new(),
        address,
        recipient,
        message,
    };
    let sent = client.send_postcard(card).await.map_err(CallFailed)?;
    Ok(Json(sent.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GreeterServer, GreeterService};
    use axum::body::Body;
    use axum::http::Request;
    use meshrpc::{Channel, Code};
    use tower::ServiceExt;

    fn routes() -> Router {
        router(GreeterClient::new(Channel::local(GreeterServer::new(
            GreeterService,
        ))))
    }

    async fn answer(method: &str, path: &str) -> (StatusCode, String, Option<Status>) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .expect("a request");
        let response = routes().oneshot(request).await.expect("infallible");
        let status = response.status();
        let carried = response.extensions().get::<Status>().cloned();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("a body");
        (
            status,
            String::from_utf8_lossy(&bytes).into_owned(),
            carried,
        )
    }

    #[test]
    fn a_postcard_is_encoded_with_go_field_names_in_go_order() {
        let card = GoPostcard::from(Postcard {
            picture_url: String::new(),
            address: "World".into(),
            recipient: "Max".into(),
            message: "Hello".into(),
        });
        assert_eq!(
            serde_json::to_string(&card).expect("encodes"),
            r#"{"PictureURL":"","Address":"World","Recipient":"Max","Message":"Hello"}"#
        );
    }

    #[tokio::test]
    async fn the_routes_answer_as_the_original_readme_shows() {
        assert_eq!(
            answer("GET", "/greeter/greet/Max").await.1,
            r#""Hello, Max""#
        );
        assert_eq!(answer("GET", "/greeter/greet/").await.1, r#""Hello, ""#);
        assert_eq!(
            answer("POST", "/greeter/sendPostcard/Max/World/Hello")
                .await
                .1,
            r#"{"PictureURL":"","Address":"World","Recipient":"Max","Message":"Hello"}"#
        );
    }

    #[tokio::test]
    async fn a_refused_call_answers_its_status_and_carries_it() {
        let (status, body, carried) = answer("POST", "/greeter/sendPostcard/%20/World/Hi").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body,
            r#"{"error":"a postcard needs a recipient","code":"invalid_argument"}"#
        );
        assert_eq!(carried.expect("the status").code(), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn a_path_that_is_not_text_is_a_bad_request() {
        let (status, body, _) = answer("GET", "/greeter/greet/%FF").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("bad path"), "{body}");
    }
}
