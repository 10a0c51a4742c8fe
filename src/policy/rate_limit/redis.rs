//! The Redis store: the same algorithms as `local.rs`, run atomically inside Redis by one Lua
//! script, so every gateway node sharing the Redis sees one counter per key.
//!
//! One key per rate-limit key: a hash `{prefix}rl:{policy id}:{key}` holding the key's anchor
//! (its first request, in Redis server microseconds) and each limit's state in fields named
//! after the limit's position, algorithm and window (a changed window starts afresh; a changed
//! request count keeps counting). Time is Redis's `TIME`, so node clocks do not matter. The
//! hash expires when no limit holds anything any more.
//!
//! A check is one `EVALSHA` round trip (plus one `EVAL` when the server has never seen the
//! script). The sliding window counts in milliseconds (so `requests × window` stays exact in
//! Lua's doubles for windows up to a month), GCRA in microseconds.

use std::sync::{Arc, LazyLock};

use redis::Script;

use super::config::Algorithm;
use super::local::{Decision, Limit, LimitStatus};
use crate::store::redis::{RedisStore, StoreError};

/// The check, for every limit of a policy at once. ARGV: the number of limits, then per limit
/// its field name, algorithm (0 sliding window, 1 GCRA), requests, window (µs) and burst.
/// Returns `{allowed, then per limit: remaining, reset µs, retry-after µs or -1}`.
pub const SCRIPT: &str = r#"
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
local names = {'anchor'}
for i = 1, n do
  local f = ARGV[2 + (i - 1) * 5]
  names[#names + 1] = f .. ':x'
  names[#names + 1] = f .. ':y'
  names[#names + 1] = f .. ':z'
end
local v = redis.call('HMGET', key, unpack(names))
local anchor = tonumber(v[1])
if anchor == nil or anchor > now then anchor = now end
local rel = now - anchor
local out = {0}
local writes = {'anchor', anchor}
local allowed = 1
local ttl = 0
for i = 1, n do
  local b = 2 + (i - 1) * 5
  local f = ARGV[b]
  local alg = tonumber(ARGV[b + 1])
  local q = tonumber(ARGV[b + 2])
  local wus = tonumber(ARGV[b + 3])
  local burst = tonumber(ARGV[b + 4])
  local x = tonumber(v[(i - 1) * 3 + 2])
  local y = tonumber(v[(i - 1) * 3 + 3]) or 0
  local z = tonumber(v[(i - 1) * 3 + 4]) or 0
  local remaining, reset, retry = 0, 0, -1
  if alg == 0 then
    local w = math.max(math.floor(wus / 1000), 1)
    local r = math.floor(rel / 1000)
    local idx = math.floor(r / w)
    local cur, prev = 0, 0
    if x == idx then cur, prev = y, z elseif x == idx - 1 then prev = y end
    local e = r - idx * w
    local weighted = prev * (w - e)
    local to_end = w - e
    if weighted + (cur + 1) * w <= q * w then
      remaining = math.floor((q * w - weighted - (cur + 1) * w) / w)
      reset = to_end
      if prev > 0 then reset = reset + w end
      writes[#writes + 1] = f .. ':x'; writes[#writes + 1] = idx
      writes[#writes + 1] = f .. ':y'; writes[#writes + 1] = cur + 1
      writes[#writes + 1] = f .. ':z'; writes[#writes + 1] = prev
      ttl = math.max(ttl, (idx + 2) * w - r)
    else
      local wait
      if cur < q and prev > 0 then
        local e2 = w - math.floor(((q - cur - 1) * w) / prev)
        wait = math.max(e2 - e, 1)
      else
        local e2 = 0
        if cur > 0 then e2 = math.max(w - math.floor(((q - 1) * w) / cur), 0) end
        wait = (w - e) + e2
      end
      reset = math.max(wait, to_end)
      retry = wait
      allowed = 0
    end
    reset = reset * 1000
    if retry > 0 then retry = retry * 1000 end
  else
    local interval = math.max(math.floor(wus / q), 1)
    local tau = burst * interval
    local tat = math.max(x or 0, rel)
    local new_tat = tat + interval
    local ahead = new_tat - rel
    if ahead <= tau then
      remaining = math.floor((tau - ahead) / interval)
      reset = ahead
      writes[#writes + 1] = f .. ':x'; writes[#writes + 1] = new_tat
      ttl = math.max(ttl, math.ceil(ahead / 1000))
    else
      reset = tat - rel
      retry = math.max(ahead - tau, 1)
      allowed = 0
    end
  end
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = retry
end
out[1] = allowed
if allowed == 1 then
  redis.call('HSET', key, unpack(writes))
  redis.call('PEXPIRE', key, ttl + 1000)
end
return out
"#;

static COMPILED: LazyLock<Script> = LazyLock::new(|| Script::new(SCRIPT));

/// One policy's limits, checked in Redis.
pub struct RedisLimiter {
    store: Arc<RedisStore>,
    /// `{prefix}rl:{policy id}:`; the request's key is appended.
    prefix: Vec<u8>,
    /// The script's arguments (they only depend on the limits).
    args: Vec<Vec<u8>>,
    limits: usize,
}

impl RedisLimiter {
    /// A limiter for `limits` of the policy `id`.
    pub fn new(store: Arc<RedisStore>, id: &str, limits: &[Limit]) -> Self {
        let prefix = format!("{}rl:{id}:", store.key_prefix()).into_bytes();
        let mut args = vec![limits.len().to_string().into_bytes()];
        for (i, l) in limits.iter().enumerate() {
            let (tag, alg) = match l.algorithm {
                Algorithm::SlidingWindow => ("s", "0"),
                Algorithm::Gcra => ("g", "1"),
            };
            let window_us = (l.window / 1_000).max(1);
            args.push(format!("{i}{tag}{window_us}").into_bytes());
            args.push(alg.as_bytes().to_vec());
            args.push(l.requests.to_string().into_bytes());
            args.push(window_us.to_string().into_bytes());
            args.push(l.burst.to_string().into_bytes());
        }
        Self {
            store,
            prefix,
            args,
            limits: limits.len(),
        }
    }

    /// Checks and counts a request with `key`, atomically for every limit.
    pub async fn check(&self, key: &[u8]) -> Result<Decision, StoreError> {
        let mut full = Vec::with_capacity(self.prefix.len() + key.len());
        full.extend_from_slice(&self.prefix);
        full.extend_from_slice(key);
        let out: Vec<i64> = self
            .store
            .eval(&COMPILED, SCRIPT, &full, &self.args)
            .await?;
        decode(&out, self.limits).ok_or_else(|| {
            StoreError::Redis(redis::RedisError::from((
                redis::ErrorKind::Client,
                "unexpected rate-limit script reply",
            )))
        })
    }
}

/// The script's reply as a [`Decision`] (times from µs to ns).
fn decode(out: &[i64], limits: usize) -> Option<Decision> {
    if out.len() != 1 + 3 * limits {
        return None;
    }
    let allowed = out[0] == 1;
    let us = |v: i64| (v.max(0) as u64).saturating_mul(1_000);
    let limits = out[1..]
        .chunks_exact(3)
        .map(|c| {
            let retry_after = (c[2] >= 0).then(|| us(c[2]).max(1));
            LimitStatus {
                // A rejected request is not counted: limits that would have allowed it report
                // the quota they really have left (as the local store does).
                remaining: c[0].max(0) as u64 + u64::from(!allowed && retry_after.is_none()),
                reset: us(c[1]),
                retry_after,
            }
        })
        .collect();
    Some(Decision { allowed, limits })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_decode_into_decisions() {
        let d = decode(&[1, 4, 60_000_000, -1], 1).unwrap();
        assert!(d.allowed);
        assert_eq!(d.limits[0].remaining, 4);
        assert_eq!(d.limits[0].reset, 60_000_000_000);
        assert_eq!(d.limits[0].retry_after, None);
        let d = decode(&[0, 0, 30_000_000, 30_000_000, 9, 5, -1], 2).unwrap();
        assert!(!d.allowed);
        assert_eq!(d.limits[0].retry_after, Some(30_000_000_000));
        assert_eq!(d.limits[1].remaining, 10);
        assert!(decode(&[1, 2], 1).is_none());
    }
}
