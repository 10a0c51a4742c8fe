//! The YAML of the `cache` policy.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::spec::units::{ByteSize, Dur};

/// The `cache` route policy: store cacheable upstream responses (RFC 9111, shared cache) and
/// answer later requests from them.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawCachePolicy {
    /// Memory for this policy's entries (keys, headers and bodies counted). Beyond it entries
    /// are evicted (TinyLFU admission, LRU eviction). Default 64MiB.
    #[serde(default = "default_max_size")]
    pub max_size: ByteSize,
    /// Largest body stored; bigger responses stream to the client and are not cached.
    /// Default 1MiB.
    #[serde(default = "default_max_entry")]
    pub max_entry_bytes: ByteSize,
    /// Freshness lifetime that replaces whatever the response says (its `max-age`, `s-maxage`
    /// or `Expires`), and makes responses without caching headers cacheable. Not set: the
    /// response's own lifetime is used.
    #[serde(default)]
    pub ttl: Option<Dur>,
    /// Freshness lifetime of a response that states none (no `max-age`, `s-maxage` or
    /// `Expires`). Not set: such responses are not stored (heuristic freshness is off).
    #[serde(default)]
    pub default_ttl: Option<Dur>,
    /// Store responses marked `no-store` anyway (for upstreams that send it by mistake).
    #[serde(default)]
    pub ignore_no_store: bool,
    /// Store responses marked `private` anyway (only sensible with `key: [consumer]`).
    #[serde(default)]
    pub ignore_private: bool,
    /// `stale-while-revalidate` for responses that do not set it: how long after expiry a
    /// stale entry is still served while one background request refreshes it. Default 0s.
    #[serde(default = "zero")]
    pub stale_while_revalidate: Dur,
    /// `stale-if-error` for responses that do not set it: how long after expiry a stale entry
    /// is served when the upstream fails (connection error, timeout, 5xx). Default 0s.
    #[serde(default = "zero")]
    pub stale_if_error: Dur,
    /// How long an expired entry with a validator (`ETag`, `Last-Modified`) is kept for
    /// revalidation with a conditional request. Default 10m.
    #[serde(default = "default_keep_stale")]
    pub keep_stale: Dur,
    /// What else the cache key holds besides method, host, path and query: `consumer` and/or
    /// `{header: NAME}` items.
    #[serde(default)]
    pub key: Vec<RawCacheKeyPart>,
    /// Query parameters left out of the key (tracking parameters such as `utm_source`).
    #[serde(default)]
    pub ignore_query: Vec<String>,
    /// Concurrent misses for one key wait for the first one's response at most this long,
    /// then go upstream themselves. `0s` turns request coalescing off. Default 5s.
    #[serde(default = "default_coalesce")]
    pub coalesce_wait: Dur,
    /// Response header that says how the cache answered (`HIT`, `MISS`, `STALE`, `BYPASS`).
    /// Empty: no header. Default `X-Cache`.
    #[serde(default = "default_status_header")]
    pub status_header: String,
    /// The shared tier: also keep entries in the top-level `redis:` store, for every gateway
    /// node sharing it.
    #[serde(default)]
    pub redis: Option<RawCacheRedis>,
}

/// The shared Redis tier of a cache policy.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawCacheRedis {
    /// Largest entry (body and headers) written to Redis; bigger ones stay in memory only.
    /// Default 256KiB.
    #[serde(default = "default_redis_entry")]
    pub max_entry_bytes: ByteSize,
}

/// One extra part of a cache key.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RawCacheKeyPart {
    /// The authenticated consumer (or token subject): every consumer gets its own entries,
    /// so responses to requests with credentials may be stored and served.
    Consumer,
    /// The value of a request header.
    Header(String),
}

fn default_max_size() -> ByteSize {
    ByteSize(64 * 1024 * 1024)
}
fn default_max_entry() -> ByteSize {
    ByteSize(1024 * 1024)
}
fn default_redis_entry() -> ByteSize {
    ByteSize(256 * 1024)
}
fn zero() -> Dur {
    Dur::from_secs(0)
}
fn default_keep_stale() -> Dur {
    Dur::from_secs(600)
}
fn default_coalesce() -> Dur {
    Dur::from_secs(5)
}
fn default_status_header() -> String {
    "X-Cache".to_string()
}
