//! The in-process store: sharded counters, exact under concurrency, bounded in memory.
//!
//! Keys hash (FxHash) to one of [`SHARDS`] shards, each a `Mutex<HashMap>`; a check takes one
//! shard lock, never a global one. All limits of a policy live in one entry per key, so a check
//! of several limits is atomic: a request counts against every limit or none.
//!
//! Memory: each shard holds at most `ceil(max_keys / SHARDS)` keys. Inserting into a full shard
//! first drops expired entries (whose windows/buckets no longer hold anything); if none expired,
//! the least recently seen eighth of the shard is evicted (those keys start afresh: under a flood
//! of distinct keys the limit of an evicted key is forgotten, never the memory bound).
//!
//! Time is `tokio::time::Instant` (so tests can pause it), kept as nanoseconds since the store
//! was created. Each key's sliding windows start at its first request (while the key is kept),
//! so a key's first window always holds exactly `requests`, however the clock is aligned.

use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::Duration;

use rustc_hash::{FxBuildHasher, FxHashMap};
use tokio::time::Instant;

use super::config::Algorithm;

/// Number of shards.
pub const SHARDS: usize = 64;

/// One compiled limit.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// Requests per window.
    pub requests: u64,
    /// The window, in nanoseconds (at least 1).
    pub window: u64,
    /// The algorithm.
    pub algorithm: Algorithm,
    /// GCRA: the bucket size.
    pub burst: u64,
}

impl Limit {
    /// A limit of `requests` per `per`.
    pub fn new(requests: u64, per: Duration, algorithm: Algorithm, burst: Option<u64>) -> Self {
        Self {
            requests,
            window: (per.as_nanos() as u64).max(1),
            algorithm,
            burst: burst.unwrap_or(requests),
        }
    }

    /// GCRA emission interval: one token every `window / requests`.
    fn interval(&self) -> u64 {
        (self.window / self.requests.max(1)).max(1)
    }
}

/// The state of one limit for one key.
#[derive(Debug, Clone, Copy, Default)]
struct State {
    /// Sliding window: index of the current window. GCRA: unused.
    window: u64,
    /// Sliding window: count in the current window. GCRA: theoretical arrival time (ns).
    a: u64,
    /// Sliding window: count in the previous window.
    b: u64,
}

struct Entry {
    /// First check (ns): the key's windows are aligned to it; states hold times relative to it.
    anchor: u64,
    /// Last check (ns), for eviction.
    seen: u64,
    /// Past this (ns), the entry holds nothing and may be dropped.
    expires: u64,
    states: Box<[State]>,
}

/// The outcome of one limit's check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitStatus {
    /// Requests left after this one (0 when rejected).
    pub remaining: u64,
    /// Nanoseconds until the quota is fully available again (the header `t`/`Reset`).
    pub reset: u64,
    /// Rejected: nanoseconds until a request would pass.
    pub retry_after: Option<u64>,
}

/// The outcome of a check against all limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Every limit allowed the request (and counted it).
    pub allowed: bool,
    /// Per limit, in configuration order.
    pub limits: Vec<LimitStatus>,
}

impl Decision {
    /// Index of the limit closest to exhaustion (lowest remaining; the rejecting one with the
    /// longest wait when rejected).
    pub fn tightest(&self) -> usize {
        let mut best = 0;
        for (i, s) in self.limits.iter().enumerate() {
            let b = &self.limits[best];
            let better = match (s.retry_after, b.retry_after) {
                (Some(x), Some(y)) => x > y,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => s.remaining < b.remaining,
            };
            if better {
                best = i;
            }
        }
        best
    }

    /// Nanoseconds until a request would pass (the longest wait of the rejecting limits).
    pub fn retry_after(&self) -> Option<u64> {
        self.limits.iter().filter_map(|s| s.retry_after).max()
    }
}

/// The shard of `key`: the top bits of its FxHash.
pub fn shard_of(key: &[u8]) -> usize {
    (FxBuildHasher.hash_one(key) >> 58) as usize % SHARDS
}

type Shard = Mutex<FxHashMap<Box<[u8]>, Entry>>;

/// Sharded in-process counters for one policy's limits.
pub struct LocalStore {
    limits: Box<[Limit]>,
    shards: Box<[Shard]>,
    per_shard: usize,
    epoch: Instant,
}

