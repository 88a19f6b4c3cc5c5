//! Scenario: the complete example of `docs/MANIFEST.md`, generated from the document by
//! `build.rs`, in a crate whose only dependency is `meshrpc` (as the document's setup says).
//! The tests use what a newcomer's first service needs: ids as newtypes that key maps, a
//! recursive type, `use` types the gateway can check, and the trait as a `dyn` object.

pub mod model;

meshrpc::include_services!("greeter");
