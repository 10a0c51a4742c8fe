//! The Redis connection shared by every `store: redis` policy of a plan.
//!
//! One multiplexed connection (a `ConnectionManager` for a single server or a Sentinel-managed
//! primary, a `ClusterConnection` for Redis Cluster), made on first use from inside the worker
//! that needs it, so a gateway starts even while Redis is down.
//!
//! Every call is bounded by `timeout`. A failed call marks Redis down for `retry_interval`:
//! meanwhile calls fail at once (the policies fall back as configured) instead of each waiting
//! out the timeout, and the first call after the interval probes Redis again. Failures are
//! logged once per [`LOG_INTERVAL`] with the number of failed calls, never once per request.
//! Connection errors drop the connection, so the next probe reconnects (and, with Sentinel,
//! asks the sentinels for the current primary again).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Client, FromRedisValue, RedisConnectionInfo, ServerErrorKind, ToRedisArgs};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::spec::units::Dur;
use crate::spec::ConfigError;

/// How often a failing store is logged (with the count of failures since the last line).
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The top-level `redis:` section: exactly one of `url`, `cluster` or `sentinel`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// One server: `redis://[[user]:password@]host[:port][/db]` (or `redis+unix:///path`).
    #[serde(default)]
    pub url: Option<String>,
    /// Redis Cluster: seed node URLs; the rest of the cluster is discovered from them.
    #[serde(default)]
    pub cluster: Vec<String>,
    /// A primary managed by Redis Sentinel.
    #[serde(default)]
    pub sentinel: Option<RawSentinel>,
    /// Longest wait for one Redis call (connecting included); past it the policy's
    /// `on_store_error` applies. Default 50ms.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// After a failed call, Redis is not asked again for this long (calls fail at once), then
    /// one call probes it. Default 1s.
    #[serde(default = "default_retry_interval")]
    pub retry_interval: Dur,
    /// Prefix of every key Portico writes (to share a Redis with other applications).
    /// Default `portico:`.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// The admin API's `/readyz` answers 503 while Redis does not answer a PING (take a node
    /// out of its load balancer's rotation when the fleet's shared state is gone).
    #[serde(default)]
    pub required: bool,
}

/// A primary found through Redis Sentinel.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawSentinel {
    /// Sentinel URLs: `redis://host:26379`.
    pub urls: Vec<String>,
    /// The monitored primary's name (`sentinel monitor <name> ...`).
    pub master: String,
    /// Database number on the primary.
    #[serde(default)]
    pub db: i64,
    /// Username on the primary (ACL).
    #[serde(default)]
    pub username: Option<String>,
    /// Password on the primary; use `${ENV}` or `${file:...}` rather than writing it here.
    #[serde(default)]
    pub password: Option<String>,
}