impl LocalStore {
    /// A store for `limits`, keeping at most about `max_keys` keys (rounded up to a multiple of
    /// [`SHARDS`]).
    pub fn new(limits: Vec<Limit>, max_keys: u64) -> Self {
        let per_shard = (max_keys as usize).div_ceil(SHARDS).max(1);
        Self {
            limits: limits.into(),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(FxHashMap::default()))
                .collect(),
            per_shard,
            epoch: Instant::now(),
        }
    }

    /// The limits.
    pub fn limits(&self) -> &[Limit] {
        &self.limits
    }

    /// Keys currently held.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// No key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Most keys held at once.
    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    fn now(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.epoch)
            .as_nanos() as u64
    }

    /// Checks a request with `key` against every limit; counts it only if all allow it.
    pub fn check(&self, key: &[u8]) -> Decision {
        self.check_with(key, || self.now())
    }

    #[cfg(test)]
    fn check_at(&self, key: &[u8], now: u64) -> Decision {
        self.check_with(key, || now)
    }

    /// The clock is read under the shard's lock: a request on another worker that read it
    /// earlier but took the lock later would come before the key's first request (its anchor)
    /// or after its window had moved on, and be counted in a window already gone.
    fn check_with(&self, key: &[u8], clock: impl FnOnce() -> u64) -> Decision {
        let mut map = self.shards[shard_of(key)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = clock();
        if !map.contains_key(key) && map.len() >= self.per_shard {
            evict(&mut map, now, self.per_shard);
        }
        let entry = match map.get_mut(key) {
            Some(e) => e,
            None => map.entry(key.into()).or_insert_with(|| Entry {
                anchor: now,
                seen: now,
                expires: 0,
                states: vec![State::default(); self.limits.len()].into(),
            }),
        };
        entry.seen = now;
        // Never negative with the clock read under the lock; saturating all the same, since
        // an underflow here is a panic (debug) or a window ages away (release).
        let rel = now.saturating_sub(entry.anchor);
        // Pass 1 decides; pass 2 (only when every limit allows) counts. Both are pure
        // functions of the state, so computing twice costs less than buffering the new states.
        let mut limits = Vec::with_capacity(self.limits.len());
        for (limit, state) in self.limits.iter().zip(entry.states.iter()) {
            limits.push(step(limit, *state, rel).0);
        }
        let allowed = limits.iter().all(|s| s.retry_after.is_none());
        if allowed {
            let mut expires = 0;
            for (limit, state) in self.limits.iter().zip(entry.states.iter_mut()) {
                *state = step(limit, *state, rel).1;
                expires = expires.max(match limit.algorithm {
                    Algorithm::SlidingWindow => (state.window + 2).saturating_mul(limit.window),
                    Algorithm::Gcra => state.a,
                });
            }
            entry.expires = entry.anchor.saturating_add(expires);
        } else {
            // A rejected request is not counted: limits that would have allowed it report the
            // quota they really have left.
            for s in &mut limits {
                if s.retry_after.is_none() {
                    s.remaining = s.remaining.saturating_add(1);
                }
            }
        }
        Decision { allowed, limits }
    }
}

fn step(limit: &Limit, state: State, now: u64) -> (LimitStatus, State) {
    match limit.algorithm {
        Algorithm::SlidingWindow => sliding(limit, state, now),
        Algorithm::Gcra => gcra(limit, state, now),
    }
}

/// Makes room in a full shard: expired entries first, else the least recently seen eighth.
fn evict(map: &mut FxHashMap<Box<[u8]>, Entry>, now: u64, cap: usize) {
    map.retain(|_, e| e.expires > now);
    if map.len() < cap {
        return;
    }
    let mut seen: Vec<u64> = map.values().map(|e| e.seen).collect();
    let n = (cap / 8).max(1).min(seen.len() - 1);
    let (_, cut, _) = seen.select_nth_unstable(n);
    let cut = *cut;
    // Remove exactly n + 1 entries: all seen before `cut`, then ties at `cut` as needed.
    let older = seen.iter().filter(|&&s| s < cut).count();
    let mut ties = n + 1 - older;
    map.retain(|_, e| {
        if e.seen < cut {
            false
        } else if e.seen == cut && ties > 0 {
            ties -= 1;
            false
        } else {
            true
        }
    });
}

