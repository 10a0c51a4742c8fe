//! Rate limiting: request-rate limits (sliding window or GCRA) and concurrency limits per key,
//! with the IETF `RateLimit-Policy`/`RateLimit` headers (and optionally the legacy
//! `X-RateLimit-*` ones).
//!
//! Owns turning a request into a key (consumer, client IP, route, header, or a combination),
//! checking it against the store and deciding the response headers. It does not own
//! authentication (it reads the [`Identity`] auth produced), the client IP (the proxy computes
//! it with `trusted_proxies`) or the 429 response itself (`error.rs`).
//!
//! Files: `config.rs` (YAML), `local.rs` (the in-process store), `redis.rs` (the shared
//! store); this file compiles and runs a policy.

pub mod config;
pub mod local;
pub mod plans;
pub mod redis;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use rustc_hash::FxHashMap;

use crate::error::GatewayError;
use crate::policy::auth::Identity;
use crate::spec::ConfigError;
use crate::store::redis::{RawRedis, RedisStore};
use config::{
    HeaderStyle, MissingKey, OnStoreError, RawKey, RawKeyPart, RawRateLimitPolicy, StoreKind,
};
use local::{Decision, Limit, LocalStore};
use redis::RedisLimiter;

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers).
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// `X-RateLimit-Limit`.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`.
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// One compiled part of a key.
#[derive(Debug, Clone)]
enum KeyPart {
    Consumer,
    ClientIp,
    Route,
    Header(HeaderName),
    Claim(Box<str>),
}

/// A compiled `rate_limit` policy. Its counters live as long as the policy (one per place the
/// policy is written in the config, shared by every route that inherits it).
pub struct RateLimitPolicy {
    /// Where the policy is written and what it says: a reloaded config whose policy at the same
    /// place says the same keeps this policy, counters included (see [`carry_over`]).
    origin: (String, RawRateLimitPolicy, Option<RawRedis>),
    /// The local store: where counters live with `store: local`, the fallback with
    /// `on_store_error: local`.
    store: Option<LocalStore>,
    /// With `store: redis`.
    redis: Option<RedisLimiter>,
    on_store_error: OnStoreError,
    key: Vec<KeyPart>,
    missing: MissingKey,
    style: HeaderStyle,
    /// Precomputed `RateLimit-Policy` value.
    policy_header: Option<HeaderValue>,
    /// Per limit, the start of its `RateLimit` value: `"name";r=`.
    ietf_prefixes: Vec<Box<str>>,
    /// Per limit, its `X-RateLimit-Limit` value.
    limit_values: Vec<HeaderValue>,
    concurrency: Option<Concurrency>,
}

/// What an admitted request carries: headers for its response and, with a concurrency limit,
/// the slot to hold until its response body ends.
#[derive(Default)]
pub struct Admitted {
    /// Rate-limit headers for the response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The concurrency slot.
    pub slot: Option<ConcurrencySlot>,
}

impl RateLimitPolicy {
    /// Compiles a `rate_limit` entry: once per place it is written, so the routes inheriting
    /// it share its counters.
    pub fn compile(
        raw: &RawRateLimitPolicy,
        b: &mut crate::policy::Build<'_>,
    ) -> Option<Arc<Self>> {
        let crate::policy::Build {
            path,
            id,
            redis,
            shared,
            errors,
            ..
        } = b;
        shared
            .rate_limits
            .entry(path.to_string())
            .or_insert_with(|| Self::build(raw, path, id, *redis, errors).map(Arc::new))
            .clone()
    }

