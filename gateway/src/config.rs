//! The gateway's own settings and their flags (the mesh flags are `meshrpc::cli::NodeArgs`).

use std::net::SocketAddr;
use std::time::Duration;

/// The HTTP address served by default, as the original gateway did.
pub const DEFAULT_HTTP_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 8282);

/// The largest request body taken by default: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

/// Requests in flight at once by default (the probes and `/metrics` aside).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 512;

/// Request body bytes held at once by default: 32 MiB.
pub const DEFAULT_MAX_BUFFERED: usize = 32 * 1024 * 1024;

/// How long a request may take by default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What the gateway serves and how.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to serve HTTP.
    pub http: SocketAddr,
    /// API keys; empty means no authentication.
    pub api_keys: Vec<String>,
    /// How long one request may take (a method's own shorter timeout wins).
    pub request_timeout: Duration,
    /// The largest request body, in bytes (larger ones get 413).
    pub max_body: usize,
    /// Services the gateway needs: `/readyz` answers 503 while one has no live member.
    pub require: Vec<String>,
    /// Requests in flight at once; more are answered 503 with `Retry-After`.
    pub max_in_flight: usize,
    /// Request body bytes held at once (declared lengths, `max_body` for unknown ones); more
    /// are answered 503 with `Retry-After`.
    pub max_buffered: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http: DEFAULT_HTTP_ADDR,
            api_keys: Vec::new(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_body: DEFAULT_MAX_BODY,
            require: Vec::new(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_buffered: DEFAULT_MAX_BUFFERED,
        }
    }
}

/// The gateway's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// TCP address to serve HTTP on.
    #[arg(long, env = "MESHRPC_HTTP_ADDR", value_name = "ADDR", default_value_t = DEFAULT_HTTP_ADDR)]
    pub http: SocketAddr,

    /// API keys (comma-separated); when set, every route but /healthz and /readyz wants
    /// `Authorization: Bearer <key>`.
    #[arg(
        long = "api-key",
        env = "MESHRPC_API_KEYS",
        value_name = "KEY,...",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,

    /// Seconds a request may take before it is answered with 504.
    #[arg(
        long,
        env = "MESHRPC_REQUEST_TIMEOUT",
        value_name = "SECS",
        default_value_t = 30.0
    )]
    pub request_timeout: f64,

    /// The largest request body in bytes; larger ones are answered with 413.
    #[arg(long, env = "MESHRPC_MAX_BODY", value_name = "BYTES", default_value_t = DEFAULT_MAX_BODY)]
    pub max_body: usize,

    /// A service the gateway depends on (repeatable or comma-separated): /readyz answers 503
    /// while it has no live member.
    #[arg(
        long,
        env = "MESHRPC_REQUIRE",
        value_name = "SERVICE",
        value_delimiter = ','
    )]
    pub require: Vec<String>,

    /// Requests in flight at once (the probes and /metrics aside); more are answered 503
    /// with Retry-After.
    #[arg(long, env = "MESHRPC_MAX_IN_FLIGHT", value_name = "N", default_value_t = DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,

    /// Request body bytes held at once (each request reserves its Content-Length, or
    /// --max-body without one); more are answered 503 with Retry-After.
    #[arg(long, env = "MESHRPC_MAX_BUFFERED", value_name = "BYTES", default_value_t = DEFAULT_MAX_BUFFERED)]
    pub max_buffered: usize,
}

impl GatewayArgs {
    /// The configuration these flags describe.
    pub fn config(&self) -> Config {
        Config {
            http: self.http,
            api_keys: self.api_keys.clone(),
            request_timeout: Duration::from_secs_f64(self.request_timeout.clamp(0.001, 86_400.0)),
            max_body: self.max_body,
            require: self
                .require
                .iter()
                .map(|name| name.trim().to_owned())
                .filter(|name| !name.is_empty())
                .collect(),
            max_in_flight: self.max_in_flight,
            max_buffered: self.max_buffered,
        }
    }
}
