//! Scenario: a crate whose manifest uses every type shape a signature may use, in two services.
//! The tests round-trip each through `Channel::local(ShapesServer::new(..))` and `ShapesClient`.

pub mod model;

meshrpc::include_services!("shapes");
meshrpc::include_services!("counter");
