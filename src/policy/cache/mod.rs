//! Response caching: a shared HTTP cache (RFC 9111) per `cache` policy, in memory (moka:
//! byte-weighted, TinyLFU admission) with an optional shared tier in Redis.
//!
//! Owns deciding per request whether the cache answers ([`CachePolicy::lookup`]), what an
//! upstream answer does to the cache ([`Fill::respond`]: store when complete, refresh after a
//! 304, serve stale on errors, invalidate after unsafe methods), request coalescing, and purge.
//! It does not own the upstream call (the proxy makes it, and hands the response over) nor
//! the parsing of `Cache-Control` and dates (`rfc.rs`).
//!
//! Files: `config.rs` (YAML), `rfc.rs` (directives, freshness, conditionals), `key.rs` (cache
//! keys), `entry.rs` (stored responses and their Redis encoding), `redis.rs` (the shared tier),
//! `fill.rs` (the upstream's response), `purge.rs`; this file
//! compiles a policy and looks requests up.

pub mod config;
pub mod entry;
mod fill;
pub mod key;
mod purge;
pub mod redis;
pub mod rfc;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use rustc_hash::FxHashMap;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::body::GatewayBody;
use crate::policy::auth::Identity;
use crate::spec::ConfigError;
use crate::store::redis::{RawRedis, RedisStore};
use config::{RawCacheKeyPart, RawCachePolicy};
use entry::{Slot, Stored, VaryRule};
use key::KeyPart;
use redis::RedisTier;

pub use purge::{purge, Purge, PurgeCount};

/// How the cache answered a request; in the status header and the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from a fresh entry.
    Hit,
    /// Served from an entry the upstream confirmed unchanged (304 to a conditional request).
    Revalidated,
    /// Not in the cache (or not usable): the upstream answered, and the answer may be stored.
    Miss,
    /// Served from a stale entry (stale-while-revalidate, or stale-if-error).
    Stale,
    /// The cache was not consulted (method, `Upgrade`, credentials, `no-store` request).
    Bypass,
}

impl CacheStatus {
    /// The access-log spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Revalidated => "revalidated",
            CacheStatus::Miss => "miss",
            CacheStatus::Stale => "stale",
            CacheStatus::Bypass => "bypass",
        }
    }

    /// The status header value (a revalidated entry counts as a hit: the body came from the
    /// cache).
    fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            CacheStatus::Hit | CacheStatus::Revalidated => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
            CacheStatus::Bypass => "BYPASS",
        })
    }
}

/// Statuses stored (RFC 9110 section 15.1 "heuristically cacheable", without 206: ranges are
/// not cached).
const CACHEABLE: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// A compiled `cache` policy with its store. One per place the policy is written in the config,
/// shared by every route that inherits it.
pub struct CachePolicy {
    /// Where the policy is written and what it says: a reload that keeps both keeps the
    /// entries (see [`carry_over`]).
    origin: (String, RawCachePolicy, Option<RawRedis>),
    memory: moka::sync::Cache<Box<str>, Slot>,
    /// Misses in flight, by key: the first is the leader, the others wait on its channel.
    flights: Mutex<FxHashMap<Box<str>, watch::Sender<()>>>,
    parts: Vec<KeyPart>,
    by_consumer: bool,
    ignore_query: Vec<String>,
    ttl: Option<Duration>,
    default_ttl: Option<Duration>,
    ignore_no_store: bool,
    ignore_private: bool,
    swr: Duration,
    sie: Duration,
    keep_stale: Duration,
    max_entry: u64,
    coalesce: Duration,
    status_header: Option<HeaderName>,
    redis: Option<Arc<RedisTier>>,
}

/// Bytes an entry takes (moka's weigher signature wants `&Box<str>`).
#[allow(clippy::borrowed_box)]
fn weigh(key: &Box<str>, value: &Slot) -> u32 {
    (key.len() + value.weight()).min(u32::MAX as usize) as u32
}

struct Expiry;

impl moka::Expiry<Box<str>, Slot> for Expiry {
    fn expire_after_create(
        &self,
        _key: &Box<str>,
        value: &Slot,
        _at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.time_to_keep(Instant::now()))
    }

    fn expire_after_update(
        &self,
        _key: &Box<str>,
        value: &Slot,
        _at: std::time::Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.time_to_keep(Instant::now()))
    }
}

/// What the proxy does next.
// `Respond` is the hit path: boxing it would cost an allocation per hit, and the value only
// lives for the length of one match.
#[allow(clippy::large_enum_variant)]
pub enum Lookup {
    /// Answer with this response; the upstream is not contacted.
    Respond(Response<GatewayBody>),
    /// Go upstream (the request may have been given validators), then hand the response to
    /// [`Fill::respond`].
    Forward(Fill),
}