    /// Compiles a policy; `path` is its config path for errors, `default_id` names its counters
    /// in Redis unless the policy sets `id`, `redis` is the plan's Redis store.
    pub fn build(
        raw: &RawRateLimitPolicy,
        path: &str,
        default_id: &str,
        redis: Option<&Arc<RedisStore>>,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Self> {
        let before = errors.len();
        if raw.limits.is_empty() && raw.concurrency.is_none() {
            errors.push(ConfigError::new(
                path,
                "a rate_limit policy needs `limits`, `concurrency` or both",
            ));
        }
        if raw.max_keys == 0 {
            errors.push(ConfigError::new(
                format!("{path}.max_keys"),
                "must be at least 1",
            ));
        }
        let mut limits = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for (i, l) in raw.limits.iter().enumerate() {
            let at = format!("{path}.limits[{i}]");
            if l.requests == 0 {
                errors.push(ConfigError::new(
                    format!("{at}.requests"),
                    "must be at least 1",
                ));
            }
            if l.per.0.is_zero() {
                errors.push(ConfigError::new(format!("{at}.per"), "must be positive"));
            }
            if l.burst == Some(0) {
                errors.push(ConfigError::new(
                    format!("{at}.burst"),
                    "must be at least 1",
                ));
            }
            if l.burst.is_some() && l.algorithm != config::Algorithm::Gcra {
                errors.push(ConfigError::new(
                    format!("{at}.burst"),
                    "only applies to `algorithm: gcra`",
                ));
            }
            let name = l.name.clone().unwrap_or_else(|| {
                if i == 0 {
                    "default".to_string()
                } else {
                    format!("limit{i}")
                }
            });
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                errors.push(ConfigError::new(
                    format!("{at}.name"),
                    "use letters, digits, `-`, `_` or `.`",
                ));
            }
            if names.contains(&name) {
                errors.push(ConfigError::new(
                    format!("{at}.name"),
                    format!("two limits are named `{name}`"),
                ));
            }
            names.push(name);
            limits.push(Limit::new(l.requests, l.per.0, l.algorithm, l.burst));
        }
        let key = compile_key(&raw.key, &format!("{path}.key"), errors);
        let redis = match raw.store {
            StoreKind::Local => None,
            StoreKind::Redis => {
                if redis.is_none() {
                    errors.push(ConfigError::new(
                        format!("{path}.store"),
                        "`store: redis` needs the top-level `redis:` section",
                    ));
                }
                for (i, l) in limits.iter().enumerate() {
                    // Redis keeps time in microseconds.
                    let fine = match l.algorithm {
                        config::Algorithm::SlidingWindow => l.window >= 1_000_000,
                        config::Algorithm::Gcra => l.window / l.requests.max(1) >= 1_000,
                    };
                    if !fine {
                        errors.push(ConfigError::new(
                            format!("{path}.limits[{i}].per"),
                            "too fine for `store: redis`: a sliding window needs at least 1ms, \
                             GCRA at least 1µs per request",
                        ));
                    }
                }
                let id = raw.id.as_deref().unwrap_or(default_id);
                if id.is_empty() || id.bytes().any(|b| b.is_ascii_control()) {
                    errors.push(ConfigError::new(
                        format!("{path}.id"),
                        "must be non-empty printable text",
                    ));
                }
                redis.map(|r| (Arc::clone(r), id.to_string()))
            }
        };
        if raw.store == StoreKind::Local
            && (raw.id.is_some() || raw.on_store_error != OnStoreError::Local)
        {
            errors.push(ConfigError::new(
                format!("{path}.store"),
                "`id` and `on_store_error` only apply to `store: redis`",
            ));
        }
        let concurrency = raw.concurrency.as_ref().map(|c| {
            let at = format!("{path}.concurrency");
            if c.max == 0 {
                errors.push(ConfigError::new(format!("{at}.max"), "must be at least 1"));
            }
            let status = match c.status {
                429 => StatusCode::TOO_MANY_REQUESTS,
                503 => StatusCode::SERVICE_UNAVAILABLE,
                _ => {
                    errors.push(ConfigError::new(
                        format!("{at}.status"),
                        "must be 429 or 503",
                    ));
                    StatusCode::TOO_MANY_REQUESTS
                }
            };
            Concurrency {
                max: c.max,
                key: match &c.key {
                    Some(k) => compile_key(k, &format!("{at}.key"), errors),
                    None => key.clone(),
                },
                status,
                table: Arc::new(ConcurrencyTable::new()),
            }
        });
        if errors.len() > before {
            return None;
        }
        let policy_header = if limits.is_empty() {
            None
        } else {
            let text = limits
                .iter()
                .zip(&names)
                .map(|(l, n)| format!("\"{n}\";q={};w={}", l.requests, secs_ceil(l.window)))
                .collect::<Vec<_>>()
                .join(", ");
            HeaderValue::from_str(&text).ok()
        };
        let limit_values = limits
            .iter()
            .map(|l| HeaderValue::from(l.requests))
            .collect();
        let redis_settings = redis.as_ref().map(|(r, _)| r.settings().clone());
        let redis = match redis {
            Some((store, id)) if !limits.is_empty() => Some(RedisLimiter::new(store, &id, &limits)),
            _ => None,
        };
        Some(Self {
            origin: (path.to_string(), raw.clone(), redis_settings),
            store: (!limits.is_empty()).then(|| LocalStore::new(limits, raw.max_keys)),
            redis,
            on_store_error: raw.on_store_error,
            key,
            missing: raw.missing_key,
            style: raw.headers,
            policy_header,
            ietf_prefixes: names.iter().map(|n| format!("\"{n}\";r=").into()).collect(),
            limit_values,
            concurrency,
        })
    }

