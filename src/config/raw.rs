//! Serde structs mirroring the YAML file, one to one.
//!
//! Owns the shape of the config and its defaults; nothing here resolves references or checks one
//! field against another (that is `validate.rs`), and nothing here is used on the request path
//! (that is `plan.rs`). Every struct denies unknown keys so a typo is an error, not a silent no-op.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::units::{ByteSize, Dur};
use crate::policy::auth::config::{RawAuth, RawConsumers};
use crate::policy::RawPolicy;
use crate::upstream::config::{
    RawCircuitBreaker, RawFallback, RawHealthCheck, RawOutlierDetection, RawRetry, WhenAllUnhealthy,
};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Addresses the public listener binds, e.g. `["0.0.0.0:8080"]`. Port 0 picks a free port.
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Worker threads, each with its own event loop and its own SO_REUSEPORT socket.
    /// 0 (the default) means one per CPU core.
    #[serde(default)]
    pub workers: usize,
    /// Limits that protect the gateway from oversized or slow clients.
    #[serde(default)]
    pub limits: RawLimits,
    /// Client-side timeouts.
    #[serde(default)]
    pub timeouts: RawServerTimeouts,
    /// CIDR ranges of proxies in front of Portico whose `X-Forwarded-For` entries are believed.
    /// Empty (the default): the client IP is always the TCP peer.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// How request paths are normalised before routing: slashes merged, unreserved escapes
    /// decoded, what to do with `%2F`, case-insensitive routing.
    #[serde(default)]
    pub paths: crate::router::normalize::RawPaths,
    /// Which forwarding headers are added to upstream requests.
    #[serde(default)]
    pub forwarding: RawForwarding,
    /// The per-request access log.
    #[serde(default)]
    pub access_log: RawAccessLog,
    /// Prometheus metrics, served by the admin listener at `/metrics`.
    #[serde(default)]
    pub metrics: RawMetrics,
    /// Distributed tracing: OTLP span export and its sampling (`traceparent` propagation is
    /// always on).
    #[serde(default)]
    pub tracing: crate::telemetry::trace::config::RawTracing,
    /// Application log level when `RUST_LOG` is not set: error, warn, info, debug, trace.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// Application log format on stderr: `text` (coloured only at a terminal, never with
    /// `NO_COLOR`) or `json` (one object per line).
    #[serde(default)]
    pub log_format: crate::telemetry::app_log::LogFormat,
    /// Consumers: the identities that credentials (API keys, basic auth, token subjects) map to.
    /// A list, or `{store: redis, list: [...]}` for consumers managed at run time.
    #[serde(default)]
    pub consumers: RawConsumers,
    /// Named plans (tiers): a consumer's `plan` picks the `rate_limit` that applies to it.
    #[serde(default)]
    pub plans: std::collections::BTreeMap<String, crate::policy::rate_limit::plans::RawPlan>,
    /// Named authentication providers (JWT issuers, introspection endpoints) and credential
    /// settings that `auth` policies refer to.
    #[serde(default)]
    pub auth: RawAuth,
    /// Policies for every route, unless the route or its service sets one of the same kind.
    // One-key maps (`- auth: {...}`) for the enum: see `load_balancing`.
    #[serde(default, with = "serde_yaml_ng::with::singleton_map_recursive")]
    #[schemars(with = "Vec<RawPolicy>")]
    pub policies: Vec<RawPolicy>,
    /// The admin API listener (loopback by default; see `admin.token`).
    #[serde(default)]
    pub admin: super::admin::RawAdmin,
    /// The Redis server (or Cluster, or Sentinel-managed primary) that `store: redis` policies
    /// share across gateway nodes.
    #[serde(default)]
    pub redis: Option<crate::store::redis::RawRedis>,
    /// Named groups of upstream targets.
    #[serde(default)]
    pub services: BTreeMap<String, RawService>,
    /// Routes, matched by host, path, method and headers (most specific first, see the README).
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// HTTPS listeners: certificates by SNI, ALPN, client certificates, redirect from HTTP.
    #[serde(default)]
    pub tls: Option<crate::tls::config::RawTls>,
    /// HTTP/2 limits for client connections (abuse resistance).
    #[serde(default)]
    pub http2: super::http2::RawHttp2,
    /// Which engine serves HTTP/1.1 client connections (read at startup).
    #[serde(default)]
    pub http1: RawHttp1,
    /// Settings for every `wasm` policy's filter.
    #[serde(default)]
    pub plugins: RawPlugins,
}