enum Mode {
    /// Pass the response through, marked BYPASS.
    Bypass,
    /// Unsafe method: drop the entry of this key when the response is a success.
    Invalidate(Box<str>),
    /// A cacheable request: store the answer if it allows.
    Store(Box<Pending>),
}

/// A cacheable request on its way upstream.
struct Pending {
    base: Box<str>,
    /// The request headers, for the variant key once the response's `Vary` is known.
    request: HeaderMap,
    head: bool,
    credentials: bool,
    /// The entry being revalidated (its validators were added to the request), or served
    /// on errors.
    stale: Option<Arc<Stored>>,
    /// The stale entry may stand in for an upstream failure.
    stale_if_error: bool,
    /// Stale-while-revalidate: this response goes to the client now; the upstream answer only
    /// refreshes the cache.
    background: Option<Response<GatewayBody>>,
    /// Allows the next background refresh if this one does not store anything.
    _refresh: Option<RefreshGuard>,
    /// The coalescing leader's place; dropping it wakes the waiting requests.
    flight: Option<FlightGuard>,
}

/// A request the cache let through to the upstream, waiting for its response.
pub struct Fill {
    policy: Arc<CachePolicy>,
    mode: Mode,
}

/// Removes a leader's flight when dropped: waiting requests wake up and look again.
pub struct FlightGuard {
    policy: Arc<CachePolicy>,
    key: Box<str>,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if let Ok(mut f) = self.policy.flights.lock() {
            f.remove(&self.key);
        }
    }
}

/// Clears a stale entry's "refresh under way" mark when the refresh ends, whatever the outcome
/// (on success the entry has been replaced by then, so clearing the old one is harmless).
struct RefreshGuard(Arc<Stored>);

impl Drop for RefreshGuard {
    fn drop(&mut self) {
        self.0.end_refresh();
    }
}

impl CachePolicy {
    /// Compiles a `cache` entry: once per place it is written, so the routes inheriting it
    /// share its entries.
    pub fn compile(raw: &RawCachePolicy, b: &mut crate::policy::Build<'_>) -> Option<Arc<Self>> {
        let crate::policy::Build {
            path,
            redis,
            shared,
            errors,
            ..
        } = b;
        shared
            .caches
            .entry(path.to_string())
            .or_insert_with(|| Self::build(raw, path, *redis, errors).map(Arc::new))
            .clone()
    }

