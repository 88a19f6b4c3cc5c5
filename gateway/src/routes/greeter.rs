//! The original gateway's hand-written greeter routes, answering exactly as its README shows:
//!
//! ```text
//! $ curl http://localhost:8282/greeter/greet/Max
//! "Hello, Max"
//! $ curl -X POST http://localhost:8282/greeter/sendPostcard/Max/World/Hello
//! {"PictureURL":"","Address":"World","Recipient":"Max","Message":"Hello"}
//! ```
//!
//! They call the typed `GreeterClient` (interface substitution: the same `Greeter` trait as
//! the local implementation). `POST /greeter/greet` and `GET /greeter/check` need no route of
//! their own: the generic call and the legacy proxy answer them.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use greeter::{Greeter, Postcard};
use serde::Serialize;

use crate::Shared;
use crate::error::ApiError;

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
/// 400 in the gateway's JSON shape.
fn bad_path(rejection: PathRejection) -> ApiError {
    ApiError::bad_request(format!("bad path: {}", rejection.body_text()))
}

/// `GET /greeter/greet/{name}` → `"Hello, <name>"`.
pub async fn greet(
    State(shared): State<Arc<Shared>>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<String>, ApiError> {
    let Path(name) = name.map_err(bad_path)?;
    let greeting = shared
        .greeter
        .greet(name)
        .await
        .map_err(|status| ApiError::from_call(status, "greeter"))?;
    Ok(Json(greeting))
}

/// `GET /greeter/greet/` → `"Hello, "`: the empty name, which the generic route takes too.
pub async fn greet_nobody(State(shared): State<Arc<Shared>>) -> Result<Json<String>, ApiError> {
    let greeting = shared
        .greeter
        .greet(String::new())
        .await
        .map_err(|status| ApiError::from_call(status, "greeter"))?;
    Ok(Json(greeting))
}

/// `POST /greeter/sendPostcard/{recipient}/{address}/{message}` → the postcard as sent.
pub async fn send_postcard(
    State(shared): State<Arc<Shared>>,
    segments: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Json<GoPostcard>, ApiError> {
    let Path((recipient, address, message)) = segments.map_err(bad_path)?;
    let card = Postcard {
        picture_url: String::new(),
        address,
        recipient,
        message,
    };
    let sent = shared
        .greeter
        .send_postcard(card)
        .await
        .map_err(|status| ApiError::from_call(status, "greeter"))?;
    Ok(Json(sent.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