fn default_timeout() -> Dur {
    Dur::from_millis(50)
}
fn default_retry_interval() -> Dur {
    Dur::from_secs(1)
}
fn default_prefix() -> String {
    "portico:".to_string()
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A recent call failed; Redis is not asked again before the retry interval ends.
    #[error("redis is marked down after a recent failure")]
    Down,
    /// No answer within the timeout.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error, or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

enum Source {
    Single(Client),
    Cluster(ClusterClient),
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// A Redis shared by the policies of a plan.
pub struct RedisStore {
    raw: RawRedis,
    source: Source,
    conn: ArcSwapOption<Conn>,
    /// One connection attempt at a time.
    connecting: tokio::sync::Mutex<()>,
    timeout: Duration,
    retry_interval: Duration,
    epoch: Instant,
    /// Nanoseconds since `epoch` before which calls fail at once.
    down_until: AtomicU64,
    /// Calls failed since the last log line.
    failures: AtomicU64,
    /// Nanoseconds since `epoch` of the next allowed log line.
    next_log: AtomicU64,
    /// Whether the last call failed (to log the recovery once).
    failing: AtomicBool,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URLs: they may hold a password.
        f.debug_struct("RedisStore")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Checks the section and prepares the client (no connection is made here).
    pub fn build(raw: &RawRedis, errors: &mut Vec<ConfigError>) -> Option<Arc<Self>> {
        let before = errors.len();
        let given =
            raw.url.is_some() as u8 + !raw.cluster.is_empty() as u8 + raw.sentinel.is_some() as u8;
        if given != 1 {
            errors.push(ConfigError::new(
                "redis",
                "set exactly one of `url`, `cluster` or `sentinel`",
            ));
            return None;
        }
        if raw.timeout.0.is_zero() {
            errors.push(ConfigError::new("redis.timeout", "must be positive"));
        }
        // Error messages name the field, never the URL: it may carry a password.
        let bad_url = |e: redis::RedisError| {
            format!(
                "not a usable Redis URL: {}",
                e.detail().unwrap_or("invalid")
            )
        };
        let source = if let Some(url) = &raw.url {
            match Client::open(url.as_str()) {
                Ok(c) => Some(Source::Single(c)),
                Err(e) => {
                    errors.push(ConfigError::new("redis.url", bad_url(e)));
                    None
                }
            }
        } else if !raw.cluster.is_empty() {
            for (i, url) in raw.cluster.iter().enumerate() {
                if let Err(e) = Client::open(url.as_str()) {
                    errors.push(ConfigError::new(format!("redis.cluster[{i}]"), bad_url(e)));
                }
            }
            ClusterClientBuilder::new(raw.cluster.iter().map(String::as_str))
                .connection_timeout(raw.timeout.0)
                .response_timeout(raw.timeout.0)
                .retries(0)
                .build()
                .ok()
                .map(Source::Cluster)
        } else {
            let s = raw.sentinel.as_ref()?;
            if s.urls.is_empty() {
                errors.push(ConfigError::new("redis.sentinel.urls", "name at least one"));
            }
            for (i, url) in s.urls.iter().enumerate() {
                if let Err(e) = Client::open(url.as_str()) {
                    errors.push(ConfigError::new(
                        format!("redis.sentinel.urls[{i}]"),
                        bad_url(e),
                    ));
                }
            }
            if s.master.is_empty() {
                errors.push(ConfigError::new(
                    "redis.sentinel.master",
                    "must not be empty",
                ));
            }
            let mut node = RedisConnectionInfo::default().set_db(s.db);
            if let Some(u) = &s.username {
                node = node.set_username(u);
            }
            if let Some(p) = &s.password {
                node = node.set_password(p);
            }
            let info = SentinelNodeConnectionInfo::default().set_redis_connection_info(node);
            SentinelClient::build(
                s.urls.iter().map(String::as_str).collect(),
                s.master.clone(),
                Some(info),
                SentinelServerType::Master,
            )
            .ok()
            .map(|c| Source::Sentinel(tokio::sync::Mutex::new(c)))
        };
        if errors.len() > before {
            return None;
        }
        Some(Arc::new(Self {
            raw: raw.clone(),
            source: source?,
            conn: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            timeout: raw.timeout.0,
            retry_interval: raw.retry_interval.0,
            epoch: Instant::now(),
            down_until: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            next_log: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        }))
    }

    /// The section this store was built from.
    pub fn settings(&self) -> &RawRedis {
        &self.raw
    }

    /// The prefix of every key.
    pub fn key_prefix(&self) -> &str {
        &self.raw.key_prefix
    }

    /// Whether the last call succeeded (for readiness).
    pub fn is_up(&self) -> bool {
        !self.failing.load(Ordering::Relaxed)
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Runs a Lua script: `EVALSHA`, and `EVAL` with the whole script when the server does not
    /// know it (`NOSCRIPT`: a restarted or new server), so a check is one round trip.
    pub async fn eval<T: FromRedisValue>(
        &self,
        script: &redis::Script,
        source: &str,
        key: &[u8],
        args: impl ToRedisArgs,
    ) -> Result<T, StoreError> {
        self.bounded(self.timeout, async {
            let mut conn = self.connection().await?;
            run_script(&mut conn, script, source, &[key], &args).await
        })
        .await
    }

    /// Runs one command (or pipeline) within `timeout`, marking Redis down on failure like
    /// [`eval`](Self::eval). For callers off the request path (the consumer store), which may
    /// need longer than the per-request `timeout` (a bulk read).
    pub async fn query<T: FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        timeout: Duration,
    ) -> Result<T, StoreError> {
        self.bounded(timeout, async {
            let mut conn = self.connection().await?;
            query(&mut conn, cmd).await
        })
        .await
    }

    /// Runs a Lua script over several `keys` within `timeout` (see [`eval`](Self::eval)).
    pub async fn eval_keys<T: FromRedisValue>(
        &self,
        script: &redis::Script,
        source: &str,
        keys: &[String],
        args: &[Vec<u8>],
        timeout: Duration,
    ) -> Result<T, StoreError> {
        let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
        self.bounded(timeout, async {
            let mut conn = self.connection().await?;
            run_script(&mut conn, script, source, &keys, &args).await
        })
        .await
    }

    /// `call` within `timeout`, failing at once while Redis is marked down, and marking it down
    /// (or up again) by the outcome.
    async fn bounded<T>(
        &self,
        timeout: Duration,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        if self.now() < self.down_until.load(Ordering::Relaxed) {
            self.failures.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Down);
        }
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Redis(e)),
            Err(_) => Err(StoreError::Timeout(timeout)),
        };
        match &result {
            Ok(_) => self.succeeded(),
            Err(e) => self.failed(e),
        }
        result
    }

    /// A connection subscribed to `channel` (pub/sub needs a connection of its own). With
    /// Redis Cluster it is made to the first seed node: `PUBLISH` reaches every node.
    pub async fn subscribe(
        &self,
        channel: &str,
        timeout: Duration,
    ) -> Result<redis::aio::PubSub, StoreError> {
        let call = async {
            let client = match &self.source {
                Source::Single(client) => client.clone(),
                Source::Cluster(_) => Client::open(self.raw.cluster[0].as_str())?,
                Source::Sentinel(sentinel) => sentinel.lock().await.async_get_client().await?,
            };
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(StoreError::Redis(e)),
            Err(_) => Err(StoreError::Timeout(timeout)),
        }
    }

    /// A `PING` within the timeout (readiness). Not counted as a failure of the policies.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let call = async {
            let mut conn = self.connection().await?;
            query::<String>(&mut conn, &redis::cmd("PING")).await
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
                    self.conn.store(None);
                }
                Err(StoreError::Redis(e))
            }
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    async fn connection(&self) -> Result<Conn, redis::RedisError> {
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        let manager_config = || {
            ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.timeout))
                .set_response_timeout(Some(self.timeout))
                .set_number_of_retries(0)
        };
        let conn = match &self.source {
            Source::Single(client) => Conn::Single(
                ConnectionManager::new_with_config(client.clone(), manager_config()).await?,
            ),
            Source::Cluster(client) => Conn::Cluster(client.get_async_connection().await?),
            Source::Sentinel(sentinel) => {
                let client = sentinel.lock().await.async_get_client().await?;
                Conn::Single(ConnectionManager::new_with_config(client, manager_config()).await?)
            }
        };
        self.conn.store(Some(Arc::new(conn.clone())));
        Ok(conn)
    }

    fn succeeded(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("redis store reachable again");
        }
    }

    fn failed(&self, e: &StoreError) {
        let now = self.now();
        self.down_until.store(
            now + self.retry_interval.as_nanos() as u64,
            Ordering::Relaxed,
        );
        if let StoreError::Redis(r) = e {
            if r.is_io_error() || r.is_connection_dropped() || r.is_connection_refusal() {
                self.conn.store(None);
            }
        }
        self.failing.store(true, Ordering::Relaxed);
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let next = self.next_log.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_log
                .compare_exchange(
                    next,
                    now + LOG_INTERVAL.as_nanos() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            self.failures.fetch_sub(failures, Ordering::Relaxed);
            tracing::warn!(
                error = %e,
                failed_calls = failures,
                "redis store unavailable; policies follow their on_store_error setting"
            );
        }
    }
}

/// `EVALSHA`, then `EVAL` with the source when the server does not know the script.
async fn run_script<T: FromRedisValue>(
    conn: &mut Conn,
    script: &redis::Script,
    source: &str,
    keys: &[&[u8]],
    args: &impl ToRedisArgs,
) -> redis::RedisResult<T> {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash())
        .arg(keys.len())
        .arg(keys)
        .arg(args);
    match query(conn, &cmd).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript) => {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(source).arg(keys.len()).arg(keys).arg(args);
            query(conn, &cmd).await
        }
        other => other,
    }
}

async fn query<T: FromRedisValue>(conn: &mut Conn, cmd: &redis::Cmd) -> redis::RedisResult<T> {
    match conn {
        Conn::Single(c) => cmd.query_async(c).await,
        Conn::Cluster(c) => cmd.query_async(c).await,
    }
}
