//! The immutable runtime plan: everything the request path needs, precomputed.
//!
//! Built by `compile.rs`, published through `runtime::Runtime` (an `ArcSwap` of the plan with
//! the runtime's parts for it); a request loads it once and never sees it change underneath.
//! Nothing changes a plan once it is built: what it keeps from its predecessor is an input to
//! `compile`, and what the runtime attaches to it (metric series, the access log) sits beside
//! it in `runtime::Active`. The raw config it was built from is the control plane's
//! (`config::Loaded`), never read per request.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use ipnet::IpNet;

use crate::policy::RoutePolicies;
use crate::router::{PathSpec, Router};
use crate::upstream::Service;

/// A compiled, ready-to-serve configuration.
pub struct Plan {
    /// Hash of the effective config; equal hashes mean a reload is a no-op.
    pub fingerprint: u64,
    /// Listener addresses.
    pub listen: Vec<String>,
    /// Worker count (0 resolved to the number of cores).
    pub workers: usize,
    /// Client-side limits.
    pub limits: Limits,
    /// Client header-read timeout (also the keep-alive idle limit).
    pub header_read_timeout: Duration,
    /// Longest pause in a request body before 408.
    pub request_body_idle: Duration,
    /// Longest time a client may accept no response byte before its connection closes.
    pub send_idle: Duration,
    /// Grace period for in-flight requests on shutdown.
    pub shutdown_grace: Duration,
    /// Proxies whose `X-Forwarded-For` entries are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Path normalisation before routing.
    pub paths: crate::router::normalize::RawPaths,
    /// Forwarding headers to add.
    pub forwarding: Forwarding,
    /// Access log settings.
    pub access_log: AccessLogSettings,
    /// The route table.
    pub router: Router,
    /// Routes, in config order (the router returns indices into this).
    pub routes: Vec<Route>,
    /// Services, referenced by index from routes.
    pub services: Vec<Arc<Service>>,
    /// Identity headers only the gateway may set (`X-Consumer-*`, claim headers): removed from
    /// every client request on every route.
    pub identity_headers: Vec<http::HeaderName>,
    /// The shared Redis (`redis:`), when configured.
    pub redis: Option<Arc<crate::store::redis::RedisStore>>,
    /// Consumers managed at run time (`consumers: {store: redis}`): runtime-owned state a
    /// reload with the same settings inherits, started by the runtime.
    pub consumer_store: Option<Arc<crate::policy::auth::stored::ConsumerStore>>,
    /// The consumers defined in the config (the admin API keeps stored ones from clashing).
    pub file_consumers: Arc<crate::policy::auth::ConsumerRegistry>,
    /// Named plans: a consumer's plan picks the rate limit that applies to it.
    pub plans: crate::policy::rate_limit::plans::Plans,
    /// The HTTPS listeners' TLS (`tls:`), when configured.
    pub tls: Option<Arc<crate::tls::ListenerTls>>,
    /// Whether requests are counted in Prometheus metrics (`metrics.enabled`).
    pub metrics_enabled: bool,
    /// The registry holding the routes' and services' series: the previous plan's when there
    /// is one (a series outlives reloads for as long as its names do), else a new one.
    pub registry: Arc<crate::telemetry::metrics::Metrics>,
}

/// Client-side limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Total request header bytes (431).
    pub max_header_bytes: usize,
    /// Request-target length (414).
    pub max_uri_bytes: usize,
    /// Concurrent client connections.
    pub max_connections: usize,
}

/// Which forwarding headers to add.
#[derive(Debug, Clone)]
pub struct Forwarding {
    /// `X-Forwarded-For/Proto/Host`.
    pub x_forwarded: bool,
    /// RFC 7239 `Forwarded`.
    pub forwarded: bool,
    /// `Via` value when enabled.
    pub via: Option<HeaderValue>,
}

pub use crate::telemetry::access_log::AccessLogSettings;

/// A compiled route.
pub struct Route {
    /// Config name (shared with log records without copying).
    pub name: Arc<str>,
    /// Index into `Plan::services`.
    pub service: usize,
    /// The path condition, for prefix rewrites and `explain`.
    pub path: PathSpec,
    /// Path rewrite.
    pub rewrite: Rewrite,
    /// Send the client's Host upstream.
    pub preserve_host: bool,
    /// `Upgrade` protocols relayed on this route (lowercase; never `h2c`).
    pub upgrades: Box<[Box<str>]>,
    /// Whether a path with `%2F` / `%5C` is served here.
    pub escaped_slashes: crate::router::normalize::EscapedSlashes,
    /// Plain-HTTP requests get a 308 to `https://`.
    pub https_redirect: bool,
    /// Largest request body.
    pub max_body_bytes: u64,
    /// Whole-request timeout (send to response head).
    pub timeout: Duration,
    /// The route's effective policies (its own, else its service's, else global).
    pub policies: RoutePolicies,
    /// Retries, the route's own breaker, fallback, deadline propagation.
    pub resilience: crate::upstream::resilience::RouteResilience,
    /// The route's metric series (one per route and service name in the registry).
    pub metrics: Arc<crate::telemetry::metrics::RouteMetrics>,
}

impl Plan {
    /// Every route's cache policy, each once (routes inheriting a policy share it).
    pub fn cache_policies(&self) -> Vec<Arc<crate::policy::cache::CachePolicy>> {
        let mut out: Vec<Arc<crate::policy::cache::CachePolicy>> = Vec::new();
        for policy in self.routes.iter().filter_map(|r| r.policies.cache.as_ref()) {
            if !out.iter().any(|p| Arc::ptr_eq(p, policy)) {
                out.push(Arc::clone(policy));
            }
        }
        out
    }
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("name", &self.name)
            .field("service", &self.service)
            .field("path", &self.path)
            .field("auth", &self.policies.auth.is_some())
            .field("rate_limit", &self.policies.rate_limit.is_some())
            .finish_non_exhaustive()
    }
}

/// How the upstream path is derived from the client's.
#[derive(Debug, Clone)]
pub enum Rewrite {
    /// Unchanged.
    None,
    /// Drop this prefix.
    StripPrefix(String),
    /// Replace the route's matched prefix with this.
    ReplacePrefix(String),
    /// Build from a template over the route's captures.
    Template(Vec<TemplatePart>),
}

/// A piece of a path template.
#[derive(Debug, Clone)]
pub enum TemplatePart {
    /// Literal text.
    Literal(String),
    /// The value of capture `name`.
    Capture(String),
}
