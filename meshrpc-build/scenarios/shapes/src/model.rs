//! A type of the crate itself, listed in the manifest's `use`.

/// How someone feels.
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