    /// The local store (none when the policy only limits concurrency).
    pub fn store(&self) -> Option<&LocalStore> {
        self.store.as_ref()
    }

    /// Checks a request: `Ok` with the response headers (and a concurrency slot) when it may
    /// go on, the 429 (or 403 for `missing_key: deny`, 503 when Redis fails with
    /// `on_store_error: deny`) otherwise. A rejected request is not counted.
    pub async fn check(
        &self,
        route: &str,
        identity: Option<&Identity>,
        headers: &HeaderMap,
        client_ip: IpAddr,
    ) -> Result<Admitted, GatewayError> {
        let req = Req {
            route,
            identity,
            headers,
            client_ip,
        };
        let mut admitted = Admitted::default();
        // The concurrency slot first: a request it refuses must not use up rate quota (and a
        // slot taken here is released on drop if the rate limit then refuses).
        if let Some(c) = &self.concurrency {
            if let Some(key) = req.key(&c.key, self.missing)? {
                match c.table.acquire(key, c.max) {
                    Some(slot) => admitted.slot = Some(slot),
                    None => {
                        return Err(GatewayError::RateLimited {
                            message: "too many requests in flight",
                            limit: crate::error::Limit::Concurrency,
                            status: c.status,
                            retry_after: Some(1),
                            headers: Vec::new(),
                        })
                    }
                }
            }
        }
        if let Some(store) = &self.store {
            if let Some(key) = req.key(&self.key, self.missing)? {
                let decision = match &self.redis {
                    None => store.check(&key),
                    // Boxed: the Redis future is large, and a local limit's check would carry
                    // its size on every request.
                    Some(redis) => match Box::pin(redis.check(&key)).await {
                        Ok(d) => d,
                        // The store logs its failures (once per interval).
                        Err(_) => match self.on_store_error {
                            OnStoreError::Local => store.check(&key),
                            OnStoreError::Allow => return Ok(admitted),
                            OnStoreError::Deny => return Err(GatewayError::RateLimitUnavailable),
                        },
                    },
                };
                admitted.headers = self.headers(&decision);
                if !decision.allowed {
                    return Err(GatewayError::RateLimited {
                        message: "rate limit exceeded",
                        limit: crate::error::Limit::Rate,
                        status: StatusCode::TOO_MANY_REQUESTS,
                        retry_after: decision.retry_after().map(secs_ceil),
                        headers: std::mem::take(&mut admitted.headers),
                    });
                }
            }
        }
        Ok(admitted)
    }

