//! The YAML of the `rate_limit` policy.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::spec::units::Dur;

/// The `rate_limit` route policy: request-rate limits and/or a concurrency limit per key.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimitPolicy {
    /// Rate limits, all enforced at once (a request passes only if every limit allows it, and
    /// only then counts against each of them), e.g. `[{requests: 100, per: 1m}, {requests:
    /// 5000, per: 1d}]`.
    #[serde(default)]
    pub limits: Vec<RawLimit>,
    /// What requests are counted by: `consumer`, `client_ip`, `route`, `{header: NAME}`, or a
    /// list of these combined (e.g. `[consumer, route]`). Default: `client_ip`.
    #[serde(default)]
    pub key: RawKey,
    /// A request without a value for the key (anonymous for `consumer`, header absent):
    /// `client_ip` (counted by client IP instead, the default), `deny` (403) or `allow`
    /// (not limited).
    #[serde(default)]
    pub missing_key: MissingKey,
    /// Which rate-limit headers responses carry: `ietf` (`RateLimit-Policy` and `RateLimit`,
    /// the default), `legacy` (`X-RateLimit-Limit/Remaining/Reset`), `both` or `none`.
    /// `Retry-After` is always sent on a 429.
    #[serde(default)]
    pub headers: HeaderStyle,
    /// Where counters live: `local` (in this process, the default) or `redis` (the top-level
    /// `redis:` section; exact across every node sharing it).
    #[serde(default)]
    pub store: StoreKind,
    /// `store: redis` only: what happens while Redis is unreachable or slower than its
    /// `timeout`: `local` (count in this process meanwhile, the default), `allow` (let requests
    /// through uncounted) or `deny` (503).
    #[serde(default)]
    pub on_store_error: OnStoreError,
    /// `store: redis` only: the name of this policy's counters in Redis. Default: `route:NAME`,
    /// `service:NAME` or `global`, after where the policy is written, so reordering the config
    /// keeps the counters; set it to share counters between policies or keep them across renames.
    #[serde(default)]
    pub id: Option<String>,
    /// Most keys the local store keeps; beyond, idle (expired) keys are evicted first, then the
    /// least recently seen ones. Bounds memory under a flood of distinct keys.
    #[serde(default = "default_max_keys")]
    pub max_keys: u64,
    /// At most this many requests in flight per key (counted until the response body ends).
    #[serde(default)]
    pub concurrency: Option<RawConcurrency>,
}

/// One rate limit.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    /// Requests allowed per `per`.
    pub requests: u64,
    /// The window (`1s`, `1m`, `1h`, `1d`...).
    pub per: Dur,
    /// `sliding_window` (the default) or `gcra`.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// `gcra` only: how many requests may arrive at once (the bucket size). Default: `requests`.
    #[serde(default)]
    pub burst: Option<u64>,
    /// Name used in the `RateLimit-Policy`/`RateLimit` headers. Default: `default` for the
    /// first limit, `limit<N>` for the N-th (0-based) after it.
    #[serde(default)]
    pub name: Option<String>,
}

/// A rate-limit algorithm.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Weighted two-window counter: the count of the previous window, weighted by how much of
    /// it still overlaps the sliding window, plus the count of the current window, must stay
    /// below `requests`. No double burst at window edges.
    #[default]
    SlidingWindow,
    /// Generic cell rate algorithm: a token bucket of `burst` tokens refilled at
    /// `requests`/`per`, kept as one timestamp per key.
    Gcra,
}

/// A key: one part or a list of parts combined.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum RawKey {
    /// One part.
    One(RawKeyPart),
    /// Several parts; the key is their combination.
    Many(Vec<RawKeyPart>),
}

impl Default for RawKey {
    fn default() -> Self {
        RawKey::One(RawKeyPart::ClientIp)
    }
}

impl RawKey {
    /// The parts, in order.
    pub fn parts(&self) -> &[RawKeyPart] {
        match self {
            RawKey::One(p) => std::slice::from_ref(p),
            RawKey::Many(v) => v,
        }
    }
}

/// One part of a key.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RawKeyPart {
    /// The authenticated consumer (or token subject); missing when anonymous.
    Consumer,
    /// The client IP (after `trusted_proxies`).
    ClientIp,
    /// The route.
    Route,
    /// The value of a request header; missing when absent.
    Header(String),
    /// A claim of the request's verified JWT (or introspected token), by name (dotted names
    /// walk nested objects); missing without a token or when the claim is absent or not a
    /// string, number or boolean.
    Claim(String),
}

/// What happens to a request with no value for its key.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum MissingKey {
    /// Counted by client IP.
    #[default]
    ClientIp,
    /// Refused with 403.
    Deny,
    /// Let through without being counted.
    Allow,
}

/// Which rate-limit response headers are sent.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum HeaderStyle {
    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
    #[default]
    Ietf,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` (seconds).
    Legacy,
    /// Both sets.
    Both,
    /// No rate-limit headers (`Retry-After` is still sent on a 429).
    None,
}

/// Where counters are kept.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// In this process: exact per node, not shared across nodes.
    #[default]
    Local,
    /// In the top-level `redis:` store: exact across every node sharing it.
    Redis,
}

/// What a `store: redis` policy does while Redis fails.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Count in this node's local store meanwhile (exact per node, not across the fleet).
    #[default]
    Local,
    /// Let requests through uncounted.
    Allow,
    /// Refuse requests with 503.
    Deny,
}

/// A concurrency limit.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawConcurrency {
    /// Most requests in flight per key.
    pub max: u32,
    /// What in-flight requests are counted by (same forms as the policy's `key`). Default:
    /// the policy's `key`.
    #[serde(default)]
    pub key: Option<RawKey>,
    /// Status beyond `max`: 429 (the default) or 503.
    #[serde(default = "default_concurrency_status")]
    pub status: u16,
}

fn default_max_keys() -> u64 {
    100_000
}
fn default_concurrency_status() -> u16 {
    429
}
