//! Per-call options a caller may set on a generated client.

use std::time::Duration;

use crate::metadata::Metadata;

/// The timeout used when neither the call nor the manifest sets one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Options for the calls made through one client value: timeout, sticky key and metadata.
///
/// ```
/// use std::time::Duration;
/// use meshrpc::CallOptions;
///
/// let options = CallOptions::new()
///     .timeout(Duration::from_millis(250))
///     .sticky_key("user-42")
///     .metadata("tenant", "acme");
/// assert_eq!(options.get_timeout(), Some(Duration::from_millis(250)));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallOptions {
    timeout: Option<Duration>,
    sticky_key: Option<String>,
    metadata: Metadata,
}

impl CallOptions {
    /// No options: the manifest's timeout (or [`DEFAULT_TIMEOUT`]), round-robin balancing.
    pub fn new() -> CallOptions {
        CallOptions::default()
    }

    /// Sets the call timeout, overriding the manifest's. A deadline inherited from the call
    /// being served still applies when it is earlier.
    pub fn timeout(mut self, timeout: Duration) -> CallOptions {
        self.timeout = Some(timeout);
        self
    }

    /// Routes every call with this key to the same replica for as long as it lives.
    pub fn sticky_key(mut self, key: impl Into<String>) -> CallOptions {
        self.sticky_key = Some(key.into());
        self
    }

    /// Adds a metadata pair sent with every call.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> CallOptions {
        self.metadata.insert(key, value);
        self
    }

    /// The timeout set on these options, if any.
    pub fn get_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The sticky key, if any.
    pub fn get_sticky_key(&self) -> Option<&str> {
        self.sticky_key.as_deref()
    }

    /// The metadata pairs.
    pub fn get_metadata(&self) -> &Metadata {
        &self.metadata
    }
}