    /// Compiles a policy; `path` is its config path for errors, `redis` the plan's Redis.
    pub fn build(
        raw: &RawCachePolicy,
        path: &str,
        redis: Option<&Arc<RedisStore>>,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Self> {
        let before = errors.len();
        if raw.max_size.0 == 0 {
            errors.push(ConfigError::new(
                format!("{path}.max_size"),
                "must be at least 1",
            ));
        }
        if raw.max_entry_bytes.0 > raw.max_size.0 {
            errors.push(ConfigError::new(
                format!("{path}.max_entry_bytes"),
                "is larger than `max_size`",
            ));
        }
        for (name, d) in [("ttl", raw.ttl), ("default_ttl", raw.default_ttl)] {
            if d.is_some_and(|d| d.0.is_zero()) {
                errors.push(ConfigError::new(
                    format!("{path}.{name}"),
                    "must be positive (leave it out to use the response's own lifetime)",
                ));
            }
        }
        let status_header = if raw.status_header.is_empty() {
            None
        } else {
            match HeaderName::from_bytes(raw.status_header.as_bytes()) {
                Ok(h) => Some(h),
                Err(_) => {
                    errors.push(ConfigError::new(
                        format!("{path}.status_header"),
                        "not a valid header name",
                    ));
                    None
                }
            }
        };
        let mut parts = Vec::new();
        for (i, p) in raw.key.iter().enumerate() {
            match p {
                RawCacheKeyPart::Consumer => parts.push(KeyPart::Consumer),
                RawCacheKeyPart::Header(h) => match HeaderName::from_bytes(h.as_bytes()) {
                    Ok(h) => parts.push(KeyPart::Header(h)),
                    Err(_) => errors.push(ConfigError::new(
                        format!("{path}.key[{i}].header"),
                        "not a valid header name",
                    )),
                },
            }
        }
        for (i, q) in raw.ignore_query.iter().enumerate() {
            if q.is_empty() || q.contains(['&', '=']) {
                errors.push(ConfigError::new(
                    format!("{path}.ignore_query[{i}]"),
                    "must be a parameter name (no `&` or `=`)",
                ));
            }
        }
        let tier = match (&raw.redis, redis) {
            (None, _) => None,
            (Some(_), None) => {
                errors.push(ConfigError::new(
                    format!("{path}.redis"),
                    "the shared tier needs the top-level `redis:` section",
                ));
                None
            }
            (Some(r), Some(store)) => {
                if r.max_entry_bytes.0 == 0 {
                    errors.push(ConfigError::new(
                        format!("{path}.redis.max_entry_bytes"),
                        "must be at least 1",
                    ));
                }
                Some(Arc::new(RedisTier::new(
                    Arc::clone(store),
                    r.max_entry_bytes.0,
                )))
            }
        };
        if errors.len() > before {
            return None;
        }
        let memory = moka::sync::Cache::builder()
            .max_capacity(raw.max_size.0)
            .weigher(weigh)
            .expire_after(Expiry)
            .build();
        Some(Self {
            origin: (
                path.to_string(),
                raw.clone(),
                redis.map(|r| r.settings().clone()),
            ),
            memory,
            flights: Mutex::new(FxHashMap::default()),
            by_consumer: parts.contains(&KeyPart::Consumer),
            parts,
            ignore_query: raw.ignore_query.clone(),
            ttl: raw.ttl.map(|d| d.0),
            default_ttl: raw.default_ttl.map(|d| d.0),
            ignore_no_store: raw.ignore_no_store,
            ignore_private: raw.ignore_private,
            swr: raw.stale_while_revalidate.0,
            sie: raw.stale_if_error.0,
            keep_stale: raw.keep_stale.0,
            max_entry: raw.max_entry_bytes.0,
            coalesce: raw.coalesce_wait.0,
            status_header,
            redis: tier,
        })
    }

    /// Decides what happens to a request (after authentication and rate limiting): answered
    /// from the cache, or sent upstream (possibly with validators added) with a [`Fill`] that
    /// takes the response.
    pub async fn lookup(
        self: &Arc<Self>,
        req: &mut http::request::Parts,
        identity: Option<&Identity>,
    ) -> Lookup {
        let host = request_host(req);
        let host = &*host;
        let method = &req.method;
        let head = *method == Method::HEAD;
        let consumer = identity.and_then(|i| i.name.as_deref());
        if *method != Method::GET && !head {
            if matches!(
                *method,
                Method::POST | Method::PUT | Method::PATCH | Method::DELETE
            ) {
                let base = self.base_key(req, host, consumer);
                return self.forward(Mode::Invalidate(base.into()));
            }
            return self.forward(Mode::Bypass);
        }
        let directives = rfc::Directives::parse(&req.headers);
        if directives.no_store || req.headers.contains_key(header::UPGRADE) {
            return self.forward(Mode::Bypass);
        }
        let no_cache = directives.request_no_cache(&req.headers);
        // A request with credentials shares entries only with responses that allow it, unless
        // every consumer has entries of its own.
        let credentials = !self.by_consumer
            && (req.headers.contains_key(header::AUTHORIZATION)
                || identity.is_some_and(|i| !i.anonymous && i.name.is_some()));
        let base = self.base_key(req, host, consumer);
        let mut waited = false;
        loop {
            let now = Instant::now();
            let found = self
                .find(&base, &req.headers)
                .await
                .filter(|s| !credentials || s.authorized_ok);
            if let Some(stored) = &found {
                if stored.is_fresh(now) && !no_cache {
                    return Lookup::Respond(self.answer(
                        stored,
                        CacheStatus::Hit,
                        now,
                        &req.headers,
                        head,
                    ));
                }
                let stale_for = stored.stale_for(now);
                if stored.allows_stale && !no_cache && stale_for < stored.swr {
                    let stale = self.answer(stored, CacheStatus::Stale, now, &req.headers, head);
                    if head || !stored.start_refresh() {
                        return Lookup::Respond(stale);
                    }
                    // One request refreshes it in the background; this client gets the stale
                    // answer at once.
                    let request = req.headers.clone();
                    add_validators(&mut req.headers, stored);
                    return self.forward(Mode::Store(Box::new(Pending {
                        base: base.into(),
                        request,
                        head,
                        credentials,
                        stale: Some(Arc::clone(stored)),
                        stale_if_error: false,
                        background: Some(stale),
                        _refresh: Some(RefreshGuard(Arc::clone(stored))),
                        flight: None,
                    })));
                }
            }
            // A miss, or an entry to revalidate. Coalesce GETs for the same key: the first
            // goes upstream, the others wait for its answer to be stored, then look again.
            let mut flight = None;
            if !head && !waited && !self.coalesce.is_zero() {
                match self.join_flight(&base) {
                    Ok(guard) => flight = Some(guard),
                    Err(mut rx) => {
                        waited = true;
                        let _ = tokio::time::timeout(self.coalesce, rx.changed()).await;
                        continue;
                    }
                }
            }
            // The client's own conditional headers are kept for answering it; upstream, a
            // stale entry's validators replace them (a 304 then refers to the stored entry).
            let request = req.headers.clone();
            let stale = found.filter(|s| s.has_validators() || s.allows_stale);
            if let Some(s) = &stale {
                if s.has_validators() && !head {
                    add_validators(&mut req.headers, s);
                }
            }
            let stale_if_error = stale
                .as_ref()
                .is_some_and(|s| s.allows_stale && s.stale_for(now) < s.sie);
            return self.forward(Mode::Store(Box::new(Pending {
                base: base.into(),
                request,
                head,
                credentials,
                stale,
                stale_if_error,
                background: None,
                _refresh: None,
                flight,
            })));
        }
    }

    fn forward(self: &Arc<Self>, mode: Mode) -> Lookup {
        Lookup::Forward(Fill {
            policy: Arc::clone(self),
            mode,
        })
    }

    fn base_key(&self, req: &http::request::Parts, host: &str, consumer: Option<&str>) -> String {
        key::base_key(
            host,
            req.uri.path(),
            req.uri.query(),
            &self.ignore_query,
            &self.parts,
            &req.headers,
            consumer,
        )
    }

    /// Becomes the leader of the key's flight, or gets the leader's channel to wait on.
    fn join_flight(self: &Arc<Self>, key: &str) -> Result<FlightGuard, watch::Receiver<()>> {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = flights.get(key) {
            return Err(tx.subscribe());
        }
        flights.insert(key.into(), watch::channel(()).0);
        Ok(FlightGuard {
            policy: Arc::clone(self),
            key: key.into(),
        })
    }

    /// The stored response for a request: memory first, then Redis (copied into memory).
    async fn find(&self, base: &str, headers: &HeaderMap) -> Option<Arc<Stored>> {
        let slot = match self.memory.get(base) {
            Some(s) => s,
            None => {
                // Boxed: the Redis future is large, and every lookup's future would carry
                // its size while only the Redis tier's misses need it.
                let s = Box::pin(self.redis.as_ref()?.get(base)).await?;
                self.memory.insert(base.into(), s.clone());
                s
            }
        };
        match slot {
            Slot::Response(s) => Some(s),
            Slot::Vary(rule) => {
                let variant = key::variant_key(base, rule.generation, &rule.names, headers);
                match self.memory.get(variant.as_str()) {
                    Some(Slot::Response(s)) => Some(s),
                    Some(Slot::Vary(_)) => None,
                    None => match Box::pin(self.redis.as_ref()?.get(&variant)).await? {
                        Slot::Response(s) => {
                            self.memory
                                .insert(variant.into(), Slot::Response(Arc::clone(&s)));
                            Some(s)
                        }
                        Slot::Vary(_) => None,
                    },
                }
            }
        }
    }

    /// A response made from a stored one: `Age` and the status header added, a 304 when the
    /// client's conditional headers match, no body for HEAD.
    fn answer(
        &self,
        stored: &Stored,
        status: CacheStatus,
        now: Instant,
        request: &HeaderMap,
        head: bool,
    ) -> Response<GatewayBody> {
        let not_modified =
            stored.status.is_success() && rfc::not_modified(request, &stored.headers);
        let mut resp = if not_modified {
            let mut r = Response::new(GatewayBody::empty());
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            let h = r.headers_mut();
            for name in [
                header::CACHE_CONTROL,
                header::CONTENT_LOCATION,
                header::DATE,
                header::ETAG,
                header::EXPIRES,
                header::LAST_MODIFIED,
                header::VARY,
            ] {
                for v in stored.headers.get_all(&name) {
                    h.append(name.clone(), v.clone());
                }
            }
            r
        } else {
            let body = if head {
                GatewayBody::empty()
            } else {
                GatewayBody::full(stored.body.clone())
            };
            let mut r = Response::new(body);
            *r.status_mut() = stored.status;
            *r.headers_mut() = stored.headers.clone();
            r
        };
        resp.headers_mut()
            .insert(header::AGE, HeaderValue::from(stored.age(now).as_secs()));
        self.mark(&mut resp, status);
        resp
    }

    fn mark(&self, resp: &mut Response<GatewayBody>, status: CacheStatus) {
        if let Some(h) = &self.status_header {
            resp.headers_mut().insert(h.clone(), status.header());
        }
        resp.extensions_mut().insert(status);
    }

    /// Stores a complete response (memory, and Redis when configured) under its key; a response
    /// that varies also gets (or refreshes) the resource's vary rule.
    fn insert(&self, base: &str, vary: Option<(Vec<HeaderName>, &HeaderMap)>, stored: Stored) {
        let now = Instant::now();
        let slot = Slot::Response(Arc::new(stored));
        let key: Box<str> = match vary {
            None => base.into(),
            Some((names, request)) => {
                // The same headers keep the rule's generation, so sibling variants stay
                // reachable, and the rule lives as long as the longest of them; a different
                // rule starts a new generation (the old variants become unreachable).
                let mut keep = slot.time_to_keep(now).max(self.keep_stale);
                let generation = match self.memory.get(base) {
                    Some(Slot::Vary(old)) if old.names == names => {
                        keep = keep.max(Slot::Vary(Arc::clone(&old)).time_to_keep(now));
                        old.generation
                    }
                    _ => fastrand::u64(..),
                };
                let rule = Arc::new(VaryRule {
                    names,
                    generation,
                    keep,
                    made: now,
                });
                let variant = key::variant_key(base, rule.generation, &rule.names, request);
                let rule = Slot::Vary(rule);
                if let Some(r) = &self.redis {
                    r.put(base, &rule);
                }
                self.memory.insert(base.into(), rule);
                variant.into()
            }
        };
        if let Some(r) = &self.redis {
            r.put(&key, &slot);
        }
        self.memory.insert(key, slot);
    }

    /// Removes `key` (a base key: with it go all its variants), here and in Redis.
    fn invalidate(&self, key: &str) {
        self.memory.invalidate(key);
        if let Some(r) = &self.redis {
            r.delete(key);
        }
    }

    /// Removes the entry of exactly `key` (as [`key::base_key`] writes it, e.g.
    /// `api.example.com/products?page=2`) with all its variants, from memory and Redis.
    /// Returns how many memory entries and Redis keys were removed.
    pub async fn purge_key(&self, key: &str) -> PurgeCount {
        let memory = self.memory.remove(key).is_some() as u64;
        let redis = match &self.redis {
            Some(r) => r.purge_key(key).await.ok(),
            None => Some(0),
        };
        PurgeCount { memory, redis }
    }

    /// Removes every entry whose key starts with `prefix` (e.g. `api.example.com/products`),
    /// from memory and Redis.
    pub async fn purge_prefix(&self, prefix: &str) -> PurgeCount {
        let keys: Vec<Arc<Box<str>>> = self
            .memory
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k)
            .collect();
        let mut memory = 0;
        for k in keys {
            memory += self.memory.remove(k.as_ref()).is_some() as u64;
        }
        let redis = match &self.redis {
            Some(r) => r.purge_prefix(prefix).await.ok(),
            None => Some(0),
        };
        PurgeCount { memory, redis }
    }

