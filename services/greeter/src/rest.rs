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
//! [`document`] describes them (and the legacy `GET /greeter/check`) for the gateway's OpenAPI
//! document.
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
use serde_json::{Map, Value, json};

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

/// A string with a character that is not white space (Rust's `char::is_whitespace`): what the
/// greeter demands of a recipient.
const NOT_BLANK: &str = "[^\\t\\n\\u000b\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";

/// Adds the REST routes and the legacy `GET /greeter/check` to an OpenAPI document's `paths`,
/// and the greeter's own rule for postcards (a recipient that is not blank), which its
/// manifest cannot state, to the `greeter.Postcard` schema among its `schemas`: what the
/// gateway's `/openapi.json` shows with the routes mounted (`Extension::with_openapi`).
pub fn document(paths: &mut Map<String, Value>, schemas: &mut Map<String, Value>) {
    if let Some(recipient) = schemas
        .get_mut("greeter.Postcard")
        .and_then(|postcard| postcard.pointer_mut("/properties/recipient"))
    {
        recipient["pattern"] = Value::from(NOT_BLANK);
    }
    let text = |name: &str, doc: &str| {
        json!({ "name": name, "in": "path", "required": true, "description": doc,
                "schema": { "type": "string", "minLength": 1 } })
    };
    let mut recipient = text("recipient", "Who receives it; must not be blank.");
    recipient["schema"]["pattern"] = Value::from(NOT_BLANK);
    paths.insert(
        "/greeter/greet/{name}".to_owned(),
        json!({ "get": {
            "operationId": "greeter.greet.rest",
            "tags": ["greeter"],
            "summary": "Says hello to `name`, as the original gateway did.",
            "parameters": [{ "name": "name", "in": "path", "required": true,
                             "description": "Who to greet (may be empty: `/greeter/greet/`).",
                             "schema": { "type": "string" } }],
            "responses": {
                "200": { "description": "The greeting, a JSON string.",
                         "content": { "application/json": { "schema": { "type": "string" } } } },
                "default": { "$ref": "#/components/responses/Error" }
            }
        }}),
    );
    paths.insert(
        "/greeter/sendPostcard/{recipient}/{address}/{message}".to_owned(),
        json!({ "post": {
            "operationId": "greeter.send_postcard.rest",
            "tags": ["greeter"],
            "summary": "Sends a postcard without a picture, as the original gateway did.",
            "parameters": [
                recipient,
                text("address", "The postal address."),
                text("message", "The text on the back."),
            ],
            "responses": {
                "200": { "description": "The postcard as sent, with Go's field names.",
                         "content": { "application/json": { "schema": {
                             "type": "object",
                             "properties": {
                                 "PictureURL": { "type": "string" },
                                 "Address": { "type": "string" },
                                 "Recipient": { "type": "string" },
                                 "Message": { "type": "string" }
                             },
                             "required": ["PictureURL", "Address", "Recipient", "Message"],
                             "additionalProperties": false
                         } } } },
                "default": { "$ref": "#/components/responses/Error" }
            }
        }}),
    );
    paths.insert(
        "/greeter/check".to_owned(),
        json!({ "get": {
            "operationId": "greeter.check",
            "tags": ["greeter"],
            "summary": "The greeter's legacy health check, forwarded to one replica.",
            "responses": {
                "200": { "description": "`All ok! <RFC 3339 time>`.",
                         "content": { "text/plain": { "schema": {
                             "type": "string", "pattern": "^All ok! " } } } },
                "default": { "$ref": "#/components/responses/Error" }
            }
        }}),
    );
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

    #[test]
    fn the_document_adds_the_routes_and_the_recipient_rule() {
        let mut paths = Map::new();
        let mut schemas = Map::new();
        schemas.insert(
            "greeter.Postcard".to_owned(),
            json!({"type": "object", "properties": {"recipient": {"type": "string"}}}),
        );
        document(&mut paths, &mut schemas);
        let mut routes: Vec<&String> = paths.keys().collect();
        routes.sort();
        assert_eq!(
            routes,
            [
                "/greeter/check",
                "/greeter/greet/{name}",
                "/greeter/sendPostcard/{recipient}/{address}/{message}"
            ]
        );
        assert_eq!(
            schemas["greeter.Postcard"]["properties"]["recipient"]["pattern"],
            NOT_BLANK
        );
    }

    #[tokio::test]
    async fn a_path_that_is_not_text_is_a_bad_request() {
        let (status, body, _) = answer("GET", "/greeter/greet/%FF").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("bad path"), "{body}");
    }
}
