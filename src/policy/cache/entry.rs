//! What the cache stores: complete responses ([`Stored`]) and, for resources whose responses
//! vary on request headers, the rule that picks a variant ([`VaryRule`]). Also their byte
//! encoding for the shared Redis tier.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::time::Instant;

/// A stored response.
pub struct Stored {
    /// Status (200, 404, ...).
    pub status: StatusCode,
    /// The response headers as the upstream sent them (hop-by-hop and `Age` removed).
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// When the response was generated at the origin (its arrival minus its `Age`).
    pub born: Instant,
    /// Freshness lifetime.
    pub fresh: Duration,
    /// How long past `fresh` it may be served while one request refreshes it.
    pub swr: Duration,
    /// How long past `fresh` it may be served when the upstream fails.
    pub sie: Duration,
    /// How long past `fresh` it is kept at all (for the two above and for revalidation).
    pub keep: Duration,
    /// Stale serving is allowed (no `must-revalidate`, `proxy-revalidate`, `s-maxage`).
    pub allows_stale: bool,
    /// `no-cache`: every use needs a successful revalidation first.
    pub no_cache: bool,
    /// May answer requests that carry credentials (`public`, `s-maxage`, `must-revalidate`).
    pub authorized_ok: bool,
    /// A background refresh (stale-while-revalidate) is under way: start only one.
    pub refreshing: AtomicBool,
}

impl Stored {
    /// Time since the origin generated it.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.born)
    }

    /// Fresh: usable without asking the upstream.
    pub fn is_fresh(&self, now: Instant) -> bool {
        !self.no_cache && self.age(now) < self.fresh
    }

    /// How long it has been stale (zero while fresh).
    pub fn stale_for(&self, now: Instant) -> Duration {
        self.age(now).saturating_sub(self.fresh)
    }

    /// Time left before it must leave the cache.
    pub fn time_to_keep(&self, now: Instant) -> Duration {
        (self.fresh + self.keep).saturating_sub(self.age(now))
    }

    /// Has an `ETag` or `Last-Modified` to revalidate with.
    pub fn has_validators(&self) -> bool {
        self.headers.contains_key(http::header::ETAG)
            || self.headers.contains_key(http::header::LAST_MODIFIED)
    }

    /// Bytes it takes in memory (roughly: headers, body and bookkeeping).
    pub fn weight(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        headers + self.body.len() + 160
    }

    /// A copy with the same content and a fresh refresh flag.
    pub fn refreshed(&self, headers: HeaderMap, born: Instant, fresh: Duration) -> Stored {
        Stored {
            status: self.status,
            headers,
            body: self.body.clone(),
            born,
            fresh,
            swr: self.swr,
            sie: self.sie,
            keep: self.keep,
            allows_stale: self.allows_stale,
            no_cache: self.no_cache,
            authorized_ok: self.authorized_ok,
            refreshing: AtomicBool::new(false),
        }
    }
}

/// The rule of a resource whose responses carry `Vary`: which request headers pick the variant.
/// `generation` is part of every variant's key, so replacing or removing the rule makes all
/// the old variants unreachable at once (invalidation stays O(1)).
pub struct VaryRule {
    /// The request headers named by `Vary`.
    pub names: Vec<HeaderName>,
    /// Random, unique per rule (also across gateway nodes sharing Redis).
    pub generation: u64,
    /// How long the rule is kept.
    pub keep: Duration,
    /// When it was made.
    pub made: Instant,
}

/// A cache slot: a response, or the vary rule of a resource.
#[derive(Clone)]
pub enum Slot {
    /// A stored response.
    Response(Arc<Stored>),
    /// The variant rule; the responses live under variant keys.
    Vary(Arc<VaryRule>),
}

impl Slot {
    /// Bytes it takes in memory.
    pub fn weight(&self) -> usize {
        match self {
            Slot::Response(s) => s.weight(),
            Slot::Vary(v) => 64 + v.names.iter().map(|n| n.as_str().len() + 24).sum::<usize>(),
        }
    }

    /// How long it stays in the cache from now.
    pub fn time_to_keep(&self, now: Instant) -> Duration {
        match self {
            Slot::Response(s) => s.time_to_keep(now),
            Slot::Vary(v) => v.keep.saturating_sub(now.saturating_duration_since(v.made)),
        }
    }
}

// === Encoding for Redis ===
//
// Hand-rolled and versioned: a tag byte, fixed-width numbers, length-prefixed header names and
// values, then the body. Times travel as wall-clock milliseconds so another node can compute
// the entry's age; node clocks are assumed roughly in sync (NTP), as for `Date` headers.

const RESPONSE_V1: u8 = b'R';
const VARY_V1: u8 = b'V';

fn unix_ms(now: Instant, then: Instant) -> u64 {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    wall.saturating_sub(now.saturating_duration_since(then))
        .as_millis() as u64
}