/// Settings shared by every proxy-wasm filter.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawPlugins {
    /// A directory where compiled filters are kept between runs and reloads (wasmtime's
    /// compilation cache), created if missing; relative to the working directory. None by
    /// default: every start compiles every filter.
    pub cache_dir: Option<String>,
}

/// HTTP/1.1 client connections.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawHttp1 {
    /// `portico` (the gateway's own engine; upgrades and CONNECT are handed to hyper) or
    /// `hyper`. Plain-text listeners only; TLS listeners use hyper.
    pub engine: Http1Engine,
}

/// An HTTP/1.1 server engine.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Http1Engine {
    /// The gateway's own.
    #[default]
    Portico,
    /// hyper's.
    Hyper,
}

fn default_listen() -> Vec<String> {
    vec!["0.0.0.0:8080".to_string()]
}

fn default_log_level() -> String {
    "info".to_string()
}

/// Limits on client requests and connections.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    /// Largest total size of the request headers (names + values); beyond it: 431.
    pub max_header_bytes: ByteSize,
    /// Longest request target (path + query); beyond it: 414.
    pub max_uri_bytes: ByteSize,
    /// Default largest request body for every route; beyond it: 413. A route may override it.
    pub max_body_bytes: ByteSize,
    /// Most client connections open at once across all workers; beyond it new connections get a
    /// 503 and are closed.
    pub max_connections: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_header_bytes: ByteSize(32 * 1024),
            max_uri_bytes: ByteSize(8 * 1024),
            max_body_bytes: ByteSize(10 * 1024 * 1024),
            max_connections: 10_000,
        }
    }
}

/// Timeouts on the client side of the gateway.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawServerTimeouts {
    /// Slowloris protection: a connection with no request in progress that starts none during a
    /// whole period of this length is closed, so a silent or trickling client, and an idle
    /// keep-alive connection, is closed after one to two periods.
    pub header_read: Dur,
    /// How long shutdown waits for in-flight requests before exiting anyway.
    pub shutdown_grace: Dur,
    /// A request body that sends nothing for this long is answered with 408
    /// `request_body_timeout` (the client's fault: never counted against the upstream), like
    /// nginx's `client_body_timeout`.
    pub request_body_idle: Dur,
    /// A client that accepts no byte of its response for this long has its connection closed,
    /// like nginx's `send_timeout`.
    pub send_idle: Dur,
}

impl Default for RawServerTimeouts {
    fn default() -> Self {
        Self {
            header_read: Dur::from_secs(10),
            shutdown_grace: Dur::from_secs(30),
            request_body_idle: Dur::from_secs(30),
            send_idle: Dur::from_secs(60),
        }
    }
}

/// Forwarding headers added to requests sent upstream.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawForwarding {
    /// Append the client IP to `X-Forwarded-For` and set `X-Forwarded-Proto` / `X-Forwarded-Host`.
    pub x_forwarded: bool,
    /// Add an RFC 7239 `Forwarded` header.
    pub forwarded: bool,
    /// Add a `Via` header to requests and responses.
    pub via: bool,
}

impl Default for RawForwarding {
    fn default() -> Self {
        Self {
            x_forwarded: true,
            forwarded: false,
            via: false,
        }
    }
}

/// Metrics settings.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawMetrics {
    /// Record request metrics (on by default; the admin `/metrics` endpoint then serves only
    /// the scrape-time state: health, breakers, connections, config revision).
    pub enabled: bool,
}

impl Default for RawMetrics {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// Access log settings.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawAccessLog {
    /// Write one line per request.
    pub enabled: bool,
    /// `json` (one object per line) or `common` (NCSA common log format).
    pub format: AccessLogFormat,
    /// `stdout`, `stderr`, or a file path (appended to).
    pub path: String,
}

