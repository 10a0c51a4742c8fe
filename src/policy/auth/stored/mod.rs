//! Consumers managed at run time (`consumers: {store: redis}`): kept in the shared Redis,
//! written through the admin API, served by every node from an in-memory copy.
//!
//! Owns the copy, keeping it in step with Redis, and the writes. It does not own the HTTP side
//! of the admin API (`admin/consumers.rs`) nor the file-defined consumers (`consumers.rs`),
//! which are looked up first.
//!
//! How the copy follows Redis (`sync.rs`):
//! - At start a node subscribes to the change channel, then reads the whole set (`HSCAN`), so
//!   no change falls between the two. A node that cannot reach Redis starts with the
//!   file-defined consumers only and keeps trying.
//! - Every write is one Lua script (`write.rs`): it checks that names, key digests, user names
//!   and subjects stay unique, writes the consumer's document, increments the version and
//!   publishes `version id`. Nodes re-read the changed consumers (changes arriving together
//!   are applied as one new copy); a gap in the versions means a missed message and a full
//!   read.
//! - Every `check_interval` each node compares its version with Redis's (one `GET`): a
//!   missed message, or a partition that healed, is caught there; a failed check reconnects the
//!   subscription, which may have died silently.
//! - When Redis has lost the set (a flush, a restart without persistence: the version key is
//!   gone) a node writes its copy back, once for the fleet (the script only writes when the
//!   version is still absent), so credentials keep working.
//! - While Redis is unreachable the last copy keeps serving; its age is on `/status` and
//!   `/metrics`, and writes fail with 503.
//!
//! The request path makes no Redis call: a lookup is one `ArcSwap` load and hash lookups.

pub mod index;
pub mod record;
mod sharded;
mod sync;
mod write;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::config::RawConsumerStore;
use crate::spec::ConfigError;
use crate::store::redis::{RawRedis, RedisStore};
pub use index::Snapshot;
pub use write::WriteError;

/// The stored consumers of a node: the copy, its state, and the Redis it follows.
pub struct ConsumerStore {
    /// What the store was built from: a reload that leaves it unchanged keeps this store.
    origin: (RawConsumerStore, RawRedis),
    redis: Arc<RedisStore>,
    /// Records, names, keys, basic, subjects, version (in this order, as the scripts read them).
    keys: Vec<String>,
    channel: String,
    snapshot: ArcSwap<Snapshot>,
    /// The version published to writers waiting for their change to be applied here.
    applied: watch::Sender<u64>,
    /// Serialises replacing the copy (the sync thread and a writer applying its own change).
    replacing: Mutex<()>,
    /// Loaded from Redis at least once.
    loaded: AtomicBool,
    /// The last check or change agreed with Redis.
    in_sync: AtomicBool,
    /// Unix milliseconds of the last time the copy was known to match Redis (0: never).
    synced_at: AtomicU64,
    started: AtomicBool,
    check_interval: Duration,
}

/// What `/status`, `/readyz` and `/metrics` show of the store.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreStatus {
    /// Stored consumers in this node's copy.
    pub consumers: usize,
    /// The store version of the copy.
    pub version: u64,
    /// Loaded from Redis at least once.
    pub loaded: bool,
    /// The last check agreed with Redis.
    pub in_sync: bool,
    /// Seconds since the copy was last known to match Redis (`None`: never loaded).
    pub age_seconds: Option<f64>,
    /// `/readyz` waits for the first load.
    pub required: bool,
}

impl ConsumerStore {
    /// The store for `consumers: {store: redis}`, or `previous` when its settings are the
    /// same (its copy and thread carry on). Nothing connects here: [`start`](Self::start) does.
    pub fn build(
        raw: &RawConsumerStore,
        redis: Option<&RawRedis>,
        previous: Option<&Arc<ConsumerStore>>,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Arc<Self>> {
        let Some(redis) = redis else {
            errors.push(ConfigError::new(
                "consumers.store",
                "`store: redis` needs the top-level `redis:` section",
            ));
            return None;
        };
        if raw.check_interval.0 < Duration::from_millis(100) {
            errors.push(ConfigError::new(
                "consumers.check_interval",
                "must be at least 100ms",
            ));
            return None;
        }
        let mut settings = raw.clone();
        settings.list.clear();
        let origin = (settings, redis.clone());
        if let Some(p) = previous.filter(|p| p.origin == origin) {
            return Some(Arc::clone(p));
        }
        // A connection of its own: the policies' connection lives on a worker's runtime.
        let store = RedisStore::build(redis, errors)?;
        let prefix = format!("{}{{consumers}}:", redis.key_prefix);
        let keys = ["records", "names", "keys", "basic", "subjects", "version"]
            .iter()
            .map(|k| format!("{prefix}{k}"))
            .collect();
        Some(Arc::new(Self {
            check_interval: raw.check_interval.0,
            origin,
            redis: store,
            keys,
            channel: format!("{prefix}changes"),
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            applied: watch::channel(0).0,
            replacing: Mutex::new(()),
            loaded: AtomicBool::new(false),
            in_sync: AtomicBool::new(false),
            synced_at: AtomicU64::new(0),
            started: AtomicBool::new(false),
        }))
    }

    /// Starts following Redis (once; later calls do nothing) and waits up to `wait` for the
    /// first load, so a node that can reach Redis serves the stored consumers from its first
    /// request. Returns whether the set was loaded.
    pub fn start(self: &Arc<Self>, wait: Duration) -> bool {
        if self.started.swap(true, Ordering::SeqCst) {
            return self.loaded.load(Ordering::Relaxed);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("portico-consumers".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(sync::follow(weak, tx)),
                    Err(e) => tracing::error!("consumer store: cannot start its runtime: {e}"),
                }
            });
        if let Err(e) = spawned {
            tracing::error!("consumer store: cannot start its thread: {e}");
            return false;
        }
        match rx.recv_timeout(wait) {
            Ok(Ok(n)) => {
                tracing::info!(consumers = n, "consumer store loaded from redis");
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(
                    error = %e,
                    "consumer store: redis unreachable at start; serving the file-defined \
                     consumers only until it answers"
                );
                false
            }
            Err(_) => {
                tracing::warn!(
                    "consumer store: redis did not answer at start; serving the file-defined \
                     consumers only until it answers"
                );
                false
            }
        }
    }

    /// The copy serving now.
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// The store's state.
    pub fn status(&self) -> StoreStatus {
        let snap = self.snapshot.load();
        let at = self.synced_at.load(Ordering::Relaxed);
        StoreStatus {
            consumers: snap.len(),
            version: snap.version,
            loaded: self.loaded.load(Ordering::Relaxed),
            in_sync: self.in_sync.load(Ordering::Relaxed),
            age_seconds: (at > 0).then(|| (now_ms().saturating_sub(at)) as f64 / 1000.0),
            required: self.origin.0.required,
        }
    }

    /// Where the audit log goes besides the application log.
    pub fn audit_log(&self) -> Option<&str> {
        self.origin.0.audit_log.as_deref()
    }

    /// Replaces the copy with `make(current)` when it returns one. The only way the copy
    /// changes; wakes writers waiting for a version.
    fn replace(&self, make: impl FnOnce(&Snapshot) -> Option<Snapshot>) -> bool {
        let _one = self.replacing.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.snapshot.load_full();
        let Some(next) = make(&current) else {
            return false;
        };
        let version = next.version;
        self.snapshot.store(Arc::new(next));
        self.applied.send_replace(version);
        true
    }

    fn synced(&self) {
        self.in_sync.store(true, Ordering::Relaxed);
        self.synced_at.store(now_ms(), Ordering::Relaxed);
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