    fn headers(&self, d: &Decision) -> Vec<(HeaderName, HeaderValue)> {
        if self.style == HeaderStyle::None {
            return Vec::new();
        }
        let ietf = matches!(self.style, HeaderStyle::Ietf | HeaderStyle::Both);
        let legacy = matches!(self.style, HeaderStyle::Legacy | HeaderStyle::Both);
        let i = d.tightest();
        let status = d.limits[i];
        let reset = secs_ceil(status.reset);
        // Every value that changes per request is written into one buffer, without
        // `core::fmt`, and the values share it: one allocation for all of them, not one each.
        let mut n = itoa::Buffer::new();
        let prefix = self.ietf_prefixes[i].as_bytes();
        let mut text = BytesMut::with_capacity(prefix.len() + 64);
        if ietf {
            text.extend_from_slice(prefix);
            text.extend_from_slice(n.format(status.remaining).as_bytes());
            text.extend_from_slice(b";t=");
            text.extend_from_slice(n.format(reset).as_bytes());
        }
        let ietf_end = text.len();
        if legacy {
            text.extend_from_slice(n.format(status.remaining).as_bytes());
        }
        let remaining_end = text.len();
        if legacy {
            text.extend_from_slice(n.format(reset).as_bytes());
        }
        let text = text.freeze();
        let value = |at: std::ops::Range<usize>| HeaderValue::from_maybe_shared(text.slice(at));
        let mut out = Vec::with_capacity(5);
        if ietf {
            if let Some(p) = &self.policy_header {
                out.push((RATELIMIT_POLICY, p.clone()));
            }
            if let Ok(v) = value(0..ietf_end) {
                out.push((RATELIMIT, v));
            }
        }
        if legacy {
            out.push((X_RATELIMIT_LIMIT, self.limit_values[i].clone()));
            if let Ok(v) = value(ietf_end..remaining_end) {
                out.push((X_RATELIMIT_REMAINING, v));
            }
            if let Ok(v) = value(remaining_end..text.len()) {
                out.push((X_RATELIMIT_RESET, v));
            }
        }
        out
    }
}

/// Keeps the policy in `slot` from its predecessor among `old` when it is written the same
/// way at the same place: its state (counters, entries) survives a reload. The runtime hands
/// each new policy the old ones; the policy never sees a plan.
pub fn carry_over(old: &[&Arc<RateLimitPolicy>], slot: &mut Arc<RateLimitPolicy>) {
    if let Some(o) = old.iter().find(|o| o.origin == slot.origin) {
        *slot = Arc::clone(o);
    }
}

/// Nanoseconds to whole seconds, rounded up.
fn secs_ceil(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

fn compile_key(raw: &RawKey, path: &str, errors: &mut Vec<ConfigError>) -> Vec<KeyPart> {
    if raw.parts().is_empty() {
        errors.push(ConfigError::new(path, "name at least one key part"));
    }
    raw.parts()
        .iter()
        .enumerate()
        .filter_map(|(i, p)| match p {
            RawKeyPart::Consumer => Some(KeyPart::Consumer),
            RawKeyPart::ClientIp => Some(KeyPart::ClientIp),
            RawKeyPart::Route => Some(KeyPart::Route),
            RawKeyPart::Claim(name) if name.is_empty() => {
                let at = match raw {
                    RawKey::One(_) => format!("{path}.claim"),
                    RawKey::Many(_) => format!("{path}[{i}].claim"),
                };
                errors.push(ConfigError::new(at, "name a claim"));
                None
            }
            RawKeyPart::Claim(name) => Some(KeyPart::Claim(name.as_str().into())),
            RawKeyPart::Header(name) => match HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => Some(KeyPart::Header(h)),
                Err(_) => {
                    let at = match raw {
                        RawKey::One(_) => format!("{path}.header"),
                        RawKey::Many(_) => format!("{path}[{i}].header"),
                    };
                    errors.push(ConfigError::new(at, "not a valid header name"));
                    None
                }
            },
        })
        .collect()
}

/// What a key is made of.
struct Req<'a> {
    route: &'a str,
    identity: Option<&'a Identity>,
    headers: &'a HeaderMap,
    client_ip: IpAddr,
}