impl Default for RawAccessLog {
    fn default() -> Self {
        Self {
            enabled: true,
            format: AccessLogFormat::Json,
            path: "stdout".to_string(),
        }
    }
}

pub use crate::telemetry::access_log::AccessLogFormat;

/// A named group of upstream targets.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    /// Upstream targets: `http://host:port` (HTTP/1.1), `h2c://host:port` (cleartext HTTP/2)
    /// or `https://host:port` (TLS; see `tls`).
    pub targets: Vec<RawTarget>,
    /// How a target is picked for each request: `round_robin`, `least_request`, `random`, or
    /// `{consistent_hash: {header: NAME}}` (or `cookie: NAME`, `client_ip: true`).
    // serde_yaml_ng reads an enum with data only from a YAML tag (`!consistent_hash {...}`);
    // `singleton_map` accepts the one-key map that the docs and the JSON Schema describe.
    #[serde(default, with = "serde_yaml_ng::with::singleton_map")]
    #[schemars(with = "RawLoadBalancing")]
    pub load_balancing: RawLoadBalancing,
    /// Upstream timeouts.
    #[serde(default)]
    pub timeouts: RawUpstreamTimeouts,
    /// Most idle keep-alive connections kept per target and worker.
    #[serde(default = "default_max_idle")]
    pub max_idle_per_target: usize,
    /// How often DNS names in target URLs are resolved again.
    #[serde(default = "default_dns_refresh")]
    pub dns_refresh: Dur,
    /// TLS towards the `https://` targets (trust, SNI name, client certificate, HTTP/2).
    #[serde(default)]
    pub tls: Option<crate::tls::config::RawUpstreamTls>,
    /// Policies for this service's routes, unless a route sets one of the same kind.
    #[serde(default, with = "serde_yaml_ng::with::singleton_map_recursive")]
    #[schemars(with = "Vec<RawPolicy>")]
    pub policies: Vec<RawPolicy>,
    /// Active health checks of every target (off unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<RawHealthCheck>,
    /// Passive health: eject targets that fail real requests (off unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<RawOutlierDetection>,
    /// When no target is in rotation: `panic` (use them all) or `fail` (503).
    #[serde(default)]
    pub when_all_unhealthy: WhenAllUnhealthy,
    /// Circuit breaker for the whole service (off unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<RawCircuitBreaker>,
    /// Most requests in flight to this service; beyond it: 503 `service_overloaded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests: Option<usize>,
    /// Retries for this service's routes, unless a route sets its own (off unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RawRetry>,
}

fn default_max_idle() -> usize {
    128
}

fn default_dns_refresh() -> Dur {
    Dur::from_secs(30)
}

/// One upstream target.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    /// `http://host:port`, `h2c://host:port` or `https://host:port`; the host may be an IP or
    /// a DNS name.
    pub url: String,
    /// Relative share of traffic (1 to 1000).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_upgrades() -> Vec<String> {
    vec!["websocket".to_string()]
}

fn default_weight() -> u32 {
    1
}

/// Load-balancing algorithm.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq, Default)]
#[serde(rename_all = "snake_case")]
pub enum RawLoadBalancing {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Least outstanding requests, power of two random choices (weights bias the choice).
    LeastRequest,
    /// Uniformly random, weighted.
    Random,
    /// Consistent hashing (ring) on a request attribute, so the same key goes to the same target.
    ConsistentHash(RawHashOn),
}

/// What consistent hashing hashes. Exactly one field.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHashOn {
    /// A request header name.
    #[serde(default)]
    pub header: Option<String>,
    /// A cookie name.
    #[serde(default)]
    pub cookie: Option<String>,
    /// The client IP (after `trusted_proxies`).
    #[serde(default)]
    pub client_ip: bool,
}

/// Timeouts towards a service's targets.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstreamTimeouts {
    /// TCP connect timeout; beyond it: 502 (`upstream_connect_timeout`).
    pub connect: Dur,
    /// Time from sending the request to receiving the response head; beyond it: 504.
    pub request: Dur,
    /// Longest pause while streaming a response body, and how long an unused pooled connection
    /// is kept.
    pub idle: Dur,
}

