#![warn(missing_docs)]
//! The concierge service: welcomes groups of guests by calling the greeter for each one.
//!
//! It holds a [`GreeterClient`], which implements the same [`Greeter`] trait as the greeter
//! itself; the concierge is generic over that trait, so it runs the same against the
//! in-process implementation and against replicas across the mesh.
//!
//! ```
//! use concierge::{Concierge, ConciergeClient, ConciergeServer, ConciergeService};
//! use greeter::GreeterService;
//! use meshrpc::Channel;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! // A monolith: the concierge calls a local greeter...
//! let local = ConciergeService::new(GreeterService);
//! let client = ConciergeClient::new(Channel::local(ConciergeServer::new(local)));
//! assert_eq!(client.welcome(vec!["Ada".into()]).await.unwrap(), ["Hello, Ada"]);
//! // ...and split into services it calls `node.client::<GreeterClient>()` instead.
//! # });
//! ```

use greeter::Greeter;
pub use greeter::GreeterClient;
use meshrpc::Status;

meshrpc::include_services!("concierge");

/// The most guests one call may welcome.
pub const MAX_GUESTS: usize = 100;

/// The concierge, over any implementation of [`Greeter`].
#[derive(Debug, Clone)]
pub struct ConciergeService<G> {
    greeter: G,
}

impl<G: Greeter + Send + Sync + 'static> ConciergeService<G> {
    /// A concierge that asks `greeter` to greet each guest.
    pub fn new(greeter: G) -> ConciergeService<G> {
        ConciergeService { greeter }
    }
}

impl<G: Greeter + Send + Sync + 'static> Concierge for ConciergeService<G> {
    async fn welcome(&self, guests: Vec<String>) -> Result<Vec<String>, Status> {
        if guests.len() > MAX_GUESTS {
            return Err(Status::invalid_argument(format!(
                "{} guests is more than the {MAX_GUESTS} a concierge welcomes at once",
                guests.len()
            )));
        }
        let mut greetings = Vec::with_capacity(guests.len());
        for guest in guests {
            // Each nested call inherits the remaining deadline of this one.
            greetings.push(self.greeter.greet(guest).await?);
        }
        Ok(greetings)
    }
}

#[cfg(test)]
mod tests {
    use greeter::{GreeterServer, GreeterService};
    use meshrpc::{Channel, Code};

    use super::*;

    #[tokio::test]
    async fn welcome_greets_every_guest_in_order() {
        let concierge = ConciergeService::new(GreeterClient::new(Channel::local(
            GreeterServer::new(GreeterService),
        )));
        let greetings = concierge
            .welcome(vec!["Ada".into(), "Max".into()])
            .await
            .expect("welcomes");
        assert_eq!(greetings, ["Hello, Ada", "Hello, Max"]);
    }

    #[tokio::test]
    async fn too_many_guests_is_an_invalid_argument() {
        let concierge = ConciergeService::new(GreeterService);
        let error = concierge
            .welcome(vec![String::new(); MAX_GUESTS + 1])
            .await
            .expect_err("too many");
        assert_eq!(error.code(), Code::InvalidArgument);
    }
}