impl Req<'_> {
    /// The key bytes: each part tagged and length-prefixed, so no two combinations collide.
    /// `Ok(None)`: not limited (`missing_key: allow`).
    fn key(&self, parts: &[KeyPart], missing: MissingKey) -> Result<Option<Vec<u8>>, GatewayError> {
        let mut key = Vec::with_capacity(32);
        for part in parts {
            let (tag, value): (u8, &[u8]) = match part {
                KeyPart::Consumer => {
                    match self
                        .identity
                        .filter(|i| !i.anonymous)
                        .and_then(|i| i.name.as_deref())
                    {
                        Some(n) => (b'c', n.as_bytes()),
                        None => return self.missing(missing),
                    }
                }
                KeyPart::ClientIp => {
                    push_ip(&mut key, self.client_ip);
                    continue;
                }
                KeyPart::Route => (b'r', self.route.as_bytes()),
                KeyPart::Claim(name) => match self.identity.and_then(|i| i.claim_text(name)) {
                    Some(v) => {
                        key.push(b'j');
                        key.extend_from_slice(&(v.len() as u32).to_le_bytes());
                        key.extend_from_slice(v.as_bytes());
                        continue;
                    }
                    None => return self.missing(missing),
                },
                KeyPart::Header(h) => match self.headers.get(h) {
                    Some(v) => (b'h', v.as_bytes()),
                    None => return self.missing(missing),
                },
            };
            key.push(tag);
            key.extend_from_slice(&(value.len() as u32).to_le_bytes());
            key.extend_from_slice(value);
        }
        Ok(Some(key))
    }

    fn missing(&self, missing: MissingKey) -> Result<Option<Vec<u8>>, GatewayError> {
        match missing {
            MissingKey::ClientIp => {
                let mut key = Vec::with_capacity(20);
                // A distinct tag: a request counted by IP because it had no key does not share
                // a counter with one keyed by IP on purpose... but does share with other
                // keyless requests from the same IP.
                key.push(b'm');
                push_ip(&mut key, self.client_ip);
                Ok(Some(key))
            }
            MissingKey::Allow => Ok(None),
            MissingKey::Deny => Err(GatewayError::Forbidden {
                message: "the request has no value for the rate-limit key",
                by: crate::error::Refuser::RateLimitKey,
            }),
        }
    }
}

fn push_ip(key: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            key.push(b'4');
            key.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            key.push(b'6');
            key.extend_from_slice(&v6.octets());
        }
    }
}

// === Concurrency ===

struct Concurrency {
    max: u32,
    key: Vec<KeyPart>,
    status: StatusCode,
    table: Arc<ConcurrencyTable>,
}

type InFlightShard = Mutex<FxHashMap<Box<[u8]>, u32>>;

/// In-flight counts per key; an entry exists only while requests are in flight, so memory is
/// bounded by the number of requests in flight.
struct ConcurrencyTable {
    shards: Box<[InFlightShard]>,
}

impl ConcurrencyTable {
    fn new() -> Self {
        Self {
            shards: (0..local::SHARDS)
                .map(|_| Mutex::new(FxHashMap::default()))
                .collect(),
        }
    }

    fn shard(&self, key: &[u8]) -> &InFlightShard {
        &self.shards[local::shard_of(key)]
    }