impl Default for RawUpstreamTimeouts {
    fn default() -> Self {
        Self {
            connect: Dur::from_secs(2),
            request: Dur::from_secs(30),
            idle: Dur::from_secs(60),
        }
    }
}

/// A route: what to match, and where to send it.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Unique name; used in logs and metrics.
    pub name: String,
    /// Conditions, all of which must hold.
    #[serde(rename = "match", default)]
    pub matcher: RawMatch,
    /// The service that serves this route.
    pub service: String,
    /// Path rewrite before the request goes upstream (query string kept).
    #[serde(default)]
    pub rewrite: Option<RawRewrite>,
    /// Send the client's `Host` upstream instead of the target's.
    #[serde(default)]
    pub preserve_host: bool,
    /// Protocols a client may switch to on this route (`Upgrade` tokens such as `websocket`).
    /// Other tokens are removed and the request is answered as an ordinary one. `h2c` is never
    /// relayed (RFC 9113 §3.1). Default `[websocket]`; `[]` allows none.
    #[serde(default = "default_upgrades")]
    pub upgrades: Vec<String>,
    /// `keep` lets an encoded slash (`%2F`, `%5C`) through on this route although `paths.
    /// escaped_slashes` rejects it (or `reject` the other way round). Default: `paths`'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escaped_slashes: Option<crate::router::normalize::EscapedSlashes>,
    /// Answer requests that arrive over plain HTTP with a 308 redirect to `https://` (needs
    /// `tls`); requests over HTTPS are proxied as usual.
    #[serde(default)]
    pub https_redirect: bool,
    /// Largest request body on this route (overrides `limits.max_body_bytes`).
    #[serde(default)]
    pub max_body_bytes: Option<ByteSize>,
    /// Whole-request timeout on this route (overrides the service's `timeouts.request`).
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Policies, e.g. `- auth: {jwt: [main]}`; they override the service's and the global
    /// ones of the same kind.
    #[serde(default, with = "serde_yaml_ng::with::singleton_map_recursive")]
    #[schemars(with = "Vec<RawPolicy>")]
    pub policies: Vec<RawPolicy>,
    /// Retries on this route (replaces the service's `retry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RawRetry>,
    /// A circuit breaker of this route's own (instead of the service's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<RawCircuitBreaker>,
    /// Static response served while the route's (or its service's) breaker is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<RawFallback>,
    /// Request header that tells the upstream how many milliseconds the attempt has left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_header: Option<String>,
}

/// Route match conditions.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// Hosts: exact (`api.example.com`) or wildcard (`*.example.com`). Empty: any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Path: a prefix on segment boundaries (`/api` matches `/api` and `/api/x`, not `/apix`),
    /// or a template (`/users/{id}`, `/files/{*rest}`). Default `/`.
    #[serde(default)]
    pub path: Option<String>,
    /// `prefix` (default for plain paths) or `exact`.
    #[serde(default)]
    pub path_type: Option<PathType>,
    /// Allowed methods. Empty: any method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Header conditions: a string for an exact value, or `{present: true}`, `{regex: "..."}`.
    #[serde(default)]
    pub headers: BTreeMap<String, RawHeaderMatch>,
}

/// How a plain path is compared.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PathType {
    /// Matches the path and anything below it on a `/` boundary.
    Prefix,
    /// Matches only this path.
    Exact,
}

/// A header condition.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum RawHeaderMatch {
    /// The header has exactly this value.
    Exact(String),
    /// A structured condition.
    Rule(RawHeaderRule),
}

/// A structured header condition; exactly one field.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderRule {
    /// `true`: the header must be present; `false`: it must be absent.
    #[serde(default)]
    pub present: Option<bool>,
    /// The header value must match this regular expression.
    #[serde(default)]
    pub regex: Option<String>,
}

/// Path rewrite; exactly one field.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRewrite {
    /// Remove this prefix (on a segment boundary) from the path.
    #[serde(default)]
    pub strip_prefix: Option<String>,
    /// Replace the route's matched path prefix with this one.
    #[serde(default)]
    pub replace_prefix: Option<String>,
    /// Build the path from a template using the route's captures, e.g. `/v2/users/{id}`.
    #[serde(default)]
    pub path: Option<String>,
}