    /// Entries in memory (after pending maintenance), for tests and the admin API.
    pub fn entry_count(&self) -> u64 {
        self.memory.run_pending_tasks();
        self.memory.entry_count()
    }
}

/// Keeps the policy in `slot` from its predecessor among `old` when it is written the same
/// way at the same place: its state (counters, entries) survives a reload. The runtime hands
/// each new policy the old ones; the policy never sees a plan.
pub fn carry_over(old: &[&Arc<CachePolicy>], slot: &mut Arc<CachePolicy>) {
    if let Some(o) = old.iter().find(|o| o.origin == slot.origin) {
        *slot = Arc::clone(o);
    }
}

/// The host the client addressed (URI authority or `Host`), as the router normalises it.
fn request_host(req: &http::request::Parts) -> std::borrow::Cow<'_, str> {
    let raw = match req.uri.host() {
        Some(h) => h,
        None => req
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
    };
    crate::router::normalize_host(raw)
}

/// Replaces the request's own conditional headers with the stored entry's validators.
fn add_validators(headers: &mut HeaderMap, stored: &Stored) {
    headers.remove(header::IF_NONE_MATCH);
    headers.remove(header::IF_MODIFIED_SINCE);
    if let Some(etag) = stored.headers.get(header::ETAG) {
        headers.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(lm) = stored.headers.get(header::LAST_MODIFIED) {
        headers.insert(header::IF_MODIFIED_SINCE, lm.clone());
    }
}