fn from_unix_ms(now: Instant, ms: u64) -> Instant {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let ago = wall.saturating_sub(Duration::from_millis(ms));
    now.checked_sub(ago).unwrap_or(now)
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// Encodes a slot for Redis.
pub fn encode(slot: &Slot, now: Instant) -> Bytes {
    let mut b = BytesMut::new();
    match slot {
        Slot::Response(s) => {
            b.reserve(s.weight());
            b.put_u8(RESPONSE_V1);
            b.put_u16(s.status.as_u16());
            b.put_u64(unix_ms(now, s.born));
            for d in [s.fresh, s.swr, s.sie, s.keep] {
                b.put_u64(ms(d));
            }
            b.put_u8(s.allows_stale as u8 | (s.no_cache as u8) << 1 | (s.authorized_ok as u8) << 2);
            b.put_u16(s.headers.len().min(u16::MAX as usize) as u16);
            for (n, v) in s.headers.iter().take(u16::MAX as usize) {
                b.put_u16(n.as_str().len() as u16);
                b.put_slice(n.as_str().as_bytes());
                b.put_u32(v.len() as u32);
                b.put_slice(v.as_bytes());
            }
            b.put_slice(&s.body);
        }
        Slot::Vary(v) => {
            b.put_u8(VARY_V1);
            b.put_u64(v.generation);
            b.put_u64(unix_ms(now, v.made));
            b.put_u64(ms(v.keep));
            let names: Vec<&str> = v.names.iter().map(HeaderName::as_str).collect();
            b.put_slice(names.join("\n").as_bytes());
        }
    }
    b.freeze()
}

/// Decodes what [`encode`] wrote; `None` for anything else (an old format, a foreign value).
pub fn decode(mut b: Bytes, now: Instant) -> Option<Slot> {
    if b.is_empty() {
        return None;
    }
    match b.get_u8() {
        RESPONSE_V1 => {
            if b.remaining() < 2 + 8 * 5 + 1 + 2 {
                return None;
            }
            let status = StatusCode::from_u16(b.get_u16()).ok()?;
            let born = from_unix_ms(now, b.get_u64());
            let mut d = [Duration::ZERO; 4];
            for x in &mut d {
                *x = Duration::from_millis(b.get_u64());
            }
            let flags = b.get_u8();
            let count = b.get_u16();
            let mut headers = HeaderMap::with_capacity(count as usize);
            for _ in 0..count {
                if b.remaining() < 2 {
                    return None;
                }
                let n = b.get_u16() as usize;
                if b.remaining() < n + 4 {
                    return None;
                }
                let name = HeaderName::from_bytes(&b.split_to(n)).ok()?;
                let len = b.get_u32() as usize;
                if b.remaining() < len {
                    return None;
                }
                let value = HeaderValue::from_maybe_shared(b.split_to(len)).ok()?;
                headers.append(name, value);
            }
            // The body is copied out of the reply buffer so the entry holds only itself.
            let body = Bytes::copy_from_slice(&b);
            Some(Slot::Response(Arc::new(Stored {
                status,
                headers,
                body,
                born,
                fresh: d[0],
                swr: d[1],
                sie: d[2],
                keep: d[3],
                allows_stale: flags & 1 != 0,
                no_cache: flags & 2 != 0,
                authorized_ok: flags & 4 != 0,
                refreshing: AtomicBool::new(false),
            })))
        }
        VARY_V1 => {
            if b.remaining() < 24 {
                return None;
            }
            let generation = b.get_u64();
            let made = from_unix_ms(now, b.get_u64());
            let keep = Duration::from_millis(b.get_u64());
            let text = std::str::from_utf8(&b).ok()?;
            let names = text
                .split('\n')
                .filter(|n| !n.is_empty())
                .map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect::<Option<Vec<_>>>()?;
            Some(Slot::Vary(Arc::new(VaryRule {
                names,
                generation,
                keep,
                made,
            })))
        }
        _ => None,
    }
}

impl Stored {
    /// Marks a background refresh as started; false when one already is.
    pub fn start_refresh(&self) -> bool {
        self.refreshing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Allows another background refresh (the previous one failed).
    pub fn end_refresh(&self) {
        self.refreshing.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let now = Instant::now();
        let mut headers = HeaderMap::new();
        headers.insert("etag", "\"v1\"".parse().unwrap());
        headers.append("x-many", "a".parse().unwrap());
        headers.append("x-many", "b".parse().unwrap());
        let s = Slot::Response(Arc::new(Stored {
            status: StatusCode::NOT_FOUND,
            headers,
            body: Bytes::from_static(b"hello"),
            born: now.checked_sub(Duration::from_secs(3)).unwrap_or(now),
            fresh: Duration::from_secs(60),
            swr: Duration::from_secs(5),
            sie: Duration::ZERO,
            keep: Duration::from_secs(600),
            allows_stale: true,
            no_cache: false,
            authorized_ok: true,
            refreshing: AtomicBool::new(false),
        }));
        let Some(Slot::Response(back)) = decode(encode(&s, now), now) else {
            panic!("not a response")
        };
        assert_eq!(back.status, 404);
        assert_eq!(back.body, "hello");
        assert_eq!(back.headers.get_all("x-many").iter().count(), 2);
        assert!(back.allows_stale && back.authorized_ok && !back.no_cache);
        assert_eq!(back.swr, Duration::from_secs(5));
        let age = back.age(now).as_millis();
        assert!((2900..=3100).contains(&age), "age {age}");
        let v = Slot::Vary(Arc::new(VaryRule {
            names: vec![HeaderName::from_static("accept-encoding")],
            generation: 42,
            keep: Duration::from_secs(9),
            made: now,
        }));
        let Some(Slot::Vary(back)) = decode(encode(&v, now), now) else {
            panic!("not a vary rule")
        };
        assert_eq!(back.generation, 42);
        assert_eq!(back.names, vec!["accept-encoding"]);
        assert!(decode(Bytes::from_static(b"R\x00"), now).is_none());
    }
}
