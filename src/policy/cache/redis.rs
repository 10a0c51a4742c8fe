//! The shared tier of a cache policy in the plan's Redis (`store/redis.rs`: its connection,
//! timeout, down-marking and rate-limited error log are reused, not duplicated).
//!
//! Entries are plain Redis strings under `{key_prefix}cache:{key}` with a TTL equal to the time
//! the entry is kept. Reads are on the request path and bounded by `redis.timeout`; a failing
//! or slow Redis makes the lookup a miss (the request goes upstream), never an error. Writes
//! and deletions are sent from spawned tasks, off the request path.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio::time::Instant;

use super::entry::{decode, encode, Slot};
use crate::store::redis::RedisStore;

const GET: &str = "return redis.call('GET', KEYS[1])";
const SET: &str = "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1";
const DEL: &str = "return redis.call('DEL', KEYS[1])";
// Scans for the prefix (glob-escaped by the caller) and deletes what it finds. One script call,
// so it is bounded by `redis.timeout` like any other: meant for occasional operator purges.
const PURGE: &str = "local cursor = '0' local n = 0 \
    repeat \
      local r = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000) \
      cursor = r[1] \
      for _, k in ipairs(r[2]) do n = n + redis.call('DEL', k) end \
    until cursor == '0' \
    return n";

/// `EVAL` with no `ARGV`.
const NO_ARGS: Vec<&str> = Vec::new();

fn script(slot: &'static OnceLock<redis::Script>, source: &str) -> &'static redis::Script {
    slot.get_or_init(|| redis::Script::new(source))
}

static GET_SCRIPT: OnceLock<redis::Script> = OnceLock::new();
static SET_SCRIPT: OnceLock<redis::Script> = OnceLock::new();
static DEL_SCRIPT: OnceLock<redis::Script> = OnceLock::new();
static PURGE_SCRIPT: OnceLock<redis::Script> = OnceLock::new();

/// A cache policy's view of the shared Redis.
pub struct RedisTier {
    store: Arc<RedisStore>,
    /// `{key_prefix}cache:`.
    prefix: String,
    max_entry: u64,
}

impl RedisTier {
    /// The tier over `store`, keeping entries up to `max_entry` bytes.
    pub fn new(store: Arc<RedisStore>, max_entry: u64) -> Self {
        let prefix = format!("{}cache:", store.key_prefix());
        Self {
            store,
            prefix,
            max_entry,
        }
    }

    fn redis_key(&self, key: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + key.len());
        k.extend_from_slice(self.prefix.as_bytes());
        k.extend_from_slice(key.as_bytes());
        k
    }

    /// The slot at `key`, or `None` when absent, undecodable or Redis fails (logged by the
    /// store, once per interval).
    pub async fn get(&self, key: &str) -> Option<Slot> {
        let value: Option<Vec<u8>> = self
            .store
            .eval(script(&GET_SCRIPT, GET), GET, &self.redis_key(key), NO_ARGS)
            .await
            .ok()?;
        decode(Bytes::from(value?), Instant::now())
    }

    /// Writes `slot` at `key` in the background, with a TTL of the time it is kept; entries
    /// over the tier's size cap are not written.
    pub fn put(self: &Arc<Self>, key: &str, slot: &Slot) {
        let now = Instant::now();
        let ttl = slot.time_to_keep(now).as_millis() as u64;
        if ttl == 0 {
            return;
        }
        let value = encode(slot, now);
        if value.len() as u64 > self.max_entry {
            return;
        }
        let tier = Arc::clone(self);
        let key = self.redis_key(key);
        tokio::spawn(async move {
            let _: Result<i64, _> = tier
                .store
                .eval(script(&SET_SCRIPT, SET), SET, &key, (value.as_ref(), ttl))
                .await;
        });
    }

    /// Deletes `key` in the background.
    pub fn delete(self: &Arc<Self>, key: &str) {
        let tier = Arc::clone(self);
        let key = self.redis_key(key);
        tokio::spawn(async move {
            let _: Result<i64, _> = tier
                .store
                .eval(script(&DEL_SCRIPT, DEL), DEL, &key, NO_ARGS)
                .await;
        });
    }

    /// Deletes `key` now; the number of keys deleted.
    pub async fn purge_key(&self, key: &str) -> Result<u64, crate::store::redis::StoreError> {
        self.store
            .eval(script(&DEL_SCRIPT, DEL), DEL, &self.redis_key(key), NO_ARGS)
            .await
    }

    /// Deletes every key starting with `prefix` now; the number of keys deleted.
    pub async fn purge_prefix(&self, prefix: &str) -> Result<u64, crate::store::redis::StoreError> {
        let mut pattern = String::with_capacity(self.prefix.len() + prefix.len() + 2);
        for c in self.prefix.chars().chain(prefix.chars()) {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('*');
        self.store
            .eval(
                script(&PURGE_SCRIPT, PURGE),
                PURGE,
                &self.redis_key(prefix),
                pattern,
            )
            .await
    }
}