/// Weighted two-window counter.
///
/// Windows of `w` ns are aligned to the key's first request (`now` is relative to it). With `p` requests counted in the
/// previous window, `c` in the current one and `e` ns elapsed in the current one, a request
/// passes if `p * (w - e) / w + c + 1 <= requests` (computed exactly in integers), i.e. the
/// previous window counts in proportion to how much of it the sliding window still covers.
fn sliding(limit: &Limit, s: State, now: u64) -> (LimitStatus, State) {
    let w = limit.window as u128;
    let q = limit.requests as u128;
    let idx = now / limit.window;
    let (cur, prev) = if idx == s.window {
        (s.a, s.b)
    } else if idx == s.window + 1 {
        (0, s.a)
    } else {
        (0, 0)
    };
    let (cur, prev) = (cur as u128, prev as u128);
    let e = (now % limit.window) as u128;
    let weighted = prev * (w - e);
    let to_window_end = (w - e) as u64;
    if weighted + (cur + 1) * w <= q * w {
        // Remaining after this request: how many more fit now.
        let used = weighted + (cur + 1) * w;
        let remaining = ((q * w - used) / w) as u64;
        let state = State {
            window: idx,
            a: (cur + 1) as u64,
            b: prev as u64,
        };
        let reset = if prev > 0 {
            to_window_end + limit.window
        } else {
            to_window_end
        };
        return (
            LimitStatus {
                remaining,
                reset,
                retry_after: None,
            },
            state,
        );
    }
    // Rejected: when does `weighted' + (cur' + 1) * w <= q * w` first hold?
    let wait: u128 = if cur < q && prev > 0 {
        // Within this window, as the previous one slides out: (w - e') * prev <= (q - cur - 1) * w.
        let e2 = w - ((q - cur - 1) * w) / prev;
        e2.saturating_sub(e).max(1)
    } else if q == 0 {
        u64::MAX as u128
    } else {
        // In the next window, where this window's `cur` is the previous one:
        // cur * (w - e2) + w <= q * w  ⇔  e2 >= w - (q - 1) * w / cur.
        let e2 = ((q - 1) * w)
            .checked_div(cur)
            .map_or(0, |fit| w.saturating_sub(fit));
        (w - e) + e2
    };
    let wait = wait.min(u64::MAX as u128) as u64;
    (
        LimitStatus {
            remaining: 0,
            reset: wait.max(to_window_end),
            retry_after: Some(wait),
        },
        s,
    )
}

