//! The crate's own types that the manifest lists in `use`.

/// How someone feels: a `use` type without a schema, sent as its serde impl writes it.
#[derive(Debug, Clone, PartialEq, meshrpc::serde::Serialize, meshrpc::serde::Deserialize)]
#[serde(crate = "meshrpc::serde")]
pub enum Mood {
    /// All is well.
    Happy,
    /// Something is wrong.
    Grumpy {
        /// What.
        reason: String,
    },
}

/// A postage stamp: a `use` type with a schema (`json_schema = true`), checked by the gateway.
#[derive(
    Debug,
    Clone,
    PartialEq,
    meshrpc::serde::Serialize,
    meshrpc::serde::Deserialize,
    meshrpc::schemars::JsonSchema,
)]
#[serde(crate = "meshrpc::serde")]
#[schemars(crate = "meshrpc::schemars")]
pub struct Stamp {
    /// Where it was issued.
    pub country: String,
    /// Its face value.
    pub value_cents: u32,
    /// What kind of stamp.
    pub kind: StampKind,
}

/// Kinds of stamps; reached only through [`Stamp`], so its schema is one of `Stamp`'s
/// definitions.
#[derive(
    Debug,
    Clone,
    PartialEq,
    meshrpc::serde::Serialize,
    meshrpc::serde::Deserialize,
    meshrpc::schemars::JsonSchema,
)]
#[serde(crate = "meshrpc::serde")]
#[schemars(crate = "meshrpc::schemars")]
pub enum StampKind {
    /// An everyday stamp.
    Plain,
    /// Issued for an anniversary.
    Commemorative {
        /// The year it celebrates.
        year: u16,
    },
}
