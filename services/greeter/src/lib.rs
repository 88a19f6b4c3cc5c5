#![warn(missing_docs)]
//! The greeter service: the generated `Greeter` trait, `GreeterServer`, `GreeterClient`,
//! `Postcard` and `GREETER_SPEC` (from `services.toml`), and [`GreeterService`], the
//! implementation that nodes publish.
//!
//! ```
//! use greeter::{Greeter, GreeterClient, GreeterServer, GreeterService};
//! use meshrpc::Channel;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let client = GreeterClient::new(Channel::local(GreeterServer::new(GreeterService)));
//! assert_eq!(client.greet("Max".into()).await.unwrap(), "Hello, Max");
//! # });
//! ```

use meshrpc::Status;

meshrpc::include_services!("greeter");

pub mod rest;

/// The greeter: says hello, and sends postcards that have a recipient.
#[derive(Debug, Clone, Copy, Default)]
pub struct GreeterService;

impl Greeter for GreeterService {
    async fn greet(&self, name: String) -> Result<String, Status> {
        Ok(format!("Hello, {name}"))
    }

    async fn send_postcard(&self, card: Postcard) -> Result<Postcard, Status> {
        if card.recipient.trim().is_empty() {
            return Err(Status::invalid_argument("a postcard needs a recipient"));
        }
        tracing::info!(
            recipient = %card.recipient,
            address = %card.address,
            picture_url = %card.picture_url,
            message = %card.message,
            "sending a postcard"
        );
        Ok(card)
    }
}

/// The greeter's legacy HTTP handlers, published over the mesh: `GET /check` answers
/// `All ok! <RFC 3339 time>`, as the original service always did.
pub fn http_handlers() -> axum::Router {
    axum::Router::new().route("/check", axum::routing::get(check))
}

async fn check() -> String {
    format!(
        "All ok! {}",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    )
}

#[cfg(test)]
mod tests {
    use meshrpc::{Channel, Code};

    use super::*;

    fn client() -> GreeterClient {
        GreeterClient::new(Channel::local(GreeterServer::new(GreeterService)))
    }

    fn postcard(recipient: &str) -> Postcard {
        Postcard {
            picture_url: "https://example.invalid/beach.jpg".into(),
            address: "1 Harbour Road".into(),
            recipient: recipient.into(),
            message: "Wish you were here".into(),
        }
    }

    #[tokio::test]
    async fn greet_says_hello_to_the_name() {
        assert_eq!(
            client().greet("Ada".into()).await.expect("greets"),
            "Hello, Ada"
        );
    }

    #[tokio::test]
    async fn a_postcard_with_a_recipient_is_sent_back_as_is() {
        let sent = client()
            .send_postcard(postcard("Ada"))
            .await
            .expect("sends");
        assert_eq!(sent, postcard("Ada"));
    }

    #[tokio::test]
    async fn a_postcard_without_a_recipient_is_an_invalid_argument() {
        let error = client()
            .send_postcard(postcard("  "))
            .await
            .expect_err("no recipient");
        assert_eq!(error.code(), Code::InvalidArgument);
        assert_eq!(error.message(), "a postcard needs a recipient");
    }

    #[test]
    fn the_spec_matches_the_manifest() {
        assert_eq!(GREETER_SPEC.name, "greeter");
        let greet = GREETER_SPEC.method("greet").expect("has greet");
        assert!(greet.idempotent);
        assert_eq!(greet.result_field, "message");
        let send = GREETER_SPEC
            .method("send_postcard")
            .expect("has send_postcard");
        assert!(!send.idempotent);
        assert_eq!(send.result_field, "card");
        assert_eq!(send.params[0].rust_type, "Postcard");
    }
}