    fn acquire(self: &Arc<Self>, key: Vec<u8>, max: u32) -> Option<ConcurrencySlot> {
        let key: Box<[u8]> = key.into();
        let mut map = self.shard(&key).lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(key.clone()).or_insert(0);
        if *n >= max {
            if *n == 0 {
                map.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(ConcurrencySlot {
            table: Arc::clone(self),
            key,
        })
    }
}

/// One request's place under a concurrency limit; released on drop (when the response body
/// ends, or when the request fails before that).
pub struct ConcurrencySlot {
    table: Arc<ConcurrencyTable>,
    key: Box<[u8]>,
}

impl Drop for ConcurrencySlot {
    fn drop(&mut self) {
        let mut map = self
            .table
            .shard(&self.key)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> RateLimitPolicy {
        let raw: RawRateLimitPolicy = serde_yaml_ng::from_str(yaml).unwrap();
        let mut errors = Vec::new();
        let p = RateLimitPolicy::build(&raw, "p", "global", None, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        p.unwrap()
    }

    fn errors(yaml: &str) -> Vec<String> {
        let raw: RawRateLimitPolicy = serde_yaml_ng::from_str(yaml).unwrap();
        let mut errors = Vec::new();
        RateLimitPolicy::build(&raw, "p", "global", None, &mut errors);
        errors
            .into_iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect()
    }

    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(f)
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn keys_parse_in_every_form() {
        policy("limits: [{requests: 1, per: 1m}]\nkey: consumer");
        policy("limits: [{requests: 1, per: 1m}]\nkey: {header: x-tenant}");
        policy("limits: [{requests: 1, per: 1m}]\nkey: [consumer, route, {header: x-t}]");
        policy("concurrency: {max: 2, key: client_ip, status: 503}");
    }

    #[test]
    fn bad_policies_are_reported_at_their_paths() {
        let e = errors("limits: [{requests: 0, per: 0s, burst: 2}]\nkey: {header: \"bad name\"}");
        assert!(
            e.contains(&"p.limits[0].requests: must be at least 1".to_string()),
            "{e:?}"
        );
        assert!(e.iter().any(|e| e.starts_with("p.limits[0].per")), "{e:?}");
        assert!(
            e.iter().any(|e| e.starts_with("p.limits[0].burst")),
            "{e:?}"
        );
        assert!(e.iter().any(|e| e.starts_with("p.key.header")), "{e:?}");
        assert!(!errors("{}").is_empty());
    }

    #[test]
    fn allowed_and_rejected_requests_carry_the_headers() {
        let p = policy("limits: [{requests: 2, per: 1m}]\nheaders: both");
        let h = HeaderMap::new();
        let a = block(p.check("r", None, &h, IP)).ok().unwrap();
        let get = |hs: &[(HeaderName, HeaderValue)], n: &HeaderName| {
            hs.iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.to_str().unwrap().to_string())
        };
        assert_eq!(
            get(&a.headers, &RATELIMIT_POLICY).unwrap(),
            "\"default\";q=2;w=60"
        );
        assert_eq!(get(&a.headers, &RATELIMIT).unwrap(), "\"default\";r=1;t=60");
        assert_eq!(get(&a.headers, &X_RATELIMIT_REMAINING).unwrap(), "1");
        block(p.check("r", None, &h, IP)).ok().unwrap();
        match block(p.check("r", None, &h, IP)) {
            Err(GatewayError::RateLimited {
                retry_after: Some(s),
                headers,
                ..
            }) => {
                // Both requests weigh fully until the window ends, then half a window more.
                assert!((90..=91).contains(&s), "{s}");
                assert!(get(&headers, &RATELIMIT)
                    .unwrap()
                    .starts_with("\"default\";r=0;"));
            }
            _ => panic!("expected 429"),
        }
    }

    #[test]
    fn missing_keys_follow_the_setting() {
        let h = HeaderMap::new();
        let deny =
            policy("limits: [{requests: 1, per: 1m}]\nkey: {header: x-t}\nmissing_key: deny");
        assert!(matches!(
            block(deny.check("r", None, &h, IP)),
            Err(GatewayError::Forbidden { .. })
        ));
        let allow =
            policy("limits: [{requests: 1, per: 1m}]\nkey: {header: x-t}\nmissing_key: allow");
        for _ in 0..5 {
            assert!(block(allow.check("r", None, &h, IP)).is_ok());
        }
        let ip = policy("limits: [{requests: 1, per: 1m}]\nkey: consumer");
        assert!(block(ip.check("r", None, &h, IP)).is_ok());
        assert!(block(ip.check("r", None, &h, IP)).is_err());
    }

    #[test]
    fn a_request_refused_for_concurrency_uses_no_rate_quota() {
        let p = policy("limits: [{requests: 2, per: 1m}]\nconcurrency: {max: 1}");
        let h = HeaderMap::new();
        let held = block(p.check("r", None, &h, IP)).ok().unwrap();
        for _ in 0..5 {
            assert!(block(p.check("r", None, &h, IP)).is_err());
        }
        drop(held);
        // One of the two requests is left; a rate rejection releases its slot.
        drop(block(p.check("r", None, &h, IP)).ok().unwrap());
        assert!(block(p.check("r", None, &h, IP)).is_err());
        let table = &p.concurrency.as_ref().unwrap().table;
        assert!(table.shards.iter().all(|s| s.lock().unwrap().is_empty()));
    }

    #[test]
    fn concurrency_slots_are_released_on_drop() {
        let p = policy("concurrency: {max: 2}");
        let h = HeaderMap::new();
        let a = block(p.check("r", None, &h, IP)).ok().unwrap();
        let b = block(p.check("r", None, &h, IP)).ok().unwrap();
        assert!(block(p.check("r", None, &h, IP)).is_err());
        drop(a);
        let c = block(p.check("r", None, &h, IP)).ok().unwrap();
        drop((b, c));
        let table = &p.concurrency.as_ref().unwrap().table;
        assert!(table.shards.iter().all(|s| s.lock().unwrap().is_empty()));
    }
}