/// GCRA: `a` is the theoretical arrival time. With emission interval `T = window / requests`
/// and tolerance `burst * T`, a request passes if `max(tat, now) + T - now <= burst * T`.
fn gcra(limit: &Limit, s: State, now: u64) -> (LimitStatus, State) {
    let t = limit.interval();
    let tau = limit.burst.saturating_mul(t);
    let tat = s.a.max(now);
    let new_tat = tat.saturating_add(t);
    let ahead = new_tat - now;
    if ahead <= tau {
        (
            LimitStatus {
                remaining: (tau - ahead) / t,
                reset: ahead,
                retry_after: None,
            },
            State { a: new_tat, ..s },
        )
    } else {
        (
            LimitStatus {
                remaining: 0,
                reset: tat - now,
                retry_after: Some((ahead - tau).max(1)),
            },
            s,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_older_than_the_keys_first_request_counts_in_its_first_window() {
        let s = store(vec![sw(2, 10)]);
        assert!(s.check_at(b"k", 5 * SEC).allowed);
        assert!(s.check_at(b"k", 5 * SEC - 1).allowed);
        assert!(!s.check_at(b"k", 5 * SEC - 2).allowed);
    }

    const SEC: u64 = 1_000_000_000;

    fn store(limits: Vec<Limit>) -> LocalStore {
        LocalStore::new(limits, 1000)
    }

    fn sw(requests: u64, secs: u64) -> Limit {
        Limit::new(
            requests,
            Duration::from_secs(secs),
            Algorithm::SlidingWindow,
            None,
        )
    }

    #[test]
    fn sliding_window_allows_exactly_the_limit_in_a_fresh_window() {
        let s = store(vec![sw(50, 60)]);
        let passed = (0..200).filter(|_| s.check_at(b"k", SEC).allowed).count();
        assert_eq!(passed, 50);
    }

    #[test]
    fn sliding_window_has_no_double_burst_at_the_edge() {
        let s = store(vec![sw(10, 10)]);
        // The first request opens window 0; the other 9 come at its very end.
        assert!(s.check_at(b"k", 0).allowed);
        for _ in 0..9 {
            assert!(s.check_at(b"k", 10 * SEC - 1).allowed);
        }
        // Just after the edge the previous window still weighs almost fully.
        assert!(!s.check_at(b"k", 10 * SEC + 1).allowed);
        // Halfway through window 1, half of it is forgotten: 5 pass.
        let passed = (0..10)
            .filter(|_| s.check_at(b"k", 15 * SEC).allowed)
            .count();
        assert_eq!(passed, 5);
    }

    #[test]
    fn sliding_window_retry_after_is_when_a_request_passes_again() {
        let s = store(vec![sw(50, 2)]);
        for _ in 0..50 {
            assert!(s.check_at(b"k", 0).allowed);
        }
        let d = s.check_at(b"k", 0);
        assert!(!d.allowed);
        let wait = d.retry_after().unwrap();
        assert!(wait > 2 * SEC && wait <= 3 * SEC, "{wait}");
        assert!(!s.check_at(b"k", wait - 1).allowed);
        assert!(s.check_at(b"k", wait).allowed);
    }

    #[test]
    fn gcra_allows_the_burst_then_the_rate() {
        let s = store(vec![Limit::new(
            10,
            Duration::from_secs(10),
            Algorithm::Gcra,
            Some(3),
        )]);
        let passed = (0..10).filter(|_| s.check_at(b"k", 0).allowed).count();
        assert_eq!(passed, 3);
        let d = s.check_at(b"k", 0);
        assert_eq!(d.retry_after(), Some(SEC));
        assert!(s.check_at(b"k", SEC).allowed);
        assert!(!s.check_at(b"k", SEC).allowed);
    }

    #[test]
    fn several_limits_count_a_request_against_all_or_none() {
        let s = store(vec![sw(3, 1), sw(5, 100)]);
        let mut passed = 0;
        for second in 0..10 {
            for _ in 0..10 {
                passed += usize::from(s.check_at(b"k", second * SEC * 3).allowed);
            }
        }
        assert_eq!(passed, 5);
        // The day-style limit kept its count: 5, not inflated by rejected requests.
        let d = s.check_at(b"k", 0);
        assert_eq!(d.limits.len(), 2);
    }

    #[test]
    fn a_key_s_windows_start_at_its_first_request() {
        let s = store(vec![sw(3, 10)]);
        // A key first seen just before a multiple of the window still gets a whole window.
        let t0 = 10 * SEC - 1;
        let passed = (0..10).filter(|_| s.check_at(b"k", t0).allowed).count();
        assert_eq!(passed, 3);
        assert!(!s.check_at(b"k", t0 + 2).allowed);
    }

    #[test]
    fn keys_are_independent() {
        let s = store(vec![sw(1, 60)]);
        assert!(s.check_at(b"a", 0).allowed);
        assert!(s.check_at(b"b", 0).allowed);
        assert!(!s.check_at(b"a", 0).allowed);
    }

    #[test]
    fn a_million_distinct_keys_stay_under_max_keys() {
        let s = LocalStore::new(vec![sw(100, 60)], 10_000);
        for i in 0u32..1_000_000 {
            assert!(s.check_at(&i.to_le_bytes(), SEC).allowed);
        }
        assert!(s.len() <= 10_000, "{}", s.len());
        assert!(s.len() >= 5_000, "{}", s.len());
    }

    #[test]
    fn expired_keys_are_evicted_before_live_ones() {
        let s = LocalStore::new(vec![sw(100, 1)], SHARDS as u64);
        // Fill with keys that expire after two windows.
        for i in 0u32..10_000 {
            s.check_at(&i.to_le_bytes(), 0);
        }
        assert!(s.len() <= SHARDS);
        // Long after, new keys find room by dropping only expired ones.
        s.check_at(b"fresh", 100 * SEC);
        assert!(s.len() <= SHARDS);
    }

    #[tokio::test(start_paused = true)]
    async fn time_is_tokio_time_so_paused_tests_can_advance_it() {
        let s = store(vec![sw(2, 10)]);
        assert!(s.check(b"k").allowed);
        assert!(s.check(b"k").allowed);
        let d = s.check(b"k");
        let wait = d.retry_after().unwrap();
        tokio::time::advance(Duration::from_nanos(wait - 1)).await;
        assert!(!s.check(b"k").allowed);
        tokio::time::advance(Duration::from_nanos(1)).await;
        assert!(s.check(b"k").allowed);
    }

    #[test]
    fn exact_under_threads() {
        let s = std::sync::Arc::new(store(vec![sw(1000, 3600)]));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || (0..1000).filter(|_| s.check(b"k").allowed).count())
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 1000);
    }
}
