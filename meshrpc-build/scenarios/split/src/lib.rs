//! Scenario: builder options. The crate only calls `calc` (client only) and only serves `store`
//! (server only); the trait, messages and spec of both are always generated.

meshrpc::include_services!("calc");
meshrpc::include_services!("store");
